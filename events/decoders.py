"""Payload decoders: bytes on one subject to one job, or :class:`EventRejected`.

Each public function here is a :data:`Decoder` named after the shape it
reads, and :mod:`events.routes` assigns one to every subject. Decoding is a
single pass of a precompiled ``msgspec`` decoder into the wire structs of
:mod:`events.dialects`; only rare shapes (T and N on realtime subjects, the
two-dialect ``fechatter.message.deleted``) and failures parse twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeAlias, TypeVar

import msgspec
from msgspec import UNSET

from events import dialects as d
from events.errors import EventRejected, RejectCode
from events.jobs import (
    Broadcast,
    Dialect,
    DuplicateMessage,
    Job,
    MemberJoined,
    MemberLeft,
)
from events.received import Received
from events.translate import from_core_message, from_flat, from_legacy_message, from_realtime, invalid_id

__all__ = [
    "Decoder",
    "broadcast",
    "core_duplicate",
    "core_joined",
    "core_left",
    "core_message",
    "disguised_read_receipt",
    "flat_or_core_message",
    "legacy_duplicate",
    "legacy_joined",
    "legacy_left",
    "legacy_message",
    "never_constructed",
    "not_for_notify",
    "notify_flat",
    "realtime",
    "unified_joined",
    "unified_left",
    "unified_message",
]

#: Turns one payload received on a routed subject into a job.
Decoder: TypeAlias = Callable[[bytes, Received], Job]

MemberJob: TypeAlias = type[MemberJoined] | type[MemberLeft]

W = TypeVar("W")

_REALTIME = msgspec.json.Decoder(d.RealtimeEnvelope)
_TAGGED: msgspec.json.Decoder[d.Tagged] = msgspec.json.Decoder(d.Tagged)
_FLAT: msgspec.json.Decoder[d.Flat] = msgspec.json.Decoder(d.Flat)
_CORE_MESSAGE = msgspec.json.Decoder(d.CMessageEvent)
_UNIFIED_MESSAGE = msgspec.json.Decoder(d.UMessageEvent)
_CORE_MEMBER = msgspec.json.Decoder(d.CMemberEvent)
_UNIFIED_MEMBER = msgspec.json.Decoder(d.UMemberEvent)
_CORE_DUPLICATE = msgspec.json.Decoder(d.CDuplicateMessage)
_LEGACY_MESSAGE = msgspec.json.Decoder(d.LMessageCreated)
_LEGACY_MEMBER = msgspec.json.Decoder(d.LMemberEvent)
_LEGACY_DUPLICATE = msgspec.json.Decoder(d.LDuplicateMessage)
_BROADCAST = msgspec.json.Decoder(d.BBroadcast)
_DISCRIMINATORS = msgspec.json.Decoder(d.Discriminators)
_OBJECT_KEYS = msgspec.json.Decoder(dict[str, msgspec.Raw])

_REALTIME_VARIANT_NAMES = frozenset(d.REALTIME_VARIANTS)

#: msgspec's message for a value outside :data:`events.dialects.Id`'s bounds; the other
#: bounded integers (unix seconds) have other bounds, so they stay ``invalid_payload``.
_ID_OUT_OF_RANGE = re.compile(
    rf"Expected `int` (?:>= {d.MIN_ID}|<= {d.MAX_ID}) - at `(\$[^`]*)`"
)
#: One step of a msgspec error path: ``.key`` or ``[index]``.
_PATH_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")

# -- decoding with classified failures -----------------------------------------

#: What a decode can raise; the hot decoders catch these around their own decode and let
#: :func:`_decode` decode again to classify (a second parse only for a rejected payload).
_DECODE_ERRORS = (msgspec.DecodeError, RecursionError)


def _decode(
    decoder: msgspec.json.Decoder[W],
    data: bytes,
    rx: Received,
    shape: str,
    tag: tuple[str, frozenset[str]] | None = None,
) -> W:
    """Decode ``data`` as ``shape``, turning every failure into :class:`EventRejected`.

    ``tag`` names the discriminating key and its known values, so that an
    unknown value is reported as ``unknown_variant`` rather than as a
    generic validation error.
    """
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _explain(exc, data, rx, shape, tag) from None
    except msgspec.DecodeError as exc:
        raise EventRejected(f"payload on {rx.subject!r} is not JSON: {exc}", RejectCode.NOT_JSON) from None
    except RecursionError:
        raise EventRejected(
            f"payload on {rx.subject!r} is nested too deeply to decode", RejectCode.INVALID_PAYLOAD
        ) from None


def _explain(
    exc: msgspec.ValidationError,
    data: bytes,
    rx: Received,
    shape: str,
    tag: tuple[str, frozenset[str]] | None,
) -> EventRejected:
    if not data.lstrip(b" \t\r\n").startswith(b"{"):
        return EventRejected(f"payload on {rx.subject!r} must be a JSON object: {exc}", RejectCode.NOT_OBJECT)
    if tag is not None:
        key, known = tag
        value = _discriminator(data, key)
        if value is not None and value not in known:
            return _unknown_variant(rx, shape, key, value, known)
    out_of_range = _ID_OUT_OF_RANGE.search(str(exc))
    if out_of_range is not None:
        path = out_of_range.group(1)
        return invalid_id(rx, f"{shape} payload", path, _value_at(data, path))
    return EventRejected(f"{shape} payload on {rx.subject!r} is invalid: {exc}", RejectCode.INVALID_PAYLOAD)


def _value_at(data: bytes, path: str) -> object:
    """The JSON value at msgspec's error ``path`` (``$.a.b[2]``), or None when it cannot be found.

    Only called for a rejected payload, so the second parse costs nothing on the hot path.
    """
    try:
        value: object = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None
    for key, index in _PATH_STEP.findall(path.removeprefix("$")):
        if key and isinstance(value, dict) and key in value:
            value = value[key]
        elif index and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        else:
            return None
    return value if isinstance(value, int) else None


def _discriminator(data: bytes, key: str) -> str | None:
    try:
        found = getattr(_DISCRIMINATORS.decode(data), key)
    except (msgspec.DecodeError, RecursionError):
        return None
    return None if found is UNSET else str(found)


def _unknown_variant(rx: Received, shape: str, key: str, value: str, known: frozenset[str]) -> EventRejected:
    return EventRejected(
        f"{shape} payload on {rx.subject!r} has unknown {key} {value!r} (known: {', '.join(sorted(known))})",
        RejectCode.UNKNOWN_VARIANT,
    )


# -- realtime subjects: R, with T and N accepted ---------------------------------


def realtime(data: bytes, rx: Received) -> Job:
    """Decode a ``fechatter.realtime.>`` payload: R, else T (``type``), else N (``event_type``)."""
    try:
        env = _REALTIME.decode(data)
    except _DECODE_ERRORS:
        env = _decode(_REALTIME, data, rx, "realtime")
    found = [
        v
        for v in (
            env.MessageReceived,
            env.TypingStarted,
            env.TypingStopped,
            env.MessageRead,
            env.UserPresence,
            env.MessageUnread,
            env.MessageDeleted,
        )
        if v is not UNSET
    ]
    if len(found) == 1:
        return from_realtime(found[0], rx, Dialect.REALTIME)
    if found:
        names = [n for n in d.REALTIME_VARIANTS if getattr(env, n) is not UNSET]
        raise EventRejected(
            f"realtime payload on {rx.subject!r} has {len(found)} variants "
            f"({', '.join(names)}); exactly one is allowed",
            RejectCode.INVALID_PAYLOAD,
        )
    if env.event_type is not UNSET:
        return notify_flat(data, rx)
    if env.type is not UNSET:
        tagged = _decode(_TAGGED, data, rx, "tagged", ("type", _REALTIME_VARIANT_NAMES))
        return from_realtime(tagged, rx, Dialect.TAGGED)
    keys = sorted(_OBJECT_KEYS.decode(data))  # env decoded, so data is a JSON object
    raise EventRejected(
        f"realtime payload on {rx.subject!r} has no known variant "
        f"(keys: {', '.join(map(repr, keys)) or 'none'}; "
        f"known: {', '.join(d.REALTIME_VARIANTS)}, or a 'type' or 'event_type' field)",
        RejectCode.UNKNOWN_VARIANT,
    )


# -- message subjects: N, C, U, L ----------------------------------------------


def notify_flat(data: bytes, rx: Received) -> Job:
    """Decode a notify-flat (N) payload, dispatched on ``event_type``."""
    try:
        event = _FLAT.decode(data)
    except _DECODE_ERRORS:
        event = _decode(_FLAT, data, rx, "notify-flat", ("event_type", d.FLAT_EVENT_TYPES))
    return from_flat(event, rx)


def core_message(data: bytes, rx: Received) -> Job:
    """Decode a core ``MessageEvent`` (C), dispatched on ``kind``."""
    try:
        event = _CORE_MESSAGE.decode(data)
    except _DECODE_ERRORS:
        event = _decode(_CORE_MESSAGE, data, rx, "core message", ("kind", d.MESSAGE_LIFECYCLES))
    return from_core_message(event, rx)


def unified_message(data: bytes, rx: Received) -> Job:
    """Decode a unified v1 ``EnhancedMessageEvent`` (U); its ``members`` is ignored."""
    try:
        event = _UNIFIED_MESSAGE.decode(data)
    except _DECODE_ERRORS:
        event = _decode(_UNIFIED_MESSAGE, data, rx, "unified message", ("kind", d.MESSAGE_LIFECYCLES))
    return from_core_message(event, rx)


def flat_or_core_message(data: bytes, rx: Received) -> Job:
    """Decode a subject that carries both N and C (``fechatter.message.deleted``), by key."""
    shape = _decode(_DISCRIMINATORS, data, rx, "message")
    if shape.event_type is not UNSET:
        return notify_flat(data, rx)
    if shape.kind is not UNSET:
        return core_message(data, rx)
    raise EventRejected(
        f"message payload on {rx.subject!r} has neither 'event_type' (notify-flat) nor 'kind' (core contract)",
        RejectCode.INVALID_PAYLOAD,
    )


def legacy_message(data: bytes, rx: Received) -> Job:
    """Decode a legacy ``{"message", "chat_members"}`` payload (L); always a new message."""
    return from_legacy_message(_decode(_LEGACY_MESSAGE, data, rx, "legacy message"), rx)


def disguised_read_receipt(data: bytes, rx: Received) -> Job:
    """Reject the U read receipt that poses as a new message.

    ``publish_unified_message_read_receipt`` (ep:749-797) wraps a read
    receipt in a fake ``kind: Created`` message whose id is only the first of
    the read ids. Turning it into a new message would notify a chat of a
    message that does not exist; turning it into a read job would claim a
    single message was read. Fechatter's live read path is ``MessageRead`` on
    ``fechatter.realtime.chat.{chat_id}.read``, so this copy is dead-lettered.

    Raises:
      EventRejected: always; ``disguised_read_receipt`` when the payload is
        well formed, otherwise the decoding failure.
    """
    event = _decode(_UNIFIED_MESSAGE, data, rx, "unified read receipt")
    count = event.trace_context.get("message_count", "?")
    raise EventRejected(
        f"read receipt disguised as a {event.kind} message on {rx.subject!r}: user "
        f"{event.msg.sender_id} read {count} message(s) of chat {event.msg.chat_id} "
        f"but only the first id ({event.msg.id}) is carried; "
        "read receipts are taken from MessageRead on fechatter.realtime.chat.{chat_id}.read",
        RejectCode.DISGUISED_READ_RECEIPT,
    )


# -- membership and duplicates: the subject names the job ----------------------


def _core_member(job_type: MemberJob) -> Decoder:
    """Return a decoder for a core member event (C), which becomes ``job_type``."""

    def decode(data: bytes, rx: Received) -> Job:
        event = _decode(_CORE_MEMBER, data, rx, "core member")
        return job_type(
            origin=rx.origin(Dialect.CORE),
            chat_id=event.chat_id,
            user_id=event.user_id,
            at=event.occurred_at,
        )

    return decode


def _unified_member(job_type: MemberJob) -> Decoder:
    """Return a decoder for a unified ``EnhancedChatMemberEvent`` (U) making ``job_type``."""

    def decode(data: bytes, rx: Received) -> Job:
        event = _decode(_UNIFIED_MEMBER, data, rx, "unified member")
        return job_type(
            origin=rx.origin(Dialect.UNIFIED, event.event_id),
            chat_id=event.chat_id,
            user_id=event.user_id,
            user_name=event.user_name,
            at=event.occurred_at,
        )

    return decode


def _legacy_member(job_type: MemberJob) -> Decoder:
    """Return a decoder for a legacy member event (L), which becomes ``job_type``.

    Both legacy joined and left carry the time as ``joined_at``.
    """

    def decode(data: bytes, rx: Received) -> Job:
        event = _decode(_LEGACY_MEMBER, data, rx, "legacy member")
        return job_type(
            origin=rx.origin(Dialect.LEGACY),
            chat_id=event.chat_id,
            user_id=event.user_id,
            at=event.joined_at,
        )

    return decode


#: C ``ChatMemberJoinedEvent`` / ``ChatMemberLeftEvent``.
core_joined, core_left = _core_member(MemberJoined), _core_member(MemberLeft)
#: U ``EnhancedChatMemberEvent`` on joined.v1 / left.v1.
unified_joined, unified_left = _unified_member(MemberJoined), _unified_member(MemberLeft)
#: L ``{"chat_id", "user_id", "joined_at"}`` on joined / left.
legacy_joined, legacy_left = _legacy_member(MemberJoined), _legacy_member(MemberLeft)


_Duplicate = TypeVar("_Duplicate", d.CDuplicateMessage, d.LDuplicateMessage)


def _duplicate(decoder: msgspec.json.Decoder[_Duplicate], dialect: Dialect, what: str) -> Decoder:
    """Return a decoder for a duplicate-message payload of ``dialect`` (C and L share the fields)."""

    def decode(data: bytes, rx: Received) -> Job:
        event = _decode(decoder, data, rx, what)
        return DuplicateMessage(
            origin=rx.origin(dialect),
            chat_id=event.chat_id,
            sender_id=event.sender_id,
            idempotency_key=str(event.idempotency_key),
        )

    return decode


#: C ``DuplicateMessageEvent``; L duplicate-message payload.
core_duplicate = _duplicate(_CORE_DUPLICATE, Dialect.CORE, "core duplicate")
legacy_duplicate = _duplicate(_LEGACY_DUPLICATE, Dialect.LEGACY, "legacy duplicate")


def broadcast(data: bytes, rx: Received) -> Job:
    """Decode a ``fechatter.broadcast`` payload (B)."""
    event = _decode(_BROADCAST, data, rx, "broadcast")
    return Broadcast(
        origin=rx.origin(Dialect.BROADCAST),
        target_users=event.target_users,
        event_data=event.event_data,
    )


# -- subjects that never become jobs -------------------------------------------


def not_for_notify(data: bytes, rx: Received) -> Job:
    """Reject a subject owned by another Fechatter consumer."""
    raise EventRejected(
        f"{rx.subject!r} is not a notify subject (search, analytics and mentions "
        "have their own consumers); narrow the bridge's subject filter",
        RejectCode.NOT_FOR_NOTIFY,
    )


def never_constructed(data: bytes, rx: Received) -> Job:
    """Reject ``FECHATTER_DOMAIN_EVENTS.*``: Fechatter declares ``DomainEvent``, never builds it."""
    raise EventRejected(
        f"{rx.subject!r} carries a DomainEvent, which Fechatter never constructs "
        "(flows/events.rs); there is no decoder for it",
        RejectCode.UNSUPPORTED_DIALECT,
    )
