"""Job -> notification: the JSON objects the browser receives, one per SSE ``data:`` frame.

Every notification is a flat JSON object with a string ``type`` (the Fechatter web client
dispatches on it and reads a message's fields from the top level of the object, so nested shapes
give it ``NaN`` ids; docs/web-client-contract.md#payload-shapes). Ids are JSON numbers, times are ISO 8601 in UTC with
``Z``, absent values are ``null``. Who receives each type is decided in :mod:`workers.actors`.

| `type`                | fields besides `type`                                     | sent to                          |
|-----------------------|-----------------------------------------------------------|----------------------------------|
| `new_message`         | `id, chat_id, sender_id, sender_name, content, files,`    | members but the sender, once per |
|                       | `created_at, idempotency_key`                             | user per (chat_id, id)           |
| `message_edited`      | `id, chat_id, sender_id, sender_name, content, files,`    | members but the editor           |
|                       | `edited_at`                                               |                                  |
| `message_deleted`     | `id, chat_id, deleted_by, deleted_at`                     | members but the deleter (if the  |
|                       |                                                           | copy names one), once            |
| `message_read`        | `chat_id, user_id, message_ids, read_at`                  | members but the reader           |
| `message_unread`      | `chat_id, user_id, message_id`                            | the user only (their other tabs) |
| `typing_started`      | `chat_id, user_id, user_name`                             | members but the typist; live only|
| `typing_stopped`      | `chat_id, user_id, user_name` (always null)               | members but the typist; live only|
| `user_presence`       | `user_id, status, last_seen`                              | users sharing a chat with them;  |
|                       |                                                           | live only                        |
| `chat_member_added`   | `chat_id, user_id, user_name`                             | the members and the joiner       |
| `chat_member_removed` | `chat_id, user_id, user_name`                             | the members and the leaver       |
| `duplicate_message`   | `chat_id, sender_id, idempotency_key`                     | the sender only                  |
| (broadcast)           | `Broadcast.event_data`; `type` = `"broadcast"` unless it  | `target_users`                   |
|                       | has a string `type` already                               |                                  |

"Live only" (``events.LIVE_ONLY``): announced to the streams open at the time, never stored in an
inbox, so never replayed on a resume and sent without an SSE ``id:``.

Example: ``{"type":"new_message","id":1234,"chat_id":42,"sender_id":7,"sender_name":"Alice Zhang",
"content":"Hi team","files":[],"created_at":"2025-06-27T02:45:46.782538Z",
"idempotency_key":"0190b5e2-7c3a-7d82-9206-54b2f6b4f7c4"}``.

Of one message's dialects, the first one processed decides the fields: ``sender_name`` is null
when Fechatter's realtime (``MessageReceived``) or core (``message.created``) copy wins, because
an inbox entry cannot be changed once announced, and a second notification is what this
service exists to prevent. (The web client hard-codes ``sender_name`` anyway.)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from events import (
    Broadcast,
    DuplicateMessage,
    Job,
    MemberJoined,
    MemberLeft,
    MessageDeleted,
    MessageEdited,
    MessagesRead,
    MessageUnread,
    NewMessage,
    TypingStarted,
    TypingStopped,
    UserPresence,
)

__all__ = ["BROADCAST_TYPE", "TYPES", "encode", "iso", "notification_for"]

#: ``type`` of a broadcast whose ``event_data`` names none.
BROADCAST_TYPE: Final = "broadcast"

#: Every ``type`` this module builds itself (a broadcast may carry any other).
TYPES: Final = frozenset({
    "new_message", "message_edited", "message_deleted", "message_read", "message_unread",
    "typing_started", "typing_stopped", "user_presence", "chat_member_added",
    "chat_member_removed", "duplicate_message", BROADCAST_TYPE,
})

_ENCODER = msgspec.json.Encoder()


def iso(when: datetime | None) -> str | None:
    """``when`` in UTC as ISO 8601 with ``Z`` (microseconds only when non-zero), or None."""
    if when is None:
        return None
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def encode(notification: dict[str, Any]) -> bytes:
    """The notification as compact JSON (what the inbox stores and the gateway sends)."""
    return _ENCODER.encode(notification)


def notification_for(job: Job) -> dict[str, Any]:
    """Build the notification for ``job`` (see the table in this module's docstring)."""
    match job:
        case NewMessage():
            return {
                "type": "new_message", "id": job.message_id, "chat_id": job.chat_id,
                "sender_id": job.sender_id, "sender_name": job.sender_name, "content": job.content,
                "files": job.files, "created_at": iso(job.created_at), "idempotency_key": job.idempotency_key,
            }
        case MessageEdited():
            return {
                "type": "message_edited", "id": job.message_id, "chat_id": job.chat_id,
                "sender_id": job.sender_id, "sender_name": job.sender_name, "content": job.content,
                "files": job.files, "edited_at": iso(job.edited_at),
            }
        case MessageDeleted():
            return {
                "type": "message_deleted", "id": job.message_id, "chat_id": job.chat_id,
                "deleted_by": job.deleted_by, "deleted_at": iso(job.deleted_at),
            }
        case MessagesRead():
            return {
                "type": "message_read", "chat_id": job.chat_id, "user_id": job.user_id,
                "message_ids": job.message_ids, "read_at": iso(job.read_at),
            }
        case MessageUnread():
            return {"type": "message_unread", "chat_id": job.chat_id, "user_id": job.user_id,
                    "message_id": job.message_id}
        case TypingStarted():
            return {"type": "typing_started", "chat_id": job.chat_id, "user_id": job.user_id,
                    "user_name": job.user_name}
        case TypingStopped():
            return {"type": "typing_stopped", "chat_id": job.chat_id, "user_id": job.user_id, "user_name": None}
        case UserPresence():
            return {"type": "user_presence", "user_id": job.user_id, "status": job.status,
                    "last_seen": iso(job.last_seen)}
        case MemberJoined():
            return {"type": "chat_member_added", "chat_id": job.chat_id, "user_id": job.user_id,
                    "user_name": job.user_name}
        case MemberLeft():
            return {"type": "chat_member_removed", "chat_id": job.chat_id, "user_id": job.user_id,
                    "user_name": job.user_name}
        case DuplicateMessage():
            return {"type": "duplicate_message", "chat_id": job.chat_id, "sender_id": job.sender_id,
                    "idempotency_key": job.idempotency_key}
        case Broadcast():
            data = dict(job.event_data)
            if not isinstance(data.get("type"), str):
                data["type"] = BROADCAST_TYPE
            return data
    raise TypeError(f"no notification for {type(job).__name__}")  # unreachable while Job is closed
