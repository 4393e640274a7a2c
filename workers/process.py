"""One worker process: services, broker, actors and a dramatiq ``Worker``, from the settings.

:class:`WorkerRuntime` is the whole machinery without signals or logging setup, so tests can
run real workers in threads of the test process; :func:`serve` is a child process of
``fechatter-notify worker`` (see :mod:`workers.main`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any, Final, Protocol

import dramatiq
import sentry_sdk
from dramatiq.middleware import Middleware

from runtime import init_sentry, log_event, setup_logging
from settings import Settings
from workers.actors import declare_actors
from workers.broker import (
    DEFAULT_HEARTBEAT_TIMEOUT_MS,
    DEFAULT_WORKER_TIMEOUT_MS,
    WakeRedisBroker,
    build_broker,
)
from workers.metrics import WorkerMetrics
from workers.recovery import DEFAULT_INTERVAL_S
from workers.services import Services

__all__ = ["WorkerRuntime", "serve"]

log = logging.getLogger(__name__)


class EventLike(Protocol):
    """What :func:`serve` sets once it consumes: a ``multiprocessing`` Event from the supervisor."""

    def set(self) -> None: ...

#: How long a stopping process waits for queued Sentry events to be sent, in seconds.
SENTRY_FLUSH_S: Final = 2.0
#: How often a worker process checks that its supervisor is still there, in seconds.
ORPHAN_CHECK_S: Final = 1.0


class WorkerRuntime:
    """Build and run one process's workers.

    Parameters:
      settings(Settings): The loaded configuration.
      queues(Sequence[str]): Queues to consume (a subset of ``queues.realtime``/``queues.domain``).
      threads(int): Worker threads.
      metrics(WorkerMetrics | None): Where to count; a fresh registry if None.
      wake(bool): Doorbell consumers (True) or dramatiq's stock polling (False).
      heartbeat_timeout_ms(int): See :data:`workers.broker.DEFAULT_HEARTBEAT_TIMEOUT_MS`.
      recovery_interval_s(float): See :data:`workers.recovery.DEFAULT_INTERVAL_S`.
      extra_middleware(list[Middleware] | None): Appended to the stack (tests).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        queues: Sequence[str],
        threads: int = 8,
        metrics: WorkerMetrics | None = None,
        wake: bool = True,
        heartbeat_timeout_ms: int = DEFAULT_HEARTBEAT_TIMEOUT_MS,
        recovery_interval_s: float = DEFAULT_INTERVAL_S,
        extra_middleware: list[Middleware] | None = None,
    ) -> None:
        self.settings = settings
        self.queues = list(queues)
        self.metrics = metrics if metrics is not None else WorkerMetrics()
        self.services = Services.open(settings, self.metrics)
        self.broker: WakeRedisBroker = build_broker(
            settings, self.metrics, wake=wake, heartbeat_timeout_ms=heartbeat_timeout_ms,
            recovery_interval_s=recovery_interval_s, extra_middleware=extra_middleware,
        )
        self.actors = declare_actors(self.broker, self.services)
        self.worker = dramatiq.Worker(
            self.broker, queues=set(self.queues), worker_threads=threads,
            worker_timeout=DEFAULT_WORKER_TIMEOUT_MS,
        )

    def start(self) -> WorkerRuntime:
        """Start the consumer and worker threads; returns self."""
        self.worker.start()
        log_event(log, "worker_started", queues=",".join(self.queues),
                  threads=self.worker.worker_threads, broker_id=self.broker.broker_id,
                  wake=self.broker.wake is not None)
        return self

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop gracefully: finish running jobs (up to ``timeout_s``), requeue prefetched ones."""
        timeout = self.settings.delivery.time_limit if timeout_s is None else timeout_s
        self.worker.stop(timeout=int(timeout * 1000))
        self.broker.close()
        self.services.close()
        log_event(log, "worker_stopped", broker_id=self.broker.broker_id)


def serve(settings: Settings, queues: Sequence[str], threads: int, started: EventLike | None = None) -> int:
    """Run one worker process until SIGTERM or SIGINT; the target of ``worker`` children.

    ``started`` is set once the process consumes (a reloading supervisor stops the old processes
    only then)."""
    setup_logging()
    init_sentry(settings.sentry, "worker")  # before the broker: the integration hooks Broker.__init__
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> Any:
        log_event(log, "worker_signal", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # A hangup of the whole process group is the supervisor's to handle (it reloads).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    runtime = WorkerRuntime(settings, queues=queues, threads=threads).start()
    if started is not None:
        started.set()
    _wait_for_stop(stop, os.getppid())
    runtime.stop()
    # multiprocessing children leave through os._exit: atexit (and Sentry's flush) never runs.
    sentry_sdk.flush(timeout=SENTRY_FLUSH_S)
    return 0


def _wait_for_stop(stop: threading.Event, supervisor: int) -> None:
    # A supervisor killed with SIGKILL cannot stop its children: they would go on consuming
    # beside the restarted supervisor's, unsupervised and unseen by its /healthz. Stop gracefully
    # (running jobs finish, prefetched ones are requeued) once it is gone.
    while not stop.wait(ORPHAN_CHECK_S):
        if os.getppid() != supervisor:
            log_event(log, "worker_orphaned", logging.WARNING, supervisor_pid=supervisor,
                      reason="the supervisor is gone; stopping")
            return
