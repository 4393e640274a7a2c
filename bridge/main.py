"""``fechatter-notify bridge``: run the bridge until SIGTERM/SIGINT.

Exit codes: :data:`RET_OK` after a graceful stop, :data:`RET_REFUSED` when JetStream is not as
the settings describe (``provision: verify``) or NATS never answered, :data:`RET_RUNTIME` on a
crash, :data:`~runtime.ports.RET_PORT_IN_USE` when ``health.port`` or ``metrics.port``
is held by another process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from bridge.app import Bridge
from bridge.errors import BridgeError
from runtime import (
    RET_OK,
    RET_REFUSED,
    RET_RUNTIME,
    OffLoopReload,
    PortInUse,
    config_path,
    dump_tasks_on_sigusr2,
    init_sentry,
    log_event,
    reload_settings,
    report_port_in_use,
    setup_logging,
    tune_gc,
)
from settings import Loaded, Settings

__all__ = ["RET_OK", "RET_REFUSED", "RET_RUNTIME", "run"]


log = logging.getLogger("bridge.main")


async def serve(settings: Settings, reload: Callable[[], Settings | None] | None = None) -> int:
    """Run one bridge until SIGTERM/SIGINT; on SIGHUP apply ``reload()``'s settings; return the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    dump_tasks_on_sigusr2(loop)
    bridge = Bridge(settings)
    if reload is not None:
        # Read off the loop: pulls, heartbeats and /healthz go on while the file is read.
        loop.add_signal_handler(signal.SIGHUP, OffLoopReload(reload, lambda new: _reload(bridge, new)))
    try:
        await bridge.run(stop)
    except BridgeError as exc:
        if stop.is_set():  # SIGTERM while NATS or JetStream was not answering: still a clean stop
            log_event(log, "bridge_stopped_while_starting", reason=str(exc))
            return RET_OK
        log_event(log, "bridge_refused_to_start", logging.ERROR, reason=str(exc))
        print(f"fechatter-notify bridge: {exc}", file=sys.stderr)
        return RET_REFUSED
    return RET_OK


def _reload(bridge: Bridge, new: Settings) -> None:
    """SIGHUP, once the file was read and found valid: apply it (a refused one never gets here)."""
    if not bridge.started.is_set():
        log_event(log, "config_reload_ignored", logging.WARNING, reason="the bridge is still starting")
        return
    bridge.reload(new)


def run(loaded: Loaded, args: argparse.Namespace) -> int:
    """The ``bridge`` subcommand (called by :mod:`fechatter_notify.cli`)."""
    setup_logging()
    init_sentry(loaded.settings.sentry, "bridge")  # before Bridge() builds its dramatiq broker
    path = config_path(args)
    tune_gc()
    try:
        return asyncio.run(serve(loaded.settings, lambda: reload_settings(path)))
    except PortInUse as exc:
        return report_port_in_use(log, "bridge", exc, loaded.origins)
    except Exception:
        log.exception("bridge crashed")
        return RET_RUNTIME
