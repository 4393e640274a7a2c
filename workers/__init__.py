"""workers: dramatiq actors that turn the bridge's typed jobs into per-user notifications.

Flow of one job: ``broker`` (a consumer woken by the bridge's publish) -> middleware
(``expiry``, ``retries``, ``recovery``, ``sentry``, ``metrics``) -> ``actors`` (decode, pick
recipients via ``recipients``/``presence``, build the notification via ``notifications``) ->
``delivery`` (``deliver.lua``: dedupe marker + inbox entry + live announcement, atomically).
``main`` runs the processes; ``process`` is one of them.
"""

from workers.actors import declare_actors
from workers.broker import WakeRedisBroker, build_broker
from workers.delivery import Delivered, Delivery, notification_key
from workers.metrics import WorkerMetrics
from workers.notifications import notification_for
from workers.process import WorkerRuntime
from workers.services import Services

__all__ = [
    # Running workers
    "WorkerRuntime",
    "build_broker",
    "declare_actors",
    "WakeRedisBroker",
    "Services",
    "WorkerMetrics",
    # Notifications
    "Delivered",
    "Delivery",
    "notification_for",
    "notification_key",
]
