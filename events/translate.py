"""Turn decoded wire structs into jobs: the one place where dialects are normalised.

Pure functions from a :mod:`events.dialects` struct plus the
:class:`~events.received.Received` facts to a :mod:`events.jobs` job.
Every difference between dialects that a worker must not see is resolved
here: string ids, unix seconds, null file lists, the ``[EDITED]`` marker,
and member lists that are not recipient lists.
"""

from __future__ import annotations

from datetime import UTC, datetime

from events.dialects import (
    MAX_ID,
    MIN_ID,
    CMessageEvent,
    CoreMessage,
    Flat,
    LMessageCreated,
    MessageLifecycle,
    NMemberAdded,
    NMemberRemoved,
    NMessageDeleted,
    NMessageEdited,
    NMessageRead,
    NMessagesRead,
    NNewMessage,
    NStatusChanged,
    NTypingStarted,
    NTypingStopped,
    NUserPresence,
    RealtimeVariant,
    RMessageDeleted,
    RMessageRead,
    RMessageReceived,
    RMessageUnread,
    RTypingStarted,
    RTypingStopped,
    RUserPresence,
    UMessageEvent,
)
from events.errors import EventRejected, RejectCode
from events.jobs import (
    Dialect,
    Job,
    MemberJoined,
    MemberLeft,
    MessageDeleted,
    MessageEdited,
    MessagesRead,
    MessageUnread,
    NewMessage,
    Origin,
    TypingStarted,
    TypingStopped,
    UserPresence,
)
from events.received import Received

__all__ = ["from_core_message", "from_flat", "from_legacy_message", "from_realtime", "invalid_id"]

#: Prefix Fechatter's notify-flat publisher puts before edited content (enh:127-147).
EDITED_MARKER = "✏️ [EDITED] "


def invalid_id(rx: Received, what: str, path: str, value: object) -> EventRejected:
    """The rejection of an id outside ``[MIN_ID, MAX_ID]`` at ``path`` (``value`` None if unknown)."""
    shown = "" if value is None else f" {value!r}"
    return EventRejected(
        f"{what} on {rx.subject!r} has id{shown} at {path}: ids must be positive integers "
        f"from {MIN_ID} to {MAX_ID} (2^63-1)",
        RejectCode.INVALID_ID,
    )


def from_realtime(v: RealtimeVariant, rx: Received, dialect: Dialect) -> Job:
    """Translate one realtime-enum variant (dialect R, or T when internally tagged)."""
    match v:
        case RMessageReceived(message=m):
            if m.chat_id != v.chat_id:
                raise EventRejected(
                    f"MessageReceived on {rx.subject!r} has chat_id {v.chat_id} "
                    f"but its message has chat_id {m.chat_id}",
                    RejectCode.INVALID_PAYLOAD,
                )
            ts = m.timestamp
            message_id = int(m.id)  # a digit string on the wire: its range is checked here
            if not MIN_ID <= message_id <= MAX_ID:
                where = "$.MessageReceived.message.id" if dialect is Dialect.REALTIME else "$.message.id"
                raise invalid_id(rx, "MessageReceived", where, message_id)
            return NewMessage(
                origin=rx.origin(dialect),
                chat_id=m.chat_id,
                message_id=message_id,
                sender_id=m.sender_id,
                content=m.content,
                files=m.files or [],
                created_at=datetime.fromtimestamp(ts, UTC) if isinstance(ts, int) else ts,
                recipients=v.recipients,
            )
        case RTypingStarted():
            return TypingStarted(
                origin=rx.origin(dialect),
                chat_id=v.chat_id,
                user_id=v.user_id,
                user_name=v.user_name,
                expires_at=rx.typing_expires_at,
            )
        case RTypingStopped():
            return TypingStopped(
                origin=rx.origin(dialect),
                chat_id=v.chat_id,
                user_id=v.user_id,
                expires_at=rx.typing_expires_at,
            )
        case RMessageRead():
            return MessagesRead(
                origin=rx.origin(dialect),
                chat_id=v.chat_id,
                user_id=v.reader_id,
                message_ids=[v.message_id],
                read_at=v.read_at,
            )
        case RUserPresence():
            return UserPresence(
                origin=rx.origin(dialect),
                user_id=v.user_id,
                status=v.status,
                last_seen=v.last_seen,
                expires_at=rx.presence_expires_at,
            )
        case RMessageUnread():
            return MessageUnread(
                origin=rx.origin(dialect),
                chat_id=v.chat_id,
                user_id=v.user_id,
                message_id=v.message_id,
            )
        case RMessageDeleted():
            return MessageDeleted(
                origin=rx.origin(dialect),
                chat_id=v.chat_id,
                message_id=v.message_id,
                deleted_by=v.deleted_by,
                deleted_at=v.deleted_at,
            )


def from_flat(v: Flat, rx: Received) -> Job:
    """Translate one notify-flat (dialect N) event."""
    origin = rx.origin(Dialect.NOTIFY_FLAT)
    match v:
        case NNewMessage():
            # N carries no recipients: the old notify resolved them from the DB.
            return NewMessage(
                origin=origin,
                chat_id=v.chat_id,
                message_id=v.message_id,
                sender_id=v.sender_id,
                content=v.content,
                files=v.files or [],
                created_at=v.timestamp,
                sender_name=v.sender_name,
                workspace_id=v.workspace_id,
            )
        case NMessageEdited():
            return MessageEdited(
                origin=origin,
                chat_id=v.chat_id,
                message_id=v.message_id,
                sender_id=v.sender_id,
                content=v.content.removeprefix(EDITED_MARKER),
                files=v.files or [],
                edited_at=v.timestamp,
                sender_name=v.sender_name,
                workspace_id=v.workspace_id,
            )
        case NMessageDeleted():
            return MessageDeleted(
                origin=origin,
                chat_id=v.chat_id,
                message_id=v.message_id,
                deleted_at=v.timestamp,
            )
        case NMemberAdded() | NMemberRemoved():
            member = MemberJoined if isinstance(v, NMemberAdded) else MemberLeft
            return member(
                origin=origin,
                chat_id=v.chat_id,
                user_id=v.user_id,
                user_name=v.user_name,
                at=v.timestamp,
            )
        case NTypingStarted():
            return TypingStarted(
                origin=origin,
                chat_id=v.chat_id,
                user_id=v.user_id,
                user_name=v.user_name,
                expires_at=rx.typing_expires_at,
            )
        case NTypingStopped():
            return TypingStopped(
                origin=origin,
                chat_id=v.chat_id,
                user_id=v.user_id,
                expires_at=rx.typing_expires_at,
            )
        case NMessageRead():
            return MessagesRead(
                origin=origin,
                chat_id=v.chat_id,
                user_id=v.user_id,
                message_ids=[v.message_id],
                read_at=v.read_at or rx.received_at,
            )
        case NMessagesRead():
            return MessagesRead(
                origin=origin,
                chat_id=v.chat_id,
                user_id=v.user_id,
                message_ids=v.message_ids,
                read_at=v.read_at,
            )
        case NUserPresence() | NStatusChanged():
            return UserPresence(
                origin=origin,
                user_id=v.user_id,
                status=v.status,
                last_seen=v.last_seen,
                expires_at=rx.presence_expires_at,
            )


def from_core_message(ev: CMessageEvent, rx: Received) -> Job:
    """Translate a core (C) or unified (U) message lifecycle event by its ``kind``.

    C's ``members`` is the chat's member list and becomes the recipients
    (an empty list means unknown). U's ``members`` is the sender alone, or
    empty for edits and deletes, so U never supplies recipients.
    """
    if isinstance(ev, UMessageEvent):
        return _lifecycle(
            ev.kind,
            ev.msg,
            ev.occurred_at,
            rx.origin(Dialect.UNIFIED, ev.event_id),
            recipients=None,
            sender_name=ev.sender_name,
            workspace_id=ev.workspace_id,
        )
    origin = rx.origin(Dialect.CORE)
    return _lifecycle(ev.kind, ev.msg, ev.occurred_at, origin, recipients=ev.members or None)


def from_legacy_message(ev: LMessageCreated, rx: Received) -> Job:
    """Translate the legacy (L) created message, whose ``chat_members`` are the recipients."""
    m = ev.message
    origin = rx.origin(Dialect.LEGACY)
    return _lifecycle("Created", m, m.created_at, origin, recipients=ev.chat_members or None)


def _lifecycle(
    kind: MessageLifecycle,
    m: CoreMessage,
    occurred_at: datetime,
    origin: Origin,
    *,
    recipients: list[int] | None,
    sender_name: str | None = None,
    workspace_id: int | None = None,
) -> Job:
    match kind:
        case "Created":
            key = m.idempotency_key
            return NewMessage(
                origin=origin,
                chat_id=m.chat_id,
                message_id=m.id,
                sender_id=m.sender_id,
                content=m.content,
                files=m.files or [],
                created_at=m.created_at,
                idempotency_key=None if key is None else str(key),
                sender_name=sender_name,
                workspace_id=workspace_id,
                recipients=recipients,
            )
        case "Updated":
            return MessageEdited(
                origin=origin,
                chat_id=m.chat_id,
                message_id=m.id,
                sender_id=m.sender_id,
                content=m.content,
                files=m.files or [],
                edited_at=occurred_at,
                sender_name=sender_name,
                workspace_id=workspace_id,
                recipients=recipients,
            )
        case "Deleted":
            return MessageDeleted(
                origin=origin,
                chat_id=m.chat_id,
                message_id=m.id,
                deleted_at=occurred_at,
                recipients=recipients,
            )
