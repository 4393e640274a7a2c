"""Who gets a stream: the gateway's edge limits (settings ``gateway.limits``), applied in order of cost.

1. Request limits, for every request but the probes: query (414), headers (431), token (400),
   checked before a token is parsed. Lines longer than aiohttp's parser takes are refused by
   :mod:`gateway.edgeserver` the same way.
2. ``GET /events`` only, before the token is verified (a flood costs no signature check):
   the client address's connect rate (429), the process-wide connection cap and the memory
   threshold (503). Each refusal carries ``Retry-After``.
3. After the token is verified (:meth:`Edge.admit_user`, called by the ``GET /events`` handler):
   the user's concurrent streams (429).

Probes (``/healthz``, ``/readyz``, ``/metrics``) are never refused: an orchestrator that cannot
probe a gateway under attack would restart it, dropping every stream it still serves.

Every refusal is a JSON ``{"error": code, "reason": ...}``, a ``refusals`` metric with the code as
label and a log line (:class:`~gateway.limits.QuietLog`: an attack does not flood the log; the token
is never logged).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from aiohttp import web

from gateway.auth import token_from_request
from gateway.limits import (
    PROBE_RESERVE,
    ClientAddress,
    QuietLog,
    RssProbe,
    TokenBuckets,
    available_memory,
    derived_connection_cap,
    refusal,
)
from gateway.metrics import GatewayMetrics
from runtime import log_event
from settings import Limits, percent_of

log = logging.getLogger(__name__)

PROBES: Final = frozenset({"/healthz", "/readyz", "/metrics"})
#: Seconds a client refused for capacity (connections, memory, its own stream count) is told to
#: wait: long enough to spread a reconnect wave, short enough not to look like an outage.
CAPACITY_RETRY_AFTER_S: Final = 5.0

class Edge:
    """The limits of one gateway process and the counts they are checked against.

    ``open_connections`` is kept by :class:`gateway.edgeserver.EdgeServer`; served any other way
    (aiohttp's test server), the connection cap does not apply.
    """

    def __init__(self, limits: Limits, metrics: GatewayMetrics) -> None:
        self.limits = limits
        self.metrics = metrics
        self.buckets = TokenBuckets(limits.connect_rate, limits.connect_burst)
        self.client_address = ClientAddress(limits.trusted_proxies)
        self.rss = RssProbe()
        self.memory_cap = percent_of(limits.max_memory, available_memory()) if limits.max_memory else 0
        #: 0 until :meth:`cap_connections` (the server start) sets it: no cap.
        self.connection_cap = 0
        self.open_connections = 0
        self.user_streams: dict[int, int] = {}
        self.quiet = QuietLog(log)

    def cap_connections(self, soft_nofile: int) -> int:
        """Set the connection cap from the setting and the open-files limit; log it and return it."""
        room = derived_connection_cap(soft_nofile)
        wanted = self.limits.max_connections
        if wanted is None:
            self.connection_cap = room
        elif wanted > room:
            log_event(log, "connection_cap_lowered", logging.WARNING, wanted=wanted, allowed=room,
                      nofile=soft_nofile, detail="more would run out of file descriptors")
            self.connection_cap = room
        else:
            self.connection_cap = wanted
        log_event(log, "connection_cap", max_connections=self.connection_cap or "off",
                  probe_reserve=PROBE_RESERVE, nofile=soft_nofile,
                  max_memory=self.memory_cap or "off")
        return self.connection_cap

    @property
    def hard_connection_cap(self) -> int:
        """Connections beyond which a new one is closed unanswered (0: none)."""
        return self.connection_cap + PROBE_RESERVE if self.connection_cap else 0

    def refuse(
        self, request: web.BaseRequest, status: int, code: str, reason: str,
        retry_after: float | None = None, **fields: Any,
    ) -> web.Response:
        """Count, log (quietly) and build one refusal."""
        self.metrics.refusals.labels(code).inc()
        self.quiet.event("request_refused", error=code, status=status, path=request.path,
                         peer=self.client_address.of(request), **fields)
        return refusal(status, code, reason, retry_after)

    # ------------------------------------------------------------------ checks

    def check_request(self, request: web.Request) -> web.Response | None:
        """Size limits of any request (None: within them)."""
        limits = self.limits
        query = len(request.rel_url.raw_query_string)
        if limits.max_query_bytes and query > limits.max_query_bytes:
            return self.refuse(request, 414, "query_too_large",
                               f"query string over {limits.max_query_bytes} bytes", size=query)
        if limits.max_header_bytes:
            size = sum(len(name) + len(value) + 4 for name, value in request.raw_headers)
            if size > limits.max_header_bytes:
                return self.refuse(request, 431, "headers_too_large",
                                   f"request headers over {limits.max_header_bytes} bytes", size=size)
        if limits.max_token_bytes:
            token = token_from_request(request)
            if token is not None and len(token) > limits.max_token_bytes:
                return self.refuse(request, 400, "token_too_large",
                                   f"access token over {limits.max_token_bytes} bytes", size=len(token))
        return None

    def check_stream(self, request: web.Request) -> web.Response | None:
        """Admission of a new stream before its token is verified (None: admitted)."""
        address = self.client_address.of(request)
        wait = self.buckets.take(address)
        if wait:
            return self.refuse(request, 429, "connect_rate",
                               f"more than {self.limits.connect_rate:g} new streams/s from {address}",
                               retry_after=wait)
        cap = self.connection_cap
        if cap and self.open_connections > cap:
            return self.refuse(request, 503, "connections",
                               "this gateway is at its connection limit", CAPACITY_RETRY_AFTER_S,
                               open=self.open_connections)
        if self.memory_cap:
            rss = self.rss.bytes()
            if rss > self.memory_cap:
                return self.refuse(request, 503, "memory", "this gateway is at its memory limit",
                                   CAPACITY_RETRY_AFTER_S, rss=rss, max_memory=self.memory_cap)
        return None

    def admit_user(self, request: web.Request, user_id: int) -> web.Response | None:
        """Count a stream of ``user_id``, or refuse it. The caller releases the count with
        :meth:`release_user` when the stream ends (a stream outlives its request handler:
        gateway/stream.py, "detached"), however it ends."""
        cap = self.limits.max_streams_per_user
        count = self.user_streams.get(user_id, 0)
        if cap and count >= cap:
            return self.refuse(request, 429, "user_streams",
                               f"this user already has {count} streams open (at most {cap})",
                               CAPACITY_RETRY_AFTER_S, user=user_id)
        self.user_streams[user_id] = count + 1
        return None

    def release_user(self, user_id: int) -> None:
        count = self.user_streams.get(user_id, 0) - 1
        if count > 0:
            self.user_streams[user_id] = count
        else:
            self.user_streams.pop(user_id, None)


def screen(edge: Edge, request: web.Request) -> web.Response | None:
    """Apply the limits of steps 1 and 2 (see the module docstring); None: go on.

    Called by :class:`gateway.edgeserver.EdgeServer` for every request before the application
    routes it. Not an aiohttp middleware: with any middleware, aiohttp wraps every handler in
    one more coroutine that stays suspended as long as the stream is open (~0.5 KB per stream).
    """
    if request.path in PROBES:
        return None
    refused = edge.check_request(request)
    if refused is None and request.method == "GET" and request.path == "/events":
        refused = edge.check_stream(request)
    return refused


async def answer(response: web.StreamResponse) -> web.StreamResponse:
    """``response`` as the awaitable a request handler returns."""
    return response
