"""Atomic, idempotent batch enqueue onto dramatiq's Redis queues: one round trip per batch.

dramatiq's ``RedisBroker.enqueue`` costs a round trip per message and stamps a fresh
``redis_message_id`` on every call, so a JetStream redelivery would create a second job
(docs/dramatiq-pitfalls.md#enqueue-is-not-idempotent). :file:`enqueue.lua` instead writes dramatiq's
own key layout for a whole batch, skips any event whose dedupe marker exists, sets the marker,
stores dead letters in the same script, and PUBLISHes the wake-up count per queue. The batch travels
as ONE msgpack argument: redis-py's per-argument packing was a quarter of a naive bridge's CPU
(docs/nats-pitfalls.md#where-the-bridges-cpu-goes).

With ``redis.min_replicas_acked`` > 0 a batch holding JetStream events (their dedupe markers set:
they will be acked) is followed by ``WAIT n replica_ack_timeout`` in the same pipeline, so the
batch's enqueue counts only once that many replicas hold it; fewer is a :class:`RedisUnavailable`
like any failed enqueue (the script is idempotent: the retry writes nothing twice and WAITs again).
A failover then cannot take back what the bridge acked. Core NATS batches have nothing to ack and
skip the WAIT.

redis-py exceptions stop here: everything Redis does wrong is a :class:`RedisUnavailable`.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Final

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from bridge.errors import RedisUnavailable
from events import messages_key, queue_key, wake_channel
from runtime import LuaScript, async_client
from settings import Redis as RedisSettings
from settings import Settings

__all__ = ["DEDUPE_PREFIX", "Batch", "Enqueuer", "connect_redis"]

#: Key infix of the bridge's dedupe markers: ``{ns}:bridge:dedupe:{stream}:{seq|id:<msg id>}``.
DEDUPE_PREFIX: Final = "bridge:dedupe"
#: Script arguments before the dead-letter fields.
_FIXED_ARGS: Final = 4
#: A written entry in the script's answer.
WRITTEN: Final = ord("1")

_SCRIPT: Final = LuaScript("bridge", "enqueue.lua")
_PACK = msgspec.msgpack.Encoder()


def connect_redis(target: str | RedisSettings, *, socket_timeout: float | None = None,
                  connect_timeout: float | None = None) -> aioredis.Redis:
    """A redis.asyncio client that fails fast (no hidden retries: the circuit breaker decides).

    Parameters:
      target(str | settings.Redis): A ``redis://`` URL, or the ``redis`` settings (one server or
        Sentinel, see :mod:`runtime.redis_client`).
      socket_timeout(float | None): Per-command timeout, in seconds (default: the settings').
      connect_timeout(float | None): Connect timeout, in seconds (default: the settings').
    """
    options: dict[str, Any] = {"retry": Retry(NoBackoff(), 0), "health_check_interval": 0}
    if socket_timeout is not None:
        options["socket_timeout"] = socket_timeout
    if connect_timeout is not None:
        options["socket_connect_timeout"] = connect_timeout
    if isinstance(target, str):
        return aioredis.Redis.from_url(target, **options)
    return async_client(target, **options)


class Batch:
    """The entries of one script call; built by :class:`bridge.batch.BatchBuilder`.

    Parameters:
      namespace(str): dramatiq namespace (``redis.namespace``).
    """

    __slots__ = ("_queue_index", "durable", "entries", "extra", "namespace", "queues")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        #: Whether an entry has a dedupe marker (a JetStream event, acked after the enqueue).
        self.durable = False
        self._queue_index: dict[str, int] = {}
        self.queues: list[tuple[str, str, str]] = []
        self.entries: list[tuple[Any, ...]] = []
        #: Script arguments after the fixed four: dead-letter fields (any bytes).
        self.extra: list[str | bytes] = []

    def __len__(self) -> int:
        return len(self.entries)

    def queue_index(self, queue: str) -> int:
        """The 1-based index of ``queue`` in the script's queue table (added on first use)."""
        index = self._queue_index.get(queue)
        if index is None:
            self.queues.append((queue_key(self.namespace, queue), messages_key(self.namespace, queue),
                                wake_channel(self.namespace, queue)))
            index = self._queue_index[queue] = len(self.queues)
        return index

    def add_job(self, dedupe_key: str, queue_index: int, message_id: str, message: bytes) -> None:
        """Add one dramatiq message (``message`` is its JSON encoding, UTF-8)."""
        # A msgpack str, not bin: Redis' cmsgpack cannot read bin. JSON from msgspec is valid UTF-8.
        self.add_job_text(dedupe_key, queue_index, message_id, message.decode())

    def add_job_text(self, dedupe_key: str, queue_index: int, message_id: str, message: str) -> None:
        """:meth:`add_job` with the message's JSON already text (:meth:`bridge.messages.StampedBatch.text`)."""
        if dedupe_key:
            self.durable = True
        self.entries.append(("J", dedupe_key, queue_index, message_id, message))

    def message(self, i: int) -> tuple[str, str]:
        """The redis message id and the JSON the script writes for job entry ``i`` (tests, tools)."""
        entry = self.entries[i]
        if entry[0] != "J":
            raise ValueError(f"entry {i} is a dead letter, not a job")
        return entry[3], entry[4]

    def add_dead_letter(self, dedupe_key: str, fields: list[str | bytes]) -> None:
        """Add one dead letter: alternating field names and values for the Redis stream.

        Its fields travel as one script argument, each as ``<length>:<bytes>``: redis-py packs every
        argument on its own in Python (~26 per dead letter), which made a flood of malformed
        payloads cost the bridge several times what their parsing does.
        """
        self.durable = self.durable or bool(dedupe_key)
        self.entries.append(("D", dedupe_key, _FIXED_ARGS + len(self.extra) + 1, 1))
        self.extra.append(pack_fields(fields))

    def pack(self) -> bytes:
        """The script's msgpack argument."""
        return _PACK.encode((self.queues, self.entries))


def pack_fields(fields: list[str | bytes]) -> bytes:
    """``fields`` as one string :file:`enqueue.lua` splits again: ``<length>:<bytes>`` each."""
    raw = [field.encode() if isinstance(field, str) else field for field in fields]
    return b"".join([b"%d:%b" % (len(value), value) for value in raw])


class Enqueuer:
    """Runs :file:`enqueue.lua` on a batch.

    Parameters:
      client(redis.asyncio.Redis): The client (see :func:`connect_redis`).
      namespace(str): dramatiq namespace and key prefix.
      dedupe_window(float): Marker lifetime, in seconds.
      dead_letter_stream(str): Stream name under the namespace.
      dead_letter_max_len(int): Exact cap of the dead-letter stream.
      min_replicas_acked(int): Replicas that must hold a durable batch (``WAIT``); 0: none.
      replica_ack_timeout(float): ``WAIT``'s bound, in seconds.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        namespace: str,
        dedupe_window: float,
        dead_letter_stream: str,
        dead_letter_max_len: int,
        min_replicas_acked: int = 0,
        replica_ack_timeout: float = 1.0,
    ) -> None:
        self._client = client
        self.namespace = namespace
        self._ttl = max(1, round(dedupe_window))
        self._dl_key = f"{namespace}:{dead_letter_stream}"
        self._dl_max = dead_letter_max_len
        self.min_replicas_acked = min_replicas_acked
        # WAIT's 0 means "forever": never send it.
        self._wait_ms = max(1, round(replica_ack_timeout * 1000))

    @classmethod
    def for_settings(cls, settings: Settings) -> Enqueuer:
        """The bridge's enqueuer: a fail-fast client for ``settings.redis`` (one server or Sentinel)."""
        r = settings.redis
        return cls(connect_redis(r), namespace=r.namespace, dedupe_window=r.dedupe_window,
                   dead_letter_stream=settings.dead_letters.stream, dead_letter_max_len=settings.dead_letters.max_len,
                   min_replicas_acked=r.min_replicas_acked, replica_ack_timeout=r.replica_ack_timeout)

    @property
    def dead_letter_key(self) -> str:
        """The dead-letter stream's key."""
        return self._dl_key

    def new_batch(self) -> Batch:
        """An empty batch for this namespace."""
        return Batch(self.namespace)

    async def marker(self, key: str) -> bytes | None:
        """The value of the event marker ``key`` (a job's redis message id, or the dead-letter
        value), None when absent; redis-py's errors raised as :class:`RedisUnavailable`, as in :meth:`run`."""
        try:
            value = await self._client.get(key)
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from None
        return value if isinstance(value, bytes) or value is None else str(value).encode()

    async def run(self, batch: Batch) -> bytes:
        """Write ``batch`` in one round trip.

        Returns:
          bytes: One byte per entry, ``b"1"`` written, ``b"0"`` deduplicated (already written).

        Raises:
          RedisUnavailable: Redis refused, timed out, or the script failed; treat the whole
            batch as not enqueued (the script is idempotent, so retrying it is safe).
        """
        if not batch.entries:
            return b""
        try:
            args = [self._ttl, self._dl_key, self._dl_max, batch.pack(), *batch.extra]
            if self.min_replicas_acked and batch.durable:
                answer, acked = await self._run_and_wait(args)
                self._check_replicas(acked)
            else:
                answer = await _SCRIPT.acall(self._client, [], args)
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from None
        flags = answer if isinstance(answer, bytes) else str(answer).encode()
        if len(flags) != len(batch.entries):
            raise RedisUnavailable(f"script answered {len(flags)} flags for {len(batch.entries)} entries")
        return flags

    async def _run_and_wait(self, args: list[Any]) -> tuple[Any, int]:
        """The script and ``WAIT`` in one pipeline (one round trip); on ``NOSCRIPT`` load and run both again."""
        for attempt in (1, 2):
            pipe = self._client.pipeline(transaction=False)
            _SCRIPT.queue(pipe, [], args)
            pipe.execute_command("WAIT", self.min_replicas_acked, self._wait_ms)
            try:
                answer, acked = await pipe.execute()
                return answer, int(acked)
            except NoScriptError:
                if attempt == 2:
                    raise
                await LuaScript.load(self._client, [_SCRIPT])
        raise AssertionError("unreachable")

    def _check_replicas(self, acked: int) -> None:
        if acked < self.min_replicas_acked:
            raise RedisUnavailable(f"WAIT: {acked} of {self.min_replicas_acked} replica(s) acknowledged "
                                   f"within {self._wait_ms} ms (redis.min_replicas_acked)")

    async def ping(self) -> float:
        """Round-trip Redis once; return the latency in seconds.

        With ``min_replicas_acked``, ``WAIT`` rides along: a primary without enough replicas in
        step is not yet one the bridge can enqueue on (the circuit stays open, readiness says why).

        Raises:
          RedisUnavailable: no answer, or too few replicas.
        """
        began = time.perf_counter()
        try:
            if self.min_replicas_acked:
                pipe = self._client.pipeline(transaction=False)
                pipe.ping()
                pipe.execute_command("WAIT", self.min_replicas_acked, self._wait_ms)
                _, acked = await pipe.execute()
                self._check_replicas(int(acked))
            else:
                await self._client.ping()
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from None
        return time.perf_counter() - began

    async def close(self) -> None:
        """Close the client's connections."""
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()
