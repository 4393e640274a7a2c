"""The next batches, parsed as their messages arrive, while the batch before them is in Redis.

The pull loop files each delivered message here (:meth:`Forming.add`): its reply subject is read
and its payload parsed into a job (or a dead letter) of the batch being formed at once. The
processor takes formed batches in arrival order (:meth:`Forming.take`) and sends each to Redis
in one script call. Parsing on arrival puts that work in the time the bridge otherwise spends
waiting for Redis to run the previous batch's script: built after the wait, the parse and the
script ran one after the other (measured in bench/bridge.py: ~4.5 us of parsing and ~9 us of
waiting per event, side by side).

A batch holds at most ``limit`` events (the bound on Redis' time inside one script call); the next
message starts a new batch. Its arrival time, stamped on its jobs, is its first message's.

Parsing here is only a head start: a batch that is held through a Redis outage, or whose parse
failed (a bug: one warning line here, the traceback when the second parse fails), is parsed
again from its messages when it is enqueued (:meth:`bridge.process.JetStreamProcessor.process`),
so nothing here decides an event's fate.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.msg import Msg

from bridge.batch import EventBatch
from bridge.holding import MAX_RELEASE_BATCH, Inbound, Meta, reply_metadata
from runtime import log_event

__all__ = ["Formed", "Forming", "add_message"]

log = logging.getLogger("bridge.forming")


def add_message(events: EventBatch, msg: Msg, meta: Meta, consumer: str,
                received_at: datetime | None = None) -> None:
    """Add one JetStream message to ``events``: with its identity when its reply subject has one."""
    if meta is None:
        events.add(msg.subject, msg.data, msg.headers, consumer=consumer, received_at=received_at)
        return
    stream, seq, count, stored_ns = meta
    events.add(msg.subject, msg.data, msg.headers, consumer=consumer, stream=stream, stream_seq=seq,
               delivered=count, stored_ns=stored_ns, received_at=received_at)


@dataclass(slots=True)
class Formed:
    """One batch: its messages as the processor keeps them, and their script entries.

    ``events`` is None when parsing one of its messages failed unexpectedly: the processor then
    parses the batch again from ``inbound``.
    """

    inbound: Inbound
    events: EventBatch | None

    def __len__(self) -> int:
        return len(self.inbound.msgs)


class Forming:
    """The batches not yet taken by the processor, oldest first; the last one is still growing.

    Parameters:
      new_events(Callable[[datetime], EventBatch]): An empty batch of script entries whose jobs
        are stamped as received at the given time.
      consumer(str): The durable's name (recorded in dead letters).
      limit(int): Most events per batch (the bound on one enqueue script call, as for held batches).
    """

    def __init__(self, new_events: Callable[[datetime], EventBatch], consumer: str,
                 limit: int = MAX_RELEASE_BATCH) -> None:
        self._new_events = new_events
        self._consumer = consumer
        self._limit = limit
        self._batches: deque[Formed] = deque()

    def __bool__(self) -> bool:
        return bool(self._batches)

    def add(self, msg: Msg) -> None:
        """File ``msg`` at the end of the batch being formed, parsed."""
        batches = self._batches
        if not batches or len(batches[-1].inbound.msgs) >= self._limit:
            batches.append(self._start())
        formed = batches[-1]
        meta = reply_metadata(msg.reply)
        inbound = formed.inbound
        inbound.msgs.append(msg)
        inbound.metas.append(meta)
        inbound.payload_bytes += len(msg.data)
        events = formed.events
        if events is None:
            return
        try:
            add_message(events, msg, meta, self._consumer)
        except Exception as exc:
            # A bug. The batch is parsed again when it is processed, and fails there with its
            # traceback (one report, not two); the exception's text may quote the payload.
            log_event(log, "parse_on_arrival_failed", logging.WARNING, consumer=self._consumer,
                      subject=msg.subject, seq=None if meta is None else meta[1], error=type(exc).__name__)
            formed.events = None

    def take(self) -> Formed | None:
        """The oldest batch, or None; a message filed after this starts a new one."""
        return self._batches.popleft() if self._batches else None

    def _start(self) -> Formed:
        received_at = datetime.now(UTC)
        inbound = Inbound([], [], received_at, 0, time.monotonic())
        try:
            events: EventBatch | None = self._new_events(received_at)
        except Exception as exc:  # a bug, as above
            log_event(log, "parse_on_arrival_failed", logging.WARNING, consumer=self._consumer,
                      error=type(exc).__name__)
            events = None
        return Formed(inbound, events)
