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
Building a ``dramatiq.Message`` per event would cost ~25 us each (pitfalls §22).
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any, Final

import dramatiq
import msgspec
import sentry_sdk

from events import Job

__all__ = ["MessageFactory", "StampedBatch", "message_id_for", "random_message_id"]

#: Namespace of the deterministic message ids (uuid5 of "<stream>:<seq>" or "<stream>:id:<Nats-Msg-Id>").
MESSAGE_ID_NAMESPACE: Final = bytes.fromhex("6f0b3a1e9d3c5c7e8a5f0c1d2e3f4a5b")


def message_id_for(identity: str) -> str:
    """A uuid5-formatted id for ``identity`` (same value as ``uuid.uuid5``; ~4x cheaper)."""
    digest = bytearray(hashlib.sha1(MESSAGE_ID_NAMESPACE + identity.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def random_message_id() -> str:
    """A uuid4-formatted id (core NATS events have no stable identity to derive one from)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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


class StampedBatch:
    """Encodes the jobs of one batch with the options middleware stamped on its templates."""

    __slots__ = ("_broker", "_options", "_templates", "_timestamp")

    def __init__(self, broker: dramatiq.Broker) -> None:
        self._broker = broker
        self._templates: list[dramatiq.Message[Any]] = []
        self._options: dict[tuple[str, str], dict[str, Any]] = {}
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

    def encode(self, job: Job, queue: str, actor: str, message_id: str) -> bytes:
        """dramatiq's JSON for ``job`` on ``queue``/``actor``; ``redis_message_id`` = ``message_id``."""
        options = self._options.get((queue, actor))
        if options is None:
            options = self._stamp(queue, actor, message_id)
        wire = _Wire(queue, actor, (job,), _NO_KWARGS, {**options, "redis_message_id": message_id},
                     message_id, self._timestamp)
        try:
            return _ENCODER.encode(wire)
        except (TypeError, msgspec.EncodeError):
            # A middleware stamped something msgspec cannot encode: let dramatiq's encoder decide.
            from events import job_to_args

            return dramatiq.Message(queue_name=queue, actor_name=actor, args=(job_to_args(job),), kwargs={},
                                    options=wire.options, message_id=message_id,
                                    message_timestamp=self._timestamp).encode()

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
