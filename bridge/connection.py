"""The NATS connection: settings' options, capped exponential backoff, one log line per state change.

nats-py exceptions stop here. Connection events fan out to listeners (the pull loops pause on
disconnect and re-issue their pulls on reconnect, as NATS ADR-37 prescribes: a pull request does not
survive a reconnect, docs/nats-pitfalls.md#pull-requests-do-not-survive-reconnects). The initial
connect retries with
``min(base * 2**n, cap)`` +- jitter; reconnects use the same schedule through nats-py's
``reconnect_to_server_handler``. ``max_reconnects: -1`` never gives up (nats-py closes the client
for good after 60 attempts; Fechatter's old notify server stopped at 10 and then sat dead while its
health check said healthy, docs/nats-pitfalls.md#connection-options).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Final

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.client import Server

from bridge.errors import NatsUnavailable
from bridge.metrics import BridgeMetrics
from runtime import backoff_delay, connect_options, log_event, server_address, stop_task
from settings import NatsConnection

__all__ = ["Connection"]

log = logging.getLogger("bridge.connection")

#: An error reported this shortly (seconds) before a disconnect is taken for its cause.
_CAUSE_WINDOW_S: Final = 2.0


class _Stopped(Exception):
    """A stop request ended a connect attempt."""


class Connection:
    """Owns the NATS client of one bridge process.

    Parameters:
      settings(NatsConnection): The ``nats`` section.
      metrics(BridgeMetrics): Reconnect and connection-event counters.
    """

    def __init__(self, settings: NatsConnection, metrics: BridgeMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.nc: NATS = NATS()
        self.on_disconnected: list[Callable[[], None]] = []
        self.on_reconnected: list[Callable[[], None]] = []
        self.on_closed: list[Callable[[], None]] = []
        self._slow_logged = 0
        #: Between the disconnected and the reconnected callbacks: errors then are failed reconnect
        #: attempts, logged sparingly and counted here.
        self._down = False
        self._errors_while_down = 0
        #: The last error reported while connected, for the disconnect line (nats-py reports the
        #: socket's error through error_cb just before it calls disconnected_cb).
        self._last_error = ("", 0.0)
        #: host:port of the server last connected to (nats-py forgets it while reconnecting).
        self._last_server = "-"
        self._closing = False
        #: False until a connect succeeded: a client that never connected has nothing to drain
        #: (nats-py's drain() then fails with "Client.connect must be called first").
        self._ever_connected = False

    @property
    def connected(self) -> bool:
        """True while the connection is up."""
        return bool(self.nc.is_connected)

    def _server(self) -> str:
        if self.nc.connected_url is not None:
            self._last_server = server_address(self.nc.connected_url)
        return self._last_server

    def _disconnect_reason(self) -> str:
        """Why the connection went down: a stale connection (unanswered PINGs) says so."""
        err = self.nc.last_error
        if err is not None:
            return _describe(err)
        # nats-py does not record a stale connection as an error: its PING counter still shows it.
        unanswered = getattr(self.nc, "_pings_outstanding", 0)
        s = self._settings
        if isinstance(unanswered, int) and unanswered > s.max_outstanding_pings:
            return (f"stale connection: {unanswered - 1} PINGs unanswered at {s.ping_interval}s intervals "
                    f"(max_outstanding_pings {s.max_outstanding_pings}); the path or the server is silent")
        text, at = self._last_error
        if text and time.monotonic() - at < _CAUSE_WINDOW_S:
            return text
        return "connection lost"

    def _options(self) -> dict[str, Any]:
        return {
            **connect_options(self._settings),
            "reconnect_to_server_handler": self._next_server,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "closed_cb": self._on_closed,
            "lame_duck_mode_cb": self._on_lame_duck,
            # Subjects come from validated settings and from the server (ack replies): checking
            # each publish with a regex costs ~2 us per ack on the hot path.
            "skip_subject_validation": True,
        }

    def _next_server(self, servers: list[Server], info: dict[str, Any]) -> tuple[Server | None, float]:
        # The least-tried server, after min(base * 2**n, cap) +- jitter.
        server = min(servers, key=lambda srv: srv.reconnects)
        s = self._settings
        return server, backoff_delay(server.reconnects, s.reconnect_backoff_base, s.reconnect_backoff_cap,
                                     s.reconnect_jitter)

    async def connect(self, stop: asyncio.Event | None = None) -> NATS:
        """Connect, retrying with capped exponential backoff and jitter.

        Parameters:
          stop(asyncio.Event | None): Give up when set (shutdown during start).

        Raises:
          NatsUnavailable: ``max_reconnects`` attempts failed (never with -1), or ``stop`` was set.
        """
        s = self._settings
        attempt = 0
        while True:
            self.nc = NATS()
            try:
                await self._attempt(stop)
            except _Stopped:
                with contextlib.suppress(nats.errors.Error, OSError):
                    await self.nc.close()
                raise NatsUnavailable("stopped while connecting") from None
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                if 0 <= s.max_reconnects <= attempt:
                    raise NatsUnavailable(f"no NATS server answered after {attempt + 1} attempts ({reason})") from None
                delay = backoff_delay(attempt, s.reconnect_backoff_base, s.reconnect_backoff_cap, s.reconnect_jitter)
                log_event(log, "nats_connect_failed", logging.WARNING, servers=",".join(s.servers),
                          attempt=attempt + 1, retry_in_s=round(delay, 3), reason=reason)
                attempt += 1
                with contextlib.suppress(nats.errors.Error):
                    await self.nc.close()
                if stop is None:
                    await asyncio.sleep(delay)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    raise NatsUnavailable(f"stopped while connecting ({reason})") from None
                continue
            self._ever_connected = True
            self._metrics.connection_events.labels("connected").inc()
            log_event(log, "nats_connected", server=self._server(), attempt=attempt + 1,
                      server_version=str(self.nc.connected_server_version))
            return self.nc

    async def _attempt(self, stop: asyncio.Event | None) -> None:
        # nats-py's connect() itself retries forever with max_reconnects -1 and never looks at
        # a stop request: race it against ``stop`` so SIGTERM during an outage ends the start.
        connecting = asyncio.ensure_future(self.nc.connect(**self._options()))
        if stop is None:
            await connecting
            return
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not connecting.done():
            await stop_task(connecting)
            raise _Stopped
        connecting.result()

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            subject = exc.sub.subject if exc.sub is not None else exc.subject
            self._metrics.slow_consumer.labels(subject).inc()
            self._slow_logged += 1
            if self._slow_logged in (1, 10) or self._slow_logged % 1000 == 0:
                log_event(log, "nats_slow_consumer", logging.WARNING, server=self._server(), subject=subject,
                          drops_so_far=self._slow_logged, reason="pending limit reached; messages dropped")
            return
        self._metrics.connection_events.labels("error").inc()
        if self._down and not self._closing:
            # Reconnect attempts failing: one line for the first, then 1 in 10 and 1 in 100, so an
            # outage of hours is a few lines (the count is in nats_reconnected and the metric).
            self._errors_while_down += 1
            n = self._errors_while_down
            if n in (1, 10) or n % 100 == 0:
                log_event(log, "nats_reconnect_failing", logging.WARNING, server=self._server(), failures_so_far=n,
                          reason=_describe(exc))
            return
        self._last_error = (_describe(exc), time.monotonic())
        log_event(log, "nats_error", logging.WARNING, server=self._server(), reason=self._last_error[0])

    async def _on_disconnected(self) -> None:
        self._metrics.connection_events.labels("disconnected").inc()
        self._down = True
        self._errors_while_down = 0
        if self._closing:
            log_event(log, "nats_disconnected", server=self._server(), reason="shutdown")
        else:
            log_event(log, "nats_disconnected", logging.WARNING, server=self._server(),
                      reason=self._disconnect_reason())
        for callback in self.on_disconnected:
            callback()

    async def _on_reconnected(self) -> None:
        self._metrics.reconnects.inc()
        self._metrics.connection_events.labels("reconnected").inc()
        log_event(log, "nats_reconnected", server=self._server(), attempt=self.nc.stats.get("reconnects", 0),
                  failed_attempts=self._errors_while_down)
        self._down = False
        self._errors_while_down = 0
        for callback in self.on_reconnected:
            callback()

    async def _on_closed(self) -> None:
        self._metrics.connection_events.labels("closed").inc()
        err = self.nc.last_error
        log_event(log, "nats_closed", server=self._server(), reason=f"{type(err).__name__}: {err}" if err else "closed")
        for callback in self.on_closed:
            callback()

    async def _on_lame_duck(self) -> None:
        self._metrics.connection_events.labels("lame_duck").inc()
        log_event(log, "nats_lame_duck", logging.WARNING, server=self._server(),
                  reason="server is shutting down; the client will move to another server")

    async def flush(self, within: float) -> None:
        """Flush what is buffered (acks), waiting at most ``within`` seconds; errors are logged."""
        try:
            await self.nc.flush(timeout=max(math.ceil(within), 1))
        except (TimeoutError, nats.errors.Error) as exc:
            log_event(log, "nats_flush_failed", logging.WARNING, reason=f"{type(exc).__name__}: {exc}")

    async def close(self, within: float) -> None:
        """Drain and close (within ``within`` seconds), falling back to a plain close."""
        if self.nc.is_closed or not self._ever_connected:
            return
        self._closing = True
        # A stop is clean whatever the connection's state: during an outage nats-py's drain and
        # close meet a reconnecting client or a reset socket (ConnectionResetError), which must
        # not turn a requested stop into a crash. What was not acked is redelivered later.
        if self.nc.is_connected:
            try:
                await asyncio.wait_for(self.nc.drain(), within)
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                log_event(log, "nats_drain_failed", logging.WARNING, reason=f"{type(exc).__name__}: {exc}")
        if not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.close(), within)
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                log_event(log, "nats_close_failed", logging.WARNING, reason=f"{type(exc).__name__}: {exc}")


def _describe(exc: BaseException) -> str:
    """``Type: message``, or the type alone when the message is empty (asyncio's TimeoutError)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
