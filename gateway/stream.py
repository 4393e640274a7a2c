"""The SSE stream object: one open ``GET /events`` response (:class:`EventStream`).

The request handler that opens, runs and closes it is :mod:`gateway.events_handler` (the order of a
stream's life is described there); the registry of open streams is :mod:`gateway.registry`.

Live frames are written synchronously to the socket's transport, once per stream per socket
read of the hub (which coalesces that read's frames), not by a task per stream: waking 10,000
tasks per burst costs more than the writes themselves. A client whose unsent bytes exceed
:data:`WRITE_HIGH_WATER` is "behind": its frames wait in the stream's bounded buffer, and when
that overflows the stream is closed.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.frames import KEEP_ALIVE, ZERO_ID, StreamId, data_frame, parse_stream_id
from gateway.heads import InboxHeads
from gateway.hub import Announcement
from gateway.limits import QuietLog
from gateway.metrics import GatewayMetrics
from gateway.replay import Entries, InboxBounds, inbox_bounds, read_entries, ticket
from gateway.resume import INVALID_ID, TOO_FAR_BEHIND, resume_point, resync_frame
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


class EventStream:
    """One open ``/events`` response: a bounded buffer between the hub and the socket.

    Implements :class:`gateway.hub.Subscriber`. ``floor`` is the highest id known to be in the
    client's hands or already replayed: announcements at or below it are duplicates.
    ``position`` is the highest id written with an ``id:`` line. While ``holding`` (until the
    first frame, and during a replay) deliveries are only buffered. Live-only announcements
    (``entry_id`` None) move neither: they are never duplicates of an inbox entry, and are
    written without ``id:``.
    """

    __slots__ = (
        "_handles",
        "_loop",
        "_signal",
        "_stalled",
        "chunked",
        "floor",
        "flush_scheduled",
        "holding",
        "limit",
        "limit_bytes",
        "metrics",
        "needs_catch_up",
        "pending",
        "pending_bytes",
        "position",
        "reason",
        "replay_cap",
        "since",
        "transport",
        "user_id",
    )

    def __init__(
        self,
        user_id: int,
        transport: asyncio.Transport,
        *,
        chunked: bool,
        limit: int,
        metrics: GatewayMetrics,
        limit_bytes: int = 0,
        replay_cap: int = 1000,
    ) -> None:
        self.user_id = user_id
        #: Most entries one catch-up replays; a client further behind is asked to resync.
        self.replay_cap = replay_cap
        #: When this stream started hearing announcements (gateway/replay.py: which in-flight
        #: inbox reads it may share). Constructed right before the hub registers it, with no
        #: await in between.
        self.since = ticket()
        self.transport = transport
        #: The response uses chunked transfer encoding (HTTP/1.1): frame each write.
        self.chunked = chunked
        self.limit = limit
        #: Bytes of frames buffered before the client is dropped (0: no bound). One compare on
        #: the hot path, so "no bound" is the largest int, not a second test.
        self.limit_bytes = limit_bytes or sys.maxsize
        self.metrics = metrics
        self.pending: list[Announcement] = []
        self.pending_bytes = 0
        self.floor = ZERO_ID
        self.position = ZERO_ID
        self.reason: str | None = None
        self.holding = True
        self.flush_scheduled = False
        self.needs_catch_up = False
        self._loop = asyncio.get_running_loop()
        self._signal: asyncio.Future[None] | None = None
        self._handles: list[asyncio.TimerHandle] = []
        self._stalled = 0

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
        if len(self.pending) > self.limit or self.pending_bytes > self.limit_bytes:
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
        self.needs_catch_up = True
        self.since = ticket()  # hearing again since the resubscription, not since before the loss
        self._notify()

    # ------------------------------------------------------------------ control

    def close(self, reason: str) -> None:
        """End the stream with ``reason`` (the first reason wins)."""
        if self.reason is None:
            self.reason = reason
            self.pending.clear()
            self.pending_bytes = 0
            self._notify()

    def schedule(self, keep_alive: float, close_at: float) -> None:
        """Start the keep-alive timer and the token-expiry close (``close_at``: Unix seconds)."""
        self._handles.append(self._loop.call_later(keep_alive, self._tick, keep_alive))
        delay = max(0.0, close_at - time.time())
        self._handles.append(self._loop.call_later(delay, self.close, "token_expired"))

    def cancel_timers(self) -> None:
        for handle in self._handles:
            handle.cancel()
        self._handles.clear()

    def _tick(self, keep_alive: float) -> None:
        if self._handles:
            self._handles[0] = self._loop.call_later(keep_alive, self._tick, keep_alive)
        if self.reason is not None or self.holding:
            return
        if not self._behind():
            self._stalled = 0
            self.send(KEEP_ALIVE)
            return
        self._stalled += 1
        if self._stalled >= STALLED_TICKS:
            self._drop_slow_client()

    def _drop_slow_client(self) -> None:
        buffered_bytes = self.pending_bytes + self.transport.get_write_buffer_size()
        buffered_frames = len(self.pending)
        self.metrics.slow_clients_dropped.inc()
        self.metrics.frames_dropped.labels("slow_client").inc(buffered_frames)
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
            # aiohttp announced chunked encoding and writes the final 0-chunk at write_eof().
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
            self._loop.call_later(BEHIND_RETRY_S, self.flush)
            return
        batch, self.pending = self.pending, []
        self.pending_bytes = 0
        frames = [self._frame(announcement) for announcement in batch]
        self.send(frames[0] if len(frames) == 1 else b"".join(frames))
        self.metrics.count_frames(len(frames))

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
        cap = self.replay_cap
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
            self.metrics.frames_replayed.inc(len(frames))
            self.metrics.count_frames(len(frames))
        return len(frames)

    def _resync(self, reason: str, bounds: InboxBounds, last_event_id: str) -> int:
        """Tell the client to refetch instead of replaying; go on live after the newest entry."""
        self.metrics.resyncs.inc()
        self.metrics.resyncs_by_reason.labels(reason).inc()
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

    async def run(self, redis: Redis, key: str) -> None:
        """Wait until the stream ends; meanwhile, catch up whenever the hub asks to."""
        while self.reason is None:
            if self.needs_catch_up:
                self.holding = True
                try:
                    await self.catch_up(redis, key, self.position, trusted=True)
                except RedisError as exc:
                    # Keep holding live frames (delivering them would move past the missed
                    # ones) and try again; the buffer bound still applies meanwhile.
                    log_event(log, "catch_up_failed", logging.WARNING, user_id=self.user_id,
                              error=exc)
                    await self._wait(CATCH_UP_RETRY_S)
                    continue
                self.needs_catch_up = False
                self.release()
                continue
            await self._wait(None)

    async def _wait(self, seconds: float | None) -> None:
        """Until close() or resync() (or ``seconds`` pass)."""
        self._signal = signal = self._loop.create_future()
        handle = self._loop.call_later(seconds, self._notify) if seconds is not None else None
        try:
            await signal
        finally:
            if handle is not None:
                handle.cancel()
            self._signal = None
