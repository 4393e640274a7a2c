"""SIGTERM: hand every open stream over to the other gateways, a few at a time.

Order, and why:

1. ``/readyz`` answers 503 (``draining``) and ``/events`` refuses new streams with 503: a load
   balancer stops routing here, and a request on a kept-alive connection is not served here.
2. The listening sockets close: a reconnect can only reach another gateway.
3. The open streams are closed spread evenly over ``gateway.drain_window``, each with a
   jittered ``retry:`` and a ``{"type":"reconnect"}`` frame (gateway/resume.py), and with
   ``Connection: close``. Their clients resume on the survivors with Last-Event-ID: nothing is
   lost or duplicated, and the survivors see a trickle of reconnects, not a herd.
4. Then the ordinary shutdown (runner cleanup) runs; the exit code is 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Final

from aiohttp import web

from gateway import state
from runtime import log_event

log = logging.getLogger(__name__)

#: Seconds the last closed streams get to finish their responses after the window.
SETTLE_TIMEOUT_S: Final = 5.0
#: How often the end of the drain checks whether every stream has ended, in seconds.
SETTLE_POLL_S: Final = 0.05
#: ``Retry-After`` of a stream refused while draining, in seconds.
REFUSED_RETRY_AFTER_S: Final = 1


def draining_refusal() -> web.HTTPServiceUnavailable:
    """The 503 for a new stream on a draining gateway (on a connection opened before the drain)."""
    return web.HTTPServiceUnavailable(
        text=json.dumps({"error": "unavailable", "reason": "draining"}),
        content_type="application/json",
        headers={"Retry-After": str(REFUSED_RETRY_AFTER_S), "Connection": "close"},
    )


async def drain(app: web.Application, runner: web.AppRunner, window: float) -> None:
    """Steps 1 to 3 of the module docstring; returns when every stream has ended (or after
    :data:`SETTLE_TIMEOUT_S` more seconds)."""
    registry = app[state.STREAMS]
    registry.draining = True
    streams = registry.snapshot()
    log_event(log, "gateway_draining", streams=len(streams), window=window)
    started = time.monotonic()
    for site in tuple(runner.sites):
        await site.stop()
    interval = window / len(streams) if streams else 0.0
    for index, stream in enumerate(streams):
        # Evenly spaced from the start of the drain: stream i closes at i * interval.
        delay = started + index * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        stream.close("server_draining")
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    # Polling a few seconds at most, once per process lifetime: simpler than an event the
    # registry would have to set on every stream's end.
    while len(registry) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(SETTLE_POLL_S)
    log_event(log, "gateway_drained", streams=len(streams), left=len(registry),
              seconds=round(time.monotonic() - started, 3))
