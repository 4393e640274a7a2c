"""Settling JetStream messages: ack, nak with a delay, term, in-progress.

Every one of these is a fire-and-forget publish on the message's reply subject (nats-py's
``ack()`` gets no answer, so one lost in a leader change or a disconnect fails silently):
a lost ack means a redelivery, which the idempotent enqueue absorbs. A nak always carries a
delay from the consumer's backoff schedule - an instant nak would burn ``max_deliver`` in
milliseconds. nats-py exceptions stop here: a failed settle is counted, never raised.

Acks of a batch travel as one buffer (:func:`publish_acks`): nats-py's ``Msg.ack()`` is a whole
``publish()`` per message (argument checks, a ``PUB`` line built, a flush kicked), a third of a
plain pull + ack loop's CPU; the buffer holds exactly the ``PUB <reply> 0`` lines those publishes
would have queued, handed to the client's outbound buffer the way ``publish()`` hands one, so
reconnect buffering and its limit behave the same.

Each settled message whose JetStream delivery count (in its reply subject) is above 1 is counted
as a redelivery (:meth:`Settler.count_redeliveries`): every message the bridge receives is settled
exactly once per delivery, so this counts redeliveries received without a parse on the fetch path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Final, Protocol

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from settings import Consumer

__all__ = ["DEFAULT_NAK_BASE_S", "DEFAULT_NAK_CAP_S", "Settler", "delivery_count", "nak_delay", "publish_acks"]

log = logging.getLogger("bridge.acks")

#: Nak delay of a first delivery when the consumer has no ``backoff``, in seconds (doubles per delivery).
DEFAULT_NAK_BASE_S: Final = 1.0
#: Largest nak delay without a ``backoff`` schedule, in seconds.
DEFAULT_NAK_CAP_S: Final = 30.0


def nak_delay(consumer: Consumer, delivered: int) -> float:
    """The redelivery delay of a message delivered ``delivered`` times, in seconds.

    The consumer's ``backoff`` schedule when it has one (its last entry repeats), else
    ``min(DEFAULT_NAK_BASE_S * 2**(delivered-1), DEFAULT_NAK_CAP_S)``.
    """
    index = max(delivered, 1) - 1
    if consumer.backoff:
        return float(consumer.backoff[min(index, len(consumer.backoff) - 1)])
    return float(min(DEFAULT_NAK_BASE_S * 2 ** min(index, 16), DEFAULT_NAK_CAP_S))


def delivery_count(reply: str | None) -> int:
    """How many times JetStream delivered a message, from its reply subject (1 when it is not one).

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>...`` (9 tokens) or the v2 form with domain and
    account hash (12+ tokens, the count 7th).
    """
    if not reply:
        return 1
    tokens = reply.split(".")
    index = 4 if len(tokens) == 9 else 6 if len(tokens) >= 12 else -1
    try:
        return int(tokens[index]) if index >= 0 else 1
    except ValueError:
        return 1


#: Between two ack subjects in the buffer: the end of one empty-payload ``PUB`` and the start of the next.
_ACK_JOIN: Final = "  0\r\n\r\nPUB "


def _raw_client(msgs: Sequence[Msg]) -> NATS | None:
    """The nats-py client all of ``msgs`` came from, when it has the outbound buffer this module
    writes to (nats-py 2.x); None otherwise (test doubles, another client: ack one by one)."""
    client = msgs[0]._client
    if not isinstance(client, NATS) or not hasattr(client, "_send_command") or not hasattr(client, "_pending"):
        return None
    for msg in msgs:
        if msg._client is not client:
            return None
    return client


async def publish_acks(client: NATS, replies: Sequence[str]) -> None:
    """Queue one empty-payload ``PUB`` (an ack) per reply subject on ``client``, as one buffer.

    The same checks, in the same order, as nats-py's ``publish()`` (closed, draining, the
    reconnect buffer's limit while disconnected), the same bytes, the same flush. Reply subjects
    come from the server's ``MSG`` lines, which cannot hold a space or a line break.

    Raises:
      nats.errors.Error: as ``publish()`` would (nothing was queued then).
    """
    if client.is_closed:
        raise nats.errors.ConnectionClosedError
    if client.is_draining_pubs:
        raise nats.errors.ConnectionDrainingError
    buffer = f"PUB {_ACK_JOIN.join(replies)}  0\r\n\r\n".encode()
    if not client.is_connected:
        limit = client._max_pending_size
        if limit <= 0 or len(buffer) + client._pending_data_size > limit:
            raise nats.errors.OutboundBufferLimitError
    client.stats["out_msgs"] += len(replies)
    await client._send_command(buffer)
    if client._flush_queue is not None and client._flush_queue.empty():
        await client._flush_pending()


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Settler:
    """Settles messages of one consumer; returns how many settles were handed to the client.

    Parameters:
      consumer(Consumer): Its settings (for the nak schedule).
    """

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self.lost = 0
        self._redeliveries: _Counter | None = None
        # The reply subjects of this durable's messages start with this (the usual, 9-token form):
        # a first delivery is then told by one comparison, without splitting the subject.
        self._ack_prefix = f"$JS.ACK.{consumer.stream}.{consumer.durable}."
        # ... and a first delivery's with this ("1." is a first delivery, "10." is not).
        self._first_prefix = self._ack_prefix + "1."

    def count_redeliveries(self, counter: _Counter) -> None:
        """From now on, count each settled message delivered more than once into ``counter``."""
        self._redeliveries = counter

    def _settled(self, msg: Msg) -> None:
        if self._redeliveries is None:
            return
        reply, prefix = msg.reply, self._ack_prefix
        if reply.startswith(prefix):
            if not reply.startswith("1.", len(prefix)):  # "1." is a first delivery ("10." is not)
                self._redeliveries.inc()
        elif delivery_count(reply) > 1:
            self._redeliveries.inc()

    def _lost(self, what: str, exc: Exception) -> None:
        self.lost += 1
        if self.lost in (1, 10) or self.lost % 1000 == 0:
            log.warning("%s not sent (%s: %s); JetStream redelivers after ack_wait and the dedupe absorbs it",
                        what, type(exc).__name__, exc)

    async def ack(self, msgs: Sequence[Msg]) -> int:
        """Ack each message (one buffer for all of them, see :func:`publish_acks`)."""
        client = _raw_client(msgs) if msgs else None
        if client is None:
            return await self._ack_each(msgs)
        acked: list[Msg] = []
        replies: list[str] = []
        again: list[Msg] = []
        first = self._first_prefix if self._redeliveries is not None else ""
        for msg in msgs:
            reply = msg.reply
            if msg._ackd or not reply:
                again.append(msg)  # what Msg.ack() refuses: counted as lost there
                continue
            if first and not reply.startswith(first):  # not the common first delivery: count it
                self._settled(msg)
            acked.append(msg)
            replies.append(reply)
        sent = 0
        if acked:
            try:
                await publish_acks(client, replies)
            except nats.errors.Error as exc:
                for _ in acked:
                    self._lost("ack", exc)
            else:
                for msg in acked:
                    msg._ackd = True
                sent = len(acked)
        return sent + (await self._ack_each(again) if again else 0)

    async def _ack_each(self, msgs: Iterable[Msg]) -> int:
        """Ack each message with its own ``Msg.ack()``."""
        sent = 0
        for msg in msgs:
            self._settled(msg)
            try:
                await msg.ack()
            except nats.errors.Error as exc:
                self._lost("ack", exc)
            else:
                sent += 1
        return sent

    async def term(self, msgs: Iterable[Msg]) -> int:
        """Term each message: never redeliver it (its dead letter is stored)."""
        sent = 0
        for msg in msgs:
            self._settled(msg)
            try:
                await msg.term()
            except nats.errors.Error as exc:
                self._lost("term", exc)
            else:
                sent += 1
        return sent

    async def nak(self, msgs: Sequence[Msg], delivered: Sequence[int], *, at_least: float = 0.0) -> int:
        """Nak each message with the delay its delivery count calls for, but ``at_least`` seconds."""
        sent = 0
        for msg, count in zip(msgs, delivered, strict=True):
            self._settled(msg)
            try:
                await msg.nak(delay=max(nak_delay(self._consumer, count), at_least))
            except nats.errors.Error as exc:
                self._lost("nak", exc)
            else:
                sent += 1
        return sent

    async def in_progress(self, msgs: Iterable[Msg]) -> None:
        """Reset ``ack_wait`` of each message (+WPI) while a long enqueue runs."""
        for msg in msgs:
            try:
                await msg.in_progress()
            except nats.errors.Error as exc:
                self._lost("in_progress", exc)
