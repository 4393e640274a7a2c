"""The ONE function that decides the next pull request, and the state it decides on.

Pure logic (no I/O), so it is unit-tested on its own: ADR-37's refill threshold, the local
in-flight cap, and the heartbeat clamp ``2 * idle_heartbeat <= expires`` on every request
(nats-server answers ``400 heartbeat value too large`` otherwise,
docs/nats-pitfalls.md#pull-request-heartbeats).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

__all__ = ["MIN_HEARTBEAT_S", "NS", "PullRequest", "PullState", "next_pull"]

#: Smallest idle heartbeat asked for, in seconds (ADR-37), unless expires/2 is smaller.
MIN_HEARTBEAT_S: Final = 0.5
#: Nanoseconds per second (the request speaks ns).
NS: Final = 1_000_000_000


@dataclass(slots=True)
class PullState:
    """Everything :func:`next_pull` decides on.

    Attributes:
      batch: Messages per request (``consumer.batch``).
      expires: Request expiry, in seconds.
      heartbeat: Wanted idle heartbeat, in seconds (clamped per request).
      max_in_flight: Local cap of fetched-but-unsettled messages.
      pending: Messages asked for and not yet delivered (all outstanding requests).
      in_flight: Messages delivered and not yet settled.
      connected: The NATS connection is up.
      paused: Recovering, circuit open, or stopping: no new requests.
    """

    batch: int
    expires: float
    heartbeat: float
    max_in_flight: int
    pending: int = 0
    in_flight: int = 0
    connected: bool = True
    paused: bool = False


@dataclass(frozen=True, slots=True)
class PullRequest:
    """One MSG.NEXT request; durations in nanoseconds, ``2 * idle_heartbeat_ns <= expires_ns`` always."""

    batch: int
    expires_ns: int
    idle_heartbeat_ns: int

    def payload(self) -> bytes:
        """The request's JSON body."""
        return json.dumps({"batch": self.batch, "expires": self.expires_ns,
                           "idle_heartbeat": self.idle_heartbeat_ns}).encode()


def next_pull(state: PullState) -> PullRequest | None:
    """The next pull request, or None when none should be sent now.

    Pull when connected, not paused, the outstanding requests have at most half a batch left
    (ADR-37's refill threshold) and the local in-flight cap leaves room for at least half a
    batch. The heartbeat is ``max(heartbeat, MIN_HEARTBEAT_S)`` clamped to ``expires // 2`` in
    integer nanoseconds, so the server's ``hb * 2 > expires`` check can never fail.
    """
    if not state.connected or state.paused:
        return None
    if state.pending > state.batch // 2:
        return None
    room = state.max_in_flight - state.in_flight - state.pending
    batch = min(state.batch, room)
    if batch < max(1, min(state.batch, state.max_in_flight) // 2):
        return None
    expires_ns = max(int(state.expires * NS), 2)
    heartbeat_ns = min(int(max(state.heartbeat, MIN_HEARTBEAT_S) * NS), expires_ns // 2)
    return PullRequest(batch, expires_ns, heartbeat_ns)
