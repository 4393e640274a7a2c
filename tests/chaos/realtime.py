"""Realtime traffic on core NATS, with a known expectation, and its audit.

Fechatter publishes read receipts, typing and presence on core NATS (docs/event-contract.md,
"Subjects": ``fechatter.realtime.chat.{chat_id}.read``, ``….typing``); the bridges read them with
one queue group, so each event reaches ONE bridge, and core NATS has no redelivery.

Of those, a read receipt (R ``MessageRead``) is stored: it becomes one ``message_read`` entry in
the inbox of every member of the chat but the reader, with no dedupe key (events.jobs.dedupe_key:
only new messages and deletions have one), so an event enqueued twice (once per bridge, were the
queue group missing) would be two entries. Typing (R ``TypingStarted``) is live only: announced to
open streams, never stored (README, "Typing ... are live only"); it must leave no inbox entry.

:func:`plan_realtime` draws the events from a seed over the chats of a traffic plan (whose warm-up
fills the membership cache the workers resolve a read receipt's recipients from);
:class:`RealtimePublisher` publishes them at a rate, recording when; :func:`audit_reads` reads the
inboxes and says, per read receipt, who got it how many times.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis
from nats.aio.client import Client as NATS

from tests.chaos.audit import inbox_entries
from tests.chaos.traffic import Chat

__all__ = ["RealtimeEvent", "RealtimePublisher", "ReadAudit", "audit_reads", "plan_realtime"]

#: Read receipts name message ids from here on (apart from the new messages' ids).
FIRST_READ_ID = 9_000_000
READ_AT = "2026-11-29T17:00:01.120394512+00:00"
#: The publisher flushes after this many events, so a recorded time is close to the send.
FLUSH_EVERY = 20

#: (chat_id, reader, message id): a read receipt's identity in a ``message_read`` notification.
ReadKey = tuple[int, int, int]


@dataclass(slots=True)
class RealtimeEvent:
    """One core NATS event: a read receipt (``read``) or a typing indicator (``typing``)."""

    index: int
    kind: str
    chat: Chat
    user: int
    message_id: int
    published_at: float | None = None

    @property
    def subject(self) -> str:
        return f"fechatter.realtime.chat.{self.chat.id}.{self.kind}"

    @property
    def data(self) -> bytes:
        if self.kind == "read":
            body = {"MessageRead": {"message_id": self.message_id, "chat_id": self.chat.id, "reader_id": self.user,
                                    "read_at": READ_AT}}
        else:
            body = {"TypingStarted": {"chat_id": self.chat.id, "user_id": self.user, "user_name": f"User {self.user}"}}
        return json.dumps(body, separators=(",", ":")).encode()

    @property
    def key(self) -> ReadKey:
        return (self.chat.id, self.user, self.message_id)

    def recipients(self) -> list[int]:
        """Members but the reader (README's notification table: ``message_read``)."""
        return [m for m in self.chat.members if m != self.user]


def plan_realtime(chats: Sequence[Chat], count: int, seed: int, *, typing_share: float = 0.3) -> list[RealtimeEvent]:
    """``count`` events in ``chats``: read receipts, and a ``typing_share`` of typing indicators."""
    rng = random.Random(seed)
    events = []
    for index in range(count):
        chat = rng.choice(chats)
        kind = "typing" if rng.random() < typing_share else "read"
        events.append(RealtimeEvent(index, kind, chat, rng.choice(chat.members), FIRST_READ_ID + index))
    return events


class RealtimePublisher:
    """Publishes realtime events on core NATS (fire and forget, as Fechatter does), at a rate."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.published = 0

    async def publish(self, events: Sequence[RealtimeEvent], rate: float) -> None:
        began = time.monotonic()
        for i, event in enumerate(events):
            delay = began + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            event.published_at = time.time()
            await self.nc.publish(event.subject, event.data)
            self.published += 1
            if i % FLUSH_EVERY == FLUSH_EVERY - 1:
                await self.nc.flush()
        await self.nc.flush()


@dataclass
class ReadAudit:
    """Per read receipt, how many times each recipient's inbox holds it."""

    #: read key -> user -> entries.
    copies: dict[ReadKey, Counter[int]] = field(default_factory=dict)
    #: Inbox entries of a live-only type (typing, presence): there must be none.
    live_only_stored: int = 0
    #: message_read entries for no planned read receipt.
    unknown: int = 0

    def delivered_to(self, event: RealtimeEvent) -> Counter[int]:
        return self.copies.get(event.key, Counter())

    def state(self, event: RealtimeEvent) -> str:
        """``once`` (every recipient once), ``lost`` (nobody), ``duplicated`` (someone more than once),
        ``partial`` (some recipients, not all), ``unexpected`` (a non-recipient got it)."""
        got = self.delivered_to(event)
        wanted = set(event.recipients())
        if any(n > 1 for n in got.values()):
            return "duplicated"
        if set(got) - wanted:
            return "unexpected"
        if not got:
            return "lost" if wanted else "once"
        return "once" if set(got) == wanted else "partial"


LIVE_ONLY_TYPES = frozenset({"typing_started", "typing_stopped", "user_presence"})


def audit_reads(client: redis.Redis, namespace: str, users: Iterable[int],
                events: Sequence[RealtimeEvent]) -> ReadAudit:
    """Read every inbox of ``users``; count the ``message_read`` entries of the planned read receipts."""
    planned = {e.key for e in events if e.kind == "read"}
    audit = ReadAudit()
    for user in users:
        for _, notification in inbox_entries(client, namespace, user):
            kind = notification.get("type")
            if kind in LIVE_ONLY_TYPES:
                audit.live_only_stored += 1
            if kind != "message_read":
                continue
            for message_id in notification.get("message_ids") or []:
                key = (int(notification["chat_id"]), int(notification["user_id"]), int(message_id))
                if key in planned:
                    audit.copies.setdefault(key, Counter())[user] += 1
                else:
                    audit.unknown += 1
    return audit
