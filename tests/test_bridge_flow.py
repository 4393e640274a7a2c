"""The bridge end to end against real servers: events in, dramatiq jobs out, dead letters, acks.

Each test runs a bridge in-process (an asyncio task) against a fresh nats-server and
redis-server from the harness, publishes Fechatter payloads, and reads Redis with plain
clients: the queues in dramatiq's layout, the dead-letter stream, the consumer's ack state.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS

from bridge.testing import bridge_settings, queued_messages, running_bridge
from settings.model import Settings
from tests.servers import NatsServer, RedisServer, async_wait_until
from tests.test_events_parse import C_CREATED, L_CREATED, N_NEW_MESSAGE, R_MESSAGE_RECEIVED, U_CREATED

NS = "test-notify"
STREAM = "FECHATTER_EVENTS"
DURABLE = "notification_processor"

TYPING = b'{"TypingStarted":{"chat_id":42,"user_id":9,"user_name":"Bob Li"}}'
PRESENCE = b'{"UserPresence":{"user_id":9,"status":"away","last_seen":"2025-06-27T02:47:00.000512339+00:00"}}'
READ = b'{"MessageRead":{"message_id":1234,"chat_id":42,"reader_id":9,"read_at":"2025-06-27T02:46:01.120394512+00:00"}}'
BROADCAST = b'{"target_users":[7,9],"event_data":{"type":"maintenance","minutes":5}}'
L_JOINED = b'{"chat_id":42,"user_id":11,"joined_at":"2025-06-27T02:45:46.782538Z"}'


@pytest.fixture
def settings(nats_server: NatsServer, redis_server: RedisServer) -> Settings:
    return bridge_settings(nats_server.url, redis_server.url)


@pytest.fixture
async def rds(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def consumer_state(nc: NATS) -> dict[str, Any]:
    msg = await nc.request(f"$JS.API.CONSUMER.INFO.{STREAM}.{DURABLE}", b"", timeout=2)
    info: dict[str, Any] = json.loads(msg.data)
    return info


async def all_settled(nc: NATS, count: int) -> bool:
    info = await consumer_state(nc)
    return bool(info["ack_floor"]["stream_seq"] >= count and info["num_ack_pending"] == 0)


async def test_every_dialect_becomes_its_job_on_its_lanes_queue(settings: Settings, nc: NATS,
                                                                 rds: aioredis.Redis) -> None:
    # Given a running bridge
    async with running_bridge(settings):
        js = nc.jetstream()
        # When Fechatter publishes each dialect on JetStream and the realtime subjects on core NATS
        for subject, data in [
            ("fechatter.message.created", C_CREATED),
            ("fechatter.message.new", N_NEW_MESSAGE),
            ("fechatter.messages.message.created.v1", U_CREATED),
            ("fechatter.messages.created", L_CREATED),
            ("fechatter.chats.member.joined", L_JOINED),
            ("fechatter.broadcast", BROADCAST),
        ]:
            await js.publish(subject, data)
        for subject, data in [
            ("fechatter.realtime.chat.42", R_MESSAGE_RECEIVED),
            ("fechatter.realtime.chat.42.typing", TYPING),
            ("fechatter.realtime.user.9.presence", PRESENCE),
            ("fechatter.realtime.chat.42.read", READ),
        ]:
            await nc.publish(subject, data)
        await nc.flush()

        # Then each becomes its job on the queue of its lane, and every JetStream message is acked
        async def queues() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
            domain = await queued_messages(rds, NS, "domain")
            realtime = await queued_messages(rds, NS, "realtime")
            return (domain, realtime) if len(domain) == 7 and len(realtime) == 3 else None

        domain, realtime = await async_wait_until(queues, timeout=10, message="jobs never all enqueued")
        await async_wait_until(lambda: all_settled(nc, 6), timeout=5, message="not every event acked")
    by_subject = {m["args"][0]["origin"]["subject"]: m for m in domain + realtime}
    assert {s: (m["queue_name"], m["actor_name"], m["args"][0]["kind"]) for s, m in by_subject.items()} == {
        "fechatter.message.created": ("domain", "new_message", "NewMessage"),
        "fechatter.message.new": ("domain", "new_message", "NewMessage"),
        "fechatter.messages.message.created.v1": ("domain", "new_message", "NewMessage"),
        "fechatter.messages.created": ("domain", "new_message", "NewMessage"),
        "fechatter.chats.member.joined": ("domain", "member_joined", "MemberJoined"),
        "fechatter.broadcast": ("domain", "broadcast", "Broadcast"),
        "fechatter.realtime.chat.42": ("domain", "new_message", "NewMessage"),
        "fechatter.realtime.chat.42.typing": ("realtime", "typing_started", "TypingStarted"),
        "fechatter.realtime.user.9.presence": ("realtime", "user_presence", "UserPresence"),
        "fechatter.realtime.chat.42.read": ("realtime", "messages_read", "MessagesRead"),
    }
    created = by_subject["fechatter.message.created"]
    assert created["args"][0]["origin"]["stream"] == STREAM
    assert created["args"][0]["origin"]["stream_seq"] == 1
    assert created["options"]["redis_message_id"] == created["message_id"]
    assert by_subject["fechatter.realtime.chat.42"]["args"][0]["origin"]["stream"] is None


async def test_ephemeral_events_carry_their_expiry_into_the_job(nats_server: NatsServer, redis_server: RedisServer,
                                                                nc: NATS, rds: aioredis.Redis) -> None:
    # Given typing and presence lifetimes of 3 s and 30 s
    settings = bridge_settings(nats_server.url, redis_server.url,
                               {"realtime": {"typing_ttl": "3s", "presence_ttl": "30s"}})
    async with running_bridge(settings):
        # When a typing and a presence event arrive
        await nc.publish("fechatter.realtime.chat.42.typing", TYPING)
        await nc.publish("fechatter.realtime.user.9.presence", PRESENCE)
        await nc.flush()
        jobs = await async_wait_until(lambda: _n_jobs(rds, "realtime", 2), timeout=5)
    # Then each job expires that long after it was received
    for job in (m["args"][0] for m in jobs):
        received = datetime.fromisoformat(job["origin"]["received_at"])
        ttl = (datetime.fromisoformat(job["expires_at"]) - received).total_seconds()
        assert ttl == {"TypingStarted": 3.0, "UserPresence": 30.0}[job["kind"]]


async def test_a_core_burst_is_enqueued_in_batches_formed_while_an_enqueue_is_in_flight(
        settings: Settings, nc: NATS, rds: aioredis.Redis) -> None:
    # Given the default batch window of 0 (no lingering: a lone event is enqueued at once)
    assert settings.realtime.batch_window == 0
    events = 2000
    async with running_bridge(settings) as bridge:
        # When a burst of typing events arrives faster than one enqueue round trip
        for n in range(events):
            body = {"TypingStarted": {"chat_id": 42, "user_id": 9, "user_name": f"u{n}"}}
            await nc.publish("fechatter.realtime.chat.42.typing", json.dumps(body).encode())
        await nc.flush()
        await async_wait_until(lambda: _n_jobs(rds, "realtime", events), timeout=20)
        batches = bridge.metrics.batch_size.collect()[0].samples
    # Then every event became a job, in far fewer batches than events
    count = next(s.value for s in batches if s.name.endswith("_count"))
    total = next(s.value for s in batches if s.name.endswith("_sum"))
    assert total == events
    assert count < events / 4, count


async def _n_jobs(rds: aioredis.Redis, queue: str, n: int) -> list[dict[str, Any]] | None:
    jobs = await queued_messages(rds, NS, queue)
    return jobs if len(jobs) >= n else None


async def test_bad_payloads_become_dead_letters_with_reasons_and_are_termed(settings: Settings, nc: NATS,
                                                                           rds: aioredis.Redis) -> None:
    async with running_bridge(settings) as bridge:
        js = nc.jetstream()
        # When JetStream carries a non-JSON payload, a subject without a route and an invalid payload
        await js.publish("fechatter.message.new", b"\xff not json", headers={"Nats-Msg-Id": "bad-1"})
        await js.publish("fechatter.chat.something_else", b"{}")
        await js.publish("fechatter.message.created", b'{"version":"V1","kind":"Created"}')
        # and core NATS carries a non-JSON realtime payload
        await nc.publish("fechatter.realtime.chat.42.typing", b"nope")
        await nc.flush()
        letters = await async_wait_until(lambda: _n_letters(rds, 4), timeout=10, message="dead letters missing")
        # Then every JetStream message is settled without a redelivery (termed, not nak'd)
        await async_wait_until(lambda: all_settled(nc, 3), timeout=5)
        info = await consumer_state(nc)
        assert info["num_redelivered"] == 0 and info["num_pending"] == 0
        assert not await queued_messages(rds, NS, "domain")
        dead = bridge.metrics.registry.get_sample_value
    by_subject = {f[b"subject"].decode(): f for _, f in letters}
    assert {s: f[b"code"].decode() for s, f in by_subject.items()} == {
        "fechatter.message.new": "not_json",
        "fechatter.chat.something_else": "no_route",
        "fechatter.message.created": "invalid_payload",
        "fechatter.realtime.chat.42.typing": "not_json",
    }
    bad = by_subject["fechatter.message.new"]
    assert bad[b"data"] == b"\xff not json"  # raw bytes, unchanged
    assert json.loads(bad[b"headers"]) == {"Nats-Msg-Id": "bad-1"}
    assert (bad[b"stream"], bad[b"seq"], bad[b"delivered"], bad[b"consumer"]) == (
        STREAM.encode(), b"1", b"1", DURABLE.encode())
    assert b"fechatter.message.new" in bad[b"reason"]
    assert by_subject["fechatter.realtime.chat.42.typing"][b"consumer"] == b"core"
    assert dead("fechatter_notify_bridge_dead_letters_total", {"consumer": DURABLE, "code": "not_json"}) == 1
    assert dead("fechatter_notify_bridge_events_termed_total", {"consumer": DURABLE}) == 3


async def _n_letters(rds: aioredis.Redis, n: int) -> list[Any] | None:
    letters = await rds.xrange(f"{NS}:dead-letters")
    return letters if len(letters) >= n else None


async def test_a_redelivered_event_is_acked_but_not_enqueued_twice(settings: Settings, nc: NATS,
                                                                  rds: aioredis.Redis) -> None:
    # Given an event the bridge enqueued and acked
    async with running_bridge(settings) as bridge:
        await nc.jetstream().publish("fechatter.message.created", C_CREATED)
        await async_wait_until(lambda: _n_jobs(rds, "domain", 1), timeout=5)
        await async_wait_until(lambda: all_settled(nc, 1), timeout=5)
    # When the consumer is reset so the same stream sequence is delivered again (a lost ack)
    js = nc.jetstream()
    await js.delete_consumer(STREAM, DURABLE)
    async with running_bridge(settings) as bridge:
        await async_wait_until(lambda: all_settled(nc, 1), timeout=5, message="redelivery not acked")
        # Then it is acked and counted as deduplicated, and the queue still holds one job
        assert len(await queued_messages(rds, NS, "domain")) == 1
        assert bridge.metrics.registry.get_sample_value(
            "fechatter_notify_bridge_jobs_deduplicated_total", {"consumer": DURABLE, "job_type": "NewMessage"}) == 1


async def test_pull_requests_never_violate_the_heartbeat_rule(nats_server: NatsServer, redis_server: RedisServer,
                                                              nc: NATS, rds: aioredis.Redis) -> None:
    # Given a heartbeat configured at exactly half the expiry, and a busy then idle consumer
    settings = bridge_settings(nats_server.url, redis_server.url, {"jetstream": {"consumers": [
        {"durable": DURABLE, "stream": STREAM, "ack_wait": "3s", "idle_heartbeat": "1s", "expires": "2s",
         "batch": 10, "max_in_flight": 20}]}})
    async with running_bridge(settings) as bridge:
        js = nc.jetstream()
        for i in range(60):
            await js.publish("fechatter.message.created", C_CREATED, headers={"Nats-Msg-Id": f"m{i}"})
        await async_wait_until(lambda: all_settled(nc, 60), timeout=10)
        puller = bridge.pull_consumers[0]
        # When requests expire idle a few times
        await async_wait_until(lambda: puller.statuses_seen.get(408, 0) >= 2, timeout=10)
    # Then the server sent heartbeats and expiries, and never a 400 (heartbeat value too large)
    assert puller.statuses_seen.get(100, 0) >= 1
    assert 400 not in puller.statuses_seen
    assert len(await queued_messages(rds, NS, "domain")) == 60


async def test_health_and_metrics_endpoints_answer(settings: Settings) -> None:
    import aiohttp

    async with running_bridge(settings) as bridge, aiohttp.ClientSession() as http:
        base = "http://127.0.0.1"
        async with http.get(f"{base}:{bridge.http.health_port}/healthz") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "alive"

        async def ready() -> bool:
            async with http.get(f"{base}:{bridge.http.health_port}/readyz") as resp:
                return resp.status == 200 and bool((await resp.json())["ready"])

        await async_wait_until(ready, timeout=5)
        async with http.get(f"{base}:{bridge.http.metrics_port}/metrics") as resp:
            text = await resp.text()
        assert "fechatter_notify_bridge_events_fetched_total" in text and "bridge_circuit_open 0.0" in text


async def test_readyz_reports_redis_down_with_the_reason(nats_server: NatsServer, redis_server: RedisServer) -> None:
    import aiohttp

    settings = bridge_settings(nats_server.url, redis_server.url)
    async with running_bridge(settings) as bridge, aiohttp.ClientSession() as http:
        redis_server.stop()
        url = f"http://127.0.0.1:{bridge.http.health_port}/readyz"

        async def not_ready() -> dict[str, Any] | None:
            async with http.get(url) as resp:
                body: dict[str, Any] = await resp.json()
                return body if resp.status == 503 else None

        body = await async_wait_until(not_ready, timeout=5)
        assert body["ready"] is False
        assert any(reason.startswith("redis: not answering") for reason in body["reasons"])


async def test_an_oversized_payload_is_dead_lettered_undecoded_with_its_prefix_and_size(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS, rds: aioredis.Redis
) -> None:
    # Given a 4 KiB limit
    settings = bridge_settings(nats_server.url, redis_server.url, {"events": {"max_payload_bytes": 4096}})
    content = "x" * 20_000
    big_message = N_NEW_MESSAGE.replace(b'"content":"Hi team"', json.dumps({"content": content})[1:-1].encode())
    big_typing = json.dumps({"TypingStarted": {"chat_id": 42, "user_id": 9, "user_name": content}}).encode()
    async with running_bridge(settings) as bridge:
        js = nc.jetstream()
        # When an oversized event arrives on JetStream and on core NATS, beside ones within the limit
        await js.publish("fechatter.message.new", big_message)
        await js.publish("fechatter.message.new", N_NEW_MESSAGE)
        await nc.publish("fechatter.realtime.chat.42.typing", big_typing)
        await nc.publish("fechatter.realtime.chat.42.typing", TYPING)
        await nc.flush()
        letters = await async_wait_until(lambda: _n_letters(rds, 2), timeout=10, message="dead letters missing")
        await async_wait_until(lambda: all_settled(nc, 2), timeout=5)
        info = await consumer_state(nc)
        # Then the oversized JetStream copy is termed (no redelivery) and the small events are jobs
        assert info["num_redelivered"] == 0 and info["num_pending"] == 0
        assert len(await queued_messages(rds, NS, "domain")) == 1
        assert len(await queued_messages(rds, NS, "realtime")) == 1
        dead = bridge.metrics.registry.get_sample_value
    by_subject = {f[b"subject"].decode(): f for _, f in letters}
    assert set(by_subject) == {"fechatter.message.new", "fechatter.realtime.chat.42.typing"}
    for subject, payload in (("fechatter.message.new", big_message), ("fechatter.realtime.chat.42.typing", big_typing)):
        letter = by_subject[subject]
        # And each dead letter names size and limit, keeps only a 4 KiB prefix, and the full size
        assert letter[b"code"] == b"payload_too_large"
        assert f"payload of {len(payload)} bytes".encode() in letter[b"reason"]
        assert b"events.max_payload_bytes (4096)" in letter[b"reason"]
        assert letter[b"data"] == payload[:4096]
        assert letter[b"size"] == str(len(payload)).encode()
    assert dead("fechatter_notify_bridge_dead_letters_total", {"consumer": DURABLE, "code": "payload_too_large"}) == 1
    assert dead("fechatter_notify_bridge_dead_letters_total", {"consumer": "core", "code": "payload_too_large"}) == 1


async def test_an_event_naming_a_non_positive_id_is_dead_lettered_not_delivered(settings: Settings, nc: NATS,
                                                                                rds: aioredis.Redis) -> None:
    async with running_bridge(settings):
        js = nc.jetstream()
        # When a message names chat 0 (JetStream) and a typing event names user -3 (core NATS)
        await js.publish("fechatter.message.new", N_NEW_MESSAGE.replace(b'"chat_id":42', b'"chat_id":0'))
        await nc.publish("fechatter.realtime.chat.42.typing", TYPING.replace(b'"user_id":9', b'"user_id":-3'))
        await nc.flush()
        letters = await async_wait_until(lambda: _n_letters(rds, 2), timeout=10, message="dead letters missing")
        await async_wait_until(lambda: all_settled(nc, 1), timeout=5)
        # Then neither became a job, and the dead letters name the id and where it was
        assert not await queued_messages(rds, NS, "domain")
        assert not await queued_messages(rds, NS, "realtime")
    reasons = {f[b"subject"].decode(): (f[b"code"], f[b"reason"].decode()) for _, f in letters}
    assert reasons["fechatter.message.new"][0] == b"invalid_id"
    assert "id 0 at $.chat_id" in reasons["fechatter.message.new"][1]
    assert reasons["fechatter.realtime.chat.42.typing"][0] == b"invalid_id"
    assert "id -3 at $.TypingStarted.user_id" in reasons["fechatter.realtime.chat.42.typing"][1]
