"""Core NATS realtime subjects: queue-group subscriptions, batched enqueue, at-most-once.

Every subject is subscribed with the settings' queue group, so N bridge replicas share the events
instead of enqueueing N copies (without a queue group every subscriber gets every message). The
callback only files the event; a flusher enqueues what is waiting (up to ``realtime.batch_size``
events) as soon as its previous enqueue has returned, optionally lingering ``realtime.batch_window``
after the first event. The window is 0 by default: batches form from what arrives during an enqueue,
so they grow with the rate while a lone typing event waits for nothing. Core NATS has no redelivery:
what cannot be enqueued (Redis down, circuit open, local buffer full) is counted and logged, never
retried, and the subscription is never blocked. Slow-consumer drops by the client are reported
through the connection's error callback (:mod:`bridge.connection`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bridge.batch import DEFAULT_MAX_PAYLOAD_BYTES, EventBatch
from bridge.circuit import Circuit
from bridge.dead_letter_log import DeadLetterLog
from bridge.enqueue import WRITTEN, Enqueuer
from bridge.errors import RedisUnavailable
from bridge.messages import MessageFactory
from bridge.metrics import CORE_SOURCE, BridgeMetrics
from events import Lane
from runtime import log_event, stop_task
from settings import Realtime

__all__ = ["CoreSubscriber"]

log = logging.getLogger("bridge.core")


class CoreSubscriber:
    """The realtime subjects of one bridge process.

    Parameters:
      nc(NATS): The connection.
      settings(Realtime): The ``realtime`` section.
      enqueuer(Enqueuer), factory(MessageFactory), circuit(Circuit), metrics(BridgeMetrics): Shared parts.
      queues(Mapping[Lane, str]): Lane -> dramatiq queue.
      max_payload_bytes(int): ``events.max_payload_bytes``: larger payloads are dead-lettered.
    """

    def __init__(
        self,
        nc: NATS,
        settings: Realtime,
        *,
        enqueuer: Enqueuer,
        factory: MessageFactory,
        circuit: Circuit,
        metrics: BridgeMetrics,
        queues: Mapping[Lane, str],
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self._nc = nc
        self._max_payload = max_payload_bytes
        self._settings = settings
        self._enqueuer = enqueuer
        self._factory = factory
        self._circuit = circuit
        self._metrics = metrics
        self._dead_letter_log = DeadLetterLog(log)
        self._queues = queues
        self._subs: list[Subscription] = []
        self._buffer: list[Msg] = []
        self._first_at = 0.0
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._dropped_logged = 0
        self._fetched = metrics.fetched.labels(CORE_SOURCE)

    async def start(self) -> None:
        """Subscribe every subject with the queue group and start the flusher."""
        for subject in self._settings.subjects:
            self._subs.append(await self._nc.subscribe(
                subject, queue=self._settings.queue_group, cb=self._on_msg,
                pending_msgs_limit=self._settings.pending_msgs_limit,
            ))
        self._task = asyncio.get_running_loop().create_task(self._flush_loop(), name="core-flusher")
        log_event(log, "core_subscribed", subjects=",".join(self._settings.subjects),
                  queue_group=self._settings.queue_group)

    async def stop(self, within: float) -> None:
        """Drain the subscriptions, enqueue what is buffered, stop the flusher (bounded by ``within`` s)."""
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await asyncio.wait_for(sub.drain(), within)  # type: ignore[no-untyped-call]
        await stop_task(self._task)
        if self._buffer:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._flush(), within)
        self._dead_letter_log.flush()

    def retune(self, settings: Realtime) -> None:
        """Take a reloaded ``batch_window`` and ``batch_size`` (the rest needs a restart)."""
        if (settings.batch_window, settings.batch_size) == (self._settings.batch_window, self._settings.batch_size):
            return
        self._settings = self._settings.model_copy(
            update={"batch_window": settings.batch_window, "batch_size": settings.batch_size})
        log_event(log, "core_retuned", batch_window_s=settings.batch_window, batch_size=settings.batch_size)

    async def _on_msg(self, msg: Msg) -> None:
        buffer = self._buffer
        if len(buffer) >= self._settings.pending_msgs_limit:
            self._drop(1, "buffer_full", msg.subject)
            return
        if not buffer:
            self._first_at = time.monotonic()
            self._wake.set()
        buffer.append(msg)
        if len(buffer) >= self._settings.batch_size:
            self._full.set()

    async def _flush_loop(self) -> None:
        window = self._settings.batch_window
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Wait out the rest of the window unless the batch fills first.
            remaining = window - (time.monotonic() - self._first_at)
            if remaining > 0 and len(self._buffer) < self._settings.batch_size:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._full.wait(), remaining)
            self._full.clear()
            await self._flush()
            if self._buffer:
                # Events that arrived during the flush: their window started when the first came.
                self._wake.set()

    async def _flush(self) -> None:
        msgs = self._buffer[: self._settings.batch_size]
        del self._buffer[: len(msgs)]
        if not msgs:
            return
        self._fetched.inc(len(msgs))
        if self._circuit.is_open:
            self._drop(len(msgs), "circuit_open", msgs[0].subject)
            return
        events = EventBatch(self._enqueuer.new_batch(), self._factory.begin(), self._queues, datetime.now(UTC),
                            self._settings.typing_ttl, self._settings.presence_ttl, self._max_payload)
        for msg in msgs:
            events.add(msg.subject, msg.data, msg.headers, consumer=CORE_SOURCE)
        began = time.perf_counter()
        try:
            flags = await self._enqueuer.run(events.batch)
        except RedisUnavailable as exc:
            self._circuit.open(str(exc))
            self._drop(len(msgs), "redis_unavailable", msgs[0].subject)
            return
        self._metrics.enqueue_latency.observe(time.perf_counter() - began)
        self._metrics.batch_size.observe(len(msgs))
        events.stamped.after_enqueue()
        enqueued: Counter[str] = Counter()
        for i, job_type in enumerate(events.job_types):
            if job_type is not None:
                enqueued[job_type] += 1
                continue
            reject = events.rejects[i]
            if reject is not None and flags[i] == WRITTEN:
                self._metrics.dead_lettered.labels(CORE_SOURCE, str(reject.code)).inc()
                self._dead_letter_log.record(consumer=CORE_SOURCE, code=str(reject.code), subject=msgs[i].subject,
                                             reason=reject.reason)
        for job_type, n in enqueued.items():
            self._metrics.enqueued.labels(CORE_SOURCE, job_type).inc(n)

    def _drop(self, count: int, reason: str, subject: str) -> None:
        self._metrics.dropped.labels(reason).inc(count)
        self._dropped_logged += 1
        if self._dropped_logged in (1, 10) or self._dropped_logged % 100 == 0:
            log_event(log, "core_events_dropped", logging.WARNING, count=count, reason=reason, subject=subject,
                      drops_so_far=self._dropped_logged)
