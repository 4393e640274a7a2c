"""The broker: dramatiq's Redis broker whose idle consumers wait on a doorbell, not a timer.

Stock ``_RedisConsumer`` sleeps ``compute_backoff(misses, max_backoff=worker_timeout)`` after an
empty fetch: 5 ms doubling up to ~1 s, so a job enqueued on an idle queue waits up to a second
(docs/dramatiq-pitfalls.md#idle-consumers-poll). :class:`_WakeConsumer` makes exactly the same
fetches and sleeps for the same backoff, but sleeps in ``Event.wait`` on its queue's doorbell
(:mod:`workers.wake`), which the bridge's wake publish rings. Everything else is dramatiq's own: the
Lua dispatch script, acks into ``__acks__``, requeue on shutdown, heartbeats on every dispatch. Acks
also ring the doorbell once half of the prefetched messages are done, so a consumer with a backlog
refills in batches as soon as there is room instead of after its backoff.

Dispatch calls (fetch, ack, requeue, enqueue) run dramatiq's own script with dramatiq's own
arguments, only on a connection held by the calling thread rather than through a pool checkout
per call (:mod:`workers.connections`): that checkout cost more CPU than the call.

Redis key layout: dramatiq's own, unchanged (docs/dramatiq-pitfalls.md#redis-key-layout), spelled
once for the bridge, the workers and ``doctor`` in :mod:`events.queues`.

After a Redis connection failure the broker continues under a new broker id
(:meth:`WakeRedisBroker.connection_lost`): a Redis that came back without the acks this process sent
(a Sentinel failover to a replica that never got them) would otherwise keep those jobs in this
process's ack set for good, since maintenance requeues only the jobs of brokers whose heartbeat
stopped. Under the new id the old one's heartbeat stops and :class:`workers.recovery.Recovery`
requeues what it still holds after the heartbeat timeout; a job that was done meanwhile runs once
more and its delivered markers make that a no-op.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff, current_millis, dq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message
from dramatiq.middleware import CurrentMessage, Middleware, TimeLimit

from runtime import LuaScript, log_event, sync_client
from workers.connections import ThreadConnections
from workers.expiry import Expiry
from workers.failures import DurableRetries, retry_when
from workers.recovery import DEFAULT_INTERVAL_S, Recovery
from workers.wake import WakeListener

if TYPE_CHECKING:
    from settings import Settings
    from workers.metrics import WorkerMetrics

__all__ = [
    "DEFAULT_HEARTBEAT_TIMEOUT_MS",
    "DEFAULT_WORKER_TIMEOUT_MS",
    "WakeRedisBroker",
    "build_broker",
    "middleware_stack",
    "redis_client",
]

#: A broker process that has not dispatched for this long is dead and its unacked jobs are
#: requeued, in milliseconds. dramatiq's 60 s plus 0.1 % maintenance meant tens of minutes
#: (docs/dramatiq-pitfalls.md#a-dead-workers-jobs-come-back-late);
#: :class:`workers.recovery.Recovery` heartbeats every few seconds, so a live process never goes
#: this long without one.
DEFAULT_HEARTBEAT_TIMEOUT_MS: Final = 15_000
#: Seconds a pooled Redis connection may sit idle before it is PINGed on reuse.
HEALTH_CHECK_INTERVAL_S: Final = 10
#: The idle backoff cap of consumers and worker threads (dramatiq's ``worker_timeout``), in
#: milliseconds. With doorbells it is only the fallback when no wake publish arrives.
DEFAULT_WORKER_TIMEOUT_MS: Final = 1000
#: Every consumer of a process sees the same Redis failure: one new broker id per this many seconds.
NEW_ID_AT_MOST_EVERY_S: Final = 1.0

log = logging.getLogger(__name__)


class WakeRedisBroker(RedisBroker):
    """A :class:`dramatiq.brokers.redis.RedisBroker` with doorbell-driven consumers.

    Parameters:
      wake(bool): Wait on wake publishes (True) or poll exactly like the stock broker (False,
        for side-by-side benchmarks).
      **kwargs: Passed to :class:`RedisBroker` (``url``, ``namespace``, ``middleware``,
        ``heartbeat_timeout``, ``maintenance_chance``, ...).
    """

    def __init__(self, *, wake: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self._id_lock = threading.Lock()
        self._id_since = time.monotonic()
        self.wake: WakeListener | None = WakeListener(self.client, self.namespace) if wake else None
        self.conns = ThreadConnections(self.client)
        # dramatiq's own script file, the one its RedisBroker registers, through the one loader.
        self._dispatch_script = LuaScript("dramatiq.brokers", "redis/dispatch.lua")

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _WakeConsumer if self.wake is not None else _RedisConsumer

    def _dispatch(self, command: str) -> Callable[..., Any]:
        """dramatiq's ``do_<command>(queue, *args)``: the same script with the same arguments,
        sent on the calling thread's own connection (see :mod:`workers.connections`)."""

        def do_dispatch(queue_name: str, *args: Any) -> Any:
            return self._run_dispatch(command, queue_name, self._should_do_maintenance(command), args)

        return do_dispatch

    def _run_dispatch(self, command: str, queue_name: str, maintenance: int, args: tuple[Any, ...]) -> Any:
        argv = (
            command, current_millis(), queue_name, self.broker_id, self.heartbeat_timeout,
            self.dead_message_ttl, maintenance, self._max_unpack_size(),  # type: ignore[no-untyped-call]
            *args,
        )
        return self._dispatch_script.call(self.conns.call, [self.namespace], argv)

    def connection_lost(self) -> None:
        """Redis failed under this process: continue under a new broker id (see the module docstring)."""
        with self._id_lock:
            now = time.monotonic()
            if now - self._id_since < NEW_ID_AT_MOST_EVERY_S:
                return
            old, self.broker_id, self._id_since = self.broker_id, str(uuid.uuid4()), now
        log_event(log, "broker_id_changed", logging.WARNING, old=old, new=self.broker_id,
                  reason="redis connection lost: jobs left under the old id are requeued after the heartbeat timeout")

    def maintain(self, queue_name: str) -> None:
        """Run dramatiq's queue maintenance for ``queue_name`` now.

        It requeues the unacked jobs of brokers whose heartbeat is older than
        ``heartbeat_timeout``, drops expired dead letters, and records this broker's own
        heartbeat. ``maintain`` is not a dispatch command, so the script does nothing else.
        """
        self._run_dispatch("maintain", queue_name, 1, ())

    def close(self) -> None:
        """Stop the wake listener and release the Redis connections."""
        if self.wake is not None:
            self.wake.close()
        self.conns.close()
        self.client.close()
        self.client.connection_pool.disconnect()


class _WakeConsumer(_RedisConsumer):
    """``_RedisConsumer`` that sleeps on its queue's doorbell instead of ``time.sleep``."""

    def __init__(self, broker: WakeRedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        assert broker.wake is not None
        self.doorbell = broker.wake.doorbell(queue_name)

    def ack(self, message: dramatiq.MessageProxy) -> None:
        try:
            super().ack(message)  # type: ignore[no-untyped-call]
        finally:
            self._on_settled()

    def nack(self, message: dramatiq.MessageProxy) -> None:
        try:
            super().nack(message)  # type: ignore[no-untyped-call]
        finally:
            self._on_settled()

    def _on_settled(self) -> None:
        # Called from worker threads. Refill once half the prefetch is done, not after every
        # ack: a backlog then costs one fetch per prefetch/2 jobs instead of one per job, and
        # the other half keeps the worker threads busy while the fetch is in flight.
        if self.outstanding_message_count <= self.prefetch // 2:
            self.doorbell.set()

    def close(self) -> None:
        """Requeue what was fetched but never handed to a worker thread, then close.

        dramatiq's consumer thread stops between two messages and leaves the rest of the fetched
        page in ``message_cache``; those jobs stay in this broker's acks until its heartbeat is
        stale and recovery requeues them (``heartbeat_timeout``: 15 s late after every reload or
        graceful stop, seen in chaos scenario reload_under_load).
        """
        try:
            ids = [Message.decode(data).message_id for data in self.message_cache if data is not None]
            self.message_cache = []
            if ids:
                self.broker.do_requeue(self.queue_name, *ids)
        except redis.RedisError:
            pass  # Redis gone: recovery requeues them once this broker's heartbeat is stale
        finally:
            super().close()

    def __next__(self) -> dramatiq.MessageProxy | None:
        try:
            while True:
                if self.message_cache:
                    data = self.message_cache.pop(0)
                    if data is None:  # a hash entry vanished (dramatiq#266); skip like dramatiq does
                        continue
                    self.misses = 0
                    message = Message.decode(data)
                    self.queued_message_ids.add(message.message_id)
                    return dramatiq.MessageProxy(message)
                # Clear BEFORE looking at Redis: a wake published after this point leaves the
                # doorbell set, so the wait below returns at once.
                self.doorbell.clear()
                if self.outstanding_message_count < self.prefetch:
                    self.message_cache = self.broker.do_fetch(
                        self.queue_name, self.prefetch - self.outstanding_message_count
                    )
                    if self.message_cache:
                        continue
                self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
                self.doorbell.wait(backoff_ms / 1000)
                # Return to the ConsumerThread so it can move delayed jobs and notice shutdown.
                return None
        except redis.ConnectionError as exc:
            self.broker.connection_lost()
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]


def middleware_stack(settings: Settings, metrics: WorkerMetrics, *,
                     recovery_interval_s: float = DEFAULT_INTERVAL_S) -> list[Middleware]:
    """The middleware of every worker broker, in order (``before_*`` hooks run top-down).

    The ``after_*`` hooks run bottom-up, so :class:`Retries` decides "retry or dead-letter"
    before the metrics and Sentry middleware above it look at ``message.failed``. It is
    :class:`workers.failures.DurableRetries`: a retry that cannot be enqueued (Redis down) waits
    for Redis instead of being dropped while the job is acked.
    """
    from workers.failure_reasons import FailureReasons
    from workers.metrics import MetricsMiddleware
    from workers.sentry import SentryTags

    delivery = settings.delivery
    return [
        MetricsMiddleware(metrics),
        FailureReasons(),
        SentryTags(),
        CurrentMessage(),
        Expiry(metrics),
        TimeLimit(time_limit=int(delivery.time_limit * 1000)),
        DurableRetries(
            max_retries=delivery.max_retries,
            min_backoff=max(1, int(delivery.min_backoff * 1000)),
            max_backoff=max(1, int(delivery.max_backoff * 1000)),
            retry_when=retry_when(delivery.max_retries),
        ),
        Recovery(queues=known_queues(settings), interval=recovery_interval_s),
    ]


def known_queues(settings: Settings) -> list[str]:
    """Every dramatiq queue of this deployment, with its delay queue."""
    names = [settings.queues.realtime, settings.queues.domain]
    return [*names, *(dq_name(name) for name in names)]


def build_broker(
    settings: Settings,
    metrics: WorkerMetrics,
    *,
    wake: bool = True,
    heartbeat_timeout_ms: int = DEFAULT_HEARTBEAT_TIMEOUT_MS,
    recovery_interval_s: float = DEFAULT_INTERVAL_S,
    extra_middleware: list[Middleware] | None = None,
) -> WakeRedisBroker:
    """Build the workers' broker from ``settings`` (no process-global broker is set).

    Call :func:`runtime.sentry.init_sentry` first: Sentry's integration adds its middleware
    from inside ``Broker.__init__``.

    Parameters:
      settings(Settings): The loaded configuration.
      metrics(WorkerMetrics): Where middleware count outcomes.
      wake(bool): Doorbell-driven consumers (True) or stock polling (False).
      heartbeat_timeout_ms(int): See :data:`DEFAULT_HEARTBEAT_TIMEOUT_MS`, in milliseconds.
      recovery_interval_s(float): Seconds between maintenance rounds (:mod:`workers.recovery`).
      extra_middleware(list[Middleware] | None): Appended after the standard stack (tests).
    """
    middleware = middleware_stack(settings, metrics, recovery_interval_s=recovery_interval_s)
    middleware += list(extra_middleware or [])
    return WakeRedisBroker(
        wake=wake,
        client=redis_client(settings),
        namespace=settings.redis.namespace,
        middleware=middleware,
        heartbeat_timeout=heartbeat_timeout_ms,
        # Recovery runs maintenance on a clock; dramatiq's random 0.1 % would only add KEYS scans.
        maintenance_chance=0,
    )


def redis_client(settings: Settings) -> redis.Redis:
    """A pooled client for ``redis`` (one server by URL, or the primary Sentinel names) with the
    configured timeouts.

    (``RedisBroker(url=...)`` would silently drop the timeouts: redis-py ignores connection
    keywords when it is handed a pool; and dramatiq has no Sentinel URL: it takes this ``client``.)
    Idle connections are PINGed before reuse after :data:`HEALTH_CHECK_INTERVAL_S`, which also lets
    the wake listener notice a dead peer. Under Sentinel every new connection asks for the current
    primary (runtime.redis_client), so after a failover the broker's dispatch connections, the
    wake listener and the delivery connections reconnect to the new one.
    """
    return sync_client(settings.redis, health_check_interval=HEALTH_CHECK_INTERVAL_S)
