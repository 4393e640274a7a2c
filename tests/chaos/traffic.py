"""Fechatter-shaped domain traffic with a known expectation, published to JetStream.

:func:`plan_traffic` draws, from a seed, chats of 3..50 members (most of them small, as chats
are) and a sequence of new messages in them. Each message is published in one or more of the
dialects Fechatter publishes a new message in on JetStream (docs/event-contract.md, "One message,
four copies" and "Legacy forms"):

====  ==========================================  =================================
C     ``fechatter.message.created``               ``members``: the whole chat
U     ``fechatter.messages.message.created.v1``   ``members``: only the sender
N     ``fechatter.message.new``                   no member list
L     ``fechatter.messages.created``              ``chat_members``: the whole chat
====  ==========================================  =================================

Whatever its copies, a message must give ONE ``new_message`` notification to each member but the
sender: that is :meth:`TrafficPlan.expected`, the map the auditor (tests/chaos/audit.py) compares
the inboxes with. U and N carry no usable member list, so the workers take it from the membership
cache, which only copies carrying members fill: each chat's first message is therefore published
in C and/or L only, in a warm-up (:attr:`TrafficPlan.warmup`) the scenario awaits
(:func:`membership_known`) before any other copy is sent.

About 1 % of the events are malformed (truncated JSON, not an object, unknown kind, an invalid id,
a wrong type, a missing field, an unrouted subject): each must become exactly one dead letter with
its reason code (:attr:`Event.reject_code`, read from the event contract when it is drawn).

:class:`Publisher` publishes copies with a ``Nats-Msg-Id`` each and awaits every PubAck, retrying
through outages (the id makes a retry of a copy JetStream already stored a duplicate JetStream
drops). It records each copy's stream sequence, so "every event JetStream stored" is known
exactly: an event is stored once one of its copies was acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
import redis
from nats.aio.client import Client as NATS

from events import EventRejected, parse_event
from events.inbox import members_key
from tests.chaos.audit import DEFAULT_NAMESPACE, Key

__all__ = [
    "Chat",
    "Copy",
    "Event",
    "PublishError",
    "Publisher",
    "TrafficPlan",
    "membership_known",
    "plan_traffic",
    "publish_in_background",
]

log = logging.getLogger(__name__)

#: Dialects of a new message on JetStream, and whether the copy carries the chat's member list.
DIALECTS: dict[str, bool] = {"C": True, "U": False, "N": False, "L": True}
SUBJECTS = {"C": "fechatter.message.created", "U": "fechatter.messages.message.created.v1",
            "N": "fechatter.message.new", "L": "fechatter.messages.created"}
#: Message ids start here (index i of the plan is message FIRST_MESSAGE_ID + i).
FIRST_MESSAGE_ID = 1_000_000
CREATED_AT = "2026-11-29T17:00:00.000000Z"
OCCURRED_AT = "2026-11-29T17:00:00.000000417Z"
#: A retried copy waits this long for its PubAck, then again after a short pause.
PUBACK_TIMEOUT_S = 2.0
RETRY_PAUSE_S = 0.1


@dataclass(frozen=True, slots=True)
class Chat:
    id: int
    members: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Copy:
    """One JetStream publication: a dialect's payload on its subject, with its own Nats-Msg-Id."""

    dialect: str
    subject: str
    data: bytes
    msg_id: str


@dataclass(slots=True)
class Event:
    """One new message (or one malformed payload) and the copies it is published as."""

    index: int
    chat: Chat
    sender: int
    message_id: int
    copies: list[Copy]
    #: The reason code the bridge must dead-letter it with; None for a good event.
    reject_code: str | None = None
    #: time.time() of the first publish attempt of its first copy.
    published_at: float | None = None
    #: Stream sequence of each acknowledged copy, by Nats-Msg-Id.
    seqs: dict[str, int] = field(default_factory=dict)

    @property
    def malformed(self) -> bool:
        return self.reject_code is not None

    @property
    def stored(self) -> bool:
        """JetStream acknowledged at least one copy."""
        return bool(self.seqs)

    @property
    def key(self) -> Key:
        return ("new_message", self.chat.id, self.message_id)

    def recipients(self) -> Iterator[int]:
        """Members but the sender (README: "members but the sender, once per message")."""
        return (m for m in self.chat.members if m != self.sender)


# --------------------------------------------------------------------------- payloads


def _message(chat: Chat, ident: int, sender: int) -> dict[str, Any]:
    return {"id": ident, "chat_id": chat.id, "sender_id": sender, "content": f"m{ident}", "files": [],
            "created_at": CREATED_AT, "idempotency_key": None}


def _payload(dialect: str, chat: Chat, ident: int, sender: int) -> dict[str, Any]:
    msg = _message(chat, ident, sender)
    if dialect == "C":
        return {"version": "V1", "kind": "Created", "msg": msg, "members": list(chat.members),
                "occurred_at": OCCURRED_AT}
    if dialect == "U":
        return {"version": "V1", "kind": "Created", "msg": msg, "members": [sender], "occurred_at": OCCURRED_AT,
                "sender_name": f"User {sender}", "chat_name": f"Chat {chat.id}", "workspace_id": 1,
                "event_id": f"00000000-0000-4000-8000-{ident:012d}", "trace_context": {}}
    if dialect == "N":
        return {"event_type": "new_message", "chat_id": chat.id, "sender_id": sender, "sender_name": f"User {sender}",
                "content": msg["content"], "files": [], "timestamp": CREATED_AT, "message_id": ident,
                "workspace_id": 1}
    return {"message": {**msg, "files": None}, "chat_members": list(chat.members)}


def _encode(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _malformed(rng: random.Random, chat: Chat, ident: int, sender: int) -> tuple[str, bytes]:
    """A payload the event contract refuses: ``(subject, data)``."""
    good = _payload("C", chat, ident, sender)
    kind = rng.randrange(7)
    if kind == 0:
        return SUBJECTS["C"], _encode(good)[: rng.randrange(1, 40)]  # truncated JSON
    if kind == 1:
        return SUBJECTS["C"], _encode([good])  # not an object
    if kind == 2:
        return SUBJECTS["C"], _encode({**good, "kind": "Exploded"})  # unknown variant
    if kind == 3:
        return SUBJECTS["C"], _encode({**good, "msg": {**good["msg"], "chat_id": -chat.id}})  # invalid id
    if kind == 4:
        legacy = _payload("L", chat, ident, sender)
        return SUBJECTS["L"], _encode({**legacy, "message": {**legacy["message"], "sender_id": "bob"}})
    if kind == 5:
        return SUBJECTS["N"], _encode({"event_type": "new_message", "chat_id": chat.id})  # missing fields
    return "fechatter.message.exploded", _encode(good)  # inside the stream, but no route


def _reject_code(subject: str, data: bytes) -> str:
    try:
        parse_event(subject, data)
    except EventRejected as exc:
        return str(exc.code)
    raise AssertionError(f"a malformed payload was accepted by the event contract: {subject} {data!r}")


def _check_accepted(copy: Copy) -> None:
    try:
        parse_event(copy.subject, copy.data)
    except EventRejected as exc:
        raise AssertionError(f"a good {copy.dialect} copy is refused by the event contract: {exc}") from exc


# --------------------------------------------------------------------------- the plan


@dataclass
class TrafficPlan:
    """Chats, events (warm-up first) and what each user must receive."""

    seed: int
    chats: list[Chat]
    #: Each chat's first message, in a member-carrying dialect only: publish and await first.
    warmup: list[Event]
    #: Every other event, good and malformed, in publishing order.
    main: list[Event]

    @property
    def events(self) -> list[Event]:
        return [*self.warmup, *self.main]

    @property
    def malformed(self) -> list[Event]:
        return [e for e in self.main if e.malformed]

    @property
    def users(self) -> set[int]:
        return {m for chat in self.chats for m in chat.members}

    def expected(self, events: Iterable[Event] | None = None) -> Mapping[int, list[Key]]:
        """user -> keys of the notifications the user must get, from the events JetStream stored.

        ``events`` default: every event of the plan. Users of the plan's chats who must get
        nothing are present with an empty list, so the audit reads their inboxes too.
        """
        wanted: dict[int, list[Key]] = {u: [] for u in self.users}
        for event in self.events if events is None else events:
            if event.malformed or not event.stored:
                continue
            for user in event.recipients():
                wanted[user].append(event.key)
        return wanted

    def by_key(self) -> dict[Key, Event]:
        return {e.key: e for e in self.events if not e.malformed}


def _chat_size(rng: random.Random) -> int:
    """3..50 members, most chats small: a geometric tail over 3 (mean about 8)."""
    return min(50, 3 + int(rng.expovariate(1 / 5)))


def _chats(rng: random.Random, count: int, users: int) -> list[Chat]:
    pool = range(1, users + 1)
    chats = [Chat(i + 1, tuple(sorted(rng.sample(pool, _chat_size(rng))))) for i in range(count)]
    chats[0] = Chat(1, tuple(sorted(rng.sample(pool, 50))))  # the largest size occurs every run
    return chats


def _good_event(rng: random.Random, index: int, chat: Chat, *, warm: bool, multi_share: float) -> Event:
    ident, sender = FIRST_MESSAGE_ID + index, rng.choice(chat.members)
    pool = [d for d, carries in DIALECTS.items() if carries] if warm else list(DIALECTS)
    count = rng.randint(2, len(pool)) if rng.random() < multi_share else 1
    dialects = rng.sample(pool, count)
    copies = [Copy(d, SUBJECTS[d], _encode(_payload(d, chat, ident, sender)), f"chaos-{ident}-{d}") for d in dialects]
    return Event(index, chat, sender, ident, copies)


def plan_traffic(events: int, seed: int, *, chats: int | None = None, users: int | None = None,
                 malformed_share: float = 0.01, multi_dialect_share: float = 0.3, check: int = 200) -> TrafficPlan:
    """``events`` events (warm-up included) from ``seed``.

    Parameters:
      chats: how many chats (default: about one per 20 events, 2..2000, never more than events).
      users: the user pool the members are drawn from (default: 5 per chat, at least 60).
      malformed_share: the share of malformed events (at least one once there are 100 events).
      multi_dialect_share: the share of good events published in 2..4 dialects at once.
      check: the first ``check`` good events are also parsed with the event contract (a plan the
        bridge would refuse would fail every scenario for the wrong reason).
    """
    rng = random.Random(seed)
    n_chats = chats if chats is not None else max(2, min(2000, events // 20))
    n_chats = max(1, min(n_chats, events))
    n_users = users if users is not None else max(60, 5 * n_chats)
    all_chats = _chats(rng, n_chats, n_users)
    warmup = [_good_event(rng, i, c, warm=True, multi_share=multi_dialect_share) for i, c in enumerate(all_chats)]
    main: list[Event] = []
    n_malformed = max(1 if events >= 100 else 0, round((events - n_chats) * malformed_share))
    bad_at = set(rng.sample(range(n_chats, events), min(n_malformed, events - n_chats)))
    for index in range(n_chats, events):
        chat = rng.choice(all_chats)
        if index in bad_at:
            ident, sender = FIRST_MESSAGE_ID + index, rng.choice(chat.members)
            subject, data = _malformed(rng, chat, ident, sender)
            copy = Copy("X", subject, data, f"chaos-{ident}-X")
            main.append(Event(index, chat, sender, ident, [copy], reject_code=_reject_code(subject, data)))
        else:
            main.append(_good_event(rng, index, chat, warm=False, multi_share=multi_dialect_share))
    for event in [e for e in (*warmup, *main) if not e.malformed][:check]:
        for copy in event.copies:
            _check_accepted(copy)
    return TrafficPlan(seed, all_chats, warmup, main)


def membership_known(client: redis.Redis, chats: Sequence[Chat], namespace: str = DEFAULT_NAMESPACE) -> bool:
    """Every chat's membership cache holds its whole member list (the warm-up was processed)."""
    with client.pipeline(transaction=False) as pipe:
        for chat in chats:
            pipe.scard(members_key(namespace, chat.id))
        sizes: list[int] = pipe.execute()
    return all(size >= len(chat.members) for size, chat in zip(sizes, chats, strict=True))


# --------------------------------------------------------------------------- publishing


class PublishError(RuntimeError):
    """A copy could not be published (acknowledged) before the publisher's deadline."""


_RETRIED = (nats.errors.Error, nats.js.errors.Error, TimeoutError, asyncio.TimeoutError, OSError)


class Publisher:
    """Publishes events' copies to JetStream, awaiting every PubAck, retrying through outages.

    Parameters:
      nc: a connected client (see :meth:`connect`: it reconnects forever, fast).
      concurrency: copies awaiting their PubAck at once.
      give_up_s: a copy unacknowledged this long after its first attempt raises PublishError.
    """

    def __init__(self, nc: NATS, *, concurrency: int = 64, give_up_s: float = 120.0) -> None:
        self.nc, self.js = nc, nc.jetstream()
        self._slots = asyncio.Semaphore(concurrency)
        self.give_up_s = give_up_s
        self.published = 0
        self.acked = 0
        self.retries = 0
        self.duplicates = 0

    @classmethod
    async def connect(cls, url: str | list[str], **kwargs: Any) -> Publisher:
        async def quiet(exc: Exception) -> None:
            """Outages are the point of a chaos run; the retries are counted instead."""

        nc = await nats.connect(url, name="chaos-traffic", allow_reconnect=True, max_reconnect_attempts=-1,
                                reconnect_time_wait=0.1, connect_timeout=2, error_cb=quiet,
                                pending_size=64 * 1024 * 1024)
        return cls(nc, **kwargs)

    async def close(self) -> None:
        await self.nc.close()

    async def _copy(self, event: Event, copy: Copy) -> None:
        began = time.monotonic()
        while True:
            try:
                ack = await self.js.publish(copy.subject, copy.data, timeout=PUBACK_TIMEOUT_S,
                                            headers={"Nats-Msg-Id": copy.msg_id})
            except _RETRIED as exc:
                if time.monotonic() - began > self.give_up_s:
                    raise PublishError(f"{copy.msg_id} on {copy.subject} unacknowledged after "
                                       f"{self.give_up_s:.0f}s: {type(exc).__name__}: {exc}") from exc
                self.retries += 1
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            event.seqs[copy.msg_id] = ack.seq
            self.acked += 1
            self.duplicates += bool(ack.duplicate)
            return

    async def _event(self, event: Event) -> None:
        async with self._slots:
            if event.published_at is None:
                event.published_at = time.time()
            self.published += 1
            await asyncio.gather(*(self._copy(event, c) for c in event.copies))

    async def publish(self, events: Sequence[Event], rate: float | None = None) -> None:
        """Publish ``events`` in order, ``rate`` events per second at most (None: as fast as acks come).

        Returns when every copy is acknowledged; raises PublishError when one never is.
        """
        pending: set[asyncio.Task[None]] = set()
        began = time.monotonic()
        try:
            for i, event in enumerate(events):
                if rate is not None:
                    delay = began + i / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await self._slots.acquire()  # back-pressure: no more tasks than slots
                self._slots.release()
                for done in [t for t in pending if t.done()]:
                    pending.discard(done)
                    done.result()  # a copy that was given up on stops the run
                task = asyncio.create_task(self._event(event))
                pending.add(task)
            if pending:
                await asyncio.gather(*pending)
        finally:
            for task in pending:
                task.cancel()


def publish_in_background(publisher: Publisher, events: Sequence[Event],
                          rate: float | None = None) -> asyncio.Task[None]:
    """Start publishing ``events`` at ``rate`` per second; await the task for completion (or its error)."""
    return asyncio.create_task(publisher.publish(events, rate), name="chaos-traffic")
