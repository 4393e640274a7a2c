"""Max-deliveries advisories become dead letters.

Where they come from: with ``jetstream.advisories.stream`` set (the default), a stream keeps every
consumer's advisories (:mod:`bridge.advisory_assets`) and the bridges read them through one shared
durable, acking each once its outcome is stored: a give-up announced while no bridge was connected
is read by the next bridge that starts, and one met during a Redis outage is offered again after
:data:`REDIS_RETRY_DELAY_S`. With it empty, the bridge listens on core NATS (queue group) and keeps
what Redis refused in memory, up to :data:`MAX_PENDING`.

When a message was delivered ``max_deliver`` times without an ack, JetStream gives up on it
and publishes ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`` with its
stream sequence. The bridge fetches the original message (``STREAM.MSG.GET``) and stores it as
a dead letter (code ``max_deliveries``), so nothing is silently dropped. The subscription uses
a queue group so replicas share advisories; the dead letter's dedupe marker stores it once even
if two replicas both see one. A dead letter that cannot be written yet (Redis down) is retried
with backoff, up to :data:`MAX_PENDING` of them.

The stored message's ``time`` (when the stream stored it) goes into the dead letter (``ts``) and
its marker: a replay then rebuilds the identity the pull path gave the event
(:func:`bridge.batch.event_identity`), and a re-created stream's message at a sequence seen
before is a new dead letter, not a duplicate of the old incarnation's.

An event whose own dedupe marker (``{namespace}:bridge:dedupe:{identity}``, written by
:file:`enqueue.lua`) is still there already reached Redis: a bridge enqueued it and was killed before
its ack reached JetStream, often enough to reach ``max_deliver``. Its job (or its dead letter, when
the marker says ``dead-letter``) exists, so no ``max_deliveries`` dead letter is written; it is
counted (``max_deliveries_already_enqueued``) and logged once per burst. Only an event with no marker
(never enqueued, or enqueued longer than ``redis.dedupe_window`` ago: the safe side) or whose original
could not be read becomes a dead letter. The marker is read just before the write, not in the same
script (:file:`enqueue.lua` checks only the dead letter's own marker): after the give-up JetStream
delivers the message to nobody. A copy a live bridge still holds (mid-enqueue, or held through a Redis
outage) can land after the read; the event is then both enqueued and a dead letter, as before this
check, and ``dlq replay`` answers ``already_delivered``.
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bridge.advisory_assets import advisory_subject
from bridge.batch import event_identity
from bridge.dead_letters import MAX_DELIVERIES, dead_letter_fields
from bridge.enqueue import DEDUPE_PREFIX, Enqueuer
from bridge.errors import JetStreamError, JetStreamRefused, RedisUnavailable
from bridge.jsapi import JetStreamApi
from bridge.metrics import BridgeMetrics
from bridge.status import ERR_CONSUMER_NOT_FOUND, ERR_STREAM_NOT_FOUND
from runtime import backoff_delay, log_event, stop_task
from settings import Consumer

__all__ = ["ALREADY_ENQUEUED_LOG_INTERVAL_S", "MAX_PENDING", "MaxDeliveries", "advisory_subject", "parse_headers",
           "stored_ns", "stored_time_ns"]

log = logging.getLogger("bridge.advisories")

#: Dead letters from advisories waiting for Redis, at most.
MAX_PENDING: Final = 10_000
#: Seconds between two log lines about advisories of already-enqueued events (a crash under a backlog
#: gives up on up to ``max_ack_pending`` of them at once: one line per burst, with the count).
ALREADY_ENQUEUED_LOG_INTERVAL_S: Final = 10.0
#: The value :file:`enqueue.lua` gives the marker of an event it stored as a dead letter.
_DEAD_LETTER_MARKER: Final = b"dead-letter"
#: Seconds before an advisory whose outcome Redis could not store is offered again (a nak's delay).
REDIS_RETRY_DELAY_S: Final = 2.0
#: Seconds one pull for advisories waits: they are rare, so a pull mostly expires empty.
ADVISORY_PULL_WAIT_S: Final = 5.0
#: Cap of the delay between two failed pulls for advisories.
ADVISORY_RETRY_CAP_S: Final = 10.0
#: The original message named by an advisory is gone (purged, aged out, stream deleted): final.
_ERR_NO_MESSAGE: Final = 10037


#: Go's ``time.Time`` in JSON (RFC 3339 with up to 9 fraction digits, trailing zeros cut, none
#: when zero; nats-server writes UTC, so ``Z``, but an offset is read too).
_RFC3339: Final = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


def stored_time_ns(value: str) -> int | None:
    """Nanoseconds since the epoch of a ``STREAM.MSG.GET`` ``time``, or None if it is not one.

    The ``ts`` of an ack subject is the same instant as an integer: ``datetime`` keeps only
    microseconds, so the digits are read as they are.
    """
    match = _RFC3339.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone = match.group(7) or "", match.group(8)
    offset = 0 if zone == "Z" else (-1 if zone[0] == "-" else 1) * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    return seconds * 1_000_000_000 + int(fraction.ljust(9, "0") or "0")


def stored_ns(stored: Mapping[str, object]) -> int | None:
    """When the stream stored the message of a ``STREAM.MSG.GET`` answer, in nanoseconds; None if absent."""
    value = stored.get("time")
    return stored_time_ns(value) if isinstance(value, str) else None


def parse_headers(raw: bytes) -> dict[str, str]:
    """Headers of a stored message (``NATS/1.0\\r\\nKey: Value\\r\\n...``) as a dict."""
    headers: dict[str, str] = {}
    for line in raw.decode(errors="replace").split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip()] = value.strip()
    return headers


class MaxDeliveries:
    """Reads the advisories of every consumer and records dead letters.

    Parameters:
      nc(NATS), api(JetStreamApi), enqueuer(Enqueuer), metrics(BridgeMetrics): Shared parts.
      consumers(list[Consumer]): The consumers whose advisories to follow.
      queue_group(str): Shared by bridge replicas (core NATS only).
      source(Consumer | None): The durable on the advisories' stream (already provisioned); None
        listens on core NATS.
      recover(Callable | None): Re-creates ``source`` when it was deleted under the bridge.
    """

    def __init__(self, nc: NATS, api: JetStreamApi, enqueuer: Enqueuer, metrics: BridgeMetrics,
                 consumers: list[Consumer], queue_group: str, source: Consumer | None = None,
                 recover: Callable[[Consumer], Awaitable[object]] | None = None) -> None:
        self._nc = nc
        self._api = api
        self._enqueuer = enqueuer
        self._metrics = metrics
        self._consumers = consumers
        self._queue_group = queue_group
        self._source = source
        self._recover = recover
        self._subs: list[Subscription] = []
        self._pending: list[list[Any]] = []
        self._retry: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pull_sub: Any = None  # the durable's pull subscription, once bound
        self._deferring = False  # an advisory's outcome could not be stored; logged once until one is
        self._tasks: set[asyncio.Task[None]] = set()
        # Already-enqueued give-ups: when the last log line was written, and how many since.
        self._quiet_since = -ALREADY_ENQUEUED_LOG_INTERVAL_S
        self._quiet_count = 0

    async def start(self) -> None:
        """Read the advisories' durable, or subscribe to every consumer's advisory subject."""
        if self._source is not None:
            self._reader = asyncio.get_running_loop().create_task(self._read_durable(self._source),
                                                                  name="advisories-reader")
            return
        for consumer in self._consumers:
            self._subs.append(await self._nc.subscribe(advisory_subject(consumer), queue=self._queue_group,
                                                       cb=self._on_advisory))

    async def stop(self) -> None:
        """Unsubscribe and stop reading and retrying."""
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        await asyncio.gather(*(stop_task(task) for task in [*self._tasks, self._retry, self._reader]))
        # A pull subscription left subscribed keeps the connection's drain waiting for it (10 s).
        if self._pull_sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._pull_sub.unsubscribe()
            self._pull_sub = None

    async def _read_durable(self, source: Consumer) -> None:
        """Pull advisories from ``source`` for ever; each is acked once its outcome is stored."""
        attempt, failing = 0, False
        while True:
            try:
                if self._pull_sub is None:
                    self._pull_sub = await self._nc.jetstream().pull_subscribe_bind(durable=source.durable,
                                                                                    stream=source.stream)
                messages = await self._pull_sub.fetch(source.batch, timeout=ADVISORY_PULL_WAIT_S)
            except (nats.errors.TimeoutError, TimeoutError):
                continue  # nothing given up on: the pull expired empty
            except (nats.errors.Error, JetStreamError) as exc:
                if not failing:
                    log_event(log, "advisories_pull_failing", logging.WARNING, stream=source.stream,
                              consumer=source.durable, reason=f"{type(exc).__name__}: {exc}")
                failing = True
                await asyncio.sleep(backoff_delay(attempt, 0.2, ADVISORY_RETRY_CAP_S))
                attempt += 1
                await self._recover_source(source)
                continue
            if failing:
                log_event(log, "advisories_pull_recovered", stream=source.stream, consumer=source.durable,
                          attempts=attempt)
            attempt, failing = 0, False
            for message in messages:
                await self._settle(message)

    async def _recover_source(self, source: Consumer) -> None:
        """Re-create the advisories' durable (or stream) when the server says it is gone.

        A pull on a missing durable gets 'no responders' like one on a leaderless stream: only
        ``CONSUMER.INFO`` tells the two apart.
        """
        if self._recover is None:
            return
        try:
            await self._api.consumer_info(source.stream, source.durable)
        except JetStreamRefused as exc:
            if exc.err_code not in (ERR_CONSUMER_NOT_FOUND, ERR_STREAM_NOT_FOUND):
                return
            with contextlib.suppress(JetStreamError):
                await self._recover(source)
                log_event(log, "advisories_consumer_recreated", logging.WARNING, stream=source.stream,
                          consumer=source.durable)
        except JetStreamError:
            return

    async def _settle(self, message: Msg) -> None:
        """Store one advisory's outcome and ack it; nak it (with a delay) while that cannot be stored."""
        try:
            item = await self._item(message.data, final=False)
            if item is not None:
                await self._store(item)
        except (RedisUnavailable, JetStreamError) as exc:
            # Once per outage, not once per advisory per retry: a backlog of them comes back every 2 s.
            if not self._deferring:
                log_event(log, "advisory_deferred", logging.WARNING, reason=f"{type(exc).__name__}: {exc}",
                          retry_in_s=REDIS_RETRY_DELAY_S)
            self._deferring = True
            with contextlib.suppress(nats.errors.Error):
                await message.nak(delay=REDIS_RETRY_DELAY_S)
            return
        if self._deferring:
            log_event(log, "advisories_stored_again")
            self._deferring = False
        with contextlib.suppress(nats.errors.Error):
            await message.ack()

    async def _on_advisory(self, msg: Msg) -> None:
        task = asyncio.get_running_loop().create_task(self._record(msg.data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, data: bytes) -> None:
        item = await self._item(data, final=True)
        if item is not None:
            await self._write(item)

    async def _item(self, data: bytes, *, final: bool) -> list[Any] | None:
        """What to store for one advisory; None for an unreadable one (logged).

        Raises:
          JetStreamError: (``final`` False) the original could not be read for a reason that may pass
            (a timeout, a leaderless stream): the caller offers the advisory again later. With
            ``final`` True, or when the original is gone for good, the dead letter says so instead.
        """
        try:
            advisory = json.loads(data)
            stream, durable = str(advisory["stream"]), str(advisory["consumer"])
            seq, deliveries = int(advisory["stream_seq"]), int(advisory.get("deliveries", 0))
        except (ValueError, KeyError, TypeError):
            log_event(log, "advisory_unreadable", logging.WARNING, data=data[:200])
            return None
        subject, payload, headers, note, when = "", b"", {}, "", None
        try:
            stored = (await self._api.stream_msg_get(stream, seq))["message"]
            subject = stored.get("subject", "")
            payload = base64.b64decode(stored.get("data") or "")
            headers = parse_headers(base64.b64decode(stored["hdrs"])) if stored.get("hdrs") else {}
            when = stored_ns(stored)
        except JetStreamError as exc:
            if not final and not _gone_for_good(exc):
                raise
            note = f"; the original could not be read: {exc}"
        except (KeyError, ValueError) as exc:
            note = f"; the original could not be read: {exc}"
        self._metrics.advisories.labels(durable).inc()
        reason = f"delivered {deliveries} times without an ack (max_deliver reached){note}"
        fields = dead_letter_fields(subject, payload, headers, consumer=durable, code=MAX_DELIVERIES, reason=reason,
                                    at=datetime.now(UTC), stream=stream, stream_seq=seq, delivered=deliveries,
                                    stored_ns=when)
        # Stream + sequence (+ stored time when read): one dead letter per stored message, whichever
        # replica hears its advisory, and a new one for a re-created stream's message at that sequence.
        identity = event_identity(stream, seq, None, when)
        prefix = f"{self._enqueuer.namespace}:{DEDUPE_PREFIX}"
        dedupe = f"{prefix}:{identity}:{MAX_DELIVERIES}"
        # The marker the pull path gave the event (its Nats-Msg-Id counts there); none when the original
        # was not read: without its time or headers the identity is unknown, so it is dead-lettered.
        marker = f"{prefix}:{event_identity(stream, seq, headers, when)}" if subject else ""
        return [dedupe, fields, durable, marker, seq, deliveries]

    async def _write(self, item: list[Any]) -> bool:
        try:
            await self._store(item)
        except RedisUnavailable:
            if len(self._pending) < MAX_PENDING:
                self._pending.append(item)
            if self._retry is None or self._retry.done():
                self._retry = asyncio.get_running_loop().create_task(self._retry_pending())
            return False
        return True

    async def _store(self, item: list[Any]) -> None:
        """The dead letter of ``item``, unless the event's own marker says it reached Redis.

        Raises:
          RedisUnavailable: Redis refused or timed out; nothing was decided.
        """
        dedupe, fields, durable, marker, seq, deliveries = item
        held = await self._enqueuer.marker(marker) if marker else None
        if held is not None:
            self._already_enqueued(durable, seq, deliveries, "dead_letter" if held == _DEAD_LETTER_MARKER else "job")
            return
        log_event(log, "max_deliveries", logging.WARNING, subject=_text(fields, "subject"),
                  stream=_text(fields, "stream"), consumer=durable, seq=seq, delivered=deliveries)
        batch = self._enqueuer.new_batch()
        batch.add_dead_letter(dedupe, fields)
        if await self._enqueuer.run(batch) == b"1":
            self._metrics.dead_lettered.labels(durable, MAX_DELIVERIES).inc()

    def _already_enqueued(self, durable: str, seq: int, deliveries: int, marker: str) -> None:
        """Count a give-up on an event that reached Redis; log the first of a burst and then every
        :data:`ALREADY_ENQUEUED_LOG_INTERVAL_S` with how many were counted since."""
        self._metrics.max_deliveries_already_enqueued.labels(durable, marker).inc()
        self._quiet_count += 1
        now = time.monotonic()
        if now - self._quiet_since < ALREADY_ENQUEUED_LOG_INTERVAL_S:
            return
        log_event(log, "max_deliveries_already_enqueued", logging.INFO, consumer=durable, seq=seq,
                  delivered=deliveries, marker=marker, count=self._quiet_count)
        self._quiet_since, self._quiet_count = now, 0

    async def _retry_pending(self) -> None:
        attempt = 0
        while self._pending:
            await asyncio.sleep(backoff_delay(attempt, 0.1, 5.0))
            attempt += 1
            item = self._pending.pop(0)
            try:
                await self._store(item)
            except RedisUnavailable:
                self._pending.insert(0, item)
                continue
            attempt = 0


def _gone_for_good(exc: JetStreamError) -> bool:
    """The original message or its stream no longer exists: reading it again cannot help."""
    return isinstance(exc, JetStreamRefused) and exc.err_code in (_ERR_NO_MESSAGE, ERR_STREAM_NOT_FOUND)


def _text(fields: list[str | bytes], name: str) -> str:
    """The value of field ``name`` in :func:`dead_letter_fields`' alternating list."""
    value = fields[fields.index(name) + 1]
    return value.decode(errors="replace") if isinstance(value, bytes) else value
