"""Chaos against a running in-process bridge: Redis down, nats-server restart, consumer deleted,
two replicas, max deliveries. No event may be lost or enqueued twice.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS

from bridge.holding import reply_metadata
from bridge.jsapi import JetStreamApi
from bridge.provision import consumer_config, stream_config
from bridge.testing import TEST_CONSUMER, bridge_settings, queued_messages, running_bridge
from settings.model import Settings
from tests.servers import NatsServer, RedisServer, async_wait_until

pytestmark = pytest.mark.slow

NS = "test-notify"
STREAM = "FECHATTER_EVENTS"
DURABLE = "notification_processor"


def created(i: int) -> bytes:
    """A core-dialect message-created event with message id ``i``."""
    return json.dumps({
        "version": "V1", "kind": "Created",
        "msg": {"id": i, "chat_id": 42, "sender_id": 7, "content": f"m{i}", "files": [],
                "created_at": "2025-06-27T02:45:46.782538Z", "idempotency_key": None},
        "members": [7, 9], "occurred_at": "2025-06-27T02:45:46.790112345Z"}).encode()


def typing(user: int) -> bytes:
    return json.dumps({"TypingStarted": {"chat_id": 42, "user_id": user, "user_name": None}}).encode()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    yield client
    await client.close()


async def publish(nc: NATS, ids: range) -> None:
    js = nc.jetstream()
    for i in ids:
        await js.publish("fechatter.message.created", created(i))


async def domain_ids(rds: aioredis.Redis) -> list[int]:
    return [m["args"][0]["message_id"] for m in await queued_messages(rds, NS, "domain")]


async def exactly(rds: aioredis.Redis, expected: range) -> bool:
    return sorted(await domain_ids(rds)) == list(expected)


async def acked_up_to(nc: NATS, seq: int) -> bool:
    msg = await nc.request(f"$JS.API.CONSUMER.INFO.{STREAM}.{DURABLE}", b"", timeout=2)
    info: dict[str, Any] = json.loads(msg.data)
    return bool(info.get("ack_floor", {}).get("stream_seq", 0) >= seq and info.get("num_ack_pending") == 0)


async def test_with_redis_down_nothing_is_acked_and_everything_arrives_once_when_it_returns(
    nats_server: NatsServer, redis_server_aof: RedisServer, nc: NATS
) -> None:
    settings = bridge_settings(nats_server.url, redis_server_aof.url)
    rds = aioredis.Redis.from_url(redis_server_aof.url)
    async with running_bridge(settings) as bridge:
        # Given 20 events enqueued and acked
        await publish(nc, range(1, 21))
        await async_wait_until(lambda: acked_up_to(nc, 20), timeout=10)
        # When Redis dies and 30 more events arrive
        await asyncio.to_thread(redis_server_aof.kill)
        await publish(nc, range(21, 51))
        await async_wait_until(lambda: bridge.circuit.is_open, timeout=10, message="circuit never opened")
        await async_wait_until(lambda: bridge.metrics.registry.get_sample_value(
            "fechatter_notify_bridge_events_held", {"consumer": DURABLE}), timeout=10)
        # Then none of them is acked (they are held: tests/test_bridge_redis_outage.py)
        info = json.loads((await nc.request(f"$JS.API.CONSUMER.INFO.{STREAM}.{DURABLE}", b"", timeout=2)).data)
        assert info["ack_floor"]["stream_seq"] == 20
        # When Redis comes back (same data: AOF, fsync always)
        await asyncio.to_thread(redis_server_aof.start)
        # Then every event is enqueued exactly once and acked
        await async_wait_until(lambda: exactly(rds, range(1, 51)), timeout=20, message="events lost or duplicated")
        await async_wait_until(lambda: acked_up_to(nc, 50), timeout=10)
        assert not bridge.circuit.is_open
    await rds.aclose()


async def test_after_a_nats_server_restart_the_bridge_resumes_by_itself(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS
) -> None:
    settings = bridge_settings(nats_server.url, redis_server.url)
    rds = aioredis.Redis.from_url(redis_server.url)
    async with running_bridge(settings) as bridge:
        await publish(nc, range(1, 11))
        await async_wait_until(lambda: exactly(rds, range(1, 11)), timeout=10)
        # When nats-server restarts (same port, same store)
        await asyncio.to_thread(nats_server.restart)
        await async_wait_until(lambda: nc.is_connected and bridge.connection.connected, timeout=15)
        await publish(nc, range(11, 21))
        # Then the bridge pulls again by itself
        await async_wait_until(lambda: exactly(rds, range(1, 21)), timeout=15, message="no resume after restart")
        await async_wait_until(lambda: acked_up_to(nc, 20), timeout=10)
        assert bridge.metrics.registry.get_sample_value("fechatter_notify_bridge_nats_reconnects_total") >= 1
    await rds.aclose()


async def test_a_consumer_deleted_while_running_is_recreated(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS
) -> None:
    settings = bridge_settings(nats_server.url, redis_server.url)
    rds = aioredis.Redis.from_url(redis_server.url)
    async with running_bridge(settings) as bridge:
        await publish(nc, range(1, 11))
        await async_wait_until(lambda: exactly(rds, range(1, 11)), timeout=10)
        # When an operator deletes the durable
        await nc.jetstream().delete_consumer(STREAM, DURABLE)
        # Then the bridge re-creates it and goes on; the replayed history is deduplicated
        await async_wait_until(lambda: bridge.metrics.registry.get_sample_value(
            "fechatter_notify_bridge_consumer_recoveries_total", {"consumer": DURABLE, "outcome": "ok"}), timeout=15)
        await publish(nc, range(11, 21))
        await async_wait_until(lambda: exactly(rds, range(1, 21)), timeout=15)
        await async_wait_until(lambda: acked_up_to(nc, 20), timeout=10)
    await rds.aclose()


async def test_two_bridges_on_one_durable_and_queue_group_enqueue_every_event_once(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS
) -> None:
    settings = bridge_settings(nats_server.url, redis_server.url)
    rds = aioredis.Redis.from_url(redis_server.url)
    async with running_bridge(settings) as one, running_bridge(settings) as two:
        # When 300 JetStream events and 300 core events arrive
        await publish(nc, range(1, 301))
        for user in range(1, 301):  # user ids are positive: 0 would be an invalid_id dead letter
            await nc.publish("fechatter.realtime.chat.42.typing", typing(user))
        await nc.flush()
        await async_wait_until(lambda: exactly(rds, range(1, 301)), timeout=20)

        async def realtime_users() -> Counter[int] | None:
            users = Counter(m["args"][0]["user_id"] for m in await queued_messages(rds, NS, "realtime"))
            return users if sum(users.values()) >= 300 else None

        users = await async_wait_until(realtime_users, timeout=10)
        await async_wait_until(lambda: acked_up_to(nc, 300), timeout=10)
        shares = [b.metrics.registry.get_sample_value("fechatter_notify_bridge_events_fetched_total",
                                                      {"consumer": "core"}) or 0 for b in (one, two)]
    # Then each is enqueued exactly once, and the core events were shared, not copied
    assert users == Counter(range(1, 301))
    assert sum(shares) == 300
    await rds.aclose()


async def test_a_message_that_reaches_max_deliver_becomes_a_dead_letter(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS
) -> None:
    # Given a durable with max_deliver 2 and a message delivered twice without an ack (a crashing consumer)
    consumer = {**TEST_CONSUMER, "max_deliver": 2, "ack_wait": "1500ms"}
    settings: Settings = bridge_settings(nats_server.url, redis_server.url, {
        "redis": {"socket_timeout": "200ms"}, "jetstream": {"consumers": [consumer]}})
    api = JetStreamApi(nc)
    await api.stream_create(stream_config(settings.jetstream.streams[0]))
    await api.consumer_create(STREAM, consumer_config(settings.jetstream.consumers[0]))
    await nc.jetstream().publish("fechatter.message.created", created(7), headers={"Nats-Msg-Id": "poison"})
    sub = await nc.jetstream().pull_subscribe("", durable=DURABLE, stream=STREAM)
    replies: list[str] = []
    for _ in range(2):
        async def one_delivery() -> bool:
            try:
                replies.extend(m.reply for m in await sub.fetch(1, timeout=0.5))
            except TimeoutError:  # nats-py raises its own, or asyncio.TimeoutError when the deadline runs out
                return False
            return True

        await async_wait_until(one_delivery, timeout=5, interval=0.1)
    await sub.unsubscribe()
    rds = aioredis.Redis.from_url(redis_server.url)
    # When the bridge runs
    async with running_bridge(settings):
        letters = await async_wait_until(lambda: rds.xrange(f"{NS}:dead-letters"), timeout=10,
                                         message="no dead letter from the advisory")
    # Then the advisory's message is a dead letter with the original payload, and no job exists
    (_, fields), = letters
    assert fields[b"code"] == b"max_deliveries"
    assert fields[b"data"] == created(7)
    assert json.loads(fields[b"headers"])["Nats-Msg-Id"] == "poison"
    assert (fields[b"seq"], fields[b"delivered"]) == (b"1", b"2")
    # and the time the stream stored it, read back by sequence, is the ts its deliveries carried: a replay
    # rebuilds the identity the pull path gives the event (bridge/batch.py event_identity)
    stored = reply_metadata(replies[-1])
    assert stored is not None and fields[b"ts"] == str(stored[3]).encode()
    assert await rds.get(f"{NS}:bridge:dedupe:{STREAM}:1:{stored[3]}:max_deliveries") == b"dead-letter"
    assert await queued_messages(rds, NS, "domain") == []
    await rds.aclose()


async def test_a_missed_idle_heartbeat_is_counted_recovered_and_marks_not_ready_after_n(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS
) -> None:
    # Given heartbeat 1 s and not-ready after 2 misses in a row
    settings = bridge_settings(nats_server.url, redis_server.url, {"jetstream": {"max_missed_heartbeats": 2}})
    rds = aioredis.Redis.from_url(redis_server.url)
    async with running_bridge(settings) as bridge:
        puller = bridge.pull_consumers[0]
        await async_wait_until(lambda: puller.statuses_seen.get(100, 0) >= 1, timeout=5)
        # When everything the server sends to the pull inbox is lost (a half-open connection
        # or a pull request the server forgot look exactly like this from the client)
        subscription = puller._sub
        assert subscription is not None
        deliver = subscription._cb

        async def lost(msg: Any) -> None:
            return None

        subscription._cb = lost
        missed = lambda: bridge.metrics.registry.get_sample_value(  # noqa: E731
            "fechatter_notify_bridge_missed_heartbeats_total", {"consumer": DURABLE}) or 0
        # Then each 2 x heartbeat of silence is one miss, the consumer is checked and a fresh pull sent
        await async_wait_until(lambda: missed() >= 2, timeout=10)
        checks = await bridge.readiness()
        # (under load a third miss may already have happened: the count only grows while silent)
        assert re.search(r"missed [2-9] idle heartbeats in a row", checks[f"consumer {STREAM}/{DURABLE}"] or "")
        # (each miss's consumer check, or the open circuit's probe, completes a moment after the miss is counted)
        await async_wait_until(lambda: (bridge.metrics.registry.get_sample_value(
            "fechatter_notify_bridge_consumer_recoveries_total", {"consumer": DURABLE, "outcome": "ok"}) or 0) >= 2,
            timeout=10, message="the consumer was not checked after each miss")
        # When the inbox hears the server again, the bridge is ready and delivers
        subscription._cb = deliver
        await async_wait_until(lambda: puller.missed_in_a_row == 0, timeout=5)
        await publish(nc, range(1, 6))
        await async_wait_until(lambda: exactly(rds, range(1, 6)), timeout=10)

        async def consumer_ready() -> bool:
            return (await bridge.readiness())[f"consumer {STREAM}/{DURABLE}"] is None

        await async_wait_until(consumer_ready, timeout=5)
    await rds.aclose()


async def test_the_first_connect_retries_until_nats_answers(nats_server: NatsServer, redis_server: RedisServer) -> None:
    # Given nats-server down when the bridge starts
    await asyncio.to_thread(nats_server.stop)
    settings = bridge_settings(nats_server.url, redis_server.url)
    rds = aioredis.Redis.from_url(redis_server.url)

    async def start_later() -> None:
        await asyncio.sleep(0.5)  # a few failed attempts first
        await asyncio.to_thread(nats_server.start)

    starter = asyncio.get_running_loop().create_task(start_later())
    # Then the bridge keeps trying with backoff and starts once the server is up
    async with running_bridge(settings) as bridge:
        await starter
        nc = await nats.connect(nats_server.url)
        await publish(nc, range(1, 4))
        await async_wait_until(lambda: exactly(rds, range(1, 4)), timeout=10)
        await nc.close()
        assert bridge.connection.connected
    await rds.aclose()


async def test_an_enqueue_slower_than_ack_wait_keeps_its_messages_with_in_progress_acks(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS
) -> None:
    # Given ack_wait 2 s and a Redis timeout long enough for a 3 s stall. (The config check
    # refuses this pair, because an enqueue should never outlive ack_wait; +WPI is the safety
    # net for when one does anyway, so the check is bypassed here.)
    valid = bridge_settings(nats_server.url, redis_server.url, {
        "redis": {"socket_timeout": "5s"}, "jetstream": {"consumers": [{**TEST_CONSUMER, "ack_wait": "12s"}]}})
    consumer = valid.jetstream.consumers[0].model_copy(update={"ack_wait": 2.0})
    settings = valid.model_copy(update={"jetstream": valid.jetstream.model_copy(update={"consumers": [consumer]})})
    rds = aioredis.Redis.from_url(redis_server.url)
    async with running_bridge(settings) as bridge:
        await publish(nc, range(1, 2))
        await async_wait_until(lambda: exactly(rds, range(1, 2)), timeout=10)
        # When Redis stalls every script for 3 s while the next event is being enqueued
        await rds.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
        await publish(nc, range(2, 3))
        # Then the bridge says the enqueue is slow, keeps the message with +WPI, and acks it once
        await async_wait_until(lambda: exactly(rds, range(1, 3)), timeout=15, message="event lost or duplicated")
        await async_wait_until(lambda: acked_up_to(nc, 2), timeout=10)
        info = json.loads((await nc.request(f"$JS.API.CONSUMER.INFO.{STREAM}.{DURABLE}", b"", timeout=2)).data)
        assert info["num_redelivered"] == 0
        assert info["delivered"]["consumer_seq"] == 2  # a redelivery would have been a third delivery
        acked = bridge.metrics.registry.get_sample_value("fechatter_notify_bridge_events_acked_total",
                                                         {"consumer": DURABLE})
        assert acked == 2
    await rds.aclose()
