"""workers: dramatiq actors that turn the bridge's typed jobs into per-user notifications.

Flow of one job: ``broker`` (a consumer woken by the bridge's publish) -> middleware
(``expiry``, ``retries``, ``recovery``, ``sentry``, ``metrics``) -> ``actors`` (decode, pick
recipients via ``recipients``/``presence``, build the notification via ``notifications``) ->
``delivery`` (``deliver.lua``: dedupe marker + inbox entry + live announcement, atomically).
``main`` runs the processes; ``process`` is one of them.

What other packages may use is named here (``__all__``) and loads on first use, so importing a
submodule does not import the whole process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime import lazy_face

if TYPE_CHECKING:
    from workers.actors import declare_actors
    from workers.broker import WakeRedisBroker, build_broker
    from workers.dead_letter_queue import (
        DeadLetterQueues,
        FailedJob,
        Requeue,
        RequeueOutcome,
        purge_failed_jobs,
        read_failed_jobs,
        requeue_failed_jobs,
    )
    from workers.delivery import Delivered, Delivery, notification_key
    from workers.diagnose import diagnose_queues, diagnose_redis_server, diagnose_redis_topology
    from workers.failure_reasons import FailureReasons
    from workers.main import run
    from workers.metrics import WorkerMetrics
    from workers.notifications import notification_for
    from workers.process import WorkerRuntime
    from workers.services import Services

__all__ = [
    # Running workers
    "WorkerRuntime",
    "build_broker",
    "declare_actors",
    "run",
    "WakeRedisBroker",
    "Services",
    "WorkerMetrics",
    # Notifications
    "Delivered",
    "Delivery",
    "notification_for",
    "notification_key",
    # Operator commands
    "diagnose_queues",
    "diagnose_redis_server",
    "diagnose_redis_topology",
    # dramatiq's dead-letter queues (fechatter-notify dlq)
    "DeadLetterQueues",
    "FailedJob",
    "FailureReasons",
    "Requeue",
    "RequeueOutcome",
    "purge_failed_jobs",
    "read_failed_jobs",
    "requeue_failed_jobs",
]

_HOME: dict[str, str] = {
    "declare_actors": "actors",
    "WakeRedisBroker": "broker",
    "build_broker": "broker",
    "Delivered": "delivery",
    "Delivery": "delivery",
    "notification_key": "delivery",
    "diagnose_queues": "diagnose",
    "diagnose_redis_server": "diagnose",
    "diagnose_redis_topology": "diagnose",
    "run": "main",
    "WorkerMetrics": "metrics",
    "notification_for": "notifications",
    "WorkerRuntime": "process",
    "Services": "services",
    "DeadLetterQueues": "dead_letter_queue",
    "FailedJob": "dead_letter_queue",
    "FailureReasons": "failure_reasons",
    "Requeue": "dead_letter_queue",
    "RequeueOutcome": "dead_letter_queue",
    "purge_failed_jobs": "dead_letter_queue",
    "read_failed_jobs": "dead_letter_queue",
    "requeue_failed_jobs": "dead_letter_queue",
}

__getattr__ = lazy_face(__name__, _HOME)
