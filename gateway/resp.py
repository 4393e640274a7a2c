"""The RESP reader of the hub's subscribed connection (the hot path): ``hiredis.Reader``, in C.

redis-py sets the connection up (TLS, AUTH, SELECT, client info) and sends the commands; only
the replies of a *subscribed* connection are parsed here: arrays of bulk strings and integers
(``message``, ``subscribe``, ``unsubscribe``, ``pong``) and errors. redis-py's own read path
costs ~30 us per message (several coroutine reads each); this one parses every reply in a socket
read at once, in hiredis's C parser (a dependency already: ``redis[hiredis]``). That is what lets
one process fan out tens of thousands of frames per second.
"""

from __future__ import annotations

from typing import Final, TypeAlias

import hiredis

#: A parsed reply: bytes (bulk/simple string), int, None (null), RespError, or a list of them.
Reply: TypeAlias = "bytes | int | RespError | list[Reply] | None"

#: What ``hiredis.Reader.gets`` answers while no complete reply is buffered.
_INCOMPLETE: Final = object()


class RespError(Exception):
    """An error reply from the server (``-ERR ...``), returned as a value, not raised."""


class RespProtocolError(Exception):
    """Bytes that are not RESP: the connection must be dropped."""


class RespReader:
    """Feed it socket bytes; get back every complete reply, keeping any incomplete tail."""

    __slots__ = ("_reader",)

    def __init__(self) -> None:
        self._reader = hiredis.Reader(
            protocolError=RespProtocolError, replyError=RespError, notEnoughData=_INCOMPLETE)

    def feed(self, data: bytes) -> list[Reply]:
        """Parse ``data`` (appended to the incomplete tail); return the complete replies.

        Raises:
          RespProtocolError: on bytes that are not RESP.
        """
        reader = self._reader
        reader.feed(data)
        replies: list[Reply] = []
        reply = reader.gets()
        while reply is not _INCOMPLETE:
            replies.append(reply)
            reply = reader.gets()
        return replies
