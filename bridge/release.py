"""Provisioning as a release step: every stream and durable the settings declare, then close.

``fechatter-notify provision`` (Procfile ``release:``) calls :func:`provision_once`. It always
provisions (``auto``) whatever ``jetstream.provision`` says, with the bridge's own
:class:`~bridge.provision.Provisioner`, so both compare the server's config field by field the same
way. NATS or JetStream not answering is retried until ``within`` runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from prometheus_client import CollectorRegistry

from bridge.connection import Connection
from bridge.errors import JetStreamTimeout, JetStreamUnavailable
from bridge.jsapi import JetStreamApi
from bridge.metrics import BridgeMetrics
from bridge.provision import Provisioner
from runtime import backoff_delay, log_event
from settings import Settings

__all__ = ["provision_once"]

log = logging.getLogger("fechatter_notify.provision")

#: Backoff cap between attempts while JetStream is unavailable, in seconds.
RETRY_CAP_S: Final = 5.0


async def provision_once(settings: Settings, within: float) -> None:
    """Connect, provision every stream and consumer (``auto``), and close.

    Raises:
      BridgeError: NATS never answered, JetStream stayed unavailable for ``within`` seconds, or the
        server refused or did not keep the settings (:class:`~bridge.errors.ProvisionRefused`).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    timer = loop.call_later(within, stop.set)
    connection = Connection(settings.nats, BridgeMetrics(CollectorRegistry()))
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
            delay = backoff_delay(attempt, 0.2, RETRY_CAP_S)
            log_event(log, "provision_retry", logging.WARNING, attempt=attempt + 1, retry_in_s=round(delay, 3),
                      reason=str(exc))
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                raise
