"""Typed application state: every resource the handlers share, one ``web.AppKey`` each.

Kept apart from :mod:`gateway.app` so handlers can import the keys without importing the
routes (no cycles); the types are only needed by the type checker. Even so, no module whose type
a key names imports this one (the handlers that do live in modules of their own, such as
:mod:`gateway.events_handler`), so the gateway's modules form no cycle even counting these
imports (tests/test_layers.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gateway.admission import Edge
    from gateway.auth import TokenVerifier
    from gateway.heads import InboxHeads
    from gateway.hub import Hub
    from gateway.metrics import GatewayMetrics
    from gateway.natslink import NatsLink
    from gateway.presence import PresenceTracker
    from gateway.registry import StreamRegistry
    from settings import Settings

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
VERIFIER: web.AppKey[TokenVerifier] = web.AppKey("verifier")
METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics")
#: The edge limits (settings ``gateway.limits``) and their counts.
EDGE: web.AppKey[Edge] = web.AppKey("edge")
#: The open streams (the ``GET /events`` handler adds each while it is open).
STREAMS: web.AppKey[StreamRegistry] = web.AppKey("streams")
#: The pooled client for inbox reads, presence and readiness (not the pub/sub connection).
REDIS: web.AppKey[Redis] = web.AppKey("redis")
#: Batched reads of inbox heads (where a new stream starts).
HEADS: web.AppKey[InboxHeads] = web.AppKey("heads")
HUB: web.AppKey[Hub] = web.AppKey("hub")
NATS: web.AppKey[NatsLink] = web.AppKey("nats")
PRESENCE: web.AppKey[PresenceTracker] = web.AppKey("presence")
