"""``fechatter-notify worker`` (Procfile ``worker:``): a supervisor and ``-p`` worker processes.

Like ``dramatiq``'s own CLI: ``-p/--processes`` (default: CPU count), ``-t/--threads`` per
process (default 8), ``-Q/--queues`` to consume a subset (default: both queues). Children are
*spawned* (not forked: the supervisor holds threads and sockets) and receive the validated
settings object itself, so ``--config``, ``$NOTIFY_CONFIG`` and environment overrides resolve
once, here. SIGTERM/SIGINT stop the children gracefully (running jobs finish within
``delivery.time_limit``, prefetched ones are requeued). SIGHUP re-reads the configuration and
replaces the children, the old ones stopped once the new ones consume (see :func:`_restart`).
If a child dies on its own, the supervisor stops the others and exits 1, so the platform restarts
the whole unit.

The supervisor serves the children's summed metrics at ``metrics.host:metrics.worker_port``
``/metrics`` and their liveness at ``health.host:health.worker_port`` ``/healthz`` (port 0 =
off), bound before any child starts: a port held by another process ends the start with
:data:`~runtime.ports.RET_PORT_IN_USE`.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.synchronize
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Final

from runtime import (
    RET_CONFIG,
    RET_OK,
    RET_RUNTIME,
    PortInUse,
    Registration,
    advertised_url,
    config_path,
    init_sentry,
    log_event,
    reload_settings_until,
    report_port_in_use,
    setup_logging,
)
from settings import Loaded, Settings
from workers.exposition import Exposition

__all__ = ["RET_CONFIG", "RET_OK", "RET_RUNTIME", "run", "select_queues"]

log = logging.getLogger(__name__)


#: Threads per process unless ``-t`` says otherwise (dramatiq's default).
DEFAULT_THREADS: Final = 8
#: Extra seconds a child gets beyond ``delivery.time_limit`` to stop before it is killed.
STOP_GRACE_S: Final = 10.0
#: How long a reload waits for the new children to consume before it stops the old ones anyway.
START_TIMEOUT_S: Final = 60.0
#: How often that wait looks at the stop flag and the children, in seconds.
STOP_POLL_S: Final = 0.1


def select_queues(settings: Settings, wanted: Sequence[str] | None) -> list[str]:
    """The queues to consume: ``wanted`` (checked against the configuration) or all of them.

    Raises:
      ValueError: ``wanted`` names a queue that is not ``queues.realtime`` or ``queues.domain``.
    """
    known = [settings.queues.realtime, settings.queues.domain]
    if not wanted:
        return known
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise ValueError(f"unknown queue(s) {', '.join(unknown)}; configured: {', '.join(known)}")
    return list(dict.fromkeys(wanted))


def run(loaded: Loaded, args: argparse.Namespace) -> int:
    """Run the supervisor and its worker processes until SIGTERM/SIGINT; returns the exit code."""
    setup_logging()
    settings = loaded.settings
    # The supervisor's own errors (a worker process died, ...); each child initialises its own.
    init_sentry(settings.sentry, "worker")
    try:
        queues = select_queues(settings, getattr(args, "queues", None))
    except ValueError as exc:
        log_event(log, "worker_config_error", logging.ERROR, error=exc)
        return RET_CONFIG
    processes = getattr(args, "processes", None) or os.cpu_count() or 1
    threads = getattr(args, "threads", None) or DEFAULT_THREADS
    if processes < 1 or threads < 1:
        log_event(log, "worker_config_error", logging.ERROR, error="processes and threads must be >= 1")
        return RET_CONFIG

    stop, reload = threading.Event(), threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        (reload if signum == signal.SIGHUP else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    metrics_dir = tempfile.mkdtemp(prefix="fechatter-notify-metrics-")
    # Children inherit the environment at spawn: prometheus_client then writes their values
    # to files there, which the supervisor sums (multiprocess mode).
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    children: list[multiprocessing.process.BaseProcess] = []
    exposition = Exposition(settings, metrics_dir, lambda: bool(children) and all(c.is_alive() for c in children))
    try:
        exposition.start()
    except PortInUse as exc:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        return report_port_in_use(log, "worker", exc, loaded.origins)
    fleet = _registration(settings, queues)  # `fechatter-notify top` finds this supervisor (runtime.fleet)
    children += _spawn(settings, queues, threads, processes)
    log_event(log, "worker_supervisor_started", processes=processes, threads=threads,
              queues=",".join(queues), namespace=settings.redis.namespace)
    code = RET_OK
    try:
        while not stop.is_set():
            if reload.is_set():
                reload.clear()
                settings = _restart(settings, children, threads, processes, args, stop)
                continue
            done = multiprocessing.connection.wait([c.sentinel for c in children], timeout=0.5)
            if done and not stop.is_set() and not reload.is_set():
                dead = [c for c in children if not c.is_alive()]
                log_event(log, "worker_process_died", logging.ERROR,
                          pids=",".join(str(c.pid) for c in dead),
                          exitcodes=",".join(str(c.exitcode) for c in dead))
                code = RET_RUNTIME
                break
    finally:
        _stop(children, settings.delivery.time_limit + STOP_GRACE_S)
        fleet.stop_thread(close_client=True)
        exposition.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    log_event(log, "worker_supervisor_stopped", code=code)
    return code


def _registration(settings: Settings, queues: list[str]) -> Registration:
    """This supervisor's record in Redis, kept alive from a thread (its children are not registered:
    the supervisor serves their summed metrics)."""
    from workers.broker import redis_client

    port = settings.metrics.worker_port
    fleet = Registration("worker", settings.redis.namespace, details={"queues": queues},
                         metrics_url=advertised_url(settings.metrics.host, port) if port else None)
    fleet.start_thread(redis_client(settings))
    return fleet


def _restart(settings: Settings, children: list[multiprocessing.process.BaseProcess], threads: int,
             processes: int, args: argparse.Namespace, stop: threading.Event) -> Settings:
    """SIGHUP (dramatiq's convention): re-read the configuration and replace every worker process.

    The old processes are told to stop only once the new ones consume, so the queues are never
    without consumers; the old ones finish their running jobs and requeue what they prefetched.
    An invalid configuration is refused and the running processes stay. Returns the settings
    now in effect (``children`` is updated in place).
    """
    new = reload_settings_until(config_path(args), stop)  # SIGTERM meanwhile: stop, not wait
    if new is None:
        return settings
    try:
        queues = select_queues(new, getattr(args, "queues", None))
    except ValueError as exc:
        log_event(log, "config_reload_refused", logging.ERROR, reason=str(exc))
        return settings
    old = list(children)
    started: list[multiprocessing.synchronize.Event] = []
    children[:] = _spawn(new, queues, threads, processes, started)
    log_event(log, "worker_processes_restarting", old_pids=",".join(str(c.pid) for c in old),
              new_pids=",".join(str(c.pid) for c in children))
    # A spawned process takes seconds to import and connect: stopping the old ones before the new
    # ones consume would leave the queues without consumers that long.
    _wait_started(children, started, stop)
    _stop(old, settings.delivery.time_limit + STOP_GRACE_S)
    log_event(log, "config_reloaded", processes=processes, queues=",".join(queues))
    return new


def _spawn(settings: Settings, queues: list[str], threads: int, processes: int,
           started: list[multiprocessing.synchronize.Event] | None = None) -> list[multiprocessing.process.BaseProcess]:
    """Start ``processes`` children; with ``started``, each gets an event it sets once it consumes."""
    from workers.process import serve

    ctx = multiprocessing.get_context("spawn")
    children: list[multiprocessing.process.BaseProcess] = []
    for index in range(processes):
        event = None
        if started is not None:
            event = ctx.Event()
            started.append(event)
        child = ctx.Process(target=serve, args=(settings, queues, threads, event),
                            name=f"fechatter-notify-worker-{index}")
        child.start()
        children.append(child)
    return children


def _wait_started(children: list[multiprocessing.process.BaseProcess], started: list[multiprocessing.synchronize.Event],
                  stop: threading.Event) -> None:
    """Until every new child consumes, or one died (the supervisor's loop then exits as for any
    dead child), or SIGTERM, or :data:`START_TIMEOUT_S` passed (logged; the old ones stop anyway)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not all(event.is_set() for event in started):
        dead = [c for c in children if not c.is_alive()]
        if stop.is_set() or dead or time.monotonic() > deadline:
            if not stop.is_set():
                log_event(log, "worker_processes_not_started", logging.WARNING,
                          reason="a new process died" if dead else f"not consuming after {START_TIMEOUT_S:.0f}s")
            return
        next(event for event in started if not event.is_set()).wait(STOP_POLL_S)


def _stop(children: list[multiprocessing.process.BaseProcess], timeout: float) -> None:
    for child in children:
        if child.is_alive() and child.pid is not None:
            os.kill(child.pid, signal.SIGTERM)
    for child in children:
        child.join(timeout)
        if child.is_alive():
            log_event(log, "worker_process_killed", logging.WARNING, pid=child.pid)
            child.kill()
            child.join()
