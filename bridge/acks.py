"""Settling JetStream messages: ack, nak with a delay, term, in-progress.

Every one of these is a fire-and-forget publish on the message's reply subject (nats-py's
``ack()`` gets no answer, so one lost in a leader change or a disconnect fails silently):
a lost ack means a redelivery, which the idempotent enqueue absorbs. A nak always carries a
delay from the consumer's backoff schedule - an instant nak would burn ``max_deliver`` in
milliseconds. nats-py exceptions stop here: a failed settle is counted, never raised.

Each settled message whose JetStream delivery count (in its reply subject) is above 1 is counted
as a redelivery (:meth:`Settler.count_redeliveries`): every message the bridge receives is settled
exactly once per delivery, so this counts redeliveries received without a parse on the fetch path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Final, Protocol

import nats.errors
from nats.aio.msg import Msg

from settings import Consumer

__all__ = ["DEFAULT_NAK_BASE_S", "DEFAULT_NAK_CAP_S", "Settler", "delivery_count", "nak_delay"]

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

    async def ack(self, msgs: Iterable[Msg]) -> int:
        """Ack each message."""
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
