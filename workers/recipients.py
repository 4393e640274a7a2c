"""Who is in a chat: the membership cache in Redis, filled from PostgreSQL on a miss.

Fechatter's typing, read-receipt and notify-flat ``new_message`` events carry no recipients.
Their chat's members come from ``members_key(chat)`` (events/inbox.py), which every event that
carries a member list refreshes (``recipients``/``members``/``chat_members``) and join/leave
events edit. A missing entry means "unknown": with ``database.url`` set it is read from
Fechatter's ``chat_members`` table and cached for ``delivery.membership_ttl``; without a
database the event reaches nobody, which is counted and logged once per chat and process.

``chats_key(user)`` is the reverse index (chats a user is in) that scopes presence. Events fill
it as they pass, so it may lack chats that were quiet; with a database it is completed from
``chat_members`` once per ``membership_ttl`` (``chats_complete_key``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Final

import msgspec
import redis

from events import chats_complete_key, chats_key, members_key
from runtime import log_event
from workers.connections import ThreadConnections
from workers.metrics import WorkerMetrics
from workers.postgres import ChatMembersTable
from workers.scripts import LuaScript, ScriptCall, run_pipeline, template

__all__ = ["Membership"]

log = logging.getLogger(__name__)

_MEMBERSHIP = LuaScript("membership.lua")
_PACK = msgspec.msgpack.Encoder()

#: Chats remembered per process as "already logged as unknown".
LOGGED_CHATS_MAX: Final = 10_000


class Membership:
    """The chat membership cache.

    Parameters:
      client(redis.Redis): The pooled client (reads).
      conns(ThreadConnections): Each worker thread's own connection (script calls).
      namespace(str): Key namespace.
      ttl_s(float): Lifetime of cache entries, refreshed on every update, in seconds.
      table(ChatMembersTable | None): Fechatter's table, or None when no database is configured.
      metrics(WorkerMetrics): ``membership_fills`` and ``unknown_membership`` are counted.
    """

    def __init__(self, client: redis.Redis, conns: ThreadConnections, namespace: str, *, ttl_s: float,
                 table: ChatMembersTable | None, metrics: WorkerMetrics) -> None:
        self._client = client
        self._conns = conns
        self._ns = namespace
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._table = table
        self._metrics = metrics
        self._chats = template(lambda user: chats_key(namespace, user))
        self._logged: set[int] = set()
        self._logged_lock = threading.Lock()

    # ------------------------------------------------------------------ reads

    def members(self, chat_id: int) -> set[int] | None:
        """The chat's members, or None when unknown (not cached, no database)."""
        raw: set[bytes] = self._client.smembers(members_key(self._ns, chat_id))  # type: ignore[assignment]
        if raw:
            return {int(m) for m in raw}
        if self._table is None:
            self._unknown(chat_id)
            return None
        users = self._table.chat_members(chat_id)
        self._metrics.membership_fills.labels("chat").inc()
        if users:
            self.remember(chat_id, users)
        return users

    def partners(self, user_id: int) -> set[int]:
        """Everyone who shares at least one chat with ``user_id`` (not the user)."""
        chats = self._chats_of(user_id)
        if not chats:
            return set()
        ordered = sorted(chats)
        with self._client.pipeline(transaction=False) as pipe:
            for chat in ordered:
                pipe.smembers(members_key(self._ns, chat))
            replies: list[set[bytes]] = pipe.execute()
        found: set[int] = set()
        for chat, raw in zip(ordered, replies, strict=True):
            if raw:
                found.update(int(m) for m in raw)
            else:
                found.update(self.members(chat) or ())
        found.discard(user_id)
        return found

    def _chats_of(self, user_id: int) -> set[int]:
        """The user's chats. Events only tell some of them, so with a database the set is
        completed from it once per ``membership_ttl`` (joins and leaves keep it in step)."""
        key, complete = chats_key(self._ns, user_id), chats_complete_key(self._ns, user_id)
        with self._client.pipeline(transaction=False) as pipe:
            pipe.smembers(key)
            pipe.exists(complete)
            raw, known = pipe.execute()
        cached = {int(c) for c in raw}
        if self._table is None or known:
            return cached
        chats = self._table.user_chats(user_id)
        self._metrics.membership_fills.labels("user").inc()
        with self._client.pipeline(transaction=True) as pipe:
            if chats:
                pipe.sadd(key, *chats)
                pipe.pexpire(key, self._ttl_ms)
            pipe.set(complete, 1, px=self._ttl_ms)
            pipe.execute()
        # Chats only events know yet (a join the database's replica has not seen) stay in.
        return chats | cached

    def _unknown(self, chat_id: int) -> None:
        self._metrics.unknown_membership.inc()
        with self._logged_lock:
            if chat_id in self._logged:
                return
            if len(self._logged) >= LOGGED_CHATS_MAX:
                self._logged.clear()  # bound the memory; a chat may then be logged again
            self._logged.add(chat_id)
        log_event(log, "membership_unknown", logging.WARNING, chat_id=chat_id,
                  detail="not cached and database.url is not set: delivered to nobody")

    # ------------------------------------------------------------------ writes

    def remember(self, chat_id: int, users: Iterable[int]) -> None:
        """Record that ``users`` are members of ``chat_id`` (a list an event carried)."""
        run_pipeline(self._conns, [self.update("add", chat_id, users)])

    def update(self, mode: str, chat_id: int, users: Iterable[int]) -> ScriptCall:
        """The script call that applies one membership change (see membership.lua).

        ``mode`` is ``"add"`` (these users are members: a carried list or PostgreSQL's
        answer), ``"join"`` (edits the chat's entry only if it is cached) or ``"leave"``.
        Send it with :func:`workers.scripts.run_pipeline`, or as ``also=`` of a delivery so
        both share one round trip.
        """
        ordered = [str(u) for u in sorted(set(users))]
        args = [mode, str(chat_id), self._ttl_ms, members_key(self._ns, chat_id), *self._chats, ordered]
        return (_MEMBERSHIP, (), [_PACK.encode(args)])
