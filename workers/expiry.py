"""Expiry: drop an ephemeral job (typing, presence) that is older than its ``expires_at``.

A typing indicator shown two seconds late is wrong, not late: the bridge stamps ephemeral jobs
with ``expires_at`` (``received_at`` + ``realtime.typing_ttl`` / ``presence_ttl``), and this
middleware skips any attempt that starts after it. A skipped job is acked, not dead-lettered
(unlike dramatiq's :class:`~dramatiq.middleware.AgeLimit`, which fails it), and counted per
actor. Retries of an ephemeral job pass through here too, so a retry never delivers late.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.middleware import Middleware, SkipMessage

from runtime import log_event

if TYPE_CHECKING:
    from workers.metrics import WorkerMetrics

__all__ = ["Expiry", "expires_at"]

log = logging.getLogger(__name__)


def expires_at(message: dramatiq.MessageProxy | dramatiq.Message[Any]) -> datetime | None:
    """The job's ``expires_at`` read straight from the message arguments, or None.

    Only this one field is parsed: decoding the whole job just to throw it away would cost
    more than delivering it.
    """
    args = message.args
    if not args or not isinstance(args[0], dict):
        return None
    raw = args[0].get("expires_at")
    if not isinstance(raw, str):
        return None
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        return None  # the actor's decoder reports the bad job properly
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class _SkippedFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.endswith("was skipped."))


class Expiry(Middleware):
    """Skip (ack without running) jobs whose ``expires_at`` has passed; count each one.

    Parameters:
      metrics(WorkerMetrics): ``stale_dropped`` is incremented per dropped job, by actor.
    """

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        # dramatiq logs every skipped message at WARNING; a burst of stale typing is normal
        # operation (it is counted), so those lines are filtered out.
        worker_log = logging.getLogger("dramatiq.worker.WorkerThread")
        if not any(isinstance(f, _SkippedFilter) for f in worker_log.filters):
            worker_log.addFilter(_SkippedFilter())

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        deadline = expires_at(message)
        if deadline is None:
            return
        now = datetime.now(UTC)
        if now < deadline:
            return
        late_ms = int((now - deadline).total_seconds() * 1000)
        self.metrics.stale_dropped.labels(message.actor_name).inc()
        self.metrics.realtime_dropped.labels("expired").inc()
        log_event(log, "stale_job_dropped", logging.DEBUG, actor=message.actor_name,
                  message_id=message.message_id, late_ms=late_ms)
        raise SkipMessage(f"expired {late_ms} ms ago")
