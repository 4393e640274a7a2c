"""Best-effort NATS connection for presence announcements.

Presence is published on core NATS in Fechatter's own dialect; the bridge and workers turn it
into notifications for the user's chat partners. Streaming never waits for NATS: while it is
unreachable, presence changes are logged, counted and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Final

import nats
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError

from gateway.metrics import GatewayMetrics
from runtime import connect_options, log_event, server_address, stop_task
from settings import NatsConnection

log = logging.getLogger(__name__)

#: Subject for a user's presence change (core NATS, not captured by any stream).
PRESENCE_SUBJECT: Final = "fechatter.realtime.user.{user_id}.presence"
#: Repeated NATS errors are logged at most this often, in seconds.
ERROR_LOG_INTERVAL_S: Final = 30.0
#: How long shutdown waits for buffered publishes to flush, in seconds.
CLOSE_TIMEOUT_S: Final = 2.0


def presence_payload(user_id: int, status: str, last_seen: str) -> bytes:
    """``{"UserPresence":{"user_id":9,"status":"online","last_seen":"…+00:00"}}``."""
    body = {"UserPresence": {"user_id": user_id, "status": status, "last_seen": last_seen}}
    return json.dumps(body, separators=(",", ":")).encode()


class NatsLink:
    """Connects in the background, reconnects on its own, publishes presence if it can."""

    def __init__(self, config: NatsConnection, metrics: GatewayMetrics) -> None:
        self._config = config
        self._metrics = metrics
        self._client: NatsClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_error_log = -ERROR_LOG_INTERVAL_S
        self._warned_down = False

    @property
    def connected(self) -> bool:
        """True while the NATS connection is up."""
        return self._client is not None and self._client.is_connected

    async def start(self) -> None:
        """Start connecting; returns at once."""
        self._task = asyncio.create_task(self._connect(), name="gateway-nats")

    async def stop(self) -> None:
        """Flush what is buffered (briefly) and close."""
        task, self._task = self._task, None
        # Python 3.11's asyncio.wait_for (inside nats.connect) can swallow a cancellation that
        # lands as a refused connect completes, as redis-py can: cancel until it is done.
        await stop_task(task)
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            with contextlib.suppress(NatsError, OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await client.flush()
            with contextlib.suppress(NatsError, OSError):
                await client.close()

    async def _connect(self) -> None:
        try:
            self._client = await nats.connect(
                **connect_options(self._config, name_suffix="-gateway"),
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
        except (NatsError, OSError) as exc:
            # Only when max_reconnect_attempts is finite: presence stays off for this process.
            log_event(log, "nats_unavailable", logging.WARNING, error=exc, presence="disabled")
            return
        self._warned_down = False
        log_event(log, "nats_connected", server=server_address(self._client.connected_url))

    async def publish_presence(self, user_id: int, status: str, last_seen: str) -> bool:
        """Publish a UserPresence event; False (logged once per outage) when NATS is down."""
        client = self._client
        if client is None or not client.is_connected:
            self._metrics.presence_publish_failures.inc()
            if not self._warned_down:
                self._warned_down = True
                log_event(log, "presence_not_published", logging.WARNING, user_id=user_id,
                          status=status, reason="nats not connected")
            return False
        try:
            await client.publish(PRESENCE_SUBJECT.format(user_id=user_id),
                                 presence_payload(user_id, status, last_seen))
        except (NatsError, OSError) as exc:
            self._metrics.presence_publish_failures.inc()
            log_event(log, "presence_not_published", logging.WARNING, user_id=user_id, error=exc)
            return False
        self._metrics.presence_published.labels(status).inc()
        return True

    async def _on_error(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_INTERVAL_S:
            self._last_error_log = now
            log_event(log, "nats_error", logging.WARNING, error=exc)

    async def _on_disconnected(self) -> None:
        log_event(log, "nats_disconnected", logging.WARNING)

    async def _on_reconnected(self) -> None:
        self._warned_down = False
        url = self._client.connected_url if self._client is not None else None
        log_event(log, "nats_reconnected", server=server_address(url))
