"""JetStream events held through a Redis outage: kept ours with in-progress acks, released in order.

A nak would hand an event back to JetStream with a delay of at least the pull expiry (shorter
delays redeliver into this bridge's own pull requests, still open, and burn ``max_deliver``): a
5 s Redis restart delayed events by the expiry (90 s with the defaults) and put them behind
newer ones. Holding them instead, the bridge keeps every event it was given while the Redis
circuit is open, sends ``+WPI`` (in progress) before each one's ``ack_wait`` runs out, and when
Redis answers enqueues them oldest first before anything newer: an outage delays events by the
outage and keeps their order.

What is held is bounded (:func:`hold_limits`): pulling stops when the circuit opens, so one
outage can never hold more than ``max_in_flight`` events; the bounds stop a flapping Redis, or
large payloads, from growing the process. What does not fit is nak'd (see
:class:`~bridge.process.JetStreamProcessor`), and so is everything held at shutdown. A SIGHUP
reload of ``max_in_flight`` moves the bound (:meth:`~bridge.process.JetStreamProcessor.retune`).

In-progress acks go out per held batch once per ``ack_wait / 2`` (batches falling due within a
quarter of that go together), as fire-and-forget publishes that the client pipelines into one write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Final, NamedTuple

from nats.aio.msg import Msg

from bridge.acks import Settler
from bridge.metrics import BridgeMetrics
from runtime import log_event, stop_task
from settings import Consumer

__all__ = ["MAX_HELD_PAYLOAD_BYTES", "MAX_RELEASE_BATCH", "Held", "HoldLimits", "Holding", "Inbound", "Meta",
           "hold_limits", "reply_metadata"]

log = logging.getLogger("bridge.holding")

#: Payload bytes one durable may hold through an outage, whatever its limits would allow
#: (1000 events of 256 KiB would otherwise be 256 MiB).
MAX_HELD_PAYLOAD_BYTES: Final = 64 * 1024 * 1024
#: Most events in one enqueue script call, released or formed (bridge/forming.py): bounds Redis' time
#: inside the script.
MAX_RELEASE_BATCH: Final = 1000

#: ``(stream, stream_seq, delivered, stored_ns)`` of a JetStream message; None for a reply that is not one.
Meta = tuple[str, int, int, int] | None


def reply_metadata(reply: str) -> Meta:
    """``(stream, stream_seq, delivered, stored_ns)`` from a JetStream ack subject, or None.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` (9 tokens) or the
    v2 form with domain and account hash (12+ tokens). ``ts`` (``stored_ns``) is when the stream
    stored the message, in nanoseconds since the epoch: with the sequence it tells two
    incarnations of a re-created stream apart (:func:`bridge.batch.event_identity`).
    """
    tokens = reply.split(".")
    count = len(tokens)
    try:
        if count == 9:
            return tokens[2], int(tokens[5]), int(tokens[4]), int(tokens[7])
        if count >= 12:
            return tokens[4], int(tokens[7]), int(tokens[6]), int(tokens[9])
    except ValueError:
        return None
    return None


@dataclass(slots=True)
class Inbound:
    """One fetched batch as the processor keeps it until it is settled.

    Attributes:
      msgs: The messages, in delivery order.
      metas: Per message, its :func:`reply_metadata`.
      received_at: When the batch's first message arrived (stamped on its jobs, held or not).
      payload_bytes: Sum of the payload sizes (what the byte bound counts).
      arrived: ``time.monotonic()`` at ``received_at`` (ack_wait runs since about then).
      wpi_due: Monotonic time its next in-progress ack is due, while held.
    """

    msgs: list[Msg]
    metas: list[Meta]
    received_at: datetime
    payload_bytes: int
    arrived: float
    wpi_due: float = 0.0

    @property
    def delivered(self) -> list[int]:
        """Per message, how many times JetStream delivered it (1 when unknown)."""
        return [1 if meta is None else meta[2] for meta in self.metas]

    def split(self, keep: int) -> tuple[Inbound, Inbound]:
        """The first ``keep`` messages and the rest, as two batches received at the same time."""
        msgs, metas = self.msgs, self.metas
        head = Inbound(msgs[:keep], metas[:keep], self.received_at, sum(len(m.data) for m in msgs[:keep]),
                       self.arrived)
        return head, Inbound(msgs[keep:], metas[keep:], self.received_at, self.payload_bytes - head.payload_bytes,
                             self.arrived)


class HoldLimits(NamedTuple):
    """What one durable may hold: events and payload bytes."""

    events: int
    payload_bytes: int


def hold_limits(consumer: Consumer, max_payload_bytes: int) -> HoldLimits:
    """The bounds, derived from the consumer's own: no more events than it may have unacked
    (``max_ack_pending``, ``max_in_flight``), no more bytes than those events could carry, and at
    most :data:`MAX_HELD_PAYLOAD_BYTES`."""
    events = min(consumer.max_in_flight, consumer.max_ack_pending)
    return HoldLimits(events, min(events * max_payload_bytes, MAX_HELD_PAYLOAD_BYTES))


class Held(NamedTuple):
    """What is held, for a log line or a test."""

    events: int
    payload_bytes: int


class Holding:
    """The held batches of one durable, oldest first, and the task that keeps them ours.

    Parameters:
      consumer(str): Durable name (metrics label, logs).
      settler(Settler): Sends the in-progress acks.
      limits(HoldLimits): The bounds.
      wpi_every(float): Seconds between two in-progress acks of a batch (below ``ack_wait``).
      metrics(BridgeMetrics): Held gauges and the in-progress counter.
    """

    def __init__(self, consumer: str, settler: Settler, limits: HoldLimits, wpi_every: float,
                 metrics: BridgeMetrics) -> None:
        self._name = consumer
        self._settler = settler
        self.limits = limits
        self._every = wpi_every
        self._batches: deque[Inbound] = deque()
        self._events = 0
        self._bytes = 0
        self._since = 0.0
        self._released = 0
        #: True once an event did not fit, until the holding empties (what comes later is nak'd too,
        #: so a newer event is never held while an older one was handed back).
        self.overflowing = False
        self._keepalive: asyncio.Task[None] | None = None
        self._held_events = metrics.held_events.labels(consumer)
        self._held_bytes = metrics.held_bytes.labels(consumer)
        self._wpi_sent = metrics.in_progress_sent.labels(consumer)

    def __bool__(self) -> bool:
        return bool(self._batches)

    @property
    def held(self) -> Held:
        """Events and payload bytes held now."""
        return Held(self._events, self._bytes)

    def room_for(self, batch: Inbound) -> int:
        """How many of ``batch``'s first messages fit under the bounds (at least one when empty)."""
        if self.overflowing:
            return 0
        events, size = self._events, self._bytes
        max_events, max_bytes = self.limits
        fit = 0
        for msg in batch.msgs:
            size += len(msg.data)
            if events + fit + 1 > max_events or (size > max_bytes and events + fit > 0):
                break
            fit += 1
        return fit

    def add(self, batch: Inbound, reason: str) -> None:
        """Hold ``batch`` after everything held; its first in-progress ack is due ``wpi_every`` after it
        arrived (a failed enqueue may have taken up to a socket timeout of that)."""
        if not batch.msgs:
            return
        if not self._batches:
            self._since = time.monotonic()
            self._released = 0
            log_event(log, "events_held", logging.WARNING, consumer=self._name, events=len(batch.msgs),
                      reason=reason, limit_events=self.limits.events, limit_bytes=self.limits.payload_bytes)
        batch.wpi_due = batch.arrived + self._every
        self._batches.append(batch)
        self._events += len(batch.msgs)
        self._bytes += batch.payload_bytes
        self._gauges()
        if self._keepalive is None or self._keepalive.done():
            self._keepalive = asyncio.get_running_loop().create_task(self._keep_ours(),
                                                                    name=f"hold-keepalive-{self._name}")

    def front(self, max_events: int = MAX_RELEASE_BATCH) -> list[Inbound]:
        """The oldest batches, as many as make at most ``max_events`` events (at least one batch)."""
        out: list[Inbound] = []
        total = 0
        for batch in self._batches:
            if out and total + len(batch.msgs) > max_events:
                break
            out.append(batch)
            total += len(batch.msgs)
        return out

    def drop_front(self, count: int) -> None:
        """Forget the ``count`` oldest batches (settled); log once the holding is empty."""
        for _ in range(count):
            batch = self._batches.popleft()
            self._events -= len(batch.msgs)
            self._bytes -= batch.payload_bytes
            self._released += len(batch.msgs)
        self._gauges()
        if not self._batches:
            self.overflowing = False
            log_event(log, "held_events_released", consumer=self._name, events=self._released,
                      held_s=round(time.monotonic() - self._since, 3))

    def take_all(self) -> list[Inbound]:
        """Remove and return every held batch, oldest first (to nak them)."""
        batches = list(self._batches)
        self._batches.clear()
        self._events = self._bytes = 0
        self.overflowing = False
        self._gauges()
        return batches

    async def stop(self) -> None:
        """Stop the in-progress acks."""
        await stop_task(self._keepalive)
        self._keepalive = None

    def _gauges(self) -> None:
        self._held_events.set(self._events)
        self._held_bytes.set(self._bytes)

    def _due(self, horizon: float) -> Iterator[Inbound]:
        return (b for b in self._batches if b.wpi_due <= horizon)

    async def _keep_ours(self) -> None:
        # Batches due within a quarter period go together: one set of publishes, not a trickle.
        slack = self._every / 4
        while self._batches:
            wait = min(b.wpi_due for b in self._batches) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            now = time.monotonic()
            msgs: list[Msg] = []
            for batch in self._due(now + slack):
                msgs.extend(batch.msgs)
                batch.wpi_due = now + self._every
            await self._settler.in_progress(msgs)
            self._wpi_sent.inc(len(msgs))
