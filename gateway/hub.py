"""The per-process fan-out: one Redis pub/sub connection, many local streams.

Workers announce each inbox entry on the user's live channel (events/inbox.py), and each
live-only notification (typing, presence) with an empty id line and no inbox entry. The hub
subscribes to a user's channel while at least one of their streams is open on this process,
and hands each announcement to every one of those streams, in memory. One connection per
process, not one per stream: 10,000 streams cost one socket and one parser.

Ordering guarantee callers rely on: :meth:`Hub.attach` returns only once Redis has confirmed
the SUBSCRIBE, so anything published after that is delivered; a reader that then reads the
inbox cannot miss an entry (it is either in the inbox read or announced afterwards).

When the connection is lost, announcements published meanwhile are gone; after resubscribing
the hub calls :meth:`Subscriber.resync` on every stream so each one reads what it missed from
the inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final, Protocol

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import RedisError

from events import live_channel
from gateway.frames import StreamId, data_frame, parse_stream_id
from gateway.resp import Reply, RespError, RespProtocolError, RespReader
from runtime import async_pool, backoff_delay, log_event, stop_task
from settings import Redis as RedisSettings

log = logging.getLogger(__name__)

#: Idle time before the hub PINGs Redis on the pub/sub connection, in seconds.
DEFAULT_PING_INTERVAL_S: Final = 5.0
#: Unanswered PING intervals before the connection is declared dead.
MAX_MISSED_PINGS: Final = 3
#: Bytes taken per read from the socket buffer: under load, more announcements per pass
#: means more frames per stream per write.
READ_SIZE: Final = 1 << 20
#: First reconnect delay, doubled per failure up to the cap (then jittered), in seconds.
RECONNECT_DELAY_S: Final = 0.1
RECONNECT_DELAY_CAP_S: Final = 5.0


class HubUnavailable(Exception):
    """The live-announcement connection could not confirm a subscription in time."""


class Announcement:
    """One decoded live announcement; the frame is encoded once and shared by all streams.

    ``entry_id`` is None for a live-only notification (typing, presence): it has no inbox
    entry, so its frame carries no ``id:`` line. The browser then keeps its last event id, and
    a resume neither skips an inbox entry because of it nor replays it.
    """

    __slots__ = ("data", "entry_id", "frame", "raw_id")

    def __init__(self, raw_id: bytes, data: bytes) -> None:
        self.raw_id = raw_id
        self.entry_id: StreamId | None = parse_stream_id(raw_id) if raw_id else None
        self.data = data
        self.frame = data_frame(data, raw_id or None)

    @classmethod
    def decode(cls, payload: bytes) -> Announcement:
        """Parse ``{entry_id}\\n{json}``; an empty id line is a live-only notification.

        Raises:
          ValueError: when there is no id line, or it is not a valid entry id.
        """
        raw_id, sep, data = payload.partition(b"\n")
        if not sep:
            raise ValueError("announcement without an entry id line")
        return cls(raw_id, data)


class Subscriber(Protocol):
    """A local stream, as the hub sees it."""

    def deliver(self, announcement: Announcement) -> bool:
        """Take one announcement without blocking; True asks for one :meth:`flush` later."""

    def flush(self) -> None:
        """Write what was delivered; called once per batch of announcements, not per one."""

    def resync(self) -> None:
        """Announcements may have been lost: read the inbox from your last id."""


class _Waiter:
    __slots__ = ("future", "target")

    def __init__(self, future: asyncio.Future[None], target: int) -> None:
        self.future = future
        self.target = target


class Hub:
    """Subscribes per connected user on one Redis connection and fans out in memory.

    Parameters:
      redis(str | settings.Redis): the Redis URL (credentials allowed), or the ``redis`` settings
        (one server or Sentinel: runtime.redis_client). Under Sentinel each (re)connect asks the
        sentinels for the current primary, so after a failover the hub subscribes there and every
        stream resyncs from its inbox.
      namespace(str): the key namespace of events/inbox.py.
      connect_timeout(float): seconds allowed to open the connection.
      ping_interval(float): idle seconds before a health PING.
      on_reconnect(callable | None): called each time the connection is re-established.
    """

    def __init__(
        self,
        redis: str | RedisSettings,
        namespace: str,
        *,
        connect_timeout: float = 5.0,
        ping_interval: float = DEFAULT_PING_INTERVAL_S,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        # RESP2 on purpose: pub/sub messages are then ordinary replies that the read loop gets
        # from read_response(); under RESP3 (redis-py 8's default) they are push frames routed
        # to a push handler instead.
        options: dict[str, Any] = {"protocol": 2, "socket_connect_timeout": connect_timeout,
                                   "socket_timeout": connect_timeout}
        self._pool = (ConnectionPool.from_url(redis, **options) if isinstance(redis, str)
                      else async_pool(redis, **options))
        self._namespace = namespace
        self._ping_interval = ping_interval
        self._on_reconnect = on_reconnect
        self._subscribers: dict[bytes, set[Subscriber]] = {}
        self._conn: AbstractConnection | None = None
        # Per channel on the current connection: SUBSCRIBEs queued, and confirmations seen.
        # A waiter is satisfied once confirmations reach the count at the time it queued its
        # own SUBSCRIBE, whatever UNSUBSCRIBE/SUBSCRIBE interleavings happened before.
        self._sent: dict[bytes, int] = {}
        self._confirmed: dict[bytes, int] = {}
        self._waiters: dict[bytes, list[_Waiter]] = {}
        self._resync_pending: set[bytes] = set()
        self._dirty: list[Subscriber] = []
        # Commands go out in decision order through one sender, so an UNSUBSCRIBE can never
        # overtake the SUBSCRIBE that follows it.
        self._outbox: list[tuple[str, bytes]] = []
        self._outbox_event = asyncio.Event()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connections = 0

    # ------------------------------------------------------------------ public

    @property
    def connected(self) -> bool:
        """True while the pub/sub connection is up."""
        return self._connected.is_set()

    @property
    def user_count(self) -> int:
        """Users with at least one local stream."""
        return len(self._subscribers)

    def channel(self, user_id: int) -> bytes:
        """The live channel of ``user_id``, as bytes (what Redis sends back)."""
        return live_channel(self._namespace, user_id).encode()

    async def start(self) -> None:
        """Start the connection task (it reconnects on its own until :meth:`stop`)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gateway-hub")

    async def stop(self) -> None:
        """Stop the connection task and close the connection."""
        task, self._task = self._task, None
        await stop_task(task)
        await self._drop_connection()
        await self._pool.disconnect()

    async def attach(self, user_id: int, subscriber: Subscriber, confirm_within: float) -> None:
        """Register ``subscriber`` for ``user_id``'s announcements.

        Returns once Redis has confirmed the subscription (at once if the user already has
        a confirmed subscription on this process).

        Raises:
          HubUnavailable: no confirmation within ``confirm_within`` seconds.
        """
        channel = self.channel(user_id)
        subscribers = self._subscribers.get(channel)
        if subscribers is None:
            subscribers = self._subscribers[channel] = set()
            if self._conn is not None:
                self._queue("SUBSCRIBE", channel)
        subscribers.add(subscriber)
        if self._conn is not None and self._confirmed.get(channel, 0) >= self._sent.get(channel, 0):
            return
        # Not confirmed yet (ours, or another stream's SUBSCRIBE still in flight, or no
        # connection: the (re)connect subscribes every registered channel).
        waiter = _Waiter(asyncio.get_running_loop().create_future(), self._sent.get(channel, 1))
        self._waiters.setdefault(channel, []).append(waiter)
        try:
            async with asyncio.timeout(confirm_within):
                await waiter.future
        except TimeoutError:
            raise HubUnavailable(f"no subscription confirmation within {confirm_within}s") from None
        finally:
            waiters = self._waiters.get(channel)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)

    def detach(self, user_id: int, subscriber: Subscriber) -> None:
        """Unregister ``subscriber``; the channel is unsubscribed with its last subscriber."""
        channel = self.channel(user_id)
        subscribers = self._subscribers.get(channel)
        if subscribers is None:
            return
        subscribers.discard(subscriber)
        if not subscribers:
            del self._subscribers[channel]
            self._resync_pending.discard(channel)
            if self._conn is not None:
                self._queue("UNSUBSCRIBE", channel)

    # ------------------------------------------------------------------ connection

    def _queue(self, verb: str, channel: bytes) -> None:
        if verb == "SUBSCRIBE":
            self._sent[channel] = self._sent.get(channel, 0) + 1
        self._outbox.append((verb, channel))
        self._outbox_event.set()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                conn: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
                await conn.connect()  # type: ignore[no-untyped-call]
            except (RedisError, OSError) as exc:
                # Jittered, so the gateways that lost the same Redis do not reconnect in step.
                delay = backoff_delay(failures, RECONNECT_DELAY_S, RECONNECT_DELAY_CAP_S)
                failures += 1
                log_event(log, "pubsub_connect_failed", logging.WARNING, error=exc, retry_in=round(delay, 3))
                await asyncio.sleep(delay)
                continue
            failures = 0
            self._connections += 1
            reconnect = self._connections > 1
            self._adopt(conn, reconnect=reconnect)
            log_event(log, "pubsub_connected", channels=len(self._subscribers), reconnect=reconnect)
            if reconnect and self._on_reconnect is not None:
                self._on_reconnect()
            sender = asyncio.create_task(self._send_loop(conn), name="gateway-hub-sender")
            try:
                await self._read_loop(conn)
            except (RedisError, OSError) as exc:
                log_event(log, "pubsub_lost", logging.WARNING, error=exc, channels=len(self._subscribers))
            finally:
                await stop_task(sender)
                await self._drop_connection()

    def _adopt(self, conn: AbstractConnection, *, reconnect: bool) -> None:
        """Make ``conn`` current and subscribe every channel that has local streams."""
        self._conn = conn
        self._sent.clear()
        self._confirmed.clear()
        self._outbox.clear()
        for channel in self._subscribers:
            self._queue("SUBSCRIBE", channel)
            for waiter in self._waiters.get(channel, ()):
                waiter.target = 1
        # Streams that were live before the loss may have missed announcements.
        self._resync_pending = set(self._subscribers) if reconnect else set()
        self._connected.set()

    async def _drop_connection(self) -> None:
        self._connected.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(RedisError, OSError):
                await conn.disconnect(nowait=True)

    async def _send_loop(self, conn: AbstractConnection) -> None:
        while True:
            await self._outbox_event.wait()
            self._outbox_event.clear()
            batch, self._outbox = self._outbox, []
            if batch:
                await conn.send_packed_command(conn.pack_commands(_coalesce(batch)), check_health=False)

    async def _read_loop(self, conn: AbstractConnection) -> None:
        reader = getattr(conn, "_reader", None)
        if not isinstance(reader, asyncio.StreamReader):
            # redis-py keeps the socket's StreamReader private; should that ever change, fall
            # back to its own (slower) parser rather than stop delivering.
            await self._read_loop_slow(conn)
            return
        parser = RespReader()
        missed = 0
        while True:
            try:
                async with asyncio.timeout(self._ping_interval):
                    data = await reader.read(READ_SIZE)
            except TimeoutError:
                missed = self._missed_ping(missed)
                continue
            if not data:
                raise ConnectionError("connection closed by Redis")
            missed = 0
            try:
                replies = parser.feed(data)
            except RespProtocolError as exc:
                raise ConnectionError(f"unreadable reply from Redis: {exc}") from exc
            for reply in replies:
                self._handle(reply)
            self._flush()

    async def _read_loop_slow(self, conn: AbstractConnection) -> None:
        missed = 0
        while True:
            reply = await conn.read_response(timeout=self._ping_interval)
            if reply is None:
                missed = self._missed_ping(missed)
                continue
            missed = 0
            self._handle(reply)
            self._flush()

    def _missed_ping(self, missed: int) -> int:
        """Count an idle interval; PING, or declare the connection dead after too many."""
        missed += 1
        if missed >= MAX_MISSED_PINGS:
            raise ConnectionError(f"no reply from Redis for {missed * self._ping_interval}s")
        self._outbox.append(("PING", b""))
        self._outbox_event.set()
        return missed

    def _handle(self, reply: Reply) -> None:
        if isinstance(reply, list) and len(reply) >= 2:
            kind = reply[0]
            if kind == b"message" and len(reply) == 3:
                channel, payload = reply[1], reply[2]
                if isinstance(channel, bytes) and isinstance(payload, bytes):
                    self._dispatch(channel, payload)
            elif kind == b"subscribe" and isinstance(reply[1], bytes):
                self._confirm(reply[1])
            # "unsubscribe" and "pong" replies need no action.
        elif isinstance(reply, RespError):
            log_event(log, "pubsub_error_reply", logging.WARNING, error=reply)

    def _confirm(self, channel: bytes) -> None:
        count = self._confirmed[channel] = self._confirmed.get(channel, 0) + 1
        for waiter in self._waiters.get(channel, ()):
            if count >= waiter.target and not waiter.future.done():
                waiter.future.set_result(None)
        if channel in self._resync_pending and count >= self._sent.get(channel, 0):
            self._resync_pending.discard(channel)
            for subscriber in tuple(self._subscribers.get(channel, ())):
                subscriber.resync()

    def _dispatch(self, channel: bytes, payload: bytes) -> None:
        subscribers = self._subscribers.get(channel)
        if not subscribers:
            return  # an announcement racing our UNSUBSCRIBE
        try:
            announcement = Announcement.decode(payload)
        except ValueError as exc:
            log_event(log, "announcement_invalid", logging.WARNING, channel=channel.decode(), error=exc)
            return
        # No copy needed: deliver() never detaches synchronously (a stream that gives up is
        # detached later, by its handler).
        dirty = self._dirty
        for subscriber in subscribers:
            if subscriber.deliver(announcement):
                dirty.append(subscriber)

    def _flush(self) -> None:
        """One write per stream per socket read: frames for the same stream are coalesced."""
        dirty, self._dirty = self._dirty, []
        for subscriber in dirty:
            subscriber.flush()


def _coalesce(batch: list[tuple[str, bytes]]) -> list[tuple[str | bytes, ...]]:
    """Merge runs of the same verb into one command (``SUBSCRIBE a b c``), keeping order."""
    commands: list[tuple[str | bytes, ...]] = []
    verb: str | None = None
    args: list[bytes] = []
    for next_verb, channel in batch:
        if next_verb != verb or next_verb == "PING":
            if verb is not None:
                commands.append((verb, *args))
            verb, args = next_verb, []
        if next_verb != "PING":
            args.append(channel)
    if verb is not None:
        commands.append((verb, *args))
    return commands

