"""Reading a user's inbox for a stream: the entries after an id, and what the inbox still holds.

The inbox is capped (``MAXLEN ~``), so an id a client resumes from may be older than what is
kept; then entries after it may be gone and the client must resync instead of trusting a
replay.

Both reads are single-flight per process: after a gateway restart every browser of a user
reconnects with the same Last-Event-ID within a second or two, and identical concurrent
reads share one Redis command instead of reading the same inbox once per stream.

A stream may only share a read that began after it was registered for live announcements
(``since``, a :func:`ticket` taken then): an older read may have been answered before the
stream could hear about newer entries, and an entry in neither the read nor the stream's
buffer would be lost. Streams released by one subscription confirmation (a reconnect storm)
all registered before the first of them starts reading, so they still share one read.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from events import INBOX_FIELD
from gateway.frames import ZERO_ID, StreamId, parse_stream_id

_FIELD: Final = INBOX_FIELD.encode()

#: ``(entry id, notification JSON or None)`` pairs, oldest first.
Entries = list[tuple[bytes, bytes | None]]

T = TypeVar("T")

_tickets = itertools.count(1)

#: Reads in flight in this process, by what they read (the Redis client is part of the key:
#: tests run several gateways in one process), with the ticket taken when each began.
_in_flight: dict[Hashable, tuple[int, asyncio.Task[Any]]] = {}


def ticket() -> int:
    """A number larger than every ticket taken before (orders registrations and reads)."""
    return next(_tickets)


async def _single_flight(key: Hashable, since: int, read: Callable[[], Awaitable[T]]) -> T:
    """Share an identical read that began after ``since``, else run ``read`` (and let later
    callers share it).

    The shared task is shielded: a stream whose client leaves while waiting cancels only its
    own wait, never the read the other streams wait for.
    """
    found = _in_flight.get(key)
    if found is not None and found[0] > since:
        task = found[1]
    else:
        task = asyncio.ensure_future(read())
        _in_flight[key] = (ticket(), task)

        def forget(done: asyncio.Task[Any]) -> None:
            current = _in_flight.get(key)
            if current is not None and current[1] is done:
                del _in_flight[key]
            # Every waiter may have left before the read failed (a cancelled shield drops its
            # callback on the task): the failure was theirs to see, and no one else's; without
            # this, asyncio logs "Task exception was never retrieved" at ERROR for each such read.
            if not done.cancelled():
                done.exception()

        task.add_done_callback(forget)
    return cast(T, await asyncio.shield(task))


async def read_entries(redis: Redis, key: str, start: str, count: int, *, since: int) -> Entries:
    """Up to ``count`` inbox entries from ``start`` on (a ``(`` prefix makes it exclusive), for
    a stream registered at ticket ``since``."""

    async def read() -> Entries:
        raw = cast(list[Any], await redis.xrange(key, min=start, max="+", count=count) or [])
        return [(bytes(entry_id), fields.get(_FIELD) if fields else None) for entry_id, fields in raw]

    return await _single_flight(("xrange", id(redis), key, start, count), since, read)


@dataclass(frozen=True, slots=True)
class InboxBounds:
    """What an inbox holds: its ``oldest`` kept entry (None: empty or gone) and its ``newest``
    id ever generated (ZERO_ID when the inbox does not exist)."""

    oldest: StreamId | None
    newest: StreamId

    def loss(self, after: StreamId) -> str | None:
        """Why the entries after ``after`` cannot be replayed in full, or None when they can.

        Trimming removes the oldest entries, so nothing after ``after`` is lost when ``after``
        lies within the retained range. An id before the oldest retained entry came either from
        entries trimmed since, or from an earlier inbox of the user that expired; either way what
        followed it may be gone: ``"trimmed"`` (a needless resync costs a refetch; a missed gap
        costs a lost message). Redis 7's ``entries-added`` cannot clear it: it counts only the
        current inbox's entries, and its ``max-deleted-entry-id`` ignores trimming. An id beyond
        the newest one belongs to another history: ``"unknown_id"``. With no inbox at all (it
        expired) any id but ``0-0`` lost what followed it: ``"trimmed"``.
        """
        if self.oldest is None and self.newest == ZERO_ID:
            return None if after == ZERO_ID else "trimmed"
        if after > self.newest:
            return "unknown_id"
        if after == self.newest:
            return None
        if self.oldest is None or after < self.oldest:
            return "trimmed"
        return None


async def inbox_bounds(redis: Redis, key: str, *, since: int) -> InboxBounds:
    """The inbox's oldest kept and newest generated ids (one ``XINFO STREAM``, single-flight
    like :func:`read_entries`)."""

    async def read() -> InboxBounds:
        try:
            info: dict[Any, Any] = await redis.xinfo_stream(key)
        except ResponseError:  # no such key: the whole inbox expired or was never written
            return InboxBounds(None, ZERO_ID)
        first = _field(info, "first-entry")
        oldest = parse_stream_id(first[0]) if first else None
        return InboxBounds(oldest, parse_stream_id(_field(info, "last-generated-id")))

    return await _single_flight(("xinfo", id(redis), key), since, read)


def _field(info: dict[Any, Any], name: str) -> Any:
    # redis-py returns str keys for XINFO; be tolerant of bytes should that change.
    return info.get(name, info.get(name.encode()))
