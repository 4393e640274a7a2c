"""The SSE stream object: one open ``GET /events`` response (:class:`EventStream`).

The request handler that opens, runs and closes it is :mod:`gateway.events_handler` (the order of a
stream's life is described there); the registry of open streams is :mod:`gateway.registry`.

Live frames are written synchronously to the socket's transport, once per stream per socket
read of the hub (which coalesces that read's frames), not by a task per stream: waking 10,000
tasks per burst costs more than the writes themselves. A client whose unsent bytes exceed
:data:`WRITE_HIGH_WATER` is "behind": its frames wait in the stream's bounded buffer, and when
that overflows the stream is closed.

An open stream costs about 3 KB of the gateway's memory (bench/gateway.py, after a GC, net of the
idle process; it was ~17 KB): once live it is *detached* from aiohttp and is its connection's
protocol (:meth:`EventStream.detach`), with no task, future or timer of its own. What it shares
with every other stream of the application is one :class:`StreamPolicy`; its keep-alive comes
from the registry's one ticker (gateway/registry.py), and its token-expiry close gets a timer
only in its last keep-alive interval.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections.abc import Callable
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from events import inbox_key
from gateway.frames import KEEP_ALIVE, ZERO_ID, StreamId, data_frame, parse_stream_id
from gateway.heads import InboxHeads
from gateway.hub import Announcement
from gateway.limits import QuietLog
from gateway.metrics import GatewayMetrics
from gateway.replay import Entries, InboxBounds, inbox_bounds, read_entries, ticket
from gateway.resume import INVALID_ID, TOO_FAR_BEHIND, final_frame, resume_point, resync_frame
from runtime import log_event

log = logging.getLogger(__name__)
#: Slow-client drops are logged, but a wave of them (a network blip) not line by line.
_drops_log = QuietLog(log)

#: Seconds between attempts to read missed entries while Redis is unreachable.
CATCH_UP_RETRY_S: Final = 1.0
#: Unsent bytes (in the transport) above which a client counts as behind.
WRITE_HIGH_WATER: Final = 64 * 1024
#: How often a stream that is behind checks whether its client caught up, in seconds.
BEHIND_RETRY_S: Final = 0.05
#: Keep-alive ticks in a row a client may stay behind before it is dropped: a peer that
#: vanished without a FIN never reads again, and TCP alone would take ~15 minutes to notice.
STALLED_TICKS: Final = 3
#: A token-expiry close gets a timer of its own once it is due within this many keep-alive
#: intervals (the registry's ticker visits each stream once per interval, give or take a slot).
EXPIRY_HORIZON: Final = 1.5
#: The end of a chunked body.
LAST_CHUNK: Final = b"0\r\n\r\n"

#: Catch-up tasks of detached streams (the loop holds tasks only weakly).
_catching_up: set[asyncio.Task[None]] = set()


class StreamPolicy:
    """What every stream of one application shares: its limits, its metrics, the keep-alive
    interval, and who is told when a stream ends (one object per application, so that a stream
    carries one reference instead of a copy of each)."""

    __slots__ = ("keep_alive", "limit", "limit_bytes", "metrics", "namespace", "on_end", "redis",
                 "replay_cap")

    def __init__(
        self,
        *,
        limit: int,
        metrics: GatewayMetrics,
        limit_bytes: int = 0,
        replay_cap: int = 1000,
        keep_alive: float = 20.0,
        redis: Redis | None = None,
        namespace: str = "",
        on_end: Callable[[EventStream], None] | None = None,
    ) -> None:
        #: Where a catch-up reads the inbox (``inbox_key(namespace, user_id)``).
        self.redis = redis
        self.namespace = namespace
        self.limit = limit
        #: Bytes of frames buffered before the client is dropped (0: no bound). One compare on
        #: the hot path, so "no bound" is the largest int, not a second test.
        self.limit_bytes = limit_bytes or sys.maxsize
        #: Most entries one catch-up replays; a client further behind is asked to resync.
        self.replay_cap = replay_cap
        self.metrics = metrics
        self.keep_alive = keep_alive
        #: Called once per stream, after it ended (the handler's bookkeeping: hub, presence...).
        self.on_end = on_end


class EventStream(asyncio.Protocol):
    """One open ``/events`` response: a bounded buffer between the hub and the socket.

    Implements :class:`gateway.hub.Subscriber`. ``floor`` is the highest id known to be in the
    client's hands or already replayed: announcements at or below it are duplicates.
    ``position`` is the highest id written with an ``id:`` line. While ``holding`` (until the
    first frame, and during a replay) deliveries are only buffered. Live-only announcements
    (``entry_id`` None) move neither: they are never duplicates of an inbox entry, and are
    written without ``id:``.

    Once live, a stream is *detached* (:meth:`detach`): it becomes the connection's protocol,
    and the request handler, its task and aiohttp's request objects are gone; what is left of a
    stream is this object and its transport. Its keep-alive is driven by the registry's ticker
    (:meth:`tick`), a catch-up after a hub reconnect runs in a task of its own, and
    :meth:`close` ends it (:meth:`_finish`: the last frame, the end of the body, the connection
    closed, :attr:`StreamPolicy.on_end`).
    """

    __slots__ = (
        "_signal",
        "_stalled",
        "chunked",
        "close_at",
        "detached",
        "expiry",
        "floor",
        "flush_scheduled",
        "holding",
        "member",
        "needs_catch_up",
        "pending",
        "pending_bytes",
        "policy",
        "position",
        "reason",
        "since",
        "slot",
        "started",
        "transport",
        "user_id",
    )

    def __init__(
        self,
        user_id: int,
        transport: asyncio.Transport,
        policy: StreamPolicy,
        *,
        chunked: bool,
        close_at: float = math.inf,
    ) -> None:
        self.user_id = user_id
        #: When this stream started hearing announcements (gateway/replay.py: which in-flight
        #: inbox reads it may share). Constructed right before the hub registers it, with no
        #: await in between.
        self.since = ticket()
        self.transport = transport
        self.policy = policy
        #: The response uses chunked transfer encoding (HTTP/1.1): frame each write.
        self.chunked = chunked
        #: Unix time at which the stream ends (its token expires).
        self.close_at = close_at
        self.pending: list[Announcement] = []
        self.pending_bytes = 0
        self.floor = ZERO_ID
        self.position = ZERO_ID
        self.reason: str | None = None
        self.holding = True
        self.flush_scheduled = False
        self.needs_catch_up = False
        self.detached = False
        #: The registry's keep-alive slot (gateway/registry.py), -1 while not registered.
        self.slot = -1
        #: The exact close at ``close_at``, armed once it is less than a keep-alive away.
        self.expiry: asyncio.TimerHandle | None = None
        #: The presence member id (gateway/presence.py), once counted as present.
        self.member: str | None = None
        self.started = time.monotonic()
        self._signal: asyncio.Future[None] | None = None
        self._stalled = 0

    @property
    def metrics(self) -> GatewayMetrics:
        return self.policy.metrics

    # ------------------------------------------------------------------ called by the hub

    def deliver(self, announcement: Announcement) -> bool:
        """Buffer one announcement; True when the hub should :meth:`flush` this stream.

        Closes the stream when its buffer overflows.
        """
        if self.reason is not None:
            return False
        entry_id = announcement.entry_id
        if entry_id is not None and entry_id <= self.floor:
            return False
        self.pending.append(announcement)
        self.pending_bytes += len(announcement.frame)
        policy = self.policy
        if len(self.pending) > policy.limit or self.pending_bytes > policy.limit_bytes:
            if not self.holding and not self._behind():
                self.flush()  # a burst for one user, not a slow client: write it now
                return False
            self._drop_slow_client()
            return False
        if self.flush_scheduled or self.holding:
            return False
        self.flush_scheduled = True
        return True

    def resync(self) -> None:
        """The hub lost announcements: read the inbox again from ``position``."""
        running = self.needs_catch_up  # a catch-up is under way: it reads again (the flag)
        self.needs_catch_up = True
        self.since = ticket()  # hearing again since the resubscription, not since before the loss
        if self.detached and self.reason is None and not running:
            # No handler waits for this stream any more: the catch-up gets a task of its own,
            # for as long as it takes (tasks are only weakly held by the loop, hence the set).
            task = asyncio.ensure_future(self._catch_up_until_done())
            _catching_up.add(task)
            task.add_done_callback(_catching_up.discard)
        self._notify()

    # ------------------------------------------------------------------ control

    def close(self, reason: str) -> None:
        """End the stream with ``reason`` (the first reason wins).

        A detached stream ends in a callback of its own (:meth:`_finish`), not here: close()
        is called from inside the hub's fan-out, which must not see its subscribers change.
        """
        if self.reason is None:
            self.reason = reason
            self.pending.clear()
            self.pending_bytes = 0
            self._notify()
            if self.detached:
                asyncio.get_running_loop().call_soon(self._finish)

    def tick(self, wall_clock: float) -> None:
        """The keep-alive (called by the registry's ticker every ``keep_alive`` seconds): a
        comment, or one more tick behind; and the token-expiry close armed once it is due
        before the next tick."""
        if self.reason is not None:
            return
        self.arm_expiry(wall_clock)
        if self.holding:
            return
        if not self._behind():
            self._stalled = 0
            self.send(KEEP_ALIVE)
            return
        self._stalled += 1
        if self._stalled >= STALLED_TICKS:
            self._drop_slow_client()

    def arm_expiry(self, wall_clock: float) -> None:
        """Arm the exact close at ``close_at`` when it comes before the next keep-alive tick
        (plus a margin): only streams about to expire hold a timer of their own."""
        if self.expiry is None and self.close_at - wall_clock < self.policy.keep_alive * EXPIRY_HORIZON:
            self.expiry = asyncio.get_running_loop().call_later(
                max(0.0, self.close_at - wall_clock), self.close, "token_expired")

    def cancel_timers(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None

    def _drop_slow_client(self) -> None:
        buffered_bytes = self.pending_bytes + self.transport.get_write_buffer_size()
        buffered_frames = len(self.pending)
        metrics = self.policy.metrics
        metrics.slow_clients_dropped.inc()
        metrics.frames_dropped.labels("slow_client").inc(buffered_frames)
        self.close("slow_client")
        _drops_log.event("stream_dropped", reason="slow_client", user=self.user_id,
                         buffered_bytes=buffered_bytes, buffered_frames=buffered_frames)
        # The client does not read: abort rather than wait for its buffers to drain. It
        # resumes with Last-Event-ID.
        self.transport.abort()

    def _notify(self) -> None:
        signal = self._signal
        if signal is not None and not signal.done():
            signal.set_result(None)

    # ------------------------------------------------------------------ writing (never blocks)

    def send(self, data: bytes) -> None:
        """Write ``data`` to the socket now (the transport buffers what the kernel won't take)."""
        transport = self.transport
        if transport.is_closing():
            self.close("client_gone")
            return
        if self.chunked:
            # aiohttp announced chunked encoding; the final 0-chunk is written at the end
            # (aiohttp's write_eof(), or _finish() once detached).
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            transport.write(data)

    def _behind(self) -> bool:
        return self.transport.get_write_buffer_size() > WRITE_HIGH_WATER

    def flush(self) -> None:
        """Write every buffered frame in one go (unless holding, or the client is behind)."""
        self.flush_scheduled = False
        if self.reason is not None or self.holding or not self.pending:
            return
        if self._behind():
            self.flush_scheduled = True
            asyncio.get_running_loop().call_later(BEHIND_RETRY_S, self.flush)
            return
        batch, self.pending = self.pending, []
        self.pending_bytes = 0
        frames = [self._frame(announcement) for announcement in batch]
        self.send(frames[0] if len(frames) == 1 else b"".join(frames))
        self.policy.metrics.count_frames(len(frames))

    def _frame(self, announcement: Announcement) -> bytes:
        entry_id = announcement.entry_id
        if entry_id is None:
            return announcement.frame  # live only: no ``id:``, the browser's last id stays
        if entry_id > self.position:
            self.position = entry_id
            return announcement.frame
        # Two workers published out of order: send it without ``id:`` so the browser's
        # Last-Event-ID stays at the highest id it has.
        return data_frame(announcement.data)

    def release(self) -> None:
        """End holding: write what was buffered meanwhile, and go live."""
        self.holding = False
        self.flush()

    # ------------------------------------------------------------------ detached: the protocol

    def detach(self) -> None:
        """From now on this stream is the connection's protocol, and ends by itself: the
        caller (gateway/edgeserver.py) has taken the transport from aiohttp's handler."""
        self.detached = True
        self.transport.set_protocol(self)
        if self.reason is not None:  # closed while being detached
            asyncio.get_running_loop().call_soon(self._finish)

    def data_received(self, data: bytes) -> None:
        """A client does not talk on an event stream (a pipelined request goes unanswered,
        as it would have before)."""

    def eof_received(self) -> bool | None:
        return None  # the client closed its side: close ours (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close("client_gone")

    def _finish(self) -> None:
        """A detached stream's end: the farewell frame, the end of the body, the connection
        closed (a client reconnects on a new one, as after a drain), then the bookkeeping."""
        if not self.detached:
            return
        self.detached = False  # once
        self.cancel_timers()
        transport = self.transport
        if not transport.is_closing():
            farewell = final_frame(self.reason or "closed")
            if farewell is not None:
                self.send(farewell)
            if self.chunked:
                transport.write(LAST_CHUNK)
            transport.close()  # after the buffered bytes are written
        if self.policy.on_end is not None:
            self.policy.on_end(self)

    # ------------------------------------------------------------------ replay

    async def start(
        self, redis: Redis, heads: InboxHeads, key: str, last_event_id: str | None, confirmed: bytes
    ) -> None:
        """Write the ``confirmed`` first frame, then replay after Last-Event-ID if there is one.

        Without a Last-Event-ID the stream starts after the inbox's newest entry, read BEFORE
        the first frame goes out: whatever is published once the client holds that frame is
        newer, so it is delivered. A Last-Event-ID that is not an entry id (``abc``, a part
        beyond 2^64-1) gets ``resync_required`` and the live stream, never an error: the
        browser would resend the same id forever (gateway/resume.py).
        """
        resume = resume_point(last_event_id)
        if resume.after is not None:
            self.send(confirmed)
            await self.catch_up(redis, key, resume.after, trusted=False)
        elif resume.invalid:
            # Not an id we ever sent: we cannot know what the client missed.
            bounds = await inbox_bounds(redis, key, since=self.since)
            self.send(confirmed)
            self._resync(INVALID_ID, bounds, last_event_id or "")
        else:
            self._advance(await heads.newest(key))
            self.send(confirmed)
        self.release()

    async def catch_up(self, redis: Redis, key: str, after: StreamId, *, trusted: bool) -> int:
        """Replay inbox entries after ``after`` and move ``floor`` past them.

        ``trusted`` marks a position this gateway chose itself (not a client's Last-Event-ID):
        an empty-inbox start needs no staleness check. Returns the entries replayed; writes a
        ``resync_required`` frame instead when entries after ``after`` may have been trimmed,
        or when more than ``replay_cap`` of them would have to be replayed.

        One XRANGE of ``replay_cap + 2`` entries (``after`` itself, the cap, one more to tell
        "too far behind"), shared with concurrent identical reads (gateway/replay.py).
        """
        cap = self.policy.replay_cap
        entries = await read_entries(redis, key, str(after), cap + 2, since=self.since)
        if entries and parse_stream_id(entries[0][0]) == after:
            entries = entries[1:]  # ``after`` itself is still kept: nothing after it was trimmed
        elif not (trusted and after == ZERO_ID):
            bounds = await inbox_bounds(redis, key, since=self.since)
            loss = bounds.loss(after)
            if loss is not None:
                return self._resync(loss, bounds, str(after))
        if not trusted:
            self._advance(after)  # the client has everything up to its Last-Event-ID
        # Entries from the oldest buffered one on are written from the buffer, not replayed.
        entries, _ = self._before_buffered(entries)
        if len(entries) > cap:
            bounds = await inbox_bounds(redis, key, since=self.since)
            return self._resync(TOO_FAR_BEHIND, bounds, str(after))
        frames = [data_frame(data, raw_id) for raw_id, data in entries if data is not None]
        if entries:
            self._advance(parse_stream_id(entries[-1][0]))
        if frames:
            self.send(b"".join(frames))
            self.policy.metrics.frames_replayed.inc(len(frames))
            self.policy.metrics.count_frames(len(frames))
        return len(frames)

    def _resync(self, reason: str, bounds: InboxBounds, last_event_id: str) -> int:
        """Tell the client to refetch instead of replaying; go on live after the newest entry."""
        self.policy.metrics.resyncs.inc()
        self.policy.metrics.resyncs_by_reason.labels(reason).inc()
        log_event(log, "resync_required", user_id=self.user_id, reason=reason,
                  last_event_id=last_event_id[:48])
        self._advance(bounds.newest)
        self.send(resync_frame(reason, bounds))
        return 0

    def _before_buffered(self, entries: Entries) -> tuple[Entries, bool]:
        """The replay page's entries older than the oldest inbox entry already buffered, and
        whether the buffer takes over from there.

        Every entry from that one on was announced after this stream subscribed, so the buffer
        holds all of them, in publication order, with the live-only frames published between
        them in place. Replaying them from the inbox instead would write those live-only frames
        after entries that were published later.
        """
        buffered = [a.entry_id for a in self.pending if a.entry_id is not None]
        if not buffered:
            return entries, False
        oldest = min(buffered)
        kept = [entry for entry in entries if parse_stream_id(entry[0]) < oldest]
        return kept, len(kept) < len(entries)

    def _advance(self, entry_id: StreamId) -> None:
        """Everything up to ``entry_id`` is in the client's hands: drop buffered duplicates."""
        if entry_id > self.floor:
            self.floor = entry_id
        if self.floor > self.position:
            self.position = self.floor
        if self.pending:
            # Live-only frames are kept: nothing in the inbox stands for them.
            floor = self.floor
            self.pending = [a for a in self.pending if a.entry_id is None or a.entry_id > floor]
            self.pending_bytes = sum(len(a.frame) for a in self.pending)

    async def run(self) -> None:
        """Wait until the stream ends; meanwhile, catch up whenever the hub asks to (for a
        stream that cannot be detached: its handler waits here)."""
        while self.reason is None:
            if self.needs_catch_up:
                await self._catch_up_until_done()
                continue
            await self._wait(None)

    async def _catch_up_until_done(self) -> None:
        """Replay what the hub lost (:meth:`resync`), retrying while Redis is unreachable."""
        redis, key = self.policy.redis, inbox_key(self.policy.namespace, self.user_id)
        if redis is None:
            raise RuntimeError("a stream without Redis cannot catch up")
        while self.needs_catch_up and self.reason is None:
            self.holding = True
            wanted = self.since
            try:
                await self.catch_up(redis, key, self.position, trusted=True)
            except RedisError as exc:
                # Keep holding live frames (delivering them would move past the missed
                # ones) and try again; the buffer bound still applies meanwhile.
                log_event(log, "catch_up_failed", logging.WARNING, user_id=self.user_id,
                          error=exc)
                await self._wait(CATCH_UP_RETRY_S)
                continue
            if self.since != wanted:
                continue  # resync() again meanwhile: what it lost may be after this read
            self.needs_catch_up = False
            self.release()

    async def _wait(self, seconds: float | None) -> None:
        """Until close() or resync() (or ``seconds`` pass)."""
        loop = asyncio.get_running_loop()
        self._signal = signal = loop.create_future()
        handle = loop.call_later(seconds, self._notify) if seconds is not None else None
        try:
            await signal
        finally:
            if handle is not None:
                handle.cancel()
            self._signal = None
