"""Where each job goes: its dramatiq actor name, its lane (queue), and whether it is stored.

Two lanes keep bursts of one kind from delaying the other: ``realtime``
carries short-lived signals (typing, presence, read state) that are worthless
once late, ``domain`` carries the messages and membership changes that must
all arrive. The bridge enqueues by these names without importing any actor;
workers declare their actors with the same names and queues.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final, NamedTuple

from events.jobs import (
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

__all__ = ["ACTORS", "LIVE_ONLY", "ActorSpec", "Lane", "actor_name_for", "is_live_only", "lane_for"]


class Lane(StrEnum):
    """A dramatiq queue name."""

    #: Ephemeral signals; a worker may drop one past its ``expires_at``.
    REALTIME = "realtime"
    #: Durable domain events; every one must be delivered.
    DOMAIN = "domain"


class ActorSpec(NamedTuple):
    """The dramatiq actor that executes one job type, and its queue."""

    actor_name: str
    lane: Lane


# fmt: off
#: Job type -> actor and lane. Actor names are stable: renaming one strands
#: every job already queued under the old name.
ACTORS: Final[Mapping[type[Job], ActorSpec]] = {
    NewMessage:       ActorSpec("new_message",       Lane.DOMAIN),
    MessageEdited:    ActorSpec("message_edited",    Lane.DOMAIN),
    MessageDeleted:   ActorSpec("message_deleted",   Lane.DOMAIN),
    MemberJoined:     ActorSpec("member_joined",     Lane.DOMAIN),
    MemberLeft:       ActorSpec("member_left",       Lane.DOMAIN),
    DuplicateMessage: ActorSpec("duplicate_message", Lane.DOMAIN),
    Broadcast:        ActorSpec("broadcast",         Lane.DOMAIN),
    MessagesRead:     ActorSpec("messages_read",     Lane.REALTIME),
    MessageUnread:    ActorSpec("message_unread",    Lane.REALTIME),
    TypingStarted:    ActorSpec("typing_started",    Lane.REALTIME),
    TypingStopped:    ActorSpec("typing_stopped",    Lane.REALTIME),
    UserPresence:     ActorSpec("user_presence",     Lane.REALTIME),
}
# fmt: on


#: Jobs whose notifications are live only: announced to the streams open at that moment, never
#: written to a user's inbox, never replayed on a resume. The inbox holds what a user must not
#: miss; "Bob is typing" or "Bob is away" from minutes ago is not that, and stored it would
#: consume the inbox's entry cap and be replayed as if current (a client resuming long after
#: would be told someone is typing). A fresh client reads presence over HTTP instead.
LIVE_ONLY: Final[frozenset[type[Job]]] = frozenset({TypingStarted, TypingStopped, UserPresence})


def is_live_only(job: Job) -> bool:
    """Whether ``job``'s notification goes to open streams only (see :data:`LIVE_ONLY`)."""
    return type(job) in LIVE_ONLY


def actor_name_for(job: Job) -> str:
    """Return the name of the dramatiq actor that executes ``job``."""
    return ACTORS[type(job)].actor_name


def lane_for(job: Job) -> Lane:
    """Return the dramatiq queue ``job`` is enqueued on."""
    return ACTORS[type(job)].lane
