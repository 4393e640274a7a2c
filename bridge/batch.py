"""One batch of NATS events turned into script entries: a dramatiq message or a dead letter each.

Shared by the JetStream path (:mod:`bridge.process`) and the core NATS path (:mod:`bridge.core`).
For every event it records what became of it (job type or reject) at the same index, so the
caller can settle (ack/term) and count without a second pass over the payloads.

Identity of a JetStream event: its ``Nats-Msg-Id`` header when present (the publisher's id;
JetStream itself dedupes on it within ``duplicate_window``), else stream name + stream sequence +
the time the stream stored it (:func:`event_identity`). The dedupe marker and the deterministic
dramatiq ``message_id`` both derive from it.

A payload over ``events.max_payload_bytes`` is dead-lettered as ``payload_too_large`` before it
is decoded: checking a length costs nothing, while decoding megabytes (and then copying them
into every member's inbox) is what the limit exists to prevent.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Final

import msgspec

from bridge.dead_letters import TOO_LARGE_PREFIX, dead_letter_fields
from bridge.enqueue import DEDUPE_PREFIX, Batch
from bridge.messages import Frame, StampedBatch, message_id_for, producer_trace, random_message_id
from events import ACTORS, EventParser, EventRejected, Lane, RejectCode
from settings import Events

__all__ = ["DEFAULT_MAX_PAYLOAD_BYTES", "EventBatch", "event_identity", "too_large"]

#: ``events.max_payload_bytes``'s default, for callers without settings (tests, benchmarks).
DEFAULT_MAX_PAYLOAD_BYTES: Final[int] = Events().max_payload_bytes

_MSG_ID_HEADER = "Nats-Msg-Id"
_JSON: Final = msgspec.json.Encoder()

#: Per job type in a batch: its name, queue, script queue index, actor, and the batch's frame for them
#: (None: no exact frame, StampedBatch.text encodes each message).
_Route = tuple[str, str, int, str, Frame | None]


def event_identity(stream: str | None, stream_seq: int | None, headers: Mapping[str, str] | None,
                   stored_ns: int | None = None) -> str | None:
    """A JetStream event's identity; None on core NATS.

    ``{stream}:id:{Nats-Msg-Id}`` when the publisher gave one, else ``{stream}:{seq}:{stored_ns}``:
    ``stored_ns`` is when the stream stored the message (nanoseconds since the epoch; the ``ts`` of
    its ack subject, the ``time`` of ``STREAM.MSG.GET``). A stream that is deleted and re-created
    numbers from 1 again; with the sequence alone its first events would find the markers of the
    old incarnation's and be dropped as duplicates for ``redis.dedupe_window``. The stored time is
    the same on every redelivery and every replica, so a redelivery still finds its marker.

    Without ``stored_ns`` (a dead letter written before it was recorded) the identity is the
    older ``{stream}:{seq}``, which is what the bridge that wrote it used. During a rolling
    upgrade, a message an old bridge enqueued (and did not get to ack) and a new bridge gets
    redelivered is enqueued a second time, under its new identity. The workers absorb that
    duplicate job: their per-user delivered markers do not depend on the bridge's identity (a new
    message's is its chat + message id, another notification's its actor + stream + sequence),
    so nobody gets it twice; only a live-only typing or presence notification can show twice.

    The dedupe marker and the dramatiq message id derive from it, so a redelivery, and a replay of
    its dead letter (:mod:`bridge.dead_letter_store`), is recognised as the same event.
    """
    if stream is None:
        return None
    msg_id = headers.get(_MSG_ID_HEADER) if headers else None
    if msg_id:
        return f"{stream}:id:{msg_id}"
    return f"{stream}:{stream_seq}" if stored_ns is None else f"{stream}:{stream_seq}:{stored_ns}"


class EventBatch:
    """Builds one :class:`~bridge.enqueue.Batch` from raw NATS events.

    Parameters:
      batch(Batch): The empty script batch to fill.
      stamped(StampedBatch): Encodes jobs as dramatiq messages (middleware options stamped).
      queues(Mapping[Lane, str]): Lane -> dramatiq queue name (``settings.queues``).
      received_at(datetime): Arrival time stamped on every job of the batch (aware, UTC).
      typing_ttl(float): Typing jobs' lifetime, in seconds.
      presence_ttl(float): Presence jobs' lifetime, in seconds.
      max_payload_bytes(int): Larger payloads become ``payload_too_large`` dead letters.
    """

    __slots__ = ("_dedupe_prefix", "_max_payload", "_parser", "_queue_index", "_routes", "batch", "job_types",
                 "received_at", "rejects", "stamped")

    def __init__(
        self,
        batch: Batch,
        stamped: StampedBatch,
        queues: Mapping[Lane, str],
        received_at: datetime,
        typing_ttl: float,
        presence_ttl: float,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self.batch = batch
        self._max_payload = max_payload_bytes
        self.stamped = stamped
        self.received_at = received_at
        self._parser = EventParser(received_at, typing_ttl, presence_ttl)
        self._queue_index = {lane: (queue, batch.queue_index(queue)) for lane, queue in queues.items()}
        #: Per job type: (its name, its queue, the queue's script index, its actor), looked up once per batch.
        self._routes: dict[type, _Route] = {}
        self._dedupe_prefix = f"{batch.namespace}:{DEDUPE_PREFIX}:"
        #: Per entry: the job type's name, or None for a dead letter.
        self.job_types: list[str | None] = []
        #: Per entry: the reject of a dead letter, or None for a job.
        self.rejects: list[EventRejected | None] = []

    def __len__(self) -> int:
        return len(self.batch)

    def add(
        self,
        subject: str,
        data: bytes,
        headers: Mapping[str, str] | None,
        *,
        consumer: str,
        stream: str | None = None,
        stream_seq: int | None = None,
        delivered: int | None = None,
        stored_ns: int | None = None,
        identity: str | None = None,
        received_at: datetime | None = None,
    ) -> None:
        """Parse one event and add its job (or its dead letter) to the batch.

        JetStream events (``stream`` set) get a dedupe marker and a deterministic message id;
        core NATS events neither (no redelivery exists to deduplicate), unless ``identity`` gives
        one (a replayed dead letter, which an operator may replay twice). ``stored_ns`` is when the
        stream stored the event (part of its identity, kept in its dead letter). ``received_at`` replaces
        the batch's arrival time for this event (events held through a Redis outage are enqueued
        together, each with the time it arrived).
        """
        if identity is None:
            if headers is None and stored_ns is not None and stream is not None:  # the usual JetStream event
                identity = f"{stream}:{stream_seq}:{stored_ns}"
            else:
                identity = event_identity(stream, stream_seq, headers, stored_ns)
        dedupe_key = "" if identity is None else self._dedupe_prefix + identity
        size = len(data)
        try:
            if size > self._max_payload:
                raise too_large(subject, size, self._max_payload)
            job = self._parser.parse(subject, data, headers, stream, stream_seq, delivered, received_at)
        except EventRejected as reject:
            kept = data[:TOO_LARGE_PREFIX] if reject.code is RejectCode.PAYLOAD_TOO_LARGE else data
            self.batch.add_dead_letter(dedupe_key, dead_letter_fields(
                subject, kept, headers, consumer=consumer, code=str(reject.code), reason=reject.reason,
                at=received_at or self.received_at, stream=stream, stream_seq=stream_seq, delivered=delivered,
                size=size, stored_ns=stored_ns,
            ))
            self.job_types.append(None)
            self.rejects.append(reject)
            return
        message_id = message_id_for(identity) if identity is not None else random_message_id()
        route = self._routes.get(type(job))
        if route is None:
            route = self._route(type(job), message_id)
        name, queue, index, actor, frame = route
        if frame is not None and not headers:
            # StampedBatch.text() inlined for the usual event (no producer trace): the same text.
            text = (f"{frame.head}{_JSON.encode(job).decode()}{frame.middle}{message_id}{frame.between}"
                    f"{message_id}{frame.tail}")
        else:
            trace = producer_trace(headers) if headers else None
            text = self.stamped.text(job, queue, actor, message_id, trace)
        self.batch.add_job_text(dedupe_key, index, message_id, text)
        self.job_types.append(name)
        self.rejects.append(None)

    def _route(self, job_type: type, message_id: str) -> _Route:
        spec = ACTORS[job_type]
        queue, index = self._queue_index[spec.lane]
        frame = self.stamped.frame(queue, spec.actor_name, message_id)
        route = self._routes[job_type] = (job_type.__name__, queue, index, spec.actor_name, frame)
        return route


def too_large(subject: str, size: int, limit: int) -> EventRejected:
    """The rejection of a ``size``-byte payload over ``limit`` (``events.max_payload_bytes``)."""
    return EventRejected(
        f"payload of {size} bytes on {subject!r} exceeds events.max_payload_bytes ({limit}); "
        f"not decoded, the dead letter keeps its first {min(size, TOO_LARGE_PREFIX)} bytes",
        RejectCode.PAYLOAD_TOO_LARGE,
    )
