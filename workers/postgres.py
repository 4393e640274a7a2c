"""Fechatter's ``chat_members`` table, read through a connection pool (never one connection per event).

Only two read-only queries, both on Fechatter's own schema
(``chat_members(chat_id bigint, user_id bigint, joined_at timestamptz, left_at timestamptz)``):
who is in a chat, and which chats a user is in. Rows with ``left_at`` set are former members.
"""

from __future__ import annotations

from typing import Final

from psycopg_pool import ConnectionPool

from settings import Database

__all__ = ["POOL_TIMEOUT_S", "ChatMembersTable"]

#: How long a query waits for a pooled connection before the job fails (and is retried), in seconds.
POOL_TIMEOUT_S: Final = 3.0

_CHAT_MEMBERS = "SELECT user_id FROM chat_members WHERE chat_id = %s AND left_at IS NULL"
_USER_CHATS = "SELECT chat_id FROM chat_members WHERE user_id = %s AND left_at IS NULL"


class ChatMembersTable:
    """Pooled reads of ``chat_members``.

    Parameters:
      config(Database): ``database`` settings; ``url`` must be set.

    Raises (from the query methods):
      psycopg.OperationalError, psycopg_pool.PoolTimeout: the database is unreachable
        (transient: the job is retried).
      psycopg.Error: anything else, e.g. the table does not exist (permanent).
    """

    def __init__(self, config: Database) -> None:
        if config.url is None:
            raise ValueError("database.url is not set")
        self._pool = ConnectionPool(
            config.url.get_secret_value(),
            min_size=config.pool_min,
            max_size=max(config.pool_max, config.pool_min, 1),
            # Autocommit: a read never leaves a connection idle in a transaction.
            kwargs={"autocommit": True},
            open=False,
            name="fechatter-notify-members",
        )
        # Connect in the background: a worker starts (and serves cached chats) with the
        # database down; a query then waits up to POOL_TIMEOUT_S.
        self._pool.open(wait=False)

    def chat_members(self, chat_id: int) -> set[int]:
        """Current members of ``chat_id`` (an empty set for an unknown chat)."""
        return self._column(_CHAT_MEMBERS, chat_id)

    def user_chats(self, user_id: int) -> set[int]:
        """Chats ``user_id`` currently belongs to."""
        return self._column(_USER_CHATS, user_id)

    def _column(self, query: str, value: int) -> set[int]:
        with self._pool.connection(timeout=POOL_TIMEOUT_S) as conn:
            rows = conn.execute(query, (value,)).fetchall()
        return {int(row[0]) for row in rows}

    def close(self) -> None:
        """Close every pooled connection."""
        self._pool.close()
