"""One fetched JetStream batch: parse, enqueue in one round trip, then settle - ack only after the enqueue.

Messages are parsed as they arrive (:mod:`bridge.forming`), while the batch before theirs is in
Redis; each batch is then enqueued and settled in arrival order:

* enqueued or already enqueued (dedupe marker) -> ``ack``
* dead letter stored (or already stored)      -> ``term`` (never redelivered)
* Redis failed or the circuit is open         -> held (:mod:`bridge.holding`), nothing acked: kept
  ours with in-progress acks and enqueued, oldest first, when the circuit closes; what does not
  fit under the hold bound, or is held at shutdown, is nak'd with a delay

An enqueue that outlives half of ``ack_wait`` sends ``+WPI`` (in progress) for the batch so
JetStream does not redeliver what is being written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime

from nats.aio.msg import Msg

from bridge.acks import Settler
from bridge.batch import DEFAULT_MAX_PAYLOAD_BYTES, EventBatch
from bridge.circuit import Circuit
from bridge.dead_letter_log import DeadLetterLog
from bridge.enqueue import WRITTEN, Enqueuer
from bridge.errors import RedisUnavailable
from bridge.forming import Formed, Forming, add_message
from bridge.holding import Holding, Inbound, Meta, hold_limits, reply_metadata
from bridge.messages import MessageFactory
from bridge.metrics import BridgeMetrics
from events import Lane
from runtime import log_event, stop_task
from settings import Consumer

__all__ = ["JetStreamProcessor", "reply_metadata"]

log = logging.getLogger("bridge.process")

#: A reply subject whose metadata cannot be read gets this dead-letter code.
NOT_JETSTREAM = "not_jetstream"


class JetStreamProcessor:
    """Processes the batches of one durable consumer, in order, holding them while Redis is down.

    One lock serialises enqueues: a batch is enqueued only once every batch before it is settled
    (held ones included), so an outage never lets a newer event overtake an older one.

    Parameters:
      consumer(Consumer): The consumer's settings.
      enqueuer(Enqueuer), factory(MessageFactory), circuit(Circuit), metrics(BridgeMetrics): Shared parts.
      queues(Mapping[Lane, str]): Lane -> dramatiq queue.
      typing_ttl(float), presence_ttl(float): Ephemeral job lifetimes, in seconds.
      max_payload_bytes(int): ``events.max_payload_bytes``: larger payloads are dead-lettered.
    """

    def __init__(
        self,
        consumer: Consumer,
        *,
        enqueuer: Enqueuer,
        factory: MessageFactory,
        circuit: Circuit,
        metrics: BridgeMetrics,
        queues: Mapping[Lane, str],
        typing_ttl: float,
        presence_ttl: float,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self._consumer = consumer
        self._max_payload = max_payload_bytes
        self._name = consumer.durable
        self._enqueuer = enqueuer
        self._factory = factory
        self._circuit = circuit
        self._metrics = metrics
        self._dead_letter_log = DeadLetterLog(log)
        self._queues = queues
        self._ttls = (typing_ttl, presence_ttl)
        self.settler = Settler(consumer)
        # Pull requests sent before the circuit opened stay open until they expire: an event nak'd
        # over the hold bound with a shorter delay would be redelivered into them, nak'd again, and
        # burn max_deliver. Overflow naks wait out what is left of that expiry (shutdown naks need
        # not: the pull inbox is gone, and the server skips requests nobody listens to).
        self._request_expiry = consumer.pull_expiry
        # Send +WPI when an enqueue has run this long, and to held events this often (seconds):
        # well inside ack_wait.
        self._wpi_after = max(consumer.ack_wait / 2, 0.05)
        self.holding = Holding(self._name, self.settler, hold_limits(consumer, max_payload_bytes), self._wpi_after,
                               metrics)
        #: Delivered messages not yet processed, parsed on arrival: the pull loop's callback adds each,
        #: its processing loop takes the batches (bridge/pull.py).
        self.forming = Forming(self._new_events, self._name)
        self._lock = asyncio.Lock()
        self._stopping = False
        self._release: asyncio.Task[None] | None = None
        m = metrics
        label = self._name
        self._fetched = m.fetched.labels(label)
        self._acked = m.acked.labels(label)
        self._naked = m.naked.labels(label)
        self._termed = m.termed.labels(label)
        circuit.subscribe(self._circuit_changed)

    def retune(self, consumer: Consumer) -> None:
        """The durable's settings were reloaded (SIGHUP; :meth:`bridge.pull.PullConsumer.retune`).

        Pull requests sent before keep their expiry, so the overflow nak delay never shrinks below
        it. The hold bound follows ``max_in_flight`` (and ``max_ack_pending``, which is the
        server's and so changes only with a restart) for what arrives next: what is held stays held
        under a smaller bound (nothing is handed back early), and after an overflow a larger one
        holds again only once the hold has emptied (a newer event is never held while an older one
        was nak'd).
        """
        self._request_expiry = max(self._request_expiry, consumer.pull_expiry)
        limits = hold_limits(consumer, self._max_payload)
        if limits == self.holding.limits:
            return
        before, self.holding.limits = self.holding.limits, limits
        log_event(log, "hold_bound_changed", consumer=self._name, limit_events=limits.events,
                  limit_bytes=limits.payload_bytes, was_events=before.events, was_bytes=before.payload_bytes)

    async def process(self, formed: Formed) -> None:
        """Enqueue and settle ``formed``, or hold it while Redis is down; never raises for Redis."""
        inbound = formed.inbound
        self._fetched.inc(len(inbound.msgs))
        async with self._lock:
            if self._stopping:
                await self._nak(inbound, "shutdown")
            elif self.holding or self._circuit.is_open:
                # Older events are held: these wait behind them (parsed again when released).
                await self._hold(inbound)
                await self._release_held()
            elif not await self._enqueue([inbound], formed.events):
                await self._hold(inbound)

    async def release(self) -> None:
        """The pull loop stopped: enqueue what is held if Redis answers, nak the rest (short delay)."""
        async with self._lock:
            await self._release_held()
            self._stopping = True
            left = self.holding.take_all()
        await self.holding.stop()
        if left:
            for inbound in left:
                await self._nak(inbound, "shutdown")
            log_event(log, "held_events_naked", logging.WARNING, consumer=self._name,
                      events=sum(len(b.msgs) for b in left), reason="shutdown")
        await stop_task(self._release)
        self._dead_letter_log.flush()

    # -- holding ------------------------------------------------------------------------------

    def _circuit_changed(self, is_open: bool) -> None:
        if is_open or not self.holding or self._stopping:
            return
        if self._release is None or self._release.done():
            self._release = asyncio.get_running_loop().create_task(self._release_when_closed(),
                                                                   name=f"release-held-{self._name}")

    async def _release_when_closed(self) -> None:
        try:
            async with self._lock:
                await self._release_held()
        except Exception:  # a bug must not go unseen; what is still held is nak'd at shutdown
            log.exception("releasing held events failed")

    async def _hold(self, inbound: Inbound) -> None:
        """Hold ``inbound``, or as much of it as fits; nak the rest (and, until the holding empties,
        everything after it: a newer event is never held while an older one was handed back)."""
        fit = self.holding.room_for(inbound)
        if fit == len(inbound.msgs):
            self.holding.add(inbound, self._circuit.reason)
            return
        kept, over = inbound.split(fit)
        self.holding.add(kept, self._circuit.reason)
        first = not self.holding.overflowing
        self.holding.overflowing = True
        delay = await self._nak(over, "overflow")
        if first:
            held = self.holding.held
            log_event(log, "hold_overflow", logging.WARNING, consumer=self._name, naked=len(over.msgs),
                      held_events=held.events, held_bytes=held.payload_bytes,
                      limit_events=self.holding.limits.events, limit_bytes=self.holding.limits.payload_bytes,
                      nak_delay_at_least_s=round(delay, 3))

    async def _release_held(self) -> None:
        """Enqueue held batches, oldest first, while the circuit is closed (the lock is held)."""
        holding = self.holding
        while holding and not self._circuit.is_open:
            front = holding.front()
            try:
                if not await self._enqueue(front):
                    return
            except Exception:  # a bug: drop them rather than wedge; JetStream redelivers after ack_wait
                log.exception("held batch processing failed; %d messages will be redelivered",
                              sum(len(b.msgs) for b in front))
            holding.drop_front(len(front))

    async def _nak(self, inbound: Inbound, reason: str) -> float:
        """Nak ``inbound`` with its backoff delay; over the bound, not before the open requests expire."""
        at_least = 0.0
        if reason == "overflow" and self._circuit.is_open:
            at_least = max(self._circuit.opened_at + self._request_expiry - time.monotonic(), 0.0)
        sent = await self.settler.nak(inbound.msgs, inbound.delivered, at_least=at_least)
        self._naked.inc(sent)
        self._metrics.hold_naked.labels(self._name, reason).inc(len(inbound.msgs))
        return at_least

    # -- enqueue and settle --------------------------------------------------------------------

    def _new_events(self, received_at: datetime) -> EventBatch:
        return EventBatch(self._enqueuer.new_batch(), self._factory.begin(), self._queues, received_at,
                          *self._ttls, self._max_payload)

    def _build(self, parts: Sequence[Inbound]) -> EventBatch:
        """Parse ``parts`` into one batch, each event stamped with its own part's arrival time."""
        events = self._new_events(parts[0].received_at)
        name = self._name
        for part in parts:
            for msg, meta in zip(part.msgs, part.metas, strict=True):
                add_message(events, msg, meta, name, part.received_at)
        return events

    async def _enqueue(self, parts: Sequence[Inbound], events: EventBatch | None = None) -> bool:
        """Enqueue and settle ``parts`` in one round trip; False (circuit opened) when Redis failed.

        ``events`` is what :mod:`bridge.forming` parsed on arrival for a single part, if anything.
        """
        if events is None:
            events = self._build(parts)
        msgs = parts[0].msgs if len(parts) == 1 else [m for p in parts for m in p.msgs]
        keepalive = asyncio.get_running_loop().create_task(self._keep_in_progress(msgs))
        began = time.perf_counter()
        try:
            flags = await self._enqueuer.run(events.batch)
        except RedisUnavailable as exc:
            self._circuit.open(str(exc))
            return False
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
        self._metrics.enqueue_latency.observe(time.perf_counter() - began)
        self._metrics.batch_size.observe(len(msgs))
        events.stamped.after_enqueue()
        metas = [meta for p in parts for meta in p.metas]
        await self._settle(msgs, events, flags, metas)
        return True

    async def _settle(self, msgs: list[Msg], events: EventBatch, flags: bytes, metas: list[Meta]) -> None:
        job_types = events.job_types
        to_ack: list[Msg] = []
        to_term: list[Msg] = []
        enqueued: Counter[str] = Counter()
        deduplicated: Counter[str] = Counter()
        for i, msg in enumerate(msgs):
            job_type = job_types[i]
            if job_type is not None:
                to_ack.append(msg)
                (enqueued if flags[i] == WRITTEN else deduplicated)[job_type] += 1
                continue
            to_term.append(msg)
            reject = events.rejects[i]
            code = str(reject.code) if reject is not None else NOT_JETSTREAM
            if flags[i] == WRITTEN:
                meta = metas[i]
                self._metrics.dead_lettered.labels(self._name, code).inc()
                self._dead_letter_log.record(
                    consumer=self._name, code=code, subject=msg.subject, seq=meta[1] if meta else None,
                    delivered=meta[2] if meta else 1,
                    reason=reject.reason if reject is not None else "unreadable reply subject")
        if to_ack:
            self._acked.inc(await self.settler.ack(to_ack))
        if to_term:
            self._termed.inc(await self.settler.term(to_term))
        for job_type, n in enqueued.items():
            self._metrics.enqueued.labels(self._name, job_type).inc(n)
        for job_type, n in deduplicated.items():
            self._metrics.deduplicated.labels(self._name, job_type).inc(n)

    async def _keep_in_progress(self, msgs: list[Msg]) -> None:
        while True:
            await asyncio.sleep(self._wpi_after)
            log_event(log, "enqueue_slow", logging.WARNING, consumer=self._name, events=len(msgs),
                      after_s=self._wpi_after)
            await self.settler.in_progress(msgs)
