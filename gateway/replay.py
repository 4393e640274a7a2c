"""Reading a user's inbox for a stream: pages of entries after an id, and whether it is stale.

The inbox is capped (``MAXLEN ~``), so an id a client resumes from may be older than what is
kept; then entries after it may be gone and the client must resync instead of trusting a
replay.
"""

from __future__ import annotations

from typing import Any, Final, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from events.inbox import INBOX_FIELD
from gateway.frames import ZERO_ID, StreamId, parse_stream_id

#: Inbox entries read per XRANGE while replaying.
REPLAY_PAGE: Final = 200

_FIELD: Final = INBOX_FIELD.encode()

#: ``(entry id, notification JSON or None)`` pairs, oldest first.
Entries = list[tuple[bytes, bytes | None]]


async def read_page(redis: Redis, key: str, start: str) -> tuple[Entries, bool]:
    """One page of inbox entries from ``start`` (a ``(`` prefix makes it exclusive).

    Returns the entries and whether a further page may exist.
    """
    raw = cast(list[Any], await redis.xrange(key, min=start, max="+", count=REPLAY_PAGE) or [])
    entries = [(bytes(entry_id), fields.get(_FIELD) if fields else None) for entry_id, fields in raw]
    return entries, len(raw) == REPLAY_PAGE


async def staleness(redis: Redis, key: str, after: StreamId) -> tuple[bool, StreamId]:
    """Whether entries after ``after`` may have been trimmed; also the inbox's newest id.

    Trimming removes the oldest entries, so nothing after ``after`` is lost when ``after`` lies
    within the retained range. An id before the oldest retained entry came either from entries
    trimmed since, or from an earlier inbox of the user that expired; either way what followed
    it may be gone, so answer stale (a needless resync costs a refetch; a missed gap costs a
    lost message). Redis 7's ``entries-added`` cannot clear it: it counts only the current
    inbox's entries, and its ``max-deleted-entry-id`` ignores trimming. An id beyond the
    newest one belongs to another history.
    """
    try:
        info: dict[Any, Any] = await redis.xinfo_stream(key)
    except ResponseError:  # no such key: the whole inbox expired or was never written
        return after != ZERO_ID, ZERO_ID
    newest = parse_stream_id(_field(info, "last-generated-id"))
    if after > newest:
        return True, newest
    if after == newest:
        return False, newest
    first = _field(info, "first-entry")
    if not first:
        return True, newest
    return after < parse_stream_id(first[0]), newest


def _field(info: dict[Any, Any], name: str) -> Any:
    # redis-py returns str keys for XINFO; be tolerant of bytes should that change.
    return info.get(name, info.get(name.encode()))
