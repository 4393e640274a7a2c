"""dramatiq messages for jobs: dramatiq's JSON, with the broker middleware's options stamped.

A stock dramatiq worker decodes ``Message(**json.loads(data))``; the fields written here are
exactly ``dramatiq.Message.asdict()``'s (queue_name, actor_name, args, kwargs, options,
message_id, message_timestamp), with ``args = [job_to_args(job)]`` (msgspec encodes the job
struct to the same JSON as :func:`events.job_to_args` would give).

Middleware: ``emit_before("enqueue")`` runs on a real :class:`dramatiq.Message` built for each
(queue, actor) of a batch - a *template* - and the options it stamps are copied into every
message of that (queue, actor) in the batch; ``emit_after("enqueue")`` runs on the templates once
the batch is in Redis. That is semantically right for what stamps options at enqueue time:
Sentry's ``_sentry_headers`` come from the current scope, and the bridge gives each batch its own
trace (a fresh propagation context), so every job of a batch continues the batch's trace. It
would be wrong for a middleware that stamps per-message values in ``before_enqueue`` (none of
dramatiq's defaults does; ``Retries``/``AgeLimit``/``TimeLimit`` read options on the worker).
Building a ``dramatiq.Message`` per event would cost ~25 us each (measured:
docs/nats-pitfalls.md#where-the-bridges-cpu-goes).

A producer's trace wins over the batch's: an event published with Sentry's ``sentry-trace``
(and ``baggage``) NATS headers carries those as its job's ``_sentry_headers``, so the worker's
transaction joins the trace of the request that caused the event (sentry-sdk has no NATS
integration that would carry it; docs/dramatiq-pitfalls.md#sentrys-dramatiq-integration). That holds
whether or not the bridge itself reports to Sentry.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import dramatiq
import msgspec
import sentry_sdk

from events import Job

__all__ = ["Frame", "MessageFactory", "StampedBatch", "message_id_for", "producer_trace", "random_message_id"]

#: Namespace of the deterministic message ids (uuid5 of "<stream>:<seq>" or "<stream>:id:<Nats-Msg-Id>").
MESSAGE_ID_NAMESPACE: Final = bytes.fromhex("6f0b3a1e9d3c5c7e8a5f0c1d2e3f4a5b")


#: The uuid variant nibble (``10xx``) for each hex digit of the hash at that place (RFC 4122).
_VARIANT: Final = {f"{n:x}": f"{(n & 0x3) | 0x8:x}" for n in range(16)}


def message_id_for(identity: str) -> str:
    """A uuid5-formatted id for ``identity`` (same value as ``uuid.uuid5``; ~5x cheaper).

    The version nibble (``5``) and the variant nibble replace those hex digits of the SHA-1,
    which is exactly what ``uuid.UUID(bytes=digest[:16], version=5)`` does to the bits.
    """
    h = hashlib.sha1(MESSAGE_ID_NAMESPACE + identity.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def random_message_id() -> str:
    """A uuid4-formatted id (core NATS events have no stable identity to derive one from)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


#: Where Sentry's dramatiq integration looks for the trace to continue (a message option).
SENTRY_HEADERS_OPTION: Final = "_sentry_headers"
_SENTRY_TRACE: Final = "sentry-trace"
_BAGGAGE: Final = "baggage"
#: ``<trace id>-<span id>[-<sampled>]``, as Sentry's SDKs write it.
_SENTRY_TRACE_VALUE: Final = re.compile(r"\A[0-9a-f]{32}-[0-9a-f]{16}(-[01])?\Z")
#: W3C's limit for a baggage header; a longer one is dropped rather than stored in every job.
_MAX_BAGGAGE: Final = 8192


def producer_trace(headers: Mapping[str, str] | None) -> dict[str, str] | None:
    """The Sentry trace a producer sent in the event's NATS headers, or None.

    A malformed ``sentry-trace`` is ignored (the batch's own trace is used instead).
    """
    if not headers:
        return None
    trace = _header(headers, _SENTRY_TRACE)
    if trace is None or _SENTRY_TRACE_VALUE.match(trace.strip()) is None:
        return None
    baggage = _header(headers, _BAGGAGE) or ""
    return {_SENTRY_TRACE: trace.strip(), _BAGGAGE: baggage if len(baggage) <= _MAX_BAGGAGE else ""}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """``headers[name]``, ignoring case (NATS keeps header names as the publisher wrote them)."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


class _Wire(msgspec.Struct):
    """dramatiq.Message's fields in its own order (its JSONEncoder writes ``asdict()``)."""

    queue_name: str
    actor_name: str
    args: tuple[Job]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    message_id: str
    message_timestamp: int


_ENCODER: Final = msgspec.json.Encoder()
_NO_KWARGS: Final[dict[str, Any]] = {}


_JOB_ENCODER: Final = msgspec.json.Encoder()
_REDIS_MESSAGE_ID: Final = "redis_message_id"


class Frame(NamedTuple):
    """The text of a (queue, actor)'s dramatiq JSON around its job and message id.

    ``f"{head}{job JSON}{middle}{message id}{between}{message id}{tail}"`` is :meth:`StampedBatch.encode`'s
    output (as text) for a job without a producer trace.
    """

    head: str
    middle: str
    between: str
    tail: str


class StampedBatch:
    """Encodes the jobs of one batch with the options middleware stamped on its templates."""

    __slots__ = ("_broker", "_frames", "_options", "_templates", "_timestamp")

    def __init__(self, broker: dramatiq.Broker) -> None:
        self._broker = broker
        self._templates: list[dramatiq.Message[Any]] = []
        self._options: dict[tuple[str, str], dict[str, Any]] = {}
        #: Per (queue, actor): the JSON around job and id, or None where only :meth:`encode` is exact.
        self._frames: dict[tuple[str, str], Frame | None] = {}
        # One enqueue time per batch, in ms since the epoch (dramatiq's message_timestamp).
        self._timestamp = int(time.time() * 1000)

    def _stamp(self, queue: str, actor: str, message_id: str) -> dict[str, Any]:
        template: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=queue, actor_name=actor, args=(), kwargs={}, options={}, message_id=message_id,
            message_timestamp=self._timestamp,
        )
        if sentry_sdk.is_initialized():
            # A fresh trace per batch: the jobs of a batch continue it in the workers.
            with sentry_sdk.isolation_scope() as scope:
                scope.set_new_propagation_context()
                self._broker.emit_before("enqueue", template, None)
        else:
            self._broker.emit_before("enqueue", template, None)
        self._templates.append(template)
        options = dict(template.options)
        self._options[(queue, actor)] = options
        return options

    def encode(self, job: Job, queue: str, actor: str, message_id: str,
               trace: dict[str, str] | None = None) -> bytes:
        """dramatiq's JSON for ``job`` on ``queue``/``actor``; ``redis_message_id`` = ``message_id``.

        ``trace`` (:func:`producer_trace`) replaces the batch's Sentry headers for this job.
        """
        options = self._options.get((queue, actor))
        if options is None:
            options = self._stamp(queue, actor, message_id)
        options = {**options, "redis_message_id": message_id}
        if trace is not None:
            options[SENTRY_HEADERS_OPTION] = trace
        wire = _Wire(queue, actor, (job,), _NO_KWARGS, options, message_id, self._timestamp)
        try:
            return _ENCODER.encode(wire)
        except (TypeError, msgspec.EncodeError):
            # A middleware stamped something msgspec cannot encode: let dramatiq's encoder decide.
            from events import job_to_args

            return dramatiq.Message(queue_name=queue, actor_name=actor, args=(job_to_args(job),), kwargs={},
                                    options=wire.options, message_id=message_id,
                                    message_timestamp=self._timestamp).encode()

    def text(self, job: Job, queue: str, actor: str, message_id: str, trace: dict[str, str] | None = None) -> str:
        """:meth:`encode`'s JSON as text (what the enqueue script takes), built around the job's own encoding.

        Every message of a (queue, actor) in the batch has the same JSON but for the job and the
        message id (twice), so the rest is encoded once per batch (:meth:`_frame`) and the per-event
        work is the job's encoding and one concatenation: the same bytes as :meth:`encode`.
        """
        try:
            frame = self._frames[(queue, actor)]
        except KeyError:
            frame = self.frame(queue, actor, message_id)
        if frame is None or trace is not None:
            return self.encode(job, queue, actor, message_id, trace).decode()
        return (f"{frame.head}{_JOB_ENCODER.encode(job).decode()}{frame.middle}{message_id}{frame.between}"
                f"{message_id}{frame.tail}")

    def frame(self, queue: str, actor: str, message_id: str) -> Frame | None:
        """The batch's :class:`Frame` for (queue, actor), stamping its template (with ``message_id``) on first use.

        None when the stamped options make the frame inexact (a middleware stamped
        ``redis_message_id`` or the Sentry headers, or something msgspec cannot encode): use :meth:`encode`.
        """
        try:
            return self._frames[(queue, actor)]
        except KeyError:
            pass
        options = self._options.get((queue, actor))
        if options is None:
            options = self._stamp(queue, actor, message_id)
        frame: Frame | None = None
        if _REDIS_MESSAGE_ID not in options and SENTRY_HEADERS_OPTION not in options:
            try:
                stamped = _ENCODER.encode(options).decode()
                head = _ENCODER.encode({"queue_name": queue, "actor_name": actor}).decode()
            except (TypeError, msgspec.EncodeError):
                pass  # encode() falls back to dramatiq's encoder
            else:
                # '{"a":1}' -> '{"a":1,"redis_message_id":"' ; '{}' -> '{"redis_message_id":"'
                options_head = stamped[:-1] + ("," if options else "") + f'"{_REDIS_MESSAGE_ID}":"'
                frame = Frame(head[:-1] + ',"args":[', '],"kwargs":{},"options":' + options_head,
                               '"},"message_id":"', f'","message_timestamp":{self._timestamp}}}')
        self._frames[(queue, actor)] = frame
        return frame

    def after_enqueue(self) -> None:
        """Run ``emit_after("enqueue")`` on each template (the batch is in Redis)."""
        for template in self._templates:
            self._broker.emit_after("enqueue", template, None)


class MessageFactory:
    """Starts :class:`StampedBatch` es against one broker object (its middleware, no actors).

    Parameters:
      broker(dramatiq.Broker | None): Whose middleware stamp options. Default: a plain
        ``dramatiq.Broker`` with dramatiq's default middleware - plus Sentry's, inserted by the
        Sentry integration when ``sentry_sdk.init`` ran before (as ``bridge.main`` does).
    """

    def __init__(self, broker: dramatiq.Broker | None = None) -> None:
        self.broker = broker if broker is not None else dramatiq.Broker()

    def begin(self) -> StampedBatch:
        """A new batch (one message timestamp, one trace, templates stamped on first use)."""
        return StampedBatch(self.broker)
