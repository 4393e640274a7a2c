"""Batches parsed as their messages arrive (bridge/forming.py): order, bounds, and the fallback."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.batch import EventBatch
from bridge.enqueue import Batch
from bridge.forming import Forming
from bridge.messages import MessageFactory, message_id_for
from bridge.testing import bridge_settings, queued_messages, running_bridge
from events import Lane
from tests.servers import NatsServer, RedisServer, async_wait_until
from tests.test_events_parse import C_CREATED

QUEUES = {Lane.DOMAIN: "d", Lane.REALTIME: "r"}
STORED_NS = 1_750_992_346_790_112_345


def _new_events(received_at: datetime) -> EventBatch:
    return EventBatch(Batch("ns"), MessageFactory().begin(), QUEUES, received_at, 5.0, 60.0)


def _msg(seq: int, data: bytes = C_CREATED) -> Msg:
    reply = f"$JS.ACK.S.c.1.{seq}.{seq}.{STORED_NS}.0"
    return Msg(None, "fechatter.message.created", reply, data)


def test_messages_are_parsed_into_batches_of_at_most_the_limit_in_arrival_order() -> None:
    # Given a forming area whose batches hold 3 events
    forming = Forming(_new_events, "c", limit=3)
    before = datetime.now(UTC)
    # When 7 messages arrive, the third malformed
    for seq in range(1, 8):
        forming.add(_msg(seq, b"{" if seq == 3 else C_CREATED))
    # Then they come out as batches of 3, 3 and 1, in order, each already parsed: a job per good
    # message with its identity, a dead letter for the malformed one
    taken = [forming.take() for _ in range(3)]
    assert forming.take() is None and not forming
    assert [len(f) for f in taken if f is not None] == [3, 3, 1]
    first = taken[0]
    assert first is not None and first.events is not None
    assert [meta[1] for meta in first.inbound.metas if meta is not None] == [1, 2, 3]
    assert first.events.job_types == ["NewMessage", "NewMessage", None]
    assert first.events.batch.entries[0][3] == message_id_for(f"S:1:{STORED_NS}")
    reject = first.events.rejects[2]
    assert reject is not None and reject.code == "not_json"
    assert first.inbound.payload_bytes == 2 * len(C_CREATED) + 1
    # And a batch's arrival time is its first message's, stamped on its jobs
    assert before <= first.inbound.received_at == first.events.received_at <= datetime.now(UTC)


def test_a_message_after_take_starts_a_new_batch() -> None:
    forming = Forming(_new_events, "c")
    forming.add(_msg(1))
    first = forming.take()
    forming.add(_msg(2))
    second = forming.take()
    assert first is not None and second is not None and first is not second
    assert (len(first), len(second)) == (1, 1)
    assert first.events is not None and len(first.events) == 1


def test_a_parse_that_fails_on_arrival_leaves_the_batch_to_be_parsed_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a bug in parsing that fires for the second message only
    real_add = EventBatch.add

    def add(self: EventBatch, subject: str, data: bytes, *args: object, **kwargs: object) -> None:
        if kwargs.get("stream_seq") == 2:
            raise ValueError(f"bug with {data!r}")
        real_add(self, subject, data, *args, **kwargs)

    monkeypatch.setattr(EventBatch, "add", add)
    forming = Forming(_new_events, "c")
    # When three messages arrive
    with caplog.at_level(logging.WARNING, "bridge.forming"):
        for seq in (1, 2, 3):
            forming.add(_msg(seq))
    # Then the batch keeps all three messages but no parse (the processor parses it again), and
    # one warning names the consumer, subject and sequence, never the payload
    formed = forming.take()
    assert formed is not None and formed.events is None
    assert [meta[1] for meta in formed.inbound.metas if meta is not None] == [1, 2, 3]
    lines = [r for r in caplog.records if r.getMessage() == "parse_on_arrival_failed"]
    assert len(lines) == 1
    assert (lines[0].__dict__["consumer"], lines[0].__dict__["seq"], lines[0].__dict__["error"]) == ("c", 2,
                                                                                                     "ValueError")
    assert "Hi team" not in caplog.text


async def test_a_batch_whose_parse_failed_on_arrival_is_parsed_again_and_enqueued(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a bridge whose parsing fails once, on the first parse of stream sequence 1 (a transient bug)
    real_add = EventBatch.add
    failed: list[object] = []

    def add(self: EventBatch, subject: str, data: bytes, *args: object, **kwargs: object) -> None:
        if kwargs.get("stream_seq") == 1 and not failed:
            failed.append(kwargs["stream_seq"])
            raise ValueError("transient bug")
        real_add(self, subject, data, *args, **kwargs)

    monkeypatch.setattr(EventBatch, "add", add)
    rds = aioredis.Redis.from_url(redis_server.url)
    try:
        with caplog.at_level(logging.WARNING, "bridge.forming"):
            async with running_bridge(bridge_settings(nats_server.url, redis_server.url)):
                # When a message arrives
                await nc.jetstream().publish("fechatter.message.created", C_CREATED)
                # Then its job is enqueued once (parsed again when its batch was processed) and it is acked
                jobs = await async_wait_until(lambda: _jobs(rds), timeout=10, message="job never enqueued")

                async def acked() -> bool:
                    info = json.loads((await nc.request("$JS.API.CONSUMER.INFO.FECHATTER_EVENTS.notification_processor",
                                                        b"", timeout=2)).data)
                    return bool(info["ack_floor"]["stream_seq"] == 1 and info["num_ack_pending"] == 0)

                await async_wait_until(acked, timeout=10, message="never acked")
    finally:
        await rds.aclose()
    assert failed == [1]
    assert [job["args"][0]["origin"]["stream_seq"] for job in jobs] == [1]
    assert [r.getMessage() for r in caplog.records if r.name == "bridge.forming"] == ["parse_on_arrival_failed"]


async def _jobs(rds: aioredis.Redis) -> list[dict[str, object]] | None:
    jobs = await queued_messages(rds, "test-notify", "domain")
    return jobs or None
