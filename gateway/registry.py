"""The registry of this process's open streams: an application resource (``state.STREAMS``).

Used by the ``GET /events`` handler (:mod:`gateway.events_handler`: each stream is added while it
is open), the drain at SIGTERM (:mod:`gateway.drain`), ``/readyz`` and the shutdown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.stream import EventStream


class StreamRegistry:
    """The open streams of this process (for shutdown and the open-streams gauge)."""

    def __init__(self) -> None:
        self._streams: set[EventStream] = set()
        #: Set at SIGTERM (gateway/drain.py): no new stream is opened from then on.
        self.draining = False

    def __len__(self) -> int:
        return len(self._streams)

    def add(self, stream: EventStream) -> None:
        self._streams.add(stream)

    def discard(self, stream: EventStream) -> None:
        self._streams.discard(stream)

    def snapshot(self) -> tuple[EventStream, ...]:
        """The streams open now."""
        return tuple(self._streams)

    def close_all(self, reason: str) -> None:
        """Ask every stream to end (gracefully: the handler finishes the response)."""
        for stream in tuple(self._streams):
            stream.close(reason)
