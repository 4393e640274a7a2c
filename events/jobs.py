"""The typed jobs the bridge enqueues and the workers execute.

A job is the normalised form of one Fechatter event, whatever dialect it
arrived in: ids are ``int``, times are timezone-aware ``datetime``, and the
payload's quirks (string message ids, unix seconds, ``null`` file lists,
sender-only member lists) are gone. Each job encodes to a JSON object whose
``kind`` field names its class, so one decoder reads any of them back.

Jobs are frozen: a worker that wants a variant builds a new one with
``msgspec.structs.replace``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, TypeAlias

import msgspec

__all__ = [
    "DEFAULT_PRESENCE_TTL_S",
    "DEFAULT_TYPING_TTL_S",
    "JOB_TYPES",
    "Broadcast",
    "Dialect",
    "DuplicateMessage",
    "Job",
    "MemberJoined",
    "MemberLeft",
    "MessageDeleted",
    "MessageEdited",
    "MessageUnread",
    "MessagesRead",
    "NewMessage",
    "Origin",
    "TypingStarted",
    "TypingStopped",
    "UserPresence",
    "dedupe_key",
]

#: How long a typing indicator stays meaningful after it was received, in seconds.
#: Clients re-send typing every few seconds while the user types.
DEFAULT_TYPING_TTL_S: Final[float] = 5.0

#: How long a presence change stays meaningful after it was received, in seconds.
DEFAULT_PRESENCE_TTL_S: Final[float] = 60.0

#: A timezone-aware datetime; a naive one in a payload or job is a validation error.
AwareDatetime: TypeAlias = Annotated[datetime, msgspec.Meta(tz=True)]


class Dialect(StrEnum):
    """The wire dialect an event arrived in (see docs/event-contract.md#dialects)."""

    #: Realtime enum, externally tagged: ``{"MessageReceived": {...}}``.
    REALTIME = "R"
    #: Notify-flat: ``{"event_type": "new_message", ...}``.
    NOTIFY_FLAT = "N"
    #: Core contract: ``{"version": "V1", "kind": "Created", ...}``.
    CORE = "C"
    #: Unified v1: the core contract plus ``sender_name``, ``event_id``, ...
    UNIFIED = "U"
    #: Legacy dead-module shapes: ``{"message": {...}, "chat_members": [...]}``.
    LEGACY = "L"
    #: Internally tagged realtime enum: ``{"type": "MessageReceived", ...}``.
    TAGGED = "T"
    #: ``fechatter.broadcast``: ``{"target_users": [...], "event_data": {...}}``.
    BROADCAST = "B"


class Origin(msgspec.Struct, frozen=True, kw_only=True):
    """Where and when a job's event was received, for tracing and dead letters."""

    subject: str
    dialect: Dialect
    #: JetStream stream name; None for a core NATS delivery.
    stream: str | None = None
    #: JetStream stream sequence number; None for a core NATS delivery.
    stream_seq: int | None = None
    #: How many times JetStream has delivered this message (1 on first delivery).
    delivered: int | None = None
    #: Publisher's event id: the payload's ``event_id`` (dialect U) or the ``Nats-Msg-Id`` header.
    event_id: str | None = None
    received_at: AwareDatetime


class _Job(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag=True):
    """Base of every job: the ``kind`` tag is the class name."""

    origin: Origin


class NewMessage(_Job, frozen=True, kw_only=True):
    """A chat message was posted; deliver it to the chat's members."""

    chat_id: int
    message_id: int
    sender_id: int
    content: str
    files: list[str]
    created_at: AwareDatetime
    idempotency_key: str | None = None
    sender_name: str | None = None
    workspace_id: int | None = None
    #: Users to notify, as carried by the event (R ``recipients``, C ``members``,
    #: L ``chat_members``); None when the event carried none and the worker must
    #: resolve chat membership itself.
    recipients: list[int] | None = None


class MessageEdited(_Job, frozen=True, kw_only=True):
    """A message's content changed; ``content`` is the new text without any marker."""

    chat_id: int
    message_id: int
    sender_id: int
    content: str
    files: list[str]
    edited_at: AwareDatetime
    sender_name: str | None = None
    workspace_id: int | None = None
    #: As in :class:`NewMessage`; None means resolve from membership.
    recipients: list[int] | None = None


class MessageDeleted(_Job, frozen=True, kw_only=True):
    """A message was deleted."""

    chat_id: int
    message_id: int
    deleted_at: AwareDatetime
    #: Who deleted it; only the realtime dialect says.
    deleted_by: int | None = None
    #: As in :class:`NewMessage`; None means resolve from membership.
    recipients: list[int] | None = None


class MessagesRead(_Job, frozen=True, kw_only=True):
    """A user read one or more messages of a chat."""

    chat_id: int
    user_id: int
    message_ids: list[int]
    read_at: AwareDatetime


class MessageUnread(_Job, frozen=True, kw_only=True):
    """A user marked a message unread."""

    chat_id: int
    user_id: int
    message_id: int


class TypingStarted(_Job, frozen=True, kw_only=True):
    """A user started typing in a chat; stale after ``expires_at``."""

    chat_id: int
    user_id: int
    user_name: str | None = None
    expires_at: AwareDatetime


class TypingStopped(_Job, frozen=True, kw_only=True):
    """A user stopped typing in a chat; stale after ``expires_at``."""

    chat_id: int
    user_id: int
    expires_at: AwareDatetime


class UserPresence(_Job, frozen=True, kw_only=True):
    """A user's presence changed; stale after ``expires_at``."""

    user_id: int
    #: ``"online"``, ``"away"`` or ``"offline"`` today; passed through unchecked.
    status: str
    last_seen: AwareDatetime | None = None
    expires_at: AwareDatetime


class MemberJoined(_Job, frozen=True, kw_only=True):
    """A user joined a chat."""

    chat_id: int
    user_id: int
    user_name: str | None = None
    at: AwareDatetime


class MemberLeft(_Job, frozen=True, kw_only=True):
    """A user left (or was removed from) a chat."""

    chat_id: int
    user_id: int
    user_name: str | None = None
    at: AwareDatetime


class DuplicateMessage(_Job, frozen=True, kw_only=True):
    """A client re-sent a message with an idempotency key already stored."""

    chat_id: int
    sender_id: int
    idempotency_key: str


class Broadcast(_Job, frozen=True, kw_only=True):
    """An opaque event to push to an explicit list of users."""

    target_users: list[int]
    event_data: dict[str, Any]


Job: TypeAlias = (
    NewMessage
    | MessageEdited
    | MessageDeleted
    | MessagesRead
    | MessageUnread
    | TypingStarted
    | TypingStopped
    | UserPresence
    | MemberJoined
    | MemberLeft
    | DuplicateMessage
    | Broadcast
)

#: Every job class, in the order of :data:`Job`.
JOB_TYPES: Final[tuple[type[Job], ...]] = (
    NewMessage,
    MessageEdited,
    MessageDeleted,
    MessagesRead,
    MessageUnread,
    TypingStarted,
    TypingStopped,
    UserPresence,
    MemberJoined,
    MemberLeft,
    DuplicateMessage,
    Broadcast,
)


def dedupe_key(job: Job) -> str | None:
    """Return the identity shared by every copy of one event, or None.

    Fechatter publishes each message up to four times in different dialects, in no
    defined order (docs/event-contract.md#quirks), all carrying the same chat and message id.
    A deletion happens once per message, so its copies collapse the same
    way; the ``:deleted`` suffix keeps it apart from the message's own key.
    Edits have no shared edit id across dialects, so they get no key.

    Returns:
      ``"{chat_id}:{message_id}"`` for :class:`NewMessage`,
      ``"{chat_id}:{message_id}:deleted"`` for :class:`MessageDeleted`, else None.
    """
    if isinstance(job, NewMessage):
        return f"{job.chat_id}:{job.message_id}"
    if isinstance(job, MessageDeleted):
        return f"{job.chat_id}:{job.message_id}:deleted"
    return None
