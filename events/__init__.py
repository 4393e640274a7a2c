"""The event contract shared by the bridge and the workers.

The bridge calls :func:`parse_event` on every NATS message, then enqueues
``job_to_args(job)`` for :func:`actor_name_for` on :func:`lane_for`, or
dead-letters an :class:`EventRejected` with its ``code`` and ``reason``.
Workers call :func:`decode_job` on that argument. Nothing here does I/O.
"""

from events.codec import decode_job, encode_job, job_to_args
from events.errors import EventError, EventRejected, InvalidJob, RejectCode
from events.inbox import (
    INBOX_FIELD,
    chats_complete_key,
    chats_key,
    delivered_key,
    encode_announcement,
    inbox_key,
    live_channel,
    members_key,
    online_key,
    presence_key,
    wake_channel,
)
from events.jobs import (
    DEFAULT_PRESENCE_TTL_S,
    DEFAULT_TYPING_TTL_S,
    JOB_TYPES,
    Broadcast,
    Dialect,
    DuplicateMessage,
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
    dedupe_key,
)
from events.lanes import ACTORS, LIVE_ONLY, ActorSpec, Lane, actor_name_for, is_live_only, lane_for
from events.parse import EventParser, parse_event
from events.queues import (
    dead_letter_queue,
    delay_queue,
    heartbeats_key,
    is_delay_queue,
    messages_key,
    queue_key,
)
from events.routes import ROUTES, Route, Status, route_for
from events.subjects import matches, validate_pattern

__all__ = [
    # Parsing (bridge)
    "DEFAULT_PRESENCE_TTL_S",
    "DEFAULT_TYPING_TTL_S",
    "EventParser",
    "parse_event",
    # Jobs
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
    # Lanes and transport (bridge and workers)
    "ACTORS",
    "LIVE_ONLY",
    "ActorSpec",
    "Lane",
    "actor_name_for",
    "is_live_only",
    "decode_job",
    "encode_job",
    "job_to_args",
    "lane_for",
    # Redis keys and channels shared by the bridge, workers and gateway (one owner: events.inbox)
    "INBOX_FIELD",
    "chats_complete_key",
    "chats_key",
    "delivered_key",
    "encode_announcement",
    "inbox_key",
    "live_channel",
    "members_key",
    "online_key",
    "presence_key",
    "wake_channel",
    # dramatiq's Redis layout, written by the bridge and read by the workers (one owner: events.queues)
    "dead_letter_queue",
    "delay_queue",
    "heartbeats_key",
    "is_delay_queue",
    "messages_key",
    "queue_key",
    # Subjects
    "matches",
    "validate_pattern",
    # Routing table
    "ROUTES",
    "Route",
    "Status",
    "route_for",
    # Errors
    "EventError",
    "EventRejected",
    "InvalidJob",
    "RejectCode",
]
