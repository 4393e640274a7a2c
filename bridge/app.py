"""The bridge's lifecycle in one place: start in dependency order, run, stop within a bound.

Start: HTTP endpoints (so ``/healthz`` answers at once) -> Redis (a failed first ping opens the
circuit: the bridge starts and pulls once Redis answers) -> NATS (retries with backoff) ->
provision/verify JetStream (a refusal stops the start) -> max-deliveries advisories -> one pull
loop per durable -> core NATS queue-group subscriptions -> lag poller.

Stop (SIGTERM/SIGINT): stop pulling and drain the core subscriptions, settle what is in hand
(enqueue + ack), flush the acks, drain the connection, close Redis and HTTP - all within
``shutdown_timeout``. What could not be acked is redelivered by JetStream later and absorbed
by the dedupe markers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

import dramatiq
from prometheus_client import CollectorRegistry

from bridge.advisories import MaxDeliveries
from bridge.circuit import Circuit
from bridge.connection import Connection
from bridge.core import CoreSubscriber
from bridge.enqueue import Enqueuer, connect_redis
from bridge.errors import JetStreamError, RedisUnavailable
from bridge.health import HttpEndpoints
from bridge.jsapi import JetStreamApi
from bridge.lag import poll_lag
from bridge.messages import MessageFactory
from bridge.metrics import BridgeMetrics
from bridge.process import JetStreamProcessor
from bridge.provision import Provisioner
from bridge.pull import PullConsumer
from bridge.reload import ReloadPlan, apply_live, plan_reload
from events import Lane
from runtime import Registration, advertised_url, backoff_delay, log_event, stop_task
from settings import Settings

__all__ = ["DEFAULT_SHUTDOWN_TIMEOUT_S", "Bridge"]

log = logging.getLogger("bridge.app")

#: Upper bound of a graceful stop, in seconds.
DEFAULT_SHUTDOWN_TIMEOUT_S: Final = 10.0
#: How often consumer lag is polled, in seconds.
LAG_POLL_INTERVAL_S: Final = 5.0
#: Start-up retries of JetStream provisioning while JetStream is unavailable, backoff cap in seconds.
PROVISION_RETRY_CAP_S: Final = 5.0


class Bridge:
    """One bridge process.

    Parameters:
      settings(Settings): The whole configuration.
      registry(CollectorRegistry | None): Metrics registry (a fresh one when None).
      broker(dramatiq.Broker | None): Whose middleware stamp message options (see
        :class:`bridge.messages.MessageFactory`).
      shutdown_timeout(float): Bound of :meth:`shutdown`, in seconds.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        broker: dramatiq.Broker | None = None,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    ) -> None:
        self.settings = settings
        self.metrics = BridgeMetrics(registry)
        self.connection = Connection(settings.nats, self.metrics)
        self.factory = MessageFactory(broker)
        self._shutdown_timeout = shutdown_timeout
        self.enqueuer = Enqueuer.for_settings(settings)
        self.circuit = Circuit(self.enqueuer.ping, self.metrics)
        self.http = HttpEndpoints(self.readiness, self.metrics.registry,
                                  health=(settings.health.host, settings.health.port),
                                  metrics=(settings.metrics.host, settings.metrics.port))
        self.queues = {Lane.REALTIME: settings.queues.realtime, Lane.DOMAIN: settings.queues.domain}
        self.pull_consumers: list[PullConsumer] = []
        self.core: CoreSubscriber | None = None
        self.advisories: MaxDeliveries | None = None
        self._lag: asyncio.Task[None] | None = None
        self.started = asyncio.Event()
        # `fechatter-notify top` finds this bridge through its record in Redis (runtime.fleet).
        self.fleet = Registration("bridge", settings.redis.namespace, details={"queues": list(self.queues.values())})

    async def run(self, stop: asyncio.Event) -> None:
        """Start, serve until ``stop`` is set, then shut down.

        Raises:
          BridgeError: the start failed (NATS unreachable within max_reconnects, provisioning refused).
        """
        try:
            await self.start(stop)
        except BaseException:
            # The start's own error is the one to report: a shutdown of half-started parts
            # (a NATS client that never connected, say) must not replace it with its own.
            await self._shutdown_after_failed_start()
            raise
        try:
            if not stop.is_set():
                await stop.wait()
        finally:
            await self.shutdown()

    async def _shutdown_after_failed_start(self) -> None:
        try:
            await self.shutdown()
        except Exception as exc:
            log_event(log, "bridge_shutdown_failed", logging.WARNING, reason=f"{type(exc).__name__}: {exc}")

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Bring every part up in dependency order (see the module docstring)."""
        await self.http.start()
        log_event(log, "bridge_starting", health_port=self.http.health_port, metrics_port=self.http.metrics_port)
        self.fleet.set_metrics_url(advertised_url(self.settings.metrics.host, self.http.metrics_port))
        await self.fleet.start(connect_redis(self.settings.redis, socket_timeout=1.0, connect_timeout=1.0))
        try:
            await self.enqueuer.ping()
        except RedisUnavailable as exc:
            self.circuit.open(f"at start: {exc}")
        nc = await self.connection.connect(stop)
        api = JetStreamApi(nc)
        provisioner = Provisioner(api, self.settings.jetstream)
        await self._provision(provisioner, stop)
        js = self.settings.jetstream
        self.advisories = MaxDeliveries(nc, api, self.enqueuer, self.metrics, list(js.consumers),
                                        f"{self.settings.realtime.queue_group}.advisories",
                                        source=provisioner.advisories, recover=provisioner.recover_consumer)
        await self.advisories.start()
        for consumer in js.consumers:
            processor = JetStreamProcessor(
                consumer, enqueuer=self.enqueuer, factory=self.factory, circuit=self.circuit, metrics=self.metrics,
                queues=self.queues, typing_ttl=self.settings.realtime.typing_ttl,
                presence_ttl=self.settings.realtime.presence_ttl,
                max_payload_bytes=self.settings.events.max_payload_bytes,
            )
            processor.settler.count_redeliveries(self.metrics.redeliveries.labels(consumer.durable))
            puller = PullConsumer(nc, consumer, processor=processor, provisioner=provisioner, metrics=self.metrics,
                                  max_missed_heartbeats=js.max_missed_heartbeats)
            self.pull_consumers.append(puller)
            self.connection.on_disconnected.append(puller.on_disconnected)
            self.connection.on_reconnected.append(puller.on_reconnected)
            self.circuit.subscribe(puller.set_circuit_open)
            puller.set_circuit_open(self.circuit.is_open)
            await puller.start()
        if self.settings.realtime.subjects:
            self.core = CoreSubscriber(nc, self.settings.realtime, enqueuer=self.enqueuer, factory=self.factory,
                                       circuit=self.circuit, metrics=self.metrics, queues=self.queues,
                                       max_payload_bytes=self.settings.events.max_payload_bytes)
            await self.core.start()
        # A PING/PONG round trip: the server has every SUB before the bridge calls itself started
        # (core NATS published before that would find no interest and be dropped).
        await self.connection.flush(2.0)
        self._lag = asyncio.get_running_loop().create_task(
            poll_lag(api, list(js.consumers), self.metrics, LAG_POLL_INTERVAL_S), name="lag-poller")
        self.started.set()
        log_event(log, "bridge_started", consumers=",".join(c.durable for c in js.consumers),
                  core_subjects=",".join(self.settings.realtime.subjects), circuit_open=self.circuit.is_open)

    async def _provision(self, provisioner: Provisioner, stop: asyncio.Event | None) -> None:
        # JetStream may come up after NATS accepts clients (start-up order): retry what is transient.
        attempt = 0
        while True:
            try:
                await provisioner.prepare()
                return
            except JetStreamError as exc:
                delay = backoff_delay(attempt, 0.2, PROVISION_RETRY_CAP_S)
                log_event(log, "provision_retry", logging.WARNING, attempt=attempt + 1, retry_in_s=round(delay, 3),
                          reason=str(exc))
                attempt += 1
                if stop is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set():
                        raise
                else:
                    await asyncio.sleep(delay)

    def reload(self, new: Settings) -> ReloadPlan:
        """Apply what can change live from ``new`` (see :mod:`bridge.reload`); name the rest.

        ``settings`` becomes what the bridge runs with: the old ones with the live fields of
        ``new``, so the next reload is compared with what is in effect.
        """
        plan = plan_reload(self.settings, new)
        if plan.live:
            self.settings = apply_live(self.settings, new)
            js = self.settings.jetstream
            by_durable = {(c.stream, c.durable): c for c in js.consumers}
            for puller in self.pull_consumers:
                consumer = by_durable.get((puller.consumer.stream, puller.name))
                if consumer is not None:
                    puller.retune(consumer, js.max_missed_heartbeats)
            if self.core is not None:
                self.core.retune(self.settings.realtime)
        log_event(log, "config_reloaded", applied=",".join(plan.live) or "-")
        if plan.restart:
            log_event(log, "config_needs_restart", logging.WARNING, fields=",".join(plan.restart))
        return plan

    async def readiness(self) -> dict[str, str | None]:
        """Every readiness check: None when fine, else the problem."""
        checks: dict[str, str | None] = {}
        checks["nats"] = None if self.connection.connected else "not connected"
        try:
            await asyncio.wait_for(self.enqueuer.ping(), 1.0)
            checks["redis"] = None
        except (RedisUnavailable, TimeoutError) as exc:
            checks["redis"] = f"not answering: {exc}"
        checks["circuit"] = f"open: {self.circuit.reason}" if self.circuit.is_open else None
        if not self.started.is_set():
            checks["started"] = "starting"
        for puller in self.pull_consumers:
            problems = puller.problems()
            checks[f"consumer {puller.consumer.stream}/{puller.name}"] = "; ".join(problems) if problems else None
        return checks

    async def shutdown(self) -> None:
        """Stop everything within ``shutdown_timeout`` seconds (see the module docstring)."""
        deadline = time.monotonic() + self._shutdown_timeout

        def left() -> float:
            return max(deadline - time.monotonic(), 0.1)

        log_event(log, "bridge_stopping", timeout_s=self._shutdown_timeout)
        if self.core is not None:
            await self.core.stop(left())
        if self.pull_consumers:
            await asyncio.gather(*(p.stop(left()) for p in self.pull_consumers))
        if self.advisories is not None:
            await self.advisories.stop()
        await stop_task(self._lag)
        if self.connection.connected:
            await self.connection.flush(min(left(), 2.0))
        await self.connection.close(left())
        await self.circuit.stop()
        await self.enqueuer.close()
        await self.fleet.stop(close_client=True)
        await self.http.stop()
        log_event(log, "bridge_stopped", unsettled=sum(p.state.in_flight for p in self.pull_consumers))
