"""One small actor per job type: decode, pick recipients, deliver.

Actor names and lanes come from the event contract (``events.ACTORS``), so the bridge can
enqueue by name without importing this module. Each lane maps to a configured queue
(``queues.realtime`` / ``queues.domain``). Realtime actors also get a higher dramatiq priority:
a worker process consuming both queues shares one work queue, and there a burst of messages
must not sit in front of a typing indicator either.

Recipients (see :mod:`workers.recipients`): the event's own list when it carries one (and the
cache learns it), otherwise the cached or PostgreSQL membership. The actor itself is never
told about its own typing, reading or message; see :mod:`workers.notifications` for the table.
Typing and presence are live only (``events.LIVE_ONLY``): announced to open streams, never
stored in an inbox, so never replayed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import dramatiq
from dramatiq.middleware import CurrentMessage

from events import (
    ACTORS,
    Broadcast,
    DuplicateMessage,
    InvalidJob,
    Job,
    Lane,
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
    decode_job,
    dedupe_key,
    is_live_only,
)
from settings import Settings
from workers.delivery import Delivered, notification_key
from workers.notifications import notification_for
from workers.scripts import ScriptCall
from workers.services import Services

__all__ = ["PRIORITIES", "Handlers", "declare_actors", "queue_for"]

J = TypeVar("J", bound=Job)

#: dramatiq priority per lane (lower runs first within one worker process).
PRIORITIES: Final = {Lane.REALTIME: 0, Lane.DOMAIN: 10}


def queue_for(lane: Lane, settings: Settings) -> str:
    """The configured dramatiq queue of ``lane``."""
    return settings.queues.realtime if lane is Lane.REALTIME else settings.queues.domain


class Handlers:
    """The actor bodies, one method per job type, sharing one :class:`Services`."""

    def __init__(self, services: Services) -> None:
        self.s = services

    # ------------------------------------------------------------------ messages

    def new_message(self, args: dict[str, Any]) -> Delivered:
        job = _decode(args, NewMessage)
        return self._to_chat(job, job.chat_id, carried=job.recipients, author=job.sender_id)

    def message_edited(self, args: dict[str, Any]) -> Delivered:
        job = _decode(args, MessageEdited)
        return self._to_chat(job, job.chat_id, carried=job.recipients, author=job.sender_id)

    def message_deleted(self, args: dict[str, Any]) -> Delivered:
        job = _decode(args, MessageDeleted)
        return self._to_chat(job, job.chat_id, carried=job.recipients, author=job.deleted_by)

    def duplicate_message(self, args: dict[str, Any]) -> Delivered:
        job = _decode(args, DuplicateMessage)
        return self._to_users(job, [job.sender_id])

    def broadcast(self, args: dict[str, Any]) -> Delivered:
        job = _decode(args, Broadcast)
        return self._to_users(job, job.target_users)

    # ------------------------------------------------------------------ membership

    def member_joined(self, args: dict[str, Any]) -> Delivered:
        job = _decode(args, MemberJoined)
        change = self.s.membership.update("join", job.chat_id, [job.user_id])
        return self._to_chat(job, job.chat_id, extra=[job.user_id], change=change)

    def member_left(self, args: dict[str, Any]) -> Delivered:
        job = _decode(args, MemberLeft)
        change = self.s.membership.update("leave", job.chat_id, [job.user_id])
        return self._to_chat(job, job.chat_id, extra=[job.user_id], change=change)

    # ------------------------------------------------------------------ realtime

    def messages_read(self, args: dict[str, Any]) -> Delivered:
        job = _decode(args, MessagesRead)
        return self._to_chat(job, job.chat_id, author=job.user_id)

    def message_unread(self, args: dict[str, Any]) -> Delivered:
        job = _decode(args, MessageUnread)
        return self._to_users(job, [job.user_id])  # personal state: only the user's other tabs care

    def typing_started(self, args: dict[str, Any]) -> Delivered:
        job = _decode(args, TypingStarted)
        return self._to_chat(job, job.chat_id, author=job.user_id)

    def typing_stopped(self, args: dict[str, Any]) -> Delivered:
        job = _decode(args, TypingStopped)
        return self._to_chat(job, job.chat_id, author=job.user_id)

    def user_presence(self, args: dict[str, Any]) -> Delivered:
        job = _decode(args, UserPresence)
        self.s.presence.store(job)
        return self._to_users(job, self.s.membership.partners(job.user_id))

    # ------------------------------------------------------------------ helpers

    def _to_users(self, job: Job, users: Iterable[int]) -> Delivered:
        delivered = self.s.delivery.deliver(notification_for(job), users=users, **self._marking(job))
        assert delivered is not None  # only a chat audience can be unknown
        return delivered

    def _to_chat(self, job: Job, chat_id: int, *, carried: list[int] | None = None, author: int | None = None,
                 extra: Iterable[int] = (), change: ScriptCall | None = None) -> Delivered:
        """Deliver to the chat's members (and ``extra``), except ``author``.

        Members are the list the event carried (the cache learns it in the same round trip),
        else the cached membership (read by the delivery script itself), else PostgreSQL's.
        The author's marker is set when the key is shared by several copies of one event (a
        message's dialects): a copy that does not name the author (a core ``Deleted`` has no
        ``deleted_by``) then cannot notify them either.
        """
        note = notification_for(job)
        skip = [author] if author is not None else []
        options: dict[str, Any] = {"skip": skip, "mark_skipped": dedupe_key(job) is not None, **self._marking(job)}
        also = [change] if change is not None else []
        if carried:
            also.append(self.s.membership.update("add", chat_id, carried))
            delivered = self.s.delivery.deliver(note, users=[*carried, *extra], also=also, **options)
        else:
            delivered = self.s.delivery.deliver(note, users=extra, chat=chat_id, also=also, **options)
            if delivered is None:  # not cached: PostgreSQL, or nobody (counted, logged)
                members = self.s.membership.members(chat_id) or set()
                delivered = self.s.delivery.deliver(note, users=[*members, *extra], **options)
        assert delivered is not None
        return delivered

    def _marking(self, job: Job) -> dict[str, Any]:
        if is_live_only(job):
            # Nothing is stored, so there is no marker to name (see events.LIVE_ONLY).
            return {"key": "", "ttl_s": 0.0, "live_only": True}
        message = CurrentMessage.get_current_message()
        key = notification_key(job, message.message_id if message is not None else None)
        return {"key": key, "ttl_s": self._marker_ttl(job)}

    def _marker_ttl(self, job: Job) -> float:
        """How long the per-user dedupe markers must live, in seconds.

        Durable jobs: ``delivery.dedupe_ttl`` (longer than any redelivery). Ephemeral jobs:
        until no attempt can deliver any more, i.e. the time left before ``expires_at`` (after
        it :class:`workers.expiry.Expiry` drops every attempt) plus the time limit of an
        attempt that started just before it.
        """
        expires = getattr(job, "expires_at", None)
        if not isinstance(expires, datetime):
            return self.s.settings.delivery.dedupe_ttl
        left = max(0.0, (expires - datetime.now(UTC)).total_seconds())
        return left + self.s.settings.delivery.time_limit


def _decode(args: dict[str, Any], kind: type[J]) -> J:
    """Decode the job; a job of the wrong kind is as permanent a failure as garbage."""
    job = decode_job(args)
    if not isinstance(job, kind):
        raise InvalidJob(f"expected a {kind.__name__} job, got {type(job).__name__}")
    return job


def declare_actors(broker: dramatiq.Broker, services: Services) -> dict[str, dramatiq.Actor[Any, Any]]:
    """Declare one actor per job type on ``broker`` (not on dramatiq's global broker).

    Returns:
      actor name -> actor.
    """
    handlers = Handlers(services)
    actors: dict[str, dramatiq.Actor[Any, Any]] = {}
    for spec in ACTORS.values():
        fn: Callable[[dict[str, Any]], Delivered] = getattr(handlers, spec.actor_name)
        actors[spec.actor_name] = dramatiq.Actor(
            _returns_none(fn, spec.actor_name),
            broker=broker,
            actor_name=spec.actor_name,
            queue_name=queue_for(spec.lane, services.settings),
            priority=PRIORITIES[spec.lane],
            options={},
        )
    return actors


def _returns_none(fn: Callable[[dict[str, Any]], Delivered], name: str) -> Callable[[dict[str, Any]], None]:
    # dramatiq warns about actors returning values without a results backend; the handlers
    # return what they delivered for tests and benchmarks that call them directly.
    def actor(args: dict[str, Any]) -> None:
        fn(args)

    actor.__name__ = actor.__qualname__ = name
    actor.__module__ = __name__
    return actor
