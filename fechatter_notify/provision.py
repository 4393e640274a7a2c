"""``fechatter-notify provision`` (Procfile ``release:``): create or update the JetStream streams
and durable pull consumers the settings declare, then exit.

Heroku-style platforms run the ``release`` process once before each deploy; bridges started
after it can run with ``jetstream.provision: verify`` and never change JetStream themselves.
It always provisions (``auto``) whatever ``jetstream.provision`` says, with the bridge's own
:class:`bridge.provision.Provisioner`, so both compare the server's config field by field the
same way. NATS or JetStream not answering is retried until ``--timeout``.

Exit codes: :data:`RET_OK` when every stream and consumer is as described, :data:`RET_REFUSED`
(the bridge's "JetStream not as described") when the server refused or did not keep a setting,
or did not answer in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from typing import Final

from prometheus_client import CollectorRegistry

from bridge.backoff import backoff_delay
from bridge.connection import Connection
from bridge.errors import BridgeError, JetStreamTimeout, JetStreamUnavailable
from bridge.jsapi import JetStreamApi
from bridge.metrics import Metrics
from bridge.provision import Provisioner
from runtime import log_event, setup_logging
from settings import Loaded
from settings.model import Settings

__all__ = ["DEFAULT_TIMEOUT", "RET_OK", "RET_REFUSED", "provision", "run"]

log = logging.getLogger("fechatter_notify.provision")

RET_OK: Final = 0
RET_REFUSED: Final = 3
#: How long NATS and JetStream may take to answer, in seconds (a release step must end).
DEFAULT_TIMEOUT: Final = 60.0
#: Backoff cap between attempts while JetStream is unavailable, in seconds.
RETRY_CAP: Final = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's own options."""
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"give up when NATS/JetStream has not answered by then (default {DEFAULT_TIMEOUT:g})")


async def provision(settings: Settings, within: float) -> None:
    """Connect, provision every stream and consumer (``auto``), and close.

    Raises:
      BridgeError: NATS never answered, JetStream stayed unavailable for ``within`` seconds, or the
        server refused or did not keep the settings (:class:`~bridge.errors.ProvisionRefused`).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    timer = loop.call_later(within, stop.set)
    connection = Connection(settings.nats, Metrics(CollectorRegistry()))
    try:
        nc = await connection.connect(stop)
        jetstream = settings.jetstream.model_copy(update={"provision": "auto"})
        await _provision(Provisioner(JetStreamApi(nc), jetstream), stop)
    finally:
        timer.cancel()
        await connection.close(2.0)


async def _provision(provisioner: Provisioner, stop: asyncio.Event) -> None:
    # JetStream may answer later than NATS (start-up order): retry what is transient. A refusal
    # (400: a field the server cannot change, say) will not change by waiting: it ends the run.
    attempt = 0
    while True:
        try:
            await provisioner.prepare()
            return
        except (JetStreamUnavailable, JetStreamTimeout) as exc:
            delay = backoff_delay(attempt, 0.2, RETRY_CAP)
            log_event(log, "provision_retry", logging.WARNING, attempt=attempt + 1, retry_in_s=round(delay, 3),
                      reason=str(exc))
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                raise


def run(loaded: Loaded, args: argparse.Namespace) -> int:
    """The ``provision`` subcommand (called by :mod:`fechatter_notify.cli`)."""
    setup_logging()
    settings = loaded.settings
    started = time.monotonic()
    try:
        asyncio.run(provision(settings, getattr(args, "timeout", DEFAULT_TIMEOUT)))
    except BridgeError as exc:
        log_event(log, "provision_failed", logging.ERROR, reason=str(exc))
        print(f"fechatter-notify provision: {exc}", file=sys.stderr)
        return RET_REFUSED
    js = settings.jetstream
    log_event(log, "provisioned", streams=",".join(s.name for s in js.streams),
              consumers=",".join(f"{c.stream}/{c.durable}" for c in js.consumers),
              took_s=round(time.monotonic() - started, 3))
    return RET_OK
