"""One Redis connection per thread for the hot path: a job's fetch, delivery and ack.

redis-py 8's ``Redis.execute_command`` spends far more CPU than the round trip itself: a pool
checkout (with a readiness poll of the socket), retry wrappers, event dispatch and metrics
recorders, then the check-in. Measured on the 2-core benchmark machine: ~140 us of client CPU
per PING through ``Redis``, ~25 us on a connection held by the thread. A job makes two or
three such calls, and a worker's CPU per job is what bounds realtime latency (bench/latency.py).

So each thread that runs jobs keeps its own :class:`redis.Connection` from the client's pool
(same URL, timeouts and health checks) and sends commands on it directly. Error handling is
redis-py's own: a socket error or timeout disconnects the connection (the next call reconnects)
and raises ``redis.ConnectionError``/``redis.TimeoutError``; an error reply raises
``redis.ResponseError`` and leaves the connection usable. A connection the server closed while
it sat idle (a Redis restart) is noticed before sending and replaced, as the pool does; one
closed under steady use fails that one call, which dramatiq's retry or consumer restart absorbs.
A connection is always (re)connected by its own ``connect()``, never by the reconnect inside
redis-py's send: that one goes back to the host it last knew, and under Sentinel
(runtime.redis_client) the host must be asked for again after a failover.
Commands are packed by ``hiredis.pack_command`` (C; it takes bytes, str, int and float, and
refuses anything else with ``TypeError``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

import hiredis
import redis

__all__ = ["STALE_CHECK_AFTER_S", "ThreadConnections"]

#: ``hiredis.pack_command``, typed for any command tuple (its stub declares a 1-tuple).
pack_command: Callable[[tuple[bytes | str | int | float, ...]], bytes] = cast(Any, hiredis.pack_command)

#: A connection idle for longer than this is checked for a server-side close before use, in seconds.
STALE_CHECK_AFTER_S: Final = 0.5


class ThreadConnections:
    """Per-thread connections made by ``client``'s pool.

    Parameters:
      client(redis.Redis): Its connection pool makes the connections.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._local = threading.local()
        # redis.connection.Connection objects; typed Any because redis-py leaves their
        # send/read methods unannotated.
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._pool.make_connection()
            with self._lock:
                self._all.append(conn)
            self._local.conn = conn
        # After a pause, nothing may be readable before we send: if something is, the server
        # closed the connection (a restart) or left a stray reply. Reconnect rather than fail
        # the job, as the pool does at every checkout. The check costs as much as a round
        # trip's client CPU, so a connection in steady use skips it.
        now = time.monotonic()
        if now - getattr(self._local, "used", 0.0) > STALE_CHECK_AFTER_S:
            try:
                stale = conn.can_read()
            except redis.ConnectionError:
                stale = True
            if stale:
                conn.disconnect()
        self._local.used = now
        if not conn.is_connected:
            # Connect through the connection's own connect(): redis-py's send would reconnect to
            # the last host and port, which under Sentinel is the primary that just died; a
            # Sentinel-managed connection's connect() asks the sentinels for the current one.
            conn.connect()
        return conn

    def call(self, *args: bytes | str | int | float) -> Any:
        """Send one command and return its reply (one round trip)."""
        conn = self._connection()
        conn.send_packed_command([pack_command(args)])  # a list: it sends each item
        return conn.read_response()

    def pipeline(self, commands: Sequence[Sequence[bytes | str | int | float]]) -> list[Any]:
        """Send ``commands`` at once and return their replies (one round trip).

        Raises:
          redis.ResponseError: The first error reply, after every reply was read (so the
            connection stays in step).
        """
        conn = self._connection()
        conn.send_packed_command([b"".join(pack_command(tuple(command)) for command in commands)])
        replies: list[Any] = []
        first_error: redis.ResponseError | None = None
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as exc:
                first_error = first_error or exc
                replies.append(exc)
        if first_error is not None:
            raise first_error
        return replies

    def close(self) -> None:
        """Disconnect every connection made so far (threads reconnect if they call again)."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.disconnect()
