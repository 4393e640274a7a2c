"""A minimal incremental RESP2 reader for the hub's subscribed connection (the hot path).

redis-py sets the connection up (TLS, AUTH, SELECT, client info) and sends the commands; only
the replies of a *subscribed* connection are parsed here: arrays of bulk strings and integers
(``message``, ``subscribe``, ``unsubscribe``, ``pong``) and errors. redis-py's pure-Python
parser costs ~30 us per message (several coroutine reads each); this one parses every reply
in a socket read at once, at a few microseconds each. That is what lets one process fan out
tens of thousands of frames per second.
"""

from __future__ import annotations

from typing import TypeAlias

#: A parsed reply: bytes (bulk/simple string), int, None (null), RespError, or a list of them.
Reply: TypeAlias = "bytes | int | RespError | list[Reply] | None"

_CRLF = b"\r\n"
_BULK, _ARRAY, _INT, _SIMPLE, _ERROR = b"$"[0], b"*"[0], b":"[0], b"+"[0], b"-"[0]


class RespError(Exception):
    """An error reply from the server (``-ERR ...``), returned as a value, not raised."""


class RespProtocolError(Exception):
    """Bytes that are not RESP2: the connection must be dropped."""


class RespReader:
    """Feed it socket bytes; get back every complete reply, keeping any incomplete tail."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[Reply]:
        """Parse ``data`` (appended to the incomplete tail); return the complete replies.

        Raises:
          RespProtocolError: on bytes that are not RESP2.
        """
        buffer = self._buffer + data if self._buffer else data
        replies: list[Reply] = []
        position = 0
        while position < len(buffer):
            parsed = _parse(buffer, position)
            if parsed is None:
                break
            reply, position = parsed
            replies.append(reply)
        self._buffer = buffer[position:]
        return replies


def _parse(buffer: bytes, position: int) -> tuple[Reply, int] | None:
    """One reply starting at ``position``: ``(reply, next position)``, or None if incomplete."""
    end = buffer.find(_CRLF, position)
    if end < 0:
        return None
    kind = buffer[position]
    try:
        if kind == _BULK:
            size = int(buffer[position + 1:end])
            if size < 0:
                return None, end + 2
            start = end + 2
            stop = start + size
            if stop + 2 > len(buffer):
                return None
            return buffer[start:stop], stop + 2
        if kind == _ARRAY:
            count = int(buffer[position + 1:end])
            if count < 0:
                return None, end + 2
            items: list[Reply] = []
            next_position = end + 2
            for _ in range(count):
                parsed = _parse(buffer, next_position)
                if parsed is None:
                    return None
                item, next_position = parsed
                items.append(item)
            return items, next_position
        if kind == _INT:
            return int(buffer[position + 1:end]), end + 2
        if kind == _SIMPLE:
            return buffer[position + 1:end], end + 2
        if kind == _ERROR:
            return RespError(buffer[position + 1:end].decode(errors="replace")), end + 2
    except ValueError as exc:
        raise RespProtocolError(f"bad length in {buffer[position:end][:40]!r}") from exc
    raise RespProtocolError(f"unexpected reply type {bytes([kind])!r}")
