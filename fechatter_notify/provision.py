"""``fechatter-notify provision`` (Procfile ``release:``): create or update the JetStream streams
and durable pull consumers the settings declare, then exit.

Heroku-style platforms run the ``release`` process once before each deploy; bridges started
after it can run with ``jetstream.provision: verify`` and never change JetStream themselves.
It always provisions (``auto``) whatever ``jetstream.provision`` says, with the bridge's own
:class:`bridge.provision.Provisioner` (through :func:`bridge.provision_once`), so both compare the
server's config field by field the same way. NATS or JetStream not answering is retried until ``--timeout``.

Exit codes: :data:`RET_OK` when every stream and consumer is as described, :data:`RET_REFUSED`
(the bridge's "JetStream not as described") when the server refused or did not keep a setting,
or did not answer in time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import Final

from bridge import BridgeError, provision_once
from runtime import RET_OK, RET_REFUSED, log_event, setup_logging
from settings import Loaded

__all__ = ["DEFAULT_TIMEOUT_S", "add_arguments", "run"]

log = logging.getLogger("fechatter_notify.provision")

#: How long NATS and JetStream may take to answer, in seconds (a release step must end).
DEFAULT_TIMEOUT_S: Final = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's own options."""
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"give up when NATS/JetStream has not answered by then (default {DEFAULT_TIMEOUT_S:g})")


def run(loaded: Loaded, args: argparse.Namespace) -> int:
    """The ``provision`` subcommand (called by :mod:`fechatter_notify.cli`)."""
    setup_logging()
    settings = loaded.settings
    started = time.monotonic()
    try:
        asyncio.run(provision_once(settings, getattr(args, "timeout", DEFAULT_TIMEOUT_S)))
    except BridgeError as exc:
        log_event(log, "provision_failed", logging.ERROR, reason=str(exc))
        print(f"fechatter-notify provision: {exc}", file=sys.stderr)
        return RET_REFUSED
    js = settings.jetstream
    log_event(log, "provisioned", streams=",".join(s.name for s in js.streams),
              consumers=",".join(f"{c.stream}/{c.durable}" for c in js.consumers),
              took_s=round(time.monotonic() - started, 3))
    return RET_OK
