"""Presence: a user's status in Redis, and the users allowed to hear about it.

``presence_key(user)`` (events/inbox.py) is the hash the gateway also writes: ``status`` and
``last_seen`` (ISO). A status that says "here" (online, away, busy, ...) expires after
``gateway.presence_ttl`` unless a gateway refreshes it; ``offline`` is kept for
:data:`OFFLINE_TTL_S` so ``last_seen`` stays readable.

A change is told only to the user's chat partners: the union of ``members_key(chat)`` over
``chats_key(user)``, never to every connected user (the original notify server's leak).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

import redis

from events import UserPresence, presence_key
from workers.notifications import iso

__all__ = ["OFFLINE_TTL_S", "PresenceStore"]

#: How long an ``offline`` status (and its ``last_seen``) is kept, in seconds (as the gateway).
OFFLINE_TTL_S: Final = 7 * 24 * 3600.0


class PresenceStore:
    """Writes users' presence hashes.

    Parameters:
      client(redis.Redis): The pooled client.
      namespace(str): Key namespace.
      ttl_s(float): Lifetime of a non-offline status, in seconds (``gateway.presence_ttl``).
    """

    def __init__(self, client: redis.Redis, namespace: str, *, ttl_s: float) -> None:
        self._client = client
        self._ns = namespace
        self._ttl_ms = max(1, int(ttl_s * 1000))

    def store(self, job: UserPresence) -> None:
        """Record ``job``'s status and ``last_seen`` (now when the event has none), with expiry."""
        key = presence_key(self._ns, job.user_id)
        ttl_ms = int(OFFLINE_TTL_S * 1000) if job.status == "offline" else self._ttl_ms
        last_seen = iso(job.last_seen or datetime.now(UTC))
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"status": job.status, "last_seen": str(last_seen)})
            pipe.pexpire(key, ttl_ms)
            pipe.execute()
