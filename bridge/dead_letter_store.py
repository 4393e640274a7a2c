"""Reading, replaying and purging the bridge's dead letters (``{namespace}:{dead_letters.stream}``).

The entries are written by :file:`enqueue.lua` (fields in :mod:`bridge.dead_letters`); here they
become :class:`DeadLetter` records. A replay sends a record through the bridge's own path again:
:class:`~bridge.batch.EventBatch` parses it with the *current* settings (a raised
``events.max_payload_bytes`` lets an oversized event through) and :class:`~bridge.enqueue.Enqueuer`
enqueues it with the event's own identity (``Nats-Msg-Id``, else stream + sequence + the time the
stream stored it, the record's ``ts``), so an event whose job was already enqueued is deduplicated,
not delivered twice. A record written before ``ts`` existed replays with the identity its bridge
used then (stream + sequence): its marker, if still there, has that name.

Design: a replayed record that was enqueued (or found already enqueued) is deleted from the stream;
one rejected again stays, with its original reason. Replaying twice therefore finds nothing the
second time, and a concurrent second replay of the same record (two operators) is deduplicated by
the event's marker. Core NATS events have no identity of their own: their replay uses the dead
letter's entry id as one, for the same reason.

The marker a rejected JetStream event left (value ``dead-letter``, ``redis.dedupe_window`` long)
would make its replay look like a duplicate; the replay removes exactly that value first, never a
marker that names an enqueued job.

A max-deliveries record whose message JetStream did not give at advisory time (``subject`` empty)
is read from the stream by its sequence at replay time, over a NATS connection made only then.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

import nats
import nats.errors
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from redis.exceptions import RedisError, WatchError

from bridge.advisories import parse_headers, stored_ns
from bridge.batch import EventBatch, event_identity
from bridge.dead_letters import MAX_DELIVERIES
from bridge.enqueue import Enqueuer, connect_redis
from bridge.errors import JetStreamError, RedisUnavailable
from bridge.jsapi import JetStreamApi
from bridge.messages import MessageFactory
from events import Lane
from runtime import connect_options
from settings import Settings, redact_urls_in

__all__ = ["DeadLetter", "DeadLetterStore", "Replay", "ReplayOutcome"]

#: The value :file:`enqueue.lua` gives the dedupe marker of an event it dead-lettered.
DEAD_LETTER_MARKER: Final = b"dead-letter"
#: Entries read per XRANGE call.
PAGE: Final = 1000
#: Seconds allowed to connect to NATS, and for each JetStream request, when a replay needs a message.
NATS_TIMEOUT_S: Final = 5.0



@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry of the dead-letter stream (fields: :mod:`bridge.dead_letters`)."""

    id: str
    at: datetime
    subject: str
    headers: dict[str, str]
    data: bytes
    size: int
    stream: str | None
    seq: int | None
    delivered: int | None
    consumer: str
    code: str
    reason: str
    #: When the stream stored the message (ns since the epoch); None on core NATS, when JetStream did
    #: not give the message, and in records written before the field existed.
    stored_ns: int | None = None

    @property
    def original_missing(self) -> bool:
        """A max-deliveries record whose message JetStream did not give when it was written."""
        return self.code == MAX_DELIVERIES and not self.subject

    @property
    def not_replayable(self) -> str | None:
        """Why this record cannot be replayed, or None when it can."""
        if len(self.data) < self.size:
            return f"only the first {len(self.data)} of its {self.size} bytes were kept; republish it from the source"
        if self.code == MAX_DELIVERIES and not self.subject:
            return "the original message could not be read from JetStream when it was dead-lettered"
        return None


class ReplayOutcome(StrEnum):
    """What a replay did with one record."""

    #: Parsed and enqueued (with ``dry_run``: would be); the record is deleted.
    REPLAYED = "replayed"
    #: Its job was already enqueued (the event's marker names it); the record is deleted.
    ALREADY_DELIVERED = "already_delivered"
    #: Parsing refused it again; the record stays.
    REJECTED = "rejected"
    #: The record does not hold the whole event; it stays.
    NOT_REPLAYABLE = "not_replayable"


@dataclass(frozen=True, slots=True)
class Replay:
    """The outcome of replaying one record: ``code``/``reason`` of a rejection, ``job`` when parsed."""

    id: str
    outcome: ReplayOutcome
    job: str | None = None
    code: str | None = None
    reason: str | None = None


class DeadLetterStore:
    """The dead-letter stream of one deployment.

    Parameters:
      settings(Settings): ``redis``, ``dead_letters``, ``queues``, ``events`` and ``realtime`` are used.
      client(redis.asyncio.Redis | None): Default: a fail-fast client for ``redis`` (URL or Sentinel),
        closed by :meth:`close`.
    """

    def __init__(self, settings: Settings, client: aioredis.Redis | None = None) -> None:
        r = settings.redis
        self._settings = settings
        self._own_client = client is None
        self._client = client or connect_redis(r)
        self._enqueuer = Enqueuer(self._client, namespace=r.namespace, dedupe_window=r.dedupe_window,
                                  dead_letter_stream=settings.dead_letters.stream,
                                  dead_letter_max_len=settings.dead_letters.max_len)
        self._factory = MessageFactory()
        self.key = self._enqueuer.dead_letter_key
        #: NATS, connected on the first replay that needs a message from JetStream (or why it failed).
        self._nc: NATS | None = None
        self._nats_error: str | None = None

    async def close(self) -> None:
        """Close the client if this store made it, and NATS if a replay connected."""
        if self._nc is not None:
            await self._nc.close()
        if self._own_client:
            await self._enqueuer.close()

    async def read(self) -> list[DeadLetter]:
        """Every record, oldest first.

        Raises:
          RedisUnavailable: Redis refused or timed out.
        """
        letters: list[DeadLetter] = []
        start = "-"
        while True:
            page = await self._call(self._client.xrange(self.key, min=start, max="+", count=PAGE))
            letters.extend(_record(_text(entry_id), fields) for entry_id, fields in page)
            if len(page) < PAGE:
                return letters
            start = f"({_text(page[-1][0])}"

    async def replay(self, letter: DeadLetter, *, dry_run: bool = False) -> Replay:
        """Send ``letter`` through parsing and the idempotent enqueue again (see the module's design).

        Raises:
          RedisUnavailable: Redis refused or timed out (the record is left as it was).
        """
        if letter.original_missing:
            found = await self._with_original(letter)
            if isinstance(found, str):
                why = f"{letter.not_replayable}, nor now: {found}"
                return Replay(letter.id, ReplayOutcome.NOT_REPLAYABLE, reason=why)
            letter = found
        why_not = letter.not_replayable
        if why_not is not None:
            return Replay(letter.id, ReplayOutcome.NOT_REPLAYABLE, reason=why_not)
        events = self._parse(letter)
        reject = events.rejects[0]
        if reject is not None:
            return Replay(letter.id, ReplayOutcome.REJECTED, code=str(reject.code), reason=reject.reason)
        job, marker = events.job_types[0], events.batch.entries[0][1]
        if dry_run:
            held = await self._call(self._client.get(marker)) if marker else None
            enqueued = held is not None and held != DEAD_LETTER_MARKER
            return Replay(letter.id, ReplayOutcome.ALREADY_DELIVERED if enqueued else ReplayOutcome.REPLAYED, job=job)
        if marker:
            await self._call(self._clear_dead_letter_marker(marker))
        flags = await self._enqueuer.run(events.batch)
        events.stamped.after_enqueue()
        await self._call(self._client.xdel(self.key, letter.id))
        outcome = ReplayOutcome.REPLAYED if flags == b"1" else ReplayOutcome.ALREADY_DELIVERED
        return Replay(letter.id, outcome, job=job)

    async def _with_original(self, letter: DeadLetter) -> DeadLetter | str:
        """``letter`` with its message read from JetStream now (a read at advisory time can fail while the
        message stays in the stream), or why JetStream cannot give it."""
        if letter.stream is None or letter.seq is None:
            return "the record names no stream sequence"
        try:
            api = await self._jetstream()
            stored = (await api.stream_msg_get(letter.stream, letter.seq))["message"]
            data = base64.b64decode(stored.get("data") or "")
            headers = parse_headers(base64.b64decode(stored["hdrs"])) if stored.get("hdrs") else {}
            subject = str(stored["subject"])
        except (JetStreamError, nats.errors.Error, OSError, TimeoutError, KeyError, ValueError) as exc:
            return redact_urls_in(f"{type(exc).__name__}: {exc}")
        return replace(letter, subject=subject, data=data, headers=headers, size=len(data),
                       stored_ns=stored_ns(stored))

    async def _jetstream(self) -> JetStreamApi:
        """The JetStream API on a connection made on first use; a refused one is not retried per record."""
        if self._nc is None:
            if self._nats_error is not None:
                raise ConnectionError(self._nats_error)

            async def quiet(exc: Exception) -> None:
                """The error reaches the caller through connect(); nats-py would also log it."""

            options = connect_options(self._settings.nats, name_suffix="-dlq")
            options.update(allow_reconnect=False, max_reconnect_attempts=1, error_cb=quiet,
                           connect_timeout=min(self._settings.nats.connect_timeout, NATS_TIMEOUT_S))
            try:
                self._nc = await nats.connect(**options)
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                self._nats_error = f"NATS did not answer: {type(exc).__name__}: {exc}"
                raise ConnectionError(self._nats_error) from None
        return JetStreamApi(self._nc, timeout=NATS_TIMEOUT_S)

    async def _clear_dead_letter_marker(self, marker: str) -> None:
        """Delete ``marker`` only while it says ``dead-letter``: one naming an enqueued job stays.

        A change between the read and the delete (WATCH) means someone enqueued the event
        meanwhile; the marker then stays and the enqueue deduplicates.
        """
        async with self._client.pipeline(transaction=True) as pipe:
            await pipe.watch(marker)
            if await pipe.get(marker) != DEAD_LETTER_MARKER:
                return  # leaving the block resets the pipeline, which unwatches
            pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            pipe.delete(marker)
            with contextlib.suppress(WatchError):
                await pipe.execute()

    async def purge(self, ids: Sequence[str]) -> int:
        """Delete the records with these ids; returns how many existed."""
        if not ids:
            return 0
        return int(await self._call(self._client.xdel(self.key, *ids)))

    def _parse(self, letter: DeadLetter) -> EventBatch:
        """A one-event batch, parsed as the bridge does with the current settings.

        ``received_at`` is when the bridge first got the event, so a typing or presence event
        replayed later than its lifetime is dropped by the workers (counted), not shown as current.
        """
        s = self._settings
        queues = {Lane.REALTIME: s.queues.realtime, Lane.DOMAIN: s.queues.domain}
        events = EventBatch(self._enqueuer.new_batch(), self._factory.begin(), queues, letter.at,
                            s.realtime.typing_ttl, s.realtime.presence_ttl, s.events.max_payload_bytes)
        own = event_identity(letter.stream, letter.seq, letter.headers, letter.stored_ns)
        events.add(letter.subject, letter.data, letter.headers or None, consumer=letter.consumer,
                   stream=letter.stream, stream_seq=letter.seq, delivered=letter.delivered,
                   stored_ns=letter.stored_ns, identity=own if own is not None else f"dead-letter:{letter.id}")
        return events

    @staticmethod
    async def _call(awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from None


def _record(entry_id: str, raw: Mapping[bytes, bytes]) -> DeadLetter:
    """A stream entry as a record; fields missing from an older writer read as empty."""
    fields = {_text(k): v for k, v in raw.items()}
    data = fields.get("data", b"")

    def text(name: str) -> str:
        return _text(fields.get(name, b""))

    return DeadLetter(
        id=entry_id, at=_when(text("at"), entry_id), subject=text("subject"), headers=_headers(text("headers")),
        data=data, size=_int(text("size")) or len(data), stream=text("stream") or None, seq=_int(text("seq")),
        delivered=_int(text("delivered")), consumer=text("consumer"), code=text("code"), reason=text("reason"),
        stored_ns=_int(text("ts")),
    )


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _int(value: str) -> int | None:
    return int(value) if value.isdigit() else None


def _headers(value: str) -> dict[str, str]:
    try:
        loaded = json.loads(value) if value else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}


def _when(value: str, entry_id: str) -> datetime:
    """The ``at`` field, else the entry id's milliseconds (both are the bridge's clock)."""
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000, UTC)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
