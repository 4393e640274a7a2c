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
from gateway.frames import json_frame, retry_line
from gateway.hub import HubUnavailable
from gateway.resume import final_frame
from gateway.stream import EventStream
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
    refused = app[state.EDGE].admit_user(request, principal.user_id)
    if refused is not None:
        return refused
    settings = app[state.SETTINGS]
    gateway = settings.gateway
    redis, hub, presence = app[state.REDIS], app[state.HUB], app[state.PRESENCE]
    last_event_id = request.headers.get("Last-Event-ID") or request.query.get("lastEventId")

    response = web.StreamResponse(headers=SSE_HEADERS)
    # Chunked on HTTP/1.1 (explicitly, because EventStream frames its own writes); an
    # HTTP/1.0 body simply runs until the connection closes.
    chunked = request.version >= HttpVersion11
    if chunked:
        response.enable_chunked_encoding()
    await response.prepare(request)
    transport = request.transport
    if transport is None:  # the client left during prepare()
        return response
    stream = EventStream(
        principal.user_id,
        transport,
        chunked=chunked,
        limit=gateway.stream_buffer,
        limit_bytes=gateway.limits.stream_buffer_bytes,
        metrics=metrics,
        replay_cap=gateway.replay_max_entries,
    )
    registry = app[state.STREAMS]
    registry.add(stream)
    metrics.connects.inc()
    metrics.open_streams.inc()
    started = time.monotonic()
    member: str | None = None
    reason = "client_gone"
    key = inbox_key(settings.redis.namespace, principal.user_id)
    try:
        # prepare() has flushed the headers (onopen fires now); the first frame waits until
        # the live subscription is confirmed, so that it means "from here on, nothing is missed".
        stream.schedule(gateway.keep_alive, principal.expires_at + gateway.jwt.leeway)
        await hub.attach(principal.user_id, stream, SUBSCRIBE_TIMEOUT_S)
        metrics.connected_users.set(hub.user_count)
        member = presence.stream_opened(principal.user_id)
        confirmed = retry_line() + json_frame({
            "type": "connection_confirmed",
            "user_id": principal.user_id,
            "server_time": time.time(),
        })
        await stream.start(redis, app[state.HEADS], key, last_event_id, confirmed)
        await stream.run(redis, key)
        reason = stream.reason or "closed"
    except HubUnavailable:
        reason = "redis_unavailable"
    except RedisError as exc:
        reason = "redis_error"
        log_event(log, "stream_redis_error", logging.WARNING, user_id=principal.user_id, error=exc)
    except ConnectionResetError:
        reason = stream.reason or "client_gone"
    except asyncio.CancelledError:
        # handler_cancellation: the peer went away (or we aborted a slow client).
        reason = stream.reason or "client_gone"
        raise
    finally:
        stream.close(reason)
        stream.cancel_timers()
        hub.detach(principal.user_id, stream)
        metrics.connected_users.set(hub.user_count)
        if member is not None:
            presence.stream_closed(principal.user_id, member)
        registry.discard(stream)
        metrics.open_streams.dec()
        metrics.disconnects.labels(reason).inc()
        log_event(log, "stream_closed", logging.DEBUG, user_id=principal.user_id, reason=reason,
                  seconds=round(time.monotonic() - started, 3))
    farewell = final_frame(reason)
    if farewell is not None:
        stream.send(farewell)
    if reason == "server_draining":
        response.force_close()  # the reconnect must open a new connection, to another gateway
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response
