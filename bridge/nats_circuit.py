"""The NATS circuit breaker of one durable pull consumer: closed -> open -> half-open -> closed.

A pull loop heals single faults by itself (ADR-37, :mod:`bridge.pull`): a missed heartbeat or a 503
is followed by a consumer check and a fresh pull. When the faults keep coming, re-checking and
re-pulling on every one of them is a loop that loads a server that is already in trouble and says
nothing to the operator. So the pull loop feeds every outcome into this state machine:

* **closed**: pulling. A *failure* (a missed idle heartbeat, a 503 / no responders or another 5xx
  status on the pull inbox, a 409 consumer deleted, a failed or refused consumer check, a check left
  unanswered for an idle heartbeat (1 s at least, the API's 5 s at most) while the server still
  answers PINGs, or a check whose round trip took longer than the idle heartbeat) adds one to
  ``failures_in_a_row``; a *healthy pull* (a message, a heartbeat, a request that expired or found
  nothing) resets it. ``threshold`` failures in a row (``jetstream.max_missed_heartbeats``, the same
  count after which the bridge has always reported not ready) open the circuit.
* **open**: no pull requests and no consumer re-creation except the probes, the readiness check
  says why, and the next probe waits ``min(base * 2**n, cap)`` +- 20 % (n = failures in a row - 1).
* **half-open**: a probe's consumer check (``CONSUMER.INFO``, re-creating the durable if it is gone)
  answered, and one pull request is out. Its first message or heartbeat closes the circuit; its
  failure re-opens it and the next probe waits longer.

A reconnect makes an open circuit probe at once: a pull request does not survive a reconnect, and a
new connection is the best reason to believe things changed. Failures while disconnected are not
counted: the connection has its own breaker (nats-py's stale-connection detection after
``ping_interval`` x ``max_outstanding_pings`` and the reconnect backoff), and counting its outage
here too would report one fault twice.

Scope: one circuit per durable, not per connection. What it reacts to is per durable: a stream
without a leader on a cluster, a deleted stream or consumer, a 503 on one ``MSG.NEXT`` subject say
nothing about another stream's consumer on the same connection, and one circuit per connection
would stop healthy durables with the sick one. What is per connection (a dead TCP path, a
restarting server) is the connection's to detect, and reaches every durable's circuit as the same
disconnect and reconnect. nats.go's ``jetstream`` package (ADR-37) makes the same cut: each
``Consume`` keeps its own heartbeat monitor and retry state. The bridge usually runs one durable,
where the two scopes coincide.

Bounds come from settings that exist: the threshold is ``jetstream.max_missed_heartbeats``, the
probe cap is the consumer's pull expiry (the cadence at which an idle bridge sends requests anyway)
but at most :data:`PROBE_CAP_S`, and the round-trip bound is the consumer's idle heartbeat (a check
that answers later than a heartbeat interval means heartbeats on that path arrive late too, and the
2 x heartbeat watchdog cannot tell them from silence).

This module is pure (no I/O, a clock passed in), so the state machine is unit-tested on its own;
:class:`bridge.pull.PullConsumer` does the checks, the pulls, the logging and the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from runtime import backoff_delay

__all__ = ["PROBE_BASE_S", "PROBE_CAP_S", "CircuitState", "NatsCircuit", "Transition", "probe_cap"]

#: First delay between checks after a failure, in seconds (the old recovery loop's base).
PROBE_BASE_S: Final = 0.25
#: Largest delay between probes, in seconds: JetStream back (a leader elected, a stream restored)
#: is noticed within this (+20 % jitter) plus one check, well inside the 10 s within which a
#: bridge should consume again after a cluster fault; one ``CONSUMER.INFO`` per durable per 5 s
#: costs the server nothing.
PROBE_CAP_S: Final = 5.0


def probe_cap(pull_expiry: float) -> float:
    """The largest probe interval for a durable whose pull requests expire after ``pull_expiry`` s."""
    return max(min(pull_expiry, PROBE_CAP_S), PROBE_BASE_S)


class CircuitState(IntEnum):
    """The circuit's states; the value is the ``nats_circuit_state`` gauge's."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        """The name used in logs and readiness reasons."""
        return self.name.lower().replace("_", "-")


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change: the pull loop logs it once and sets the gauge."""

    old: CircuitState
    new: CircuitState
    reason: str


class NatsCircuit:
    """The state machine (see the module docstring).

    Parameters:
      threshold(int): Failures in a row that open the circuit (>= 1).
      probe_cap(float): Largest delay between probes, in seconds.
      rtt_bound(float): A consumer check slower than this (seconds) counts as a failure.
      probe_base(float): First delay, in seconds.
      jitter(float): +- this fraction on every delay (0 in tests that compute exact bounds).
      clock(Callable[[], float]): Monotonic seconds.
    """

    def __init__(
        self,
        threshold: int,
        probe_cap: float,
        rtt_bound: float,
        *,
        probe_base: float = PROBE_BASE_S,
        jitter: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = max(threshold, 1)
        self.probe_cap = probe_cap
        self.rtt_bound = rtt_bound
        self.probe_base = probe_base
        self.jitter = jitter
        self._clock = clock
        self.state = CircuitState.CLOSED
        self.failures_in_a_row = 0
        #: The failure that opened the circuit (kept after it closed, for the closing log line).
        self.reason = ""
        #: The last failure's reason, and its detail (an error text) for the readiness check.
        self.last_failure = ""
        self.detail = ""
        self.opened_at = 0.0
        #: Probes since the circuit opened (consumer checks while open).
        self.probes = 0
        #: When the next probe is due (monotonic seconds), 0 while none is scheduled.
        self.next_probe_at = 0.0

    @property
    def is_open(self) -> bool:
        """True while open (no pull requests); half-open lets the one trial pull out."""
        return self.state is CircuitState.OPEN

    def configure(self, threshold: int, probe_cap: float, rtt_bound: float) -> None:
        """New bounds (a reloaded durable); the state is kept."""
        self.threshold, self.probe_cap, self.rtt_bound = max(threshold, 1), probe_cap, rtt_bound

    def failure(self, reason: str, detail: str = "") -> Transition | None:
        """Count a failure; return the transition it caused (to open), if any."""
        self.failures_in_a_row += 1
        self.last_failure, self.detail = reason, detail
        if self.state is CircuitState.CLOSED and self.failures_in_a_row < self.threshold:
            return None
        if self.state is CircuitState.OPEN:
            return None
        old = self.state
        self.state = CircuitState.OPEN
        if old is CircuitState.CLOSED:
            self.reason = reason
            self.opened_at = self._clock()
            self.probes = 0
        return Transition(old, CircuitState.OPEN, reason)

    def success(self) -> Transition | None:
        """A healthy pull: reset the count; close (and return the transition) if not closed."""
        self.failures_in_a_row = 0
        self.next_probe_at = 0.0
        if self.state is CircuitState.CLOSED:
            return None
        old = self.state
        self.state = CircuitState.CLOSED
        return Transition(old, CircuitState.CLOSED, "healthy_pull")

    def slow(self, round_trip: float) -> bool:
        """True when a consumer check's ``round_trip`` (seconds) is past the bound."""
        return round_trip > self.rtt_bound

    def probe_started(self) -> None:
        """A consumer check begins while open: count it."""
        if self.state is CircuitState.OPEN:
            self.probes += 1
        self.next_probe_at = 0.0

    def checked(self) -> Transition | None:
        """The consumer check answered: an open circuit turns half-open (its trial pull goes out)."""
        if self.state is not CircuitState.OPEN:
            return None
        self.state = CircuitState.HALF_OPEN
        return Transition(CircuitState.OPEN, CircuitState.HALF_OPEN, "consumer_checked")

    def delay(self) -> float:
        """Seconds before the next consumer check: doubling with the failures in a row, capped;
        the scheduled time is kept for the readiness reason."""
        delay = backoff_delay(max(self.failures_in_a_row - 1, 0), self.probe_base, self.probe_cap, self.jitter)
        self.next_probe_at = self._clock() + delay
        return delay

    def problem(self) -> str | None:
        """The readiness reason while open or half-open, None while closed."""
        if self.state is CircuitState.CLOSED:
            return None
        now = self._clock()
        text = (f"NATS circuit {self.state.label} for {now - self.opened_at:.1f}s "
                f"after {self.failures_in_a_row} failures in a row (opened by {self.reason}; "
                f"last: {self.last_failure}{': ' + self.detail if self.detail else ''})")
        if self.next_probe_at:
            text += f"; next probe in {max(self.next_probe_at - now, 0.0):.1f}s"
        return text
