"""``fechatter-notify bridge``: run the bridge until SIGTERM/SIGINT.

Exit codes: :data:`RET_OK` after a graceful stop, :data:`RET_REFUSED` when JetStream is not as
the settings describe (``provision: verify``) or NATS never answered, :data:`RET_RUNTIME` on a
crash.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Final

from bridge.app import Bridge
from bridge.errors import BridgeError
from fechatter_notify.log import log_event, setup_logging
from settings import Loaded
from settings.model import Settings

__all__ = ["RET_OK", "RET_REFUSED", "RET_RUNTIME", "run"]

RET_OK: Final = 0
RET_RUNTIME: Final = 1
RET_REFUSED: Final = 3

log = logging.getLogger("bridge.main")


def init_sentry(settings: Settings) -> None:
    """Initialise Sentry (with the dramatiq integration) when a DSN is set.

    Must run before the bridge builds its broker object: the integration patches
    ``Broker.__init__`` to insert the middleware that stamps ``_sentry_headers``.
    """
    if settings.sentry.dsn is None:
        return
    import sentry_sdk
    from sentry_sdk.integrations.dramatiq import DramatiqIntegration

    sentry_sdk.init(
        dsn=settings.sentry.dsn.get_secret_value(),
        environment=settings.sentry.environment,
        release=settings.sentry.release,
        traces_sample_rate=settings.sentry.traces_sample_rate,
        send_default_pii=settings.sentry.send_default_pii,
        integrations=[DramatiqIntegration()],
    )


async def serve(settings: Settings) -> int:
    """Run one bridge until a signal; return the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bridge = Bridge(settings)
    try:
        await bridge.run(stop)
    except BridgeError as exc:
        log_event(log, "bridge_refused_to_start", logging.ERROR, reason=str(exc))
        print(f"fechatter-notify bridge: {exc}", file=sys.stderr)
        return RET_REFUSED
    return RET_OK


def run(loaded: Loaded, args: argparse.Namespace) -> int:
    """The ``bridge`` subcommand (called by :mod:`fechatter_notify.cli`)."""
    setup_logging()
    init_sentry(loaded.settings)
    try:
        return asyncio.run(serve(loaded.settings))
    except Exception:
        log.exception("bridge crashed")
        return RET_RUNTIME
