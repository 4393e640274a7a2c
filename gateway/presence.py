"""Presence derived from open streams, kept in Redis so every gateway process shares it.

Each open stream is a member of the user's ``online_key`` zset, scored with its expiry (ms);
``presence_key`` holds ``status``/``last_seen`` and expires too. A refresher extends both while
streams stay open, so a crashed gateway leaves no ghost: its members and the hash simply
expire. The user's first stream (across all gateways) marks them online and their last marks
them offline; each change is announced on NATS (best effort).

Redis updates of one process run through one FIFO worker, so a stream's close can never be
applied before its open; each update is one Lua script, so the "was anyone online?" check and
the write are atomic across processes. Expiry scores use each gateway's wall clock: skew of a
few seconds is small against ``presence_ttl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from events import members_key, online_key, presence_key
from runtime import LuaScript, log_event, stop_task

log = logging.getLogger(__name__)

#: Statuses a user may set; "online"/"away"/"busy" count as present.
STATUSES: Final = ("online", "away", "busy", "offline")
#: How long the hash of an offline user is kept (for ``last_seen``), in seconds.
OFFLINE_TTL_S: Final = 7 * 24 * 3600.0
#: Updates sent to Redis in one pipeline, at most.
BATCH: Final = 500

#: The scripts (each file's header names its keys and arguments).
_OPEN: Final = LuaScript("gateway", "presence_open.lua")
_CLOSE: Final = LuaScript("gateway", "presence_close.lua")
_REFRESH: Final = LuaScript("gateway", "presence_refresh.lua")

#: ``announce(user_id, status, last_seen_iso)``: publish a presence change.
Announce = Callable[[int, str, str], Awaitable[object]]


def now_iso() -> str:
    """The current time as Fechatter writes it (ISO 8601, UTC offset)."""
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True, slots=True)
class _Op:
    kind: str  # "open" | "close"
    user_id: int
    member: str


class PresenceTracker:
    """Marks users online/offline from their streams and answers presence queries.

    Parameters:
      redis(Redis): the shared client (pool).
      namespace(str): key namespace.
      ttl_s(float): seconds a presence entry lives without refresh (``gateway.presence_ttl``).
      announce(Announce): publishes a change (NATS, best effort).
    """

    def __init__(self, redis: Redis, namespace: str, *, ttl_s: float, announce: Announce) -> None:
        self._redis = redis
        self._ns = namespace
        self._ttl_ms = int(ttl_s * 1000)
        self._refresh_every = ttl_s / 3
        self._announce = announce
        # Unique per process start, so two gateways never share a zset member.
        self._instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._counter = itertools.count(1)
        self._local: dict[int, set[str]] = {}
        self._ops: asyncio.Queue[_Op] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the update worker and the refresher."""
        self._tasks = [
            asyncio.create_task(self._work(), name="gateway-presence"),
            asyncio.create_task(self._refresh_loop(), name="gateway-presence-refresh"),
        ]

    async def stop(self, drain_within: float = 5.0) -> None:
        """Apply queued updates (for up to ``drain_within`` seconds), then stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_within):
                await self._ops.join()
        await asyncio.gather(*(stop_task(task) for task in self._tasks))
        self._tasks = []

    # ------------------------------------------------------------------ streams

    def stream_opened(self, user_id: int) -> str:
        """Record a new stream of ``user_id``; returns its presence member id."""
        member = f"{self._instance}:{next(self._counter)}"
        self._local.setdefault(user_id, set()).add(member)
        self._ops.put_nowait(_Op("open", user_id, member))
        return member

    def stream_closed(self, user_id: int, member: str) -> None:
        """Record that a stream closed (synchronous: safe in a cancelled handler's cleanup)."""
        members = self._local.get(user_id)
        if members is not None:
            members.discard(member)
            if not members:
                del self._local[user_id]
        self._ops.put_nowait(_Op("close", user_id, member))

    async def _work(self) -> None:
        while True:
            batch = [await self._ops.get()]
            while len(batch) < BATCH and not self._ops.empty():
                batch.append(self._ops.get_nowait())
            try:
                await self._apply(batch)
            except RedisError as exc:
                log_event(log, "presence_update_failed", logging.WARNING, updates=len(batch), error=exc)
            finally:
                for _ in batch:
                    self._ops.task_done()

    async def _apply(self, batch: list[_Op]) -> None:
        now_ms = int(time.time() * 1000)
        seen = now_iso()
        # A call's answer reports a change a second run would not: load before, never repeat.
        await LuaScript.load(self._redis, [_OPEN, _CLOSE])
        async with self._redis.pipeline(transaction=False) as pipe:
            for op in batch:
                keys = [online_key(self._ns, op.user_id), presence_key(self._ns, op.user_id)]
                if op.kind == "open":
                    args: list[Any] = [op.member, now_ms, now_ms + self._ttl_ms, self._ttl_ms, seen]
                    _OPEN.queue(pipe, keys, args)
                else:
                    args = [op.member, now_ms, seen, int(OFFLINE_TTL_S * 1000)]
                    _CLOSE.queue(pipe, keys, args)
            results = await pipe.execute()
        for op, changed in zip(batch, results, strict=True):
            if changed:
                status = "online" if op.kind == "open" else "offline"
                log_event(log, "presence_changed", user_id=op.user_id, status=status)
                await self._announce(op.user_id, status, seen)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_every)
            try:
                await self.refresh()
            except RedisError as exc:
                log_event(log, "presence_refresh_failed", logging.WARNING, error=exc)

    async def refresh(self) -> None:
        """Extend the expiry of every local stream and of their users' presence."""
        now_ms = int(time.time() * 1000)
        seen = now_iso()
        users = [(uid, sorted(members)) for uid, members in self._local.items()]
        for start in range(0, len(users), BATCH):
            chunk = users[start:start + BATCH]
            await LuaScript.load(self._redis, [_REFRESH])
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id, members in chunk:
                    keys = [online_key(self._ns, user_id), presence_key(self._ns, user_id)]
                    args: list[Any] = [now_ms, now_ms + self._ttl_ms, self._ttl_ms, seen, *members]
                    _REFRESH.queue(pipe, keys, args)
                results = await pipe.execute()
            for (user_id, _), changed in zip(chunk, results, strict=True):
                if changed:  # the hash had expired (e.g. Redis was restarted): online again
                    log_event(log, "presence_changed", user_id=user_id, status="online", cause="refresh")
                    await self._announce(user_id, "online", seen)

    # ------------------------------------------------------------------ HTTP

    async def set_status(self, user_id: int, status: str) -> str:
        """Set ``user_id``'s status (one of :data:`STATUSES`) and announce it; returns last_seen.

        Raises:
          RedisError: when Redis is unreachable.
        """
        seen = now_iso()
        ttl = OFFLINE_TTL_S if status == "offline" else self._ttl_ms / 1000
        key = presence_key(self._ns, user_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"status": status, "last_seen": seen})
            pipe.pexpire(key, int(ttl * 1000))
            await pipe.execute()
        log_event(log, "presence_changed", user_id=user_id, status=status, cause="update")
        await self._announce(user_id, status, seen)
        return seen

    async def is_member(self, chat_id: int, user_id: int) -> bool:
        """Whether ``user_id`` is in the chat's membership set."""
        return bool(await self._redis.sismember(members_key(self._ns, chat_id), str(user_id)))

    async def online_members(self, chat_id: int) -> list[dict[str, Any]]:
        """Members of ``chat_id`` whose presence is not offline, sorted by user id."""
        raw = await self._redis.smembers(members_key(self._ns, chat_id))
        user_ids = sorted(int(m) for m in raw if m.isdigit())
        async with self._redis.pipeline(transaction=False) as pipe:
            for uid in user_ids:
                pipe.hgetall(presence_key(self._ns, uid))
            hashes = await pipe.execute()
        online = []
        for uid, fields in zip(user_ids, hashes, strict=True):
            status = fields.get(b"status", b"").decode()
            if status and status != "offline":
                last_seen = fields.get(b"last_seen", b"").decode() or None
                online.append({"user_id": uid, "status": status, "last_seen": last_seen})
        return online
