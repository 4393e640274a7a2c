"""The Redis circuit breaker: open on a failed enqueue, probe Redis with backoff, close when it answers.

While open, pull loops issue no pull requests (so JetStream keeps the events and no delivery
count is burnt), JetStream messages already in hand are held (:mod:`bridge.holding`: kept ours with
in-progress acks, enqueued in order once it closes), and core NATS batches are dropped and counted
(core NATS has no redelivery to wait for, and its typing/presence events are stale after seconds).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from bridge.errors import RedisUnavailable
from bridge.metrics import BridgeMetrics
from runtime import backoff_delay, log_event, stop_task

__all__ = ["Circuit"]

log = logging.getLogger("bridge.circuit")

#: First probe delay after opening, in seconds.
DEFAULT_PROBE_BASE_S: Final = 0.05
#: Largest probe delay, in seconds: held events wait at most about this long after Redis is back.
DEFAULT_PROBE_CAP_S: Final = 1.0


class Circuit:
    """Open/closed state plus the probe task.

    Parameters:
      probe(Callable[[], Awaitable[object]]): Round-trips Redis; raises RedisUnavailable on failure.
      metrics(BridgeMetrics): Gauge ``bridge_circuit_open`` and counter ``bridge_circuit_opened``.
      probe_base(float), probe_cap(float): Probe backoff, in seconds.
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[object]],
        metrics: BridgeMetrics,
        *,
        probe_base: float = DEFAULT_PROBE_BASE_S,
        probe_cap: float = DEFAULT_PROBE_CAP_S,
    ) -> None:
        self._probe = probe
        self._metrics = metrics
        self._base = probe_base
        self._cap = probe_cap
        self._open = False
        self._reason = ""
        self._opened_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[bool], None]] = []

    @property
    def is_open(self) -> bool:
        """True while Redis is considered down."""
        return self._open

    @property
    def reason(self) -> str:
        """Why it opened last (empty while it never did)."""
        return self._reason

    @property
    def opened_at(self) -> float:
        """``time.monotonic()`` when it opened last (0.0 while it never did)."""
        return self._opened_at

    def subscribe(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(is_open)`` on every change (pull loops stop and resume pulling)."""
        self._listeners.append(callback)

    def open(self, reason: str) -> None:
        """Open (idempotent) and start probing."""
        if self._open:
            return
        self._open = True
        self._reason = reason
        self._opened_at = time.monotonic()
        self._metrics.circuit_open.set(1)
        self._metrics.circuit_opened.inc()
        log_event(log, "circuit_opened", logging.WARNING, reason=reason)
        for callback in self._listeners:
            callback(True)
        self._task = asyncio.get_running_loop().create_task(self._probe_until_closed(), name="redis-probe")

    def _close(self, latency: float) -> None:
        self._open = False
        self._metrics.circuit_open.set(0)
        log_event(log, "circuit_closed", probe_latency_ms=round(latency * 1000, 2))
        for callback in self._listeners:
            callback(False)

    async def _probe_until_closed(self) -> None:
        attempt = 0
        while self._open:
            await asyncio.sleep(backoff_delay(attempt, self._base, self._cap))
            try:
                latency = await self._probe()
            except RedisUnavailable as exc:
                attempt += 1
                if attempt in (1, 10) or attempt % 50 == 0:
                    log_event(log, "redis_probe_failed", logging.WARNING, attempt=attempt, reason=str(exc))
                continue
            self._close(latency if isinstance(latency, float) else 0.0)

    async def stop(self) -> None:
        """Cancel the probe task."""
        await stop_task(self._task)
