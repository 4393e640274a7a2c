"""``GET /events``: one SSE stream = replay from the inbox, then live announcements.

Order of a stream's life, and why:

1. Authenticate; refuse with 401 before anything is streamed.
2. Answer 200 and flush the headers at once: the client gives up after 10 s without
   ``onopen`` and then polls Fechatter's API forever, never retrying SSE
   (docs/web-client-contract.md#opening-within-ten-seconds-or-never-again).
3. Subscribe through the hub and wait for Redis to confirm, THEN read the inbox, THEN write
   ``connection_confirmed`` (a replay follows it). Anything published after the confirmation
   is buffered in this stream; anything before is in the inbox. The replay stops short of the
   oldest inbox entry the buffer holds (everything from there on is buffered, in publication
   order), then the buffer is written: no gap, no duplicate, even while notifications keep
   arriving, and a live-only frame (typing, presence: no inbox entry, no ``id:``) buffered
   between two entries is written between them, not after the replayed ones.
4. Live: write what the hub delivers, a comment every ``keep_alive`` seconds (that write is
   also how a vanished peer is noticed), until the client leaves, the token expires, the
   buffer overflows (slow client) or the server shuts down.

Once live, the stream is *detached* (served by :class:`gateway.edgeserver.EdgeServer`, it always
is): it becomes the connection's protocol and this handler returns, so that an open stream does
not keep a suspended handler, its task and aiohttp's request, parser and writer objects (about
half of what a stream cost). From then on the stream ends by itself (``EventStream._finish``:
the last frame, the end of the body, the connection closed) and :class:`StreamHost` does the
bookkeeping. Served another way, the handler waits for the stream's end as before.

The stream itself (buffer, writes, replay) is :class:`gateway.stream.EventStream`; the open ones
are kept in the application's :class:`gateway.registry.StreamRegistry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

from aiohttp import web
from aiohttp.http import HttpVersion11
from redis.exceptions import RedisError

from events import inbox_key
from gateway import state
from gateway.auth import AuthError, authenticate, unauthorized
from gateway.drain import draining_refusal
from gateway.edgeserver import EdgeHandler
from gateway.frames import json_frame, retry_line
from gateway.hub import HubUnavailable
from gateway.resume import final_frame
from gateway.stream import EventStream, StreamPolicy
from runtime import log_event

log = logging.getLogger(__name__)

#: Seconds a new stream waits for its live subscription before giving up.
SUBSCRIBE_TIMEOUT_S: Final = 10.0

SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # nginx and friends buffer responses unless told not to; SSE must not be buffered.
    "X-Accel-Buffering": "no",
}


class SseResponse(web.StreamResponse):
    """The ``/events`` response; once its stream is detached, aiohttp's ``write_eof()`` after
    the handler returns is not the end of the body (the stream writes that itself)."""

    detached = False

    async def write_eof(self, data: bytes = b"") -> None:
        if not self.detached:
            await super().write_eof(data)


class StreamHost:
    """The application's side of every stream: the :class:`~gateway.stream.StreamPolicy` they
    share and the bookkeeping when one ends (hub, presence, registry, metrics, admission).
    One per application, made by the first stream (kept in the registry)."""

    __slots__ = ("app", "policy")

    def __init__(self, app: web.Application) -> None:
        settings = app[state.SETTINGS]
        gateway = settings.gateway
        self.app = app
        self.policy = StreamPolicy(
            limit=gateway.stream_buffer,
            limit_bytes=gateway.limits.stream_buffer_bytes,
            metrics=app[state.METRICS],
            replay_cap=gateway.replay_max_entries,
            keep_alive=gateway.keep_alive,
            redis=app[state.REDIS],
            namespace=settings.redis.namespace,
            on_end=self.detached_ended,
        )

    @staticmethod
    def of(app: web.Application) -> StreamHost:
        registry = app[state.STREAMS]
        host = registry.host
        if not isinstance(host, StreamHost):
            host = registry.host = StreamHost(app)
        return host

    def detached_ended(self, stream: EventStream) -> None:
        """A detached stream ended (:meth:`EventStream._finish`): its connection is gone too."""
        self.ended(stream, stream.reason or "closed")
        self.app[state.EDGE].open_connections -= 1

    def ended(self, stream: EventStream, reason: str) -> None:
        """Undo what opening ``stream`` did (synchronous: safe in a cancelled handler)."""
        app = self.app
        metrics, hub = app[state.METRICS], app[state.HUB]
        stream.close(reason)
        stream.cancel_timers()
        hub.detach(stream.user_id, stream)
        metrics.connected_users.set(hub.user_count)
        if stream.member is not None:
            app[state.PRESENCE].stream_closed(stream.user_id, stream.member)
        app[state.STREAMS].discard(stream)
        app[state.EDGE].release_user(stream.user_id)
        metrics.open_streams.dec()
        metrics.disconnects.labels(reason).inc()
        log_event(log, "stream_closed", logging.DEBUG, user_id=stream.user_id, reason=reason,
                  seconds=round(time.monotonic() - stream.started, 3))


async def events(request: web.Request) -> web.StreamResponse:
    """The SSE endpoint (see the module docstring)."""
    app = request.app
    metrics = app[state.METRICS]
    if app[state.STREAMS].draining:
        raise draining_refusal()
    try:
        principal = authenticate(request, app[state.VERIFIER])
    except AuthError as exc:
        metrics.auth_failures.labels(exc.reason).inc()
        log_event(log, "auth_failed", path=request.path, reason=exc.reason, peer=request.remote or "")
        raise unauthorized(exc) from None
    edge = app[state.EDGE]
    refused = edge.admit_user(request, principal.user_id)
    if refused is not None:
        return refused
    try:
        response = await _prepare(request)
    except BaseException:
        edge.release_user(principal.user_id)
        raise
    transport = request.transport
    if transport is None:  # the client left during prepare()
        edge.release_user(principal.user_id)
        return response
    host = StreamHost.of(app)
    gateway = app[state.SETTINGS].gateway
    stream = EventStream(principal.user_id, transport, host.policy, chunked=response.chunked,
                         close_at=principal.expires_at + gateway.jwt.leeway)
    app[state.STREAMS].add(stream)
    metrics.connects.inc()
    metrics.open_streams.inc()
    if await _open(request, stream):
        response.detached = True
        return response
    reason = stream.reason or "closed"
    farewell = final_frame(reason)
    if farewell is not None:
        stream.send(farewell)
    if reason == "server_draining":
        response.force_close()  # the reconnect must open a new connection, to another gateway
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def _prepare(request: web.Request) -> SseResponse:
    """Answer 200 and flush the headers (``onopen`` fires now)."""
    response = SseResponse(headers=SSE_HEADERS)
    # Chunked on HTTP/1.1 (explicitly, because EventStream frames its own writes); an
    # HTTP/1.0 body simply runs until the connection closes.
    if request.version >= HttpVersion11:
        response.enable_chunked_encoding()
    await response.prepare(request)
    return response


async def _open(request: web.Request, stream: EventStream) -> bool:
    """Subscribe, replay, go live; True once the stream is detached (it then ends by itself),
    False once it ended here (its bookkeeping done)."""
    app = request.app
    user_id = stream.user_id
    hub, host = app[state.HUB], StreamHost.of(app)
    reason = "client_gone"
    try:
        # The first frame waits until the live subscription is confirmed, so that it means
        # "from here on, nothing is missed".
        await hub.attach(user_id, stream, SUBSCRIBE_TIMEOUT_S)
        app[state.METRICS].connected_users.set(hub.user_count)
        stream.member = app[state.PRESENCE].stream_opened(user_id)
        confirmed = retry_line() + json_frame({
            "type": "connection_confirmed",
            "user_id": user_id,
            "server_time": time.time(),
        })
        key = inbox_key(app[state.SETTINGS].redis.namespace, user_id)
        await stream.start(app[state.REDIS], app[state.HEADS], key, request.headers.get(
            "Last-Event-ID") or request.query.get("lastEventId"), confirmed)
        protocol = request.protocol
        if isinstance(protocol, EdgeHandler) and stream.reason is None and protocol.detach(stream):
            return True
        await stream.run()
        reason = stream.reason or "closed"
    except HubUnavailable:
        reason = "redis_unavailable"
    except RedisError as exc:
        reason = "redis_error"
        log_event(log, "stream_redis_error", logging.WARNING, user_id=user_id, error=exc)
    except ConnectionResetError:
        reason = stream.reason or "client_gone"
    except asyncio.CancelledError:
        # handler_cancellation: the peer went away (or we aborted a slow client).
        reason = stream.reason or "client_gone"
        host.ended(stream, reason)
        raise
    host.ended(stream, reason)
    return False
