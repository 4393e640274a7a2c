"""A JetStream event's identity survives a re-created stream (bridge/batch.py ``event_identity``).

An event without ``Nats-Msg-Id`` is identified by stream + sequence + the time the stream stored
it. A stream deleted and re-created numbers from 1 again: with stream + sequence alone its first
events found the old incarnation's dedupe markers and were dropped as duplicates, silently, for
``redis.dedupe_window``. Each path that computes the identity must compute the same one for one
stored message: the pull path (the ack subject's ``ts``), a dead letter's replay (the record's
``ts``; a record written before that field replays with the identity of the bridge that wrote it)
and the max-deliveries advisory (``STREAM.MSG.GET``'s ``time``; tests/test_bridge_faults.py checks
that one against the ack subject of the deliveries).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import redis
from nats.aio.client import Client as NATS

from bridge import DeadLetterStore, ReplayOutcome
from bridge.advisories import stored_ns, stored_time_ns
from bridge.batch import event_identity
from bridge.dead_letters import dead_letter_fields
from bridge.enqueue import Enqueuer, connect_redis
from bridge.jsapi import JetStreamApi
from bridge.messages import message_id_for
from bridge.provision import stream_config
from bridge.testing import bridge_settings, running_bridge
from tests.bridge_proc import created
from tests.servers import NatsServer, RedisServer, async_wait_until

NS = "test-notify"
STREAM = "FECHATTER_EVENTS"
DURABLE = "notification_processor"
DL_KEY = f"{NS}:dead-letters"
#: Dead-letters the long events below, so a replay under the default limit enqueues them.
LOW_LIMIT = 1024


def domain_jobs(rds: redis.Redis) -> list[dict[str, Any]]:
    """The dramatiq messages on the domain queue, in queue order."""
    ids = rds.lrange(f"{NS}:domain", 0, -1)
    return [json.loads(rds.hget(f"{NS}:domain.msgs", i) or b"{}") for i in ids]


def message_ids(rds: redis.Redis) -> list[int]:
    """The chat message ids of the queued jobs, in queue order."""
    return [job["args"][0]["message_id"] for job in domain_jobs(rds)]


async def stored_identity(api: JetStreamApi, seq: int) -> str:
    """The identity of the message at ``seq``, from the time ``STREAM.MSG.GET`` says it was stored."""
    when = stored_ns((await api.stream_msg_get(STREAM, seq))["message"])
    assert when is not None
    return f"{STREAM}:{seq}:{when}"


def test_the_stored_time_converts_to_the_ack_subjects_nanoseconds() -> None:
    # Go writes RFC 3339 with up to 9 digits, trailing zeros cut (none at all when zero), UTC
    base = 1_719_456_346 * 10**9  # 2024-06-27T02:45:46Z
    assert stored_time_ns("2024-06-27T02:45:46.790112345Z") == base + 790_112_345
    assert stored_time_ns("2024-06-27T02:45:46.7901Z") == base + 790_100_000
    assert stored_time_ns("2024-06-27T02:45:46Z") == base
    assert stored_time_ns("2024-06-27T04:45:46.000000001+02:00") == base + 1
    assert stored_time_ns("2024-06-27 02:45:46Z") is None and stored_time_ns("") is None
    assert stored_ns({}) is None and stored_ns({"time": 5}) is None


def test_the_identity_has_the_stored_time_when_known_and_the_publishers_id_first() -> None:
    assert event_identity(STREAM, 3, None, 17) == f"{STREAM}:3:17"
    assert event_identity(STREAM, 3, {}, None) == f"{STREAM}:3"  # a dead letter written before the field
    assert event_identity(STREAM, 3, {"Nats-Msg-Id": "m-1"}, 17) == f"{STREAM}:id:m-1"
    assert event_identity(None, None, None, None) is None


async def test_a_recreated_streams_first_events_are_enqueued_not_taken_for_the_old_ones(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS, rds: redis.Redis
) -> None:
    # Given a bridge that enqueued three events without Nats-Msg-Id (stream sequences 1-3)
    settings = bridge_settings(nats_server.url, redis_server.url)
    api = JetStreamApi(nc)
    js = nc.jetstream()
    async with running_bridge(settings) as bridge:
        for i in (1, 2, 3):
            await js.publish("fechatter.message.created", created(i))
        await async_wait_until(lambda: message_ids(rds) == [1, 2, 3], timeout=10)
        old = [await stored_identity(api, seq) for seq in (1, 2, 3)]
        # When the stream is deleted and re-created (it numbers from 1 again) and three new events published
        await api.request(f"STREAM.DELETE.{STREAM}")
        await api.stream_create(stream_config(settings.jetstream.streams[0]))
        for i in (4, 5, 6):
            await js.publish("fechatter.message.created", created(i))
        # Then they are enqueued, not dropped as duplicates of the old stream's sequences 1-3
        await async_wait_until(lambda: message_ids(rds) == [1, 2, 3, 4, 5, 6], timeout=15,
                               message=lambda: f"queued: {message_ids(rds)}")
        deduplicated = bridge.metrics.registry.get_sample_value(
            "fechatter_notify_bridge_jobs_deduplicated_total", {"consumer": DURABLE, "job_type": "NewMessage"})
    assert not deduplicated
    new = [await stored_identity(api, seq) for seq in (1, 2, 3)]
    jobs = domain_jobs(rds)
    assert [job["args"][0]["origin"]["stream_seq"] for job in jobs] == [1, 2, 3] * 2
    # and each job's id is the one every other path computes from the stored message (STREAM.MSG.GET's time)
    assert [job["message_id"] for job in jobs] == [message_id_for(identity) for identity in old + new]
    assert all(rds.get(f"{NS}:bridge:dedupe:{identity}") for identity in old + new)


async def test_a_dead_letter_replays_under_the_identity_of_its_stored_message_once(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS, rds: redis.Redis
) -> None:
    # Given an event dead-lettered by a bridge (over a too-low payload limit), no Nats-Msg-Id
    low = bridge_settings(nats_server.url, redis_server.url, {"events": {"max_payload_bytes": LOW_LIMIT}})
    async with running_bridge(low):
        await nc.jetstream().publish("fechatter.message.created", created(1, "x" * 2 * LOW_LIMIT))
        await async_wait_until(lambda: rds.xlen(DL_KEY) == 1, timeout=10)
    identity = await stored_identity(JetStreamApi(nc), 1)
    # Then its record keeps when the stream stored it, and its marker has the pull path's identity
    ((_, fields),) = rds.xrange(DL_KEY)
    assert f"{STREAM}:1:{fields[b'ts'].decode()}" == identity
    assert rds.get(f"{NS}:bridge:dedupe:{identity}") == b"dead-letter"
    # When it is replayed twice under the default limit
    store = DeadLetterStore(bridge_settings(nats_server.url, redis_server.url))
    try:
        (letter,) = await store.read()
        first, second = await store.replay(letter), await store.replay(letter)
    finally:
        await store.close()
    # Then it is enqueued once, with the id the pull path would have given it
    assert (first.outcome, second.outcome) == (ReplayOutcome.REPLAYED, ReplayOutcome.ALREADY_DELIVERED)
    assert [job["message_id"] for job in domain_jobs(rds)] == [message_id_for(identity)]


async def test_a_dead_letter_written_before_the_stored_time_replays_with_its_old_identity(
    nats_server: NatsServer, redis_server: RedisServer, rds: redis.Redis
) -> None:
    # Given a record as a bridge before this change wrote it (no ts) and the marker it set, by stream + sequence
    settings = bridge_settings(nats_server.url, redis_server.url)
    enqueuer = Enqueuer(connect_redis(redis_server.url, socket_timeout=2, connect_timeout=2), namespace=NS,
                        dedupe_window=3600, dead_letter_stream="dead-letters", dead_letter_max_len=1000)
    batch = enqueuer.new_batch()
    fields = dead_letter_fields("fechatter.message.created", created(7), {}, consumer=DURABLE, code="payload_too_large",
                                reason="over an old limit", at=datetime.now(UTC), stream=STREAM, stream_seq=7,
                                delivered=1)
    at = fields.index("ts")
    del fields[at:at + 2]
    batch.add_dead_letter(f"{NS}:bridge:dedupe:{STREAM}:7", fields)
    await enqueuer.run(batch)
    await enqueuer.close()
    assert b"ts" not in rds.xrange(DL_KEY)[0][1] and rds.get(f"{NS}:bridge:dedupe:{STREAM}:7") == b"dead-letter"
    # When it is replayed twice
    store = DeadLetterStore(settings)
    try:
        (letter,) = await store.read()
        assert letter.stored_ns is None
        first, second = await store.replay(letter), await store.replay(letter)
    finally:
        await store.close()
    # Then its job has the old identity's id, its old marker now names that job, and the second replay finds it
    assert (first.outcome, second.outcome) == (ReplayOutcome.REPLAYED, ReplayOutcome.ALREADY_DELIVERED)
    (job,) = domain_jobs(rds)
    assert job["message_id"] == message_id_for(f"{STREAM}:7")
    assert rds.get(f"{NS}:bridge:dedupe:{STREAM}:7") == str(job["message_id"]).encode()
