"""The delivery contract between workers (writers) and the gateway (reader), in Redis.

Every key lives under the configured namespace (``redis.namespace``):

========================================  ======  =================================================
key                                       type    content
========================================  ======  =================================================
``{ns}:inbox:{user_id}``                  stream  one entry per notification, field ``n`` = JSON;
                                                  capped (MAXLEN ~ / MINID); entry id = SSE ``id:``
``{ns}:live:{user_id}``                   pubsub  announcement: ``{entry_id}\\n{notification JSON}``;
                                                  an empty entry id: a live-only notification
                                                  (typing, presence), in no inbox
``{ns}:members:{chat_id}``                set     user ids in the chat (membership cache)
``{ns}:chats:{user_id}``                  set     chat ids the user belongs to (presence scoping)
``{ns}:presence:{user_id}``               hash    ``status``, ``last_seen`` (ISO); expires
``{ns}:online:{user_id}``                 zset    gateway stream ids -> expiry (ms), for presence
``{ns}:delivered:{user_id}:{dedupe_key}`` string  marker: this user already got this notification
``{ns}:wake:{queue}``                     pubsub  "jobs were just enqueued on {queue}": idle workers
                                                  block on this instead of polling (payload: count)
========================================  ======  =================================================

A notification is a flat JSON object with a string ``type`` (the web client dispatches on it).
"""

from __future__ import annotations

INBOX_FIELD = "n"


def inbox_key(namespace: str, user_id: int) -> str:
    """The user's inbox stream."""
    return f"{namespace}:inbox:{user_id}"


def live_channel(namespace: str, user_id: int) -> str:
    """The pub/sub channel a gateway holding the user's streams subscribes to."""
    return f"{namespace}:live:{user_id}"


def members_key(namespace: str, chat_id: int) -> str:
    """The chat's membership cache (a set of user ids)."""
    return f"{namespace}:members:{chat_id}"


def chats_key(namespace: str, user_id: int) -> str:
    """The chats a user belongs to (a set of chat ids), for presence scoping."""
    return f"{namespace}:chats:{user_id}"


def chats_complete_key(namespace: str, user_id: int) -> str:
    """Present while ``chats_key(user)`` holds every chat of the user (read from PostgreSQL
    since), not only those events happened to mention."""
    return f"{namespace}:chats-complete:{user_id}"


def presence_key(namespace: str, user_id: int) -> str:
    """The user's current presence (a hash with ``status`` and ``last_seen``)."""
    return f"{namespace}:presence:{user_id}"


def online_key(namespace: str, user_id: int) -> str:
    """Open gateway streams of the user (zset member = stream id, score = expiry in ms)."""
    return f"{namespace}:online:{user_id}"


def delivered_key(namespace: str, user_id: int, dedupe_key: str) -> str:
    """Marker that ``user_id`` already received the notification identified by ``dedupe_key``."""
    return f"{namespace}:delivered:{user_id}:{dedupe_key}"


def wake_channel(namespace: str, queue: str) -> str:
    """The pub/sub channel the bridge publishes to after enqueueing on ``queue``."""
    return f"{namespace}:wake:{queue}"


def encode_announcement(entry_id: str | None, notification_json: str) -> str:
    """The pub/sub payload: the inbox entry id, a newline, the notification JSON.

    ``entry_id`` None (an empty id line) announces a live-only notification: it has no inbox
    entry, so the gateway sends it without an SSE ``id:`` and a resume never replays it.
    """
    return f"{entry_id or ''}\n{notification_json}"


def decode_announcement(payload: str | bytes) -> tuple[str | None, str]:
    """Split an announcement into ``(entry_id, notification_json)``; entry_id None: live only.

    Raises:
      ValueError: when the payload has no id line at all.
    """
    text = payload.decode() if isinstance(payload, bytes) else payload
    entry_id, sep, body = text.partition("\n")
    if not sep:
        raise ValueError("announcement without an entry id line")
    return entry_id or None, body
