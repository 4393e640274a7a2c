"""deliver.lua through :class:`workers.delivery.Delivery`: markers, capped inboxes, chunks, NOSCRIPT."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from events import parse_event
from events.inbox import delivered_key, inbox_key, live_channel, members_key
from tests.servers import RedisServer, wait_until
from tests.test_workers_support import counter, make_settings
from workers.connections import ThreadConnections
from workers.delivery import CHUNK, Delivered, Delivery, job_identity, notification_key
from workers.metrics import WorkerMetrics

NOTE = {"type": "typing_started", "chat_id": 42, "user_id": 9, "user_name": "Bob Li"}


def entries(result: Delivered | None) -> dict[int, str]:
    assert result is not None
    return result.entries


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = redis_server.client()
    yield c
    c.close()


def delivery(redis_server: RedisServer, client: redis.Redis, **limits: float) -> Delivery:
    settings = make_settings(redis_server.url, delivery=dict(limits))
    return Delivery(ThreadConnections(client), "t", settings.delivery, WorkerMetrics())


def test_a_second_delivery_with_the_same_key_writes_nothing(redis_server: RedisServer, client: redis.Redis) -> None:
    d = delivery(redis_server, client)
    first = d.deliver(NOTE, users=[7, 11], key="k1", ttl_s=60)
    second = d.deliver(NOTE, users=[7, 11, 13], key="k1", ttl_s=60)
    assert first is not None and second is not None
    assert sorted(first.entries) == [7, 11] and first.duplicates == []
    assert sorted(second.entries) == [13] and second.duplicates == [7, 11]
    assert client.xlen(inbox_key("t", 7)) == 1
    # The marker holds the entry id and expires
    assert client.get(delivered_key("t", 7, "k1")) == first.entries[7].encode()
    assert 0 < client.pttl(delivered_key("t", 7, "k1")) <= 60_000


def test_skipped_users_get_nothing_and_are_skipped_by_later_copies(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    d = delivery(redis_server, client)
    d.deliver(NOTE, users=[9, 11], key="42:1", ttl_s=60, skip=[7], mark_skipped=True)
    later = d.deliver(NOTE, users=[7, 9, 11], key="42:1", ttl_s=60)
    assert later is not None and later.entries == {} and later.duplicates == [7, 9, 11]
    assert client.xlen(inbox_key("t", 7)) == 0
    # Without mark_skipped (keys no other copy shares) the author is only left out
    d.deliver(NOTE, users=[9], key="own", ttl_s=60, skip=[7])
    assert not client.exists(delivered_key("t", 7, "own"))


def test_a_chat_audience_is_read_from_the_cache_inside_the_script(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    d = delivery(redis_server, client)
    # Unknown chat: nothing written, the caller is told
    assert d.deliver(NOTE, chat=42, users=[13], key="k", ttl_s=60) is None
    assert client.xlen(inbox_key("t", 13)) == 0
    # Cached chat: its members plus the extra users, minus the skipped
    client.sadd(members_key("t", 42), 7, 9, 11)
    result = d.deliver(NOTE, chat=42, users=[13], skip=[9], key="k", ttl_s=60)
    assert result is not None and sorted(result.entries) == [7, 11, 13]
    # A chat larger than one script call is delivered in chunks
    client.sadd(members_key("t", 43), *range(1, CHUNK + 10))
    big = d.deliver(NOTE, chat=43, key="big", ttl_s=60)
    assert big is not None and sorted(big.entries) == list(range(1, CHUNK + 10))


def test_inboxes_are_capped_and_expire(redis_server: RedisServer, client: redis.Redis) -> None:
    d = delivery(redis_server, client, inbox_max_len=10, inbox_max_age=3600)
    for n in range(500):
        d.deliver(NOTE, users=[7], key=f"k{n}", ttl_s=60)
    # Trimming is approximate (whole radix-tree nodes of 100 entries), never unbounded
    assert 10 <= client.xlen(inbox_key("t", 7)) <= 10 + 100
    assert 0 < client.pttl(inbox_key("t", 7)) <= 3600_000


def test_entries_older_than_the_age_limit_are_trimmed(redis_server: RedisServer, client: redis.Redis) -> None:
    # Given 300 entries written "long ago" (ids far in the past)
    key = inbox_key("t", 7)
    for n in range(1, 301):
        client.xadd(key, {"n": "{}"}, id=f"{n}-0")
    d = delivery(redis_server, client, inbox_max_age=60)
    # When new notifications keep arriving (the age trim runs on about one delivery in ten)
    def trimmed() -> bool:
        d.deliver(NOTE, users=[7], key=str(time.perf_counter_ns()), ttl_s=60)
        return bool(client.xlen(key) <= 100 + 101)

    wait_until(trimmed, timeout=10, interval=0.002, message="old entries never trimmed")
    # Then the old entries go (node-granular, so at most one partial node may stay)
    assert int(client.xrange(key, count=1)[0][0].split(b"-")[0]) > 300 or client.xlen(key) <= 201


def test_a_large_fan_out_is_chunked_and_complete(redis_server: RedisServer, client: redis.Redis) -> None:
    metrics = WorkerMetrics()
    d = Delivery(ThreadConnections(client), "t", make_settings(redis_server.url).delivery, metrics)
    users = range(1, 2 * CHUNK + 42)
    result = d.deliver(NOTE, users=users, key="big", ttl_s=60)
    assert result is not None and sorted(result.entries) == list(users)
    assert counter(metrics.notifications, "typing_started") == len(users)
    again = d.deliver(NOTE, users=users, key="big", ttl_s=60)
    assert again is not None and again.entries == {} and len(again.duplicates) == len(users)
    assert counter(metrics.duplicates, "typing_started") == len(users)


def test_delivery_survives_a_script_cache_flush(redis_server: RedisServer, client: redis.Redis) -> None:
    d = delivery(redis_server, client)
    d.deliver(NOTE, users=[7], key="a", ttl_s=60)
    client.script_flush()
    assert sorted(entries(d.deliver(NOTE, users=[7, 9], key="b", ttl_s=60))) == [7, 9]
    client.script_flush()
    assert sorted(entries(d.deliver(NOTE, users=range(1, CHUNK + 2), key="c", ttl_s=60))) == list(range(1, CHUNK + 2))


def test_broadcast_types_do_not_grow_the_metric_labels(redis_server: RedisServer, client: redis.Redis) -> None:
    metrics = WorkerMetrics()
    d = Delivery(ThreadConnections(client), "t", make_settings(redis_server.url).delivery, metrics)
    d.deliver({"type": "anything-at-all"}, users=[7], key="x", ttl_s=60)
    assert counter(metrics.notifications, "broadcast") == 1


def test_a_live_only_notification_is_announced_to_each_recipient_and_stored_nowhere(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    d = delivery(redis_server, client)
    client.sadd(members_key("t", 42), 7, 9, 11)
    # Given user 7's inbox holding one stored notification
    d.deliver({"type": "message_read", "chat_id": 42, "user_id": 9, "message_ids": [1], "read_at": None},
              users=[7], key="r1", ttl_s=60)
    pubsub = client.pubsub()
    pubsub.subscribe(live_channel("t", 7), live_channel("t", 11))
    messages: list[dict[str, Any]] = []

    def collected(count: int) -> bool:
        while (message := pubsub.get_message(timeout=0.05)) is not None:
            messages.append(message)
        return len(messages) >= count

    wait_until(lambda: collected(2), message="no subscribe confirmation")
    # When typing is delivered live only to chat 42 but the typist, twice (a retry)
    for _ in range(2):
        result = d.deliver(NOTE, chat=42, skip=[9], key="", ttl_s=0, live_only=True)
        assert result is not None and result.entries == {} and result.duplicates == []
        assert result.announced == [7, 11]
    # Then both announcements reach both users with an empty id line, nothing else
    wait_until(lambda: collected(6), message="announcements missing")
    got = [(m["channel"].decode(), m["data"].decode()) for m in messages if m["type"] == "message"]
    assert sorted(channel for channel, _ in got) == sorted([live_channel("t", 7), live_channel("t", 11)] * 2)
    assert {payload for _, payload in got} == {
        '\n{"type":"typing_started","chat_id":42,"user_id":9,"user_name":"Bob Li"}'}
    # And no inbox grew, no marker was set
    assert client.xlen(inbox_key("t", 7)) == 1
    assert not client.exists(inbox_key("t", 11)) and not client.exists(inbox_key("t", 9))
    assert [k for k in client.scan_iter("t:delivered:*") if not k.endswith(b":r1")] == []
    pubsub.close()


def test_a_recreated_streams_event_at_an_old_sequence_is_not_taken_for_the_old_one() -> None:
    # An edit (deduplicated by its job identity, not by chat + message id) at stream sequence 1, in
    # two incarnations of the stream: the bridge's message ids differ (they hold the stored time).
    body = {"version": "V1", "kind": "Updated", "members": [7, 9], "occurred_at": "2025-06-27T02:45:46.790112345Z",
            "msg": {"id": 5, "chat_id": 42, "sender_id": 7, "content": "x", "files": [],
                    "created_at": "2025-06-27T02:45:46.782538Z", "idempotency_key": None}}
    job = parse_event("fechatter.message.updated", json.dumps(body).encode(), stream="S", stream_seq=1,
                      received_at=datetime.now(UTC))
    first, second = "0" * 31 + "1", "0" * 31 + "2"
    assert notification_key(job, first) != notification_key(job, second)
    assert notification_key(job, first) == notification_key(job, first)  # a redelivery: the same key
    assert job_identity(job, None) == "js:S:1"  # handed over without a message id
