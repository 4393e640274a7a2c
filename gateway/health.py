"""Liveness, readiness and metrics endpoints.

Ready means Redis answers, the live-announcement connection is up and a JWT key is set:
without them, streams would open and stay silent, or never open. NATS is reported but never
makes the gateway unready (presence is best effort).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from gateway import state

#: How long the readiness PING may take, in seconds.
READY_TIMEOUT_S: Final = 2.0


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: the process serves HTTP."""
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: 200 when Redis and the pub/sub connection are up, else 503 with reasons."""
    app = request.app
    reasons: list[str] = []
    checks: dict[str, Any] = {}
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await app[state.REDIS].ping()
        checks["redis"] = "ok"
    except (RedisError, OSError, TimeoutError) as exc:
        checks["redis"] = "down"
        reasons.append(f"redis unreachable: {type(exc).__name__}: {exc}")
    hub = app[state.HUB]
    checks["pubsub"] = "ok" if hub.connected else "down"
    if not hub.connected:
        reasons.append("live-announcement connection to redis is down")
    checks["nats"] = "ok" if app[state.NATS].connected else "down (presence not announced)"
    if app[state.VERIFIER].configured:
        checks["jwt"] = "ok"
    else:
        checks["jwt"] = "no public key"
        reasons.append("gateway.jwt.public_key is not set: every stream would get 401")
    streams = app[state.STREAMS]
    checks["open_streams"] = len(streams)
    if streams.draining:
        # SIGTERM: not ready first, so a load balancer stops routing here (gateway/drain.py).
        reasons.append("draining: the process is shutting down")
    ready = not reasons
    return web.json_response(
        {"ready": ready, "reasons": reasons, "checks": checks}, status=200 if ready else 503
    )


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text exposition."""
    body = request.app[state.METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
