"""One fetched JetStream batch: parse, enqueue in one round trip, then settle - ack only after the enqueue.

* enqueued or already enqueued (dedupe marker) -> ``ack``
* dead letter stored (or already stored)      -> ``term`` (never redelivered)
* Redis failed or the circuit is open         -> ``nak`` with a backoff delay, nothing acked

An enqueue that outlives half of ``ack_wait`` sends ``+WPI`` (in progress) for the batch so
JetStream does not redeliver what is being written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime

from nats.aio.msg import Msg

from bridge.acks import Settler
from bridge.batch import DEFAULT_MAX_PAYLOAD_BYTES, EventBatch
from bridge.circuit import Circuit
from bridge.enqueue import WRITTEN, Enqueuer
from bridge.errors import RedisUnavailable
from bridge.messages import MessageFactory
from bridge.metrics import BridgeMetrics
from events import Lane
from runtime import log_event
from settings import Consumer

__all__ = ["JetStreamProcessor", "reply_metadata"]

log = logging.getLogger("bridge.process")

#: A reply subject whose metadata cannot be read gets this dead-letter code.
NOT_JETSTREAM = "not_jetstream"


def reply_metadata(reply: str) -> tuple[str, int, int] | None:
    """``(stream, stream_seq, delivered)`` from a JetStream ack subject, or None.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` (9 tokens) or the
    v2 form with domain and account hash (12+ tokens).
    """
    tokens = reply.split(".")
    count = len(tokens)
    try:
        if count == 9:
            return tokens[2], int(tokens[5]), int(tokens[4])
        if count >= 12:
            return tokens[4], int(tokens[7]), int(tokens[6])
    except ValueError:
        return None
    return None


class JetStreamProcessor:
    """Processes the batches of one durable consumer.

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
        self._queues = queues
        self._ttls = (typing_ttl, presence_ttl)
        self.settler = Settler(consumer)
        # While Redis is down no new pull is sent, but requests already sent stay open until they
        # expire; a nak delay shorter than that would redeliver into them and burn max_deliver.
        self._nak_floor = consumer.pull_expiry
        # Send +WPI when an enqueue has run this long (seconds): well inside ack_wait.
        self._wpi_after = max(consumer.ack_wait / 2, 0.05)
        m = metrics
        label = self._name
        self._fetched = m.fetched.labels(label)
        self._acked = m.acked.labels(label)
        self._naked = m.naked.labels(label)
        self._termed = m.termed.labels(label)

    def pull_expiry_changed(self, expiry: float) -> None:
        """The durable's pull expiry was reloaded. Requests sent before keep the old one, so
        the nak delay floor never shrinks below it."""
        self._nak_floor = max(self._nak_floor, expiry)

    async def release(self) -> None:
        """The pull loop is stopping: settle or nak what this processor still holds."""

    async def process(self, msgs: list[Msg]) -> None:
        """Enqueue and settle ``msgs``; never raises (failures nak and open the circuit)."""
        self._fetched.inc(len(msgs))
        received_at = datetime.now(UTC)
        events = EventBatch(self._enqueuer.new_batch(), self._factory.begin(), self._queues, received_at, *self._ttls,
                            self._max_payload)
        delivered: list[int] = []
        seqs: list[int | None] = []
        add = events.add
        name = self._name
        for msg in msgs:
            meta = reply_metadata(msg.reply)
            if meta is None:
                seqs.append(None)
                delivered.append(1)
                add(msg.subject, msg.data, msg.headers, consumer=name)  # core-like: no identity
                continue
            stream, seq, count = meta
            seqs.append(seq)
            delivered.append(count)
            add(msg.subject, msg.data, msg.headers, consumer=name, stream=stream, stream_seq=seq, delivered=count)

        if self._circuit.is_open:
            self._naked.inc(await self.settler.nak(msgs, delivered, at_least=self._nak_floor))
            return
        keepalive = asyncio.get_running_loop().create_task(self._keep_in_progress(msgs))
        began = time.perf_counter()
        try:
            flags = await self._enqueuer.run(events.batch)
        except RedisUnavailable as exc:
            self._circuit.open(str(exc))
            self._naked.inc(await self.settler.nak(msgs, delivered, at_least=self._nak_floor))
            return
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
        self._metrics.enqueue_latency.observe(time.perf_counter() - began)
        self._metrics.batch_size.observe(len(msgs))
        events.stamped.after_enqueue()
        await self._settle(msgs, events, flags, seqs, delivered)

    async def _settle(self, msgs: list[Msg], events: EventBatch, flags: bytes, seqs: list[int | None],
                      delivered: list[int]) -> None:
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
                self._metrics.dead_lettered.labels(self._name, code).inc()
                log_event(log, "dead_letter", logging.WARNING, subject=msg.subject, consumer=self._name,
                          seq=seqs[i], delivered=delivered[i], code=code,
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
