"""Max-deliveries advisories of events that had already reached Redis are not dead letters.

A bridge killed under a backlog has enqueued events whose acks never reached JetStream; after
``max_deliver`` such kills JetStream gives up on them. Their jobs exist, so the advisory is counted,
not stored as a ``max_deliveries`` dead letter; an event that never reached Redis still is one.
Real nats-server and redis-server; the "killed bridge" is the bridge's own enqueue path
(EventBatch + Enqueuer, as bridge/process.py builds it) followed by no ack.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import nats
import nats.errors
import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.batch import EventBatch
from bridge.enqueue import Enqueuer
from bridge.holding import reply_metadata
from bridge.jsapi import JetStreamApi
from bridge.messages import MessageFactory
from bridge.provision import consumer_config, stream_config
from bridge.testing import TEST_CONSUMER, bridge_settings, queued_messages, running_bridge
from events import Lane
from settings.model import Settings
from tests.bridge_proc import created
from tests.servers import NatsServer, RedisServer, async_wait_until

pytestmark = pytest.mark.slow

NS = "test-notify"
STREAM = "FECHATTER_EVENTS"
DURABLE = "notification_processor"
ALREADY = "fechatter_notify_bridge_max_deliveries_already_enqueued_total"


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def enqueue_without_ack(settings: Settings, msgs: list[Msg]) -> bytes:
    """What a bridge killed between its enqueue and its ack did: the jobs and markers are in Redis."""
    meta = [reply_metadata(m.reply) for m in msgs]
    enqueuer = Enqueuer.for_settings(settings)
    s = settings
    events = EventBatch(enqueuer.new_batch(), MessageFactory().begin(),
                        {Lane.REALTIME: s.queues.realtime, Lane.DOMAIN: s.queues.domain}, datetime.now(UTC),
                        s.realtime.typing_ttl, s.realtime.presence_ttl, s.events.max_payload_bytes)
    for msg, m in zip(msgs, meta, strict=True):
        assert m is not None
        stream, seq, count, stored_ns = m
        events.add(msg.subject, msg.data, msg.headers, consumer=DURABLE, stream=stream, stream_seq=seq,
                   delivered=count, stored_ns=stored_ns)
    try:
        return await enqueuer.run(events.batch)
    finally:
        await enqueuer.close()


async def test_a_give_up_on_an_enqueued_event_is_counted_and_only_a_never_enqueued_one_is_a_dead_letter(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.advisories")
    # Given a durable with max_deliver 2 and four events: 1 (no Nats-Msg-Id) and 2 (with one) enqueued by a
    # bridge that never got to ack them, 3 never enqueued (its bridge died before Redis answered), and 4, not
    # JSON, stored as a dead letter by a bridge that died before its term
    consumer = {**TEST_CONSUMER, "max_deliver": 2, "ack_wait": "1500ms"}
    settings = bridge_settings(nats_server.url, redis_server.url, {
        "redis": {"socket_timeout": "200ms"}, "jetstream": {"consumers": [consumer]}})
    api = JetStreamApi(nc)
    await api.stream_create(stream_config(settings.jetstream.streams[0]))
    await api.consumer_create(STREAM, consumer_config(settings.jetstream.consumers[0]))
    js = nc.jetstream()
    await js.publish("fechatter.message.created", created(1))
    await js.publish("fechatter.message.created", created(2), headers={"Nats-Msg-Id": "m2"})
    await js.publish("fechatter.message.created", created(3))
    await js.publish("fechatter.message.created", b"not json")
    sub = await js.pull_subscribe("", durable=DURABLE, stream=STREAM)
    rounds: list[list[Msg]] = []

    async def delivered_all_four() -> bool:
        try:
            got = await sub.fetch(4, timeout=0.5)
        except TimeoutError:  # nats-py raises its own, or asyncio.TimeoutError when the deadline runs out
            return False
        rounds.append(got)
        return len(got) == 4

    for _ in range(2):  # two kills: the second delivery reaches max_deliver
        await async_wait_until(delivered_all_four, timeout=10, interval=0.05)
    await sub.unsubscribe()
    first = rounds[0]
    assert await enqueue_without_ack(settings, [first[0], first[1], first[3]]) == b"111"
    rds = aioredis.Redis.from_url(redis_server.url)
    # When a bridge runs and JetStream gives up on all four
    async with running_bridge(settings) as bridge:
        def already(marker: str = "job") -> float:
            return bridge.metrics.registry.get_sample_value(ALREADY, {"consumer": DURABLE, "marker": marker}) or 0.0

        def written() -> float:
            return bridge.metrics.registry.get_sample_value(
                "fechatter_notify_bridge_dead_letters_total", {"consumer": DURABLE, "code": "max_deliveries"}) or 0.0

        await async_wait_until(lambda: already() + already("dead_letter") >= 3, timeout=10,
                               message=lambda: f"counted {already()} + {already('dead_letter')}, not 3")
        await async_wait_until(lambda: written() >= 1, timeout=10, message="no max_deliveries dead letter")
        advisories = bridge.metrics.registry.get_sample_value(
            "fechatter_notify_bridge_max_deliveries_advisories_total", {"consumer": DURABLE})
        letters = await rds.xrange(f"{NS}:dead-letters")
    # Then event 3 is the only max_deliveries dead letter, 4 keeps its one not_json dead letter, events 1 and 2
    # are counted (their jobs queued once each)
    assert advisories == 4
    assert sorted((f[b"code"], f[b"seq"]) for _, f in letters) == [(b"max_deliveries", b"3"), (b"not_json", b"4")]
    assert [f[b"data"] for _, f in letters if f[b"code"] == b"max_deliveries"] == [created(3)]
    assert (already(), already("dead_letter")) == (2, 1)
    jobs = [m["args"][0]["message_id"] for m in await queued_messages(rds, NS, "domain")]
    assert sorted(jobs) == [1, 2]
    # and the burst is one log line, not one per event
    lines = [r for r in caplog.records if r.getMessage() == "max_deliveries_already_enqueued"]
    assert len(lines) == 1
    await rds.aclose()


async def test_a_give_up_heard_while_redis_is_down_is_decided_by_the_marker_once_redis_is_back(
    nats_server: NatsServer, redis_server_factory: Callable[..., RedisServer], nc: NATS
) -> None:
    # Given event 1 enqueued by a bridge that never acked it and event 2 never enqueued, both delivered
    # max_deliver (2) times, and a Redis that keeps its data across a restart
    redis = redis_server_factory(aof=True)
    consumer = {**TEST_CONSUMER, "max_deliver": 2, "ack_wait": "1500ms"}
    settings = bridge_settings(nats_server.url, redis.url, {
        "redis": {"socket_timeout": "200ms"}, "jetstream": {"consumers": [consumer]}})
    api = JetStreamApi(nc)
    await api.stream_create(stream_config(settings.jetstream.streams[0]))
    await api.consumer_create(STREAM, consumer_config(settings.jetstream.consumers[0]))
    js = nc.jetstream()
    for i in (1, 2):
        await js.publish("fechatter.message.created", created(i))
    sub = await js.pull_subscribe("", durable=DURABLE, stream=STREAM)
    rounds: list[list[Msg]] = []

    async def delivered_both() -> bool:
        try:
            got = await sub.fetch(2, timeout=0.5)
        except TimeoutError:  # nats-py raises its own, or asyncio.TimeoutError when the deadline runs out
            return False
        rounds.append(got)
        return len(got) == 2

    for _ in range(2):
        await async_wait_until(delivered_both, timeout=10, interval=0.05)
    assert await enqueue_without_ack(settings, rounds[0][:1]) == b"1"
    # When Redis is down as JetStream gives up (a pull after ack_wait, the test's or the bridge's)
    redis.stop()
    async with running_bridge(settings) as bridge:
        registry = bridge.metrics.registry

        def sample(name: str, **labels: str) -> float:
            return registry.get_sample_value(f"fechatter_notify_bridge_{name}", {"consumer": DURABLE, **labels}) or 0.0

        async def given_up() -> bool:
            with contextlib.suppress(TimeoutError):
                await sub.fetch(1, timeout=0.3)
            return sample("max_deliveries_advisories_total") == 2

        await async_wait_until(given_up, timeout=10, message="no advisories while Redis was down")
        # Then nothing is decided while Redis is down
        assert sample("max_deliveries_already_enqueued_total", marker="job") == 0
        assert sample("dead_letters_total", code="max_deliveries") == 0
        # and once it is back, the retry reads the marker: event 1 counted, event 2 a dead letter
        redis.start()
        await async_wait_until(lambda: sample("max_deliveries_already_enqueued_total", marker="job") == 1
                               and sample("dead_letters_total", code="max_deliveries") == 1, timeout=15,
                               message="the pending give-ups were not decided after Redis came back")
    await sub.unsubscribe()
    rds = aioredis.Redis.from_url(redis.url)
    letters = await rds.xrange(f"{NS}:dead-letters")
    assert [(f[b"code"], f[b"seq"]) for _, f in letters] == [(b"max_deliveries", b"2")]
    await rds.aclose()
