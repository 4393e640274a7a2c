"""The workers' Prometheus metrics, and the middleware that counts job outcomes.

Metrics live in a registry owned by one :class:`WorkerMetrics`, so tests can run several
workers in one process. ``fechatter-notify worker`` runs several processes: it sets
``PROMETHEUS_MULTIPROC_DIR`` before they start, each process writes its values there, and
the supervisor serves the sum (prometheus_client's multiprocess mode, as dramatiq's own
Prometheus middleware does).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Final

import dramatiq
from dramatiq.middleware import Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["PREFIX", "MetricsMiddleware", "WorkerMetrics"]

PREFIX: Final = "fechatter_notify_worker"

#: Enqueue-to-delivery buckets, in seconds: milliseconds when idle, up to retries' backoff.
_DELIVERY_BUCKETS: Final = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class WorkerMetrics:
    """Every metric a worker process records."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Counter(
            f"{PREFIX}_jobs", "jobs finished, by actor and outcome (ok, retried, failed, skipped)",
            ["actor", "outcome"], registry=r,
        )
        self.job_seconds = Histogram(
            f"{PREFIX}_job_seconds", "time an actor took, by actor", ["actor"], registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
        )
        self.notifications = Counter(
            f"{PREFIX}_notifications", "notifications appended to inboxes, by type", ["type"], registry=r,
        )
        self.duplicates = Counter(
            f"{PREFIX}_duplicates_suppressed",
            "notifications not delivered because the user already had them, by type", ["type"], registry=r,
        )
        self.stale_dropped = Counter(
            f"{PREFIX}_stale_dropped", "ephemeral jobs dropped past their expires_at, by actor",
            ["actor"], registry=r,
        )
        self.unknown_membership = Counter(
            f"{PREFIX}_unknown_membership",
            "jobs delivered to nobody: chat membership not cached and no database configured",
            registry=r,
        )
        self.membership_fills = Counter(
            f"{PREFIX}_membership_fills", "membership cache entries filled from PostgreSQL, by kind",
            ["kind"], registry=r,
        )
        # Operating figures (`fechatter-notify top`, deploy/grafana).
        self.delivery_latency = Histogram(
            f"{PREFIX}_delivery_latency_seconds",
            "from the bridge's enqueue (the job's message_timestamp) to the job's first inbox write or live "
            "announcement, by queue",
            ["queue"], registry=r, buckets=_DELIVERY_BUCKETS,
        )
        self.inbox_trims = Counter(
            f"{PREFIX}_inbox_trims",
            "inbox entries pushed out: notifications written to an inbox already at delivery.inbox_max_len",
            registry=r,
        )
        self.realtime_dropped = Counter(
            f"{PREFIX}_realtime_dropped", "typing/presence jobs dropped, not delivered, by reason (expired)",
            ["reason"], registry=r,
        )
        # The job this worker thread runs: its enqueue time and queue, until its first delivery.
        self._job = threading.local()

    def job_started(self, message: dramatiq.MessageProxy) -> None:
        """Remember the running job's enqueue time (thread state: one job at a time per thread)."""
        self._job.enqueued_ms = message.message_timestamp
        self._job.queue = message.queue_name

    def delivered(self) -> None:
        """The running job wrote its first inbox entry or announcement: observe its latency once."""
        enqueued_ms: int | None = getattr(self._job, "enqueued_ms", None)
        if enqueued_ms is None:
            return
        self._job.enqueued_ms = None
        queue = str(self._job.queue).removesuffix(".DQ")  # a retry runs from the delay queue's name
        self.delivery_latency.labels(queue).observe(max(time.time() - enqueued_ms / 1000, 0.0))

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)


class MetricsMiddleware(Middleware):
    """Counts every job's outcome and times its actor.

    It sits above :class:`~dramatiq.middleware.Retries` in the stack, so its ``after_*`` hooks
    run once the retry decision is made (``message.failed`` set means dead-lettered).
    """

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        # One job at a time per worker thread: the start time is thread state, not a message
        # option (options are re-encoded into Redis when Retries re-enqueues the message).
        self._local = threading.local()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._local.started = time.perf_counter()
        self.metrics.job_started(message)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        started: float | None = getattr(self._local, "started", None)
        self._local.started = None
        if started is not None:
            self.metrics.job_seconds.labels(message.actor_name).observe(time.perf_counter() - started)
        # After Retries ran: "failed" = dead-lettered, "retried" = re-enqueued with backoff.
        outcome = "ok" if exception is None else "failed" if message.failed else "retried"
        self.metrics.jobs.labels(message.actor_name, outcome).inc()

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._local.started = None
        self.metrics.jobs.labels(message.actor_name, "skipped").inc()
