"""The registry of this process's open streams: an application resource (``state.STREAMS``).

Used by the ``GET /events`` handler (:mod:`gateway.events_handler`: each stream is added while it
is open), the drain at SIGTERM (:mod:`gateway.drain`), ``/readyz`` and the shutdown.

It is also every stream's keep-alive timer: the streams sit in :data:`SLOTS` sets, and one
timer of the whole process visits one set every ``keep_alive / SLOTS`` seconds, so each stream
gets its :meth:`~gateway.stream.EventStream.tick` once per ``keep_alive``. One timer per stream
(a ``TimerHandle`` and its libuv timer, re-armed every interval) cost ~1 KB and a callback
per stream; this costs a set entry, and the comments of a 50,000-stream process go out in
batches of 2,500 a second instead of all at once. With no stream open the timer stops.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from gateway.stream import EventStream

#: Keep-alive slots: a stream's first comment comes one interval (plus at most a slot's
#: length) after it opened.
SLOTS: Final = 20


class StreamRegistry:
    """The open streams of this process (for shutdown, the open-streams gauge, the keep-alive)."""

    def __init__(self) -> None:
        self._slots: list[set[EventStream]] = [set() for _ in range(SLOTS)]
        self._count = 0
        #: The slot the ticker visits next.
        self._cursor = 0
        self._timer: asyncio.TimerHandle | None = None
        self._next_at = 0.0
        #: Set at SIGTERM (gateway/drain.py): no new stream is opened from then on.
        self.draining = False
        #: What the streams share (gateway/events_handler.py's StreamHost), made by the first.
        self.host: object | None = None

    def __len__(self) -> int:
        return self._count

    def add(self, stream: EventStream) -> None:
        """Register ``stream``; its first keep-alive tick is one ``keep_alive`` from now."""
        if stream.slot >= 0:
            return
        # The slot just visited: the ticker comes back to it after a full round.
        slot = (self._cursor - 1) % SLOTS
        self._slots[slot].add(stream)
        stream.slot = slot
        self._count += 1
        stream.arm_expiry(time.time())
        if self._timer is None:
            self._start(stream.policy.keep_alive)

    def discard(self, stream: EventStream) -> None:
        slot = stream.slot
        if slot < 0:
            return
        self._slots[slot].discard(stream)
        stream.slot = -1
        self._count -= 1
        if not self._count and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def snapshot(self) -> tuple[EventStream, ...]:
        """The streams open now."""
        return tuple(stream for slot in self._slots for stream in slot)

    def close_all(self, reason: str) -> None:
        """Ask every stream to end (gracefully: the response is finished)."""
        for stream in self.snapshot():
            stream.close(reason)

    # ------------------------------------------------------------------ the keep-alive ticker

    def _start(self, keep_alive: float) -> None:
        loop = asyncio.get_running_loop()
        step = keep_alive / SLOTS
        self._next_at = loop.time() + step
        self._timer = loop.call_at(self._next_at, self._tick, step)

    def _tick(self, step: float) -> None:
        """Visit one slot, and come back in ``step`` seconds (drift-free: from the schedule)."""
        loop = asyncio.get_running_loop()
        self._next_at = max(self._next_at + step, loop.time())
        self._timer = loop.call_at(self._next_at, self._tick, step)
        cursor = self._cursor
        self._cursor = (cursor + 1) % SLOTS
        now = time.time()
        # A copy: a tick may close a stream, and a closed one may be discarded meanwhile.
        for stream in tuple(self._slots[cursor]):
            stream.tick(now)
