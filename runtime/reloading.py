"""SIGHUP in every process: load the configuration again, or say why not and keep running.

Each process decides what it can apply live (:mod:`bridge.reload`, the gateway's token
verification, the worker supervisor's restart of its processes); reading the file, and
refusing a broken one with its problems in the log, is the same everywhere and lives here.

Reading never happens on a serving loop: :class:`OffLoopReload` (bridge, gateway) reads in a
worker thread and applies on the loop; :func:`reload_settings_until` (worker supervisor) gives
up waiting when the process is told to stop. The reader is bounded (size, nodes, aliases; see
:mod:`settings.safe_yaml`), so a reload is fast whatever the file holds, and a refused one
changes nothing: the new settings are applied only once they are complete and valid.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
from collections.abc import Callable

from runtime.log import log_event
from settings import ConfigError, ConfigFileError, Settings, load_settings

__all__ = ["OffLoopReload", "config_path", "reload_settings", "reload_settings_until"]

log = logging.getLogger("fechatter_notify.reload")

#: How often a supervisor waiting for a reload looks at its stop flag, in seconds.
STOP_POLL_S = 0.1


def config_path(args: argparse.Namespace) -> str | None:
    """The ``--config`` the process was started with (None: the default search again)."""
    return getattr(args, "sub_config", None) or getattr(args, "config", None)


def reload_settings(path: str | None) -> Settings | None:
    """The configuration at ``path`` (and the environment), or None after logging why not."""
    try:
        return load_settings(path).settings
    except ConfigFileError as exc:
        (problem,) = exc.problems
        log_event(log, "config_reload_refused", logging.ERROR, code=problem.code, origin=problem.origin,
                  reason=problem.message)
        return None
    except ConfigError as exc:
        errors = [p for p in exc.problems if p.level == "error"]
        log_event(log, "config_reload_refused", logging.ERROR, errors=len(errors))
        for problem in errors:  # without the value: a log line never carries a setting's value
            log_event(log, "config_problem", logging.ERROR, code=problem.code, path=problem.path,
                      origin=problem.origin, detail=problem.message)
        return None
    except Exception as exc:  # a bug in a check must not take a running process down with it
        log.exception("reading the configuration failed")
        log_event(log, "config_reload_refused", logging.ERROR, reason=type(exc).__name__)
        return None


def reload_settings_until(path: str | None, stop: threading.Event) -> Settings | None:
    """:func:`reload_settings` in a thread, abandoned (None) as soon as ``stop`` is set.

    For a synchronous supervisor whose signal handlers only set flags: SIGTERM during a reload
    still stops the process promptly.
    """
    result: list[Settings | None] = []
    reader = threading.Thread(target=lambda: result.append(reload_settings(path)),
                              name="config-reload", daemon=True)
    reader.start()
    while reader.is_alive():
        if stop.is_set():
            log_event(log, "config_reload_abandoned", logging.WARNING, reason="stopping")
            return None
        reader.join(STOP_POLL_S)
    return result[0] if result else None


class OffLoopReload:
    """A SIGHUP handler for an asyncio loop: read in a thread, then ``apply`` on the loop.

    The loop goes on serving while the file is read. SIGHUPs that arrive during a reload are
    folded into one more reload after it, so the last signal always sees the latest file.
    """

    def __init__(self, load: Callable[[], Settings | None], apply: Callable[[Settings], object]) -> None:
        self._load = load
        self._apply = apply
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def __call__(self) -> None:
        """The signal handler (runs on the loop; never blocks)."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="config-reload")

    async def _run(self) -> None:
        while True:
            self._again = False
            new = await asyncio.to_thread(self._load)
            if new is not None:
                try:
                    self._apply(new)
                except Exception:  # the process goes on with what it had; the log says why
                    log.exception("applying the reloaded configuration failed")
            if not self._again:
                return
