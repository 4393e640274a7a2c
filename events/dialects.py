"""Wire shapes of every payload Fechatter publishes, exactly as sent.

One ``msgspec.Struct`` per payload, named ``<dialect letter><Rust type>``
(the letters and payloads: docs/event-contract.md#dialects and #payloads). They validate types but do not
normalise: :mod:`events.translate` turns them into jobs. Unknown keys are
ignored (Fechatter adds fields freely, e.g. ``sig`` and ``trace_context``),
and ``version`` defaults to ``"V1"`` as serde's ``#[serde(default)]`` does.

Datetimes: msgspec accepts RFC 3339 with ``Z`` or ``+00:00`` and any number of
fraction digits; 7-9 digits are rounded to the nearest microsecond (chrono's
nanosecond ``Utc::now()`` values, e.g. ``.790112345Z`` -> ``.790112``).
A timestamp without an offset is rejected rather than guessed.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Final, Literal, TypeAlias

from msgspec import UNSET, Meta, Struct, UnsetType

from events.jobs import AwareDatetime

#: The smallest and largest id the contract accepts. Fechatter's ids are PostgreSQL
#: bigserials, so every real one is a positive i64. Zero or a negative id names no user,
#: chat or message: delivering it would write inboxes nobody can read (the gateway refuses
#: such tokens), so the event is rejected as ``invalid_id``. A number beyond i64 is
#: corruption, and msgspec would accept it as an unbounded Python int that the job encoder
#: and Redis then choke on.
MIN_ID: Final = 1
MAX_ID: Final = 2**63 - 1

#: A user, chat or message id, alone or in a list (recipients, members, target users): a
#: list holding one bad id rejects the whole event, naming the id's position, rather than
#: silently delivering to the rest of a list that is evidently corrupt.
Id: TypeAlias = Annotated[int, Meta(ge=MIN_ID, le=MAX_ID)]

#: ``workspace_id``: only bounded to i64. Nothing is delivered by it (it is carried into the
#: job for tracing), so an odd value must not cost the message itself.
I64: TypeAlias = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]

#: ``StreamMessage.id``: an i64 serialised as a string of digits; its range is checked when
#: it is converted (:func:`events.translate.from_realtime`), so a ``"0"`` or ``"-5"`` is an
#: ``invalid_id`` like any other bad id, not a shape error.
DigitString: TypeAlias = Annotated[str, Meta(pattern=r"^-?[0-9]{1,19}$")]

#: Unix time in seconds, bounded to years 1970-9999 so it always converts.
UnixSeconds: TypeAlias = Annotated[int, Meta(ge=0, le=253_402_300_799)]

Version: TypeAlias = Literal["V1"]

# -- R: realtime enum, externally tagged --------------------------------------


class StreamMessage(Struct, frozen=True):
    """The message inside ``MessageReceived``; ``id`` is a string on the wire."""

    id: DigitString | Id
    chat_id: Id
    sender_id: Id
    content: str
    timestamp: UnixSeconds | AwareDatetime
    files: list[str] | None = None


class RMessageReceived(Struct, frozen=True):
    message: StreamMessage
    chat_id: Id
    recipients: list[Id]


class RMessageRead(Struct, frozen=True):
    message_id: Id
    chat_id: Id
    reader_id: Id
    read_at: AwareDatetime


class RMessageUnread(Struct, frozen=True):
    message_id: Id
    chat_id: Id
    user_id: Id


class RTypingStarted(Struct, frozen=True):
    chat_id: Id
    user_id: Id
    user_name: str | None = None


class RTypingStopped(Struct, frozen=True):
    chat_id: Id
    user_id: Id


class RUserPresence(Struct, frozen=True):
    user_id: Id
    status: str
    last_seen: AwareDatetime | None = None


class RMessageDeleted(Struct, frozen=True):
    message_id: Id
    chat_id: Id
    deleted_by: Id
    deleted_at: AwareDatetime


RealtimeVariant: TypeAlias = (
    RMessageReceived | RMessageRead | RMessageUnread | RTypingStarted | RTypingStopped | RUserPresence | RMessageDeleted
)


class RealtimeEnvelope(Struct, frozen=True):
    """Any payload seen on ``fechatter.realtime.>``, decoded in one pass.

    msgspec has no externally tagged unions, so each variant is an optional
    field and exactly one must be set. ``type`` and ``event_type`` are read
    too, so that the rarer T and N shapes on the same subjects are spotted
    without a second parse of the common R shape.
    """

    MessageReceived: RMessageReceived | UnsetType = UNSET
    MessageRead: RMessageRead | UnsetType = UNSET
    MessageUnread: RMessageUnread | UnsetType = UNSET
    TypingStarted: RTypingStarted | UnsetType = UNSET
    TypingStopped: RTypingStopped | UnsetType = UNSET
    UserPresence: RUserPresence | UnsetType = UNSET
    MessageDeleted: RMessageDeleted | UnsetType = UNSET
    type: str | UnsetType = UNSET
    event_type: str | UnsetType = UNSET


#: The variant names of the realtime enum, i.e. the field names of :class:`RealtimeEnvelope`.
REALTIME_VARIANTS: tuple[str, ...] = RealtimeEnvelope.__struct_fields__[:-2]

# -- T: the realtime enum, internally tagged by "type" -------------------------


class TMessageReceived(RMessageReceived, frozen=True, tag_field="type", tag="MessageReceived"):
    pass


class TMessageRead(RMessageRead, frozen=True, tag_field="type", tag="MessageRead"):
    pass


class TMessageUnread(RMessageUnread, frozen=True, tag_field="type", tag="MessageUnread"):
    pass


class TTypingStarted(RTypingStarted, frozen=True, tag_field="type", tag="TypingStarted"):
    pass


class TTypingStopped(RTypingStopped, frozen=True, tag_field="type", tag="TypingStopped"):
    pass


class TUserPresence(RUserPresence, frozen=True, tag_field="type", tag="UserPresence"):
    pass


class TMessageDeleted(RMessageDeleted, frozen=True, tag_field="type", tag="MessageDeleted"):
    pass


Tagged: TypeAlias = (
    TMessageReceived | TMessageRead | TMessageUnread | TTypingStarted | TTypingStopped | TUserPresence | TMessageDeleted
)

# -- N: notify-flat, tagged by "event_type" ------------------------------------


class _Flat(Struct, frozen=True, tag_field="event_type"):
    pass


class _FlatMessage(_Flat, frozen=True):
    """``NotifyMessageEvent``; ``timestamp`` is ``created_at`` for new_message, else ``now()``."""

    chat_id: Id
    sender_id: Id
    content: str
    timestamp: AwareDatetime
    message_id: Id
    sender_name: str | None = None
    files: list[str] | None = None
    workspace_id: I64 | None = None


class NNewMessage(_FlatMessage, frozen=True, tag="new_message"):
    pass


class NMessageEdited(_FlatMessage, frozen=True, tag="message_edited"):
    """``content`` carries the ``"✏️ [EDITED] "`` marker."""


class NMessageDeleted(_FlatMessage, frozen=True, tag="message_deleted"):
    """``content`` is the placeholder ``"🗑️ [Message Deleted]"``."""


class _FlatMember(_Flat, frozen=True):
    chat_id: Id
    user_id: Id
    timestamp: AwareDatetime
    user_name: str | None = None


class NMemberAdded(_FlatMember, frozen=True, tag="member_added"):
    pass


class NMemberRemoved(_FlatMember, frozen=True, tag="member_removed"):
    pass


class NTypingStarted(_Flat, frozen=True, tag="typing_started"):
    chat_id: Id
    user_id: Id
    user_name: str | None = None


class NTypingStopped(_Flat, frozen=True, tag="typing_stopped"):
    chat_id: Id
    user_id: Id


class NMessageRead(_Flat, frozen=True, tag="message_read"):
    """Notify-only singular form; nothing ever published it, so ``read_at`` may be absent."""

    chat_id: Id
    user_id: Id
    message_id: Id
    read_at: AwareDatetime | None = None


class NMessagesRead(_Flat, frozen=True, tag="messages_read"):
    chat_id: Id
    user_id: Id
    message_ids: list[Id]
    read_at: AwareDatetime


class _FlatPresence(_Flat, frozen=True):
    user_id: Id
    status: str
    last_seen: AwareDatetime | None = None


class NUserPresence(_FlatPresence, frozen=True, tag="user_presence"):
    pass


class NStatusChanged(_FlatPresence, frozen=True, tag="status_changed"):
    """Notify-only; nothing ever published it."""


Flat: TypeAlias = (
    NNewMessage
    | NMessageEdited
    | NMessageDeleted
    | NMemberAdded
    | NMemberRemoved
    | NTypingStarted
    | NTypingStopped
    | NMessageRead
    | NMessagesRead
    | NUserPresence
    | NStatusChanged
)

#: Every ``event_type`` value of dialect N.
FLAT_EVENT_TYPES: frozenset[str] = frozenset(
    str(t.__struct_config__.tag)
    for t in (
        NNewMessage,
        NMessageEdited,
        NMessageDeleted,
        NMemberAdded,
        NMemberRemoved,
        NTypingStarted,
        NTypingStopped,
        NMessageRead,
        NMessagesRead,
        NUserPresence,
        NStatusChanged,
    )
)

# -- C and U: core contracts and their unified v1 extension -------------------


class CoreMessage(Struct, frozen=True):
    """``fechatter_core::Message``; ``files`` and ``idempotency_key`` may be null."""

    id: Id
    chat_id: Id
    sender_id: Id
    content: str
    created_at: AwareDatetime
    files: list[str] | None = None
    idempotency_key: uuid.UUID | None = None


MessageLifecycle: TypeAlias = Literal["Created", "Updated", "Deleted"]


class CMessageEvent(Struct, frozen=True):
    kind: MessageLifecycle
    msg: CoreMessage
    members: list[Id]
    occurred_at: AwareDatetime
    version: Version = "V1"


class UMessageEvent(CMessageEvent, frozen=True, kw_only=True):
    """``EnhancedMessageEvent``: its ``members`` is the sender only, never the recipients."""

    sender_name: str
    workspace_id: I64
    event_id: str
    trace_context: dict[str, str] = {}


class CMemberEvent(Struct, frozen=True):
    """``ChatMemberJoinedEvent`` and ``ChatMemberLeftEvent`` are identical; the subject decides."""

    chat_id: Id
    user_id: Id
    occurred_at: AwareDatetime
    version: Version = "V1"


class UMemberEvent(CMemberEvent, frozen=True, kw_only=True):
    """``EnhancedChatMemberEvent``, used for both joined.v1 and left.v1."""

    user_name: str
    event_id: str


class CDuplicateMessage(Struct, frozen=True):
    idempotency_key: uuid.UUID
    chat_id: Id
    sender_id: Id
    occurred_at: AwareDatetime
    version: Version = "V1"


# -- L: the dead module's legacy shapes ---------------------------------------


class LMessageCreated(Struct, frozen=True):
    message: CoreMessage
    chat_members: list[Id]


class LMemberEvent(Struct, frozen=True):
    """Both joined and left carry ``joined_at``; the subject tells them apart."""

    chat_id: Id
    user_id: Id
    joined_at: AwareDatetime


class LDuplicateMessage(Struct, frozen=True):
    idempotency_key: uuid.UUID
    chat_id: Id
    sender_id: Id


# -- B: fechatter.broadcast ----------------------------------------------------


class BBroadcast(Struct, frozen=True):
    target_users: list[Id]
    event_data: dict[str, Any]


# -- Discriminators, read only to explain a failed decode ----------------------


class Discriminators(Struct, frozen=True):
    """The keys that pick a variant; decoded only after a validation error."""

    type: str | UnsetType = UNSET
    event_type: str | UnsetType = UNSET
    kind: str | UnsetType = UNSET


#: Every ``kind`` value of dialects C and U.
MESSAGE_LIFECYCLES: frozenset[str] = frozenset({"Created", "Updated", "Deleted"})
