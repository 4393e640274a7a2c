"""Recovery: heartbeat and requeue dead workers' jobs on a clock, not by chance.

dramatiq's Redis broker requeues a crashed worker's unacked jobs only inside a dispatch call that
wins a 0.1 % draw, and only for that call's queue: with idle queues that takes tens of minutes
(docs/dramatiq-pitfalls.md#a-dead-workers-jobs-come-back-late). A killed worker's typing indicator
would be long stale, and its new message very late. This middleware runs one maintenance call per
known queue every ``interval`` seconds from a thread of each worker process. The same call refreshes
the process's heartbeat, so a process busy in long jobs is never mistaken for a dead one.

Maintenance covers every queue of the deployment, not only the ones this process consumes:
a dead worker leaves an ack set per queue it consumed, and dramatiq forgets the dead worker
(and stops scanning for it with ``KEYS``) only once all of them are gone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, Final

import dramatiq
import redis
from dramatiq.middleware import Middleware

from runtime import log_event

__all__ = ["DEFAULT_INTERVAL_S", "Recovery"]

log = logging.getLogger(__name__)

#: Seconds between maintenance rounds; well under the heartbeat timeout.
DEFAULT_INTERVAL_S: Final = 2.0


class Recovery(Middleware):
    """Periodic dramatiq maintenance (heartbeat, requeue of dead workers' jobs, DLQ expiry).

    Parameters:
      queues(Sequence[str]): Queue names to maintain, delay queues included.
      interval(float): Seconds between rounds.
    """

    def __init__(self, *, queues: Sequence[str], interval: float = DEFAULT_INTERVAL_S) -> None:
        self.queues = list(queues)
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(broker,), name="fechatter-notify-recovery", daemon=True
        )
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self.interval + 5)

    def _run(self, broker: dramatiq.Broker) -> None:
        maintain = getattr(broker, "maintain", None)
        if maintain is None:
            return  # not a WakeRedisBroker: nothing to do
        while True:
            try:
                for queue_name in self.queues:
                    maintain(queue_name)
            except redis.RedisError as exc:
                log_event(log, "maintenance_failed", logging.WARNING, error=exc)
            if self._stop.wait(self.interval):
                return
