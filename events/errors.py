"""Errors of the event contract.

Every failure to turn a NATS message into a job is one :class:`EventRejected`
whose ``code`` is a stable short string: the bridge dead-letters the payload
with that code and reason, and dashboards group by the code. The reason is
free text written for an operator and may change between releases; the codes
may not.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["EventError", "EventRejected", "InvalidJob", "RejectCode"]


class RejectCode(StrEnum):
    """Why a NATS message could not become a job (stable, used as metric labels)."""

    #: The payload is not valid JSON (malformed, truncated, empty).
    NOT_JSON = "not_json"
    #: The payload is valid JSON but not an object (array, string, number, ...).
    NOT_OBJECT = "not_object"
    #: No route in :data:`events.routes.ROUTES` matches the subject.
    NO_ROUTE = "no_route"
    #: The payload names a variant, ``event_type`` or ``kind`` this contract does not know.
    UNKNOWN_VARIANT = "unknown_variant"
    #: A field is missing, has the wrong type or value, or nesting is too deep to decode.
    INVALID_PAYLOAD = "invalid_payload"
    #: The subject belongs to another Fechatter consumer (search, analytics, mentions).
    NOT_FOR_NOTIFY = "not_for_notify"
    #: A read receipt published as a fake ``kind: Created`` message event.
    DISGUISED_READ_RECEIPT = "disguised_read_receipt"
    #: A subject whose payload type Fechatter declares but never constructs.
    UNSUPPORTED_DIALECT = "unsupported_dialect"
    #: A user, chat or message id (alone or in a list) is zero, negative or beyond i64.
    INVALID_ID = "invalid_id"
    #: The payload is larger than ``events.max_payload_bytes``; rejected before decoding.
    PAYLOAD_TOO_LARGE = "payload_too_large"


class EventError(Exception):
    """Root of every error raised by the ``events`` package."""


class EventRejected(EventError):
    """A NATS message cannot become a job; the bridge dead-letters it.

    Parameters:
      reason(str): What is wrong, naming the subject, field or value, for an operator.
      code(RejectCode): The stable classification of ``reason``.
    """

    def __init__(self, reason: str, code: RejectCode) -> None:
        super().__init__(f"{code}: {reason}")
        self.reason = reason
        self.code = code


class InvalidJob(EventError):
    """A dramatiq message's arguments do not decode to a job.

    Only a version skew between bridge and workers, or a hand-edited Redis
    entry, produces this; it is never retried.

    Parameters:
      reason(str): The decoder's message, with the JSON path of the bad field.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
