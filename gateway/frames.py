"""SSE wire format: frames, the keep-alive comment, and inbox entry ids.

The web client listens only to ``onmessage``, which never sees a frame with another event name
(docs/web-client-contract.md#frame-format), so no frame ever carries an
``event:`` line; every ``data:`` is one JSON object with a string ``type``. Inbox entry ids are
Redis stream ids (``<ms>-<seq>``), compared as ``(ms, seq)`` pairs, never as strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, NamedTuple

#: The keep-alive: an SSE comment, which EventSource ignores (proxies still see traffic).
KEEP_ALIVE = b": ping\n\n"

#: The browser's reconnection delay for orphaned streams, in milliseconds: the client's live stream
#: never reconnects, only streams it orphaned do (docs/web-client-contract.md#reconnecting-and-last-event-id).
RETRY_MS = 3000

_STREAM_ID = re.compile(r"\A(\d{1,20})-(\d{1,20})\Z")
#: Redis stream id parts are unsigned 64-bit: a larger one (which 20 digits can spell) makes
#: every XRANGE fail, so it is not an id.
MAX_ID_PART = 2**64 - 1


class StreamId(NamedTuple):
    """A Redis stream entry id; tuples compare as ``(ms, seq)``, which is what Redis orders by."""

    ms: int
    seq: int

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


#: Smaller than every real entry id.
ZERO_ID = StreamId(0, 0)


def parse_stream_id(text: str | bytes) -> StreamId:
    """Parse ``"<ms>-<seq>"``.

    Raises:
      ValueError: when ``text`` is not a complete stream id.
    """
    if isinstance(text, bytes):
        # The hot path (every live announcement): no regex, no decode.
        ms, sep, seq = text.partition(b"-")
        if sep and ms.isdigit() and seq.isdigit() and len(ms) <= 20 and len(seq) <= 20:
            ms_value, seq_value = int(ms), int(seq)
            if ms_value <= MAX_ID_PART and seq_value <= MAX_ID_PART:
                # tuple.__new__ skips NamedTuple's Python-level __new__ (3x faster; same object).
                return tuple.__new__(StreamId, (ms_value, seq_value))
        text = text.decode("ascii", "replace")
    match = _STREAM_ID.match(text.strip())
    if match is None:
        raise ValueError(f"not a stream id: {text[:40]!r}")
    stream_id = StreamId(int(match.group(1)), int(match.group(2)))
    if stream_id.ms > MAX_ID_PART or stream_id.seq > MAX_ID_PART:
        raise ValueError(f"stream id part beyond 2^64-1: {text[:40]!r}")
    return stream_id


def data_frame(data: bytes, entry_id: bytes | None = None) -> bytes:
    """One SSE frame: optional ``id:`` line, then ``data:`` line(s), then a blank line.

    ``data`` is JSON text. JSON only contains a newline as whitespace between tokens, and
    EventSource joins multi-line ``data:`` with ``\\n``, so splitting keeps it valid JSON.
    """
    if b"\n" in data or b"\r" in data:
        data = b"\ndata: ".join(data.splitlines())
    if entry_id is None:
        return b"data: %b\n\n" % data
    return b"id: %b\ndata: %b\n\n" % (entry_id, data)


def json_frame(payload: dict[str, Any]) -> bytes:
    """A frame for one of the gateway's own messages (no ``id:``, so Last-Event-ID is kept)."""
    return data_frame(json.dumps(payload, separators=(",", ":")).encode())


def retry_line(milliseconds: int = RETRY_MS) -> bytes:
    """The ``retry:`` field; it only affects streams the client orphaned (the live one closes itself on error)."""
    return b"retry: %d\n\n" % milliseconds


async def read_frames(lines: AsyncIterable[bytes]) -> AsyncIterator[tuple[str | None, dict[str, Any]]]:
    """A client's view of a stream: each frame as ``(its id: line or None, its JSON data)``.

    For the tools that read a stream the way a browser does (``publish --watch``, the tests):
    ``data:`` lines gather until a blank line ends the frame; comments and ``retry:`` are skipped.
    """
    data: list[str] = []
    entry: str | None = None
    async for raw in lines:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif line.startswith("id:"):
            entry = line[3:].strip()
        elif not line and data:
            yield entry, json.loads("\n".join(data))
            data, entry = [], None
