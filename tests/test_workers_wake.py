"""Idle workers pick up a job within milliseconds when woken, and still by polling when not."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import pytest
import redis

from events import Job
from events.inbox import inbox_key, members_key
from events.queues import queue_key
from settings.model import Settings
from tests.servers import RedisServer, wait_until
from tests.test_workers_support import (
    enqueue,
    make_settings,
    parse,
    running_worker,
    wait_drained,
    wait_subscribed,
)
from workers.broker import build_broker
from workers.metrics import WorkerMetrics


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    return make_settings(redis_server.url)


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = redis_server.client()
    yield c
    c.close()


def receipt(user_id: int = 9) -> Job:
    """A realtime job whose notification is stored (typing is live only): 9 read a message of chat 42."""
    return parse("fechatter.realtime.chat.42.read", {"MessageRead": {
        "message_id": 1234, "chat_id": 42, "reader_id": user_id, "read_at": "2025-06-27T02:46:01Z"}})


def pickup_latencies(client: redis.Redis, settings: Settings, samples: int, *, wake: bool) -> list[float]:
    """Seconds from enqueue to inbox entry, each sample after the worker went idle."""
    key = inbox_key("t", 7)
    latencies = []
    for n in range(samples):
        time.sleep(0.3 + (n % 3) * 0.2)  # idle long enough for the consumer's backoff to grow
        began = time.perf_counter()
        enqueue(client, settings, receipt(), wake=wake)
        wait_until(lambda n=n: client.xlen(key) > n, timeout=5, interval=0.0005)
        latencies.append(time.perf_counter() - began)
    return latencies


def test_an_idle_worker_picks_up_a_woken_job_within_milliseconds(client: redis.Redis, settings: Settings) -> None:
    client.sadd(members_key("t", 42), 7, 9)
    with running_worker(settings, ["realtime"]):
        enqueue(client, settings, receipt())  # warm-up (script load, connections)
        wait_until(lambda: client.xlen(inbox_key("t", 7)) == 1)
        client.delete(inbox_key("t", 7))
        latencies = pickup_latencies(client, settings, 12, wake=True)
    # Stock dramatiq would wait 50-100 % of a 1 s backoff here.
    assert statistics.median(latencies) < 0.05, latencies
    assert max(latencies) < 0.25, latencies


def test_without_a_wake_publish_the_job_is_still_picked_up_by_polling(
    client: redis.Redis, settings: Settings
) -> None:
    client.sadd(members_key("t", 42), 7, 9)
    with running_worker(settings, ["realtime"]):
        latencies = pickup_latencies(client, settings, 3, wake=False)
    assert max(latencies) < 2.5, latencies


def test_the_wake_listener_comes_back_after_redis_restarts(
    redis_server: RedisServer, client: redis.Redis, settings: Settings
) -> None:
    with running_worker(settings, ["realtime"]):
        redis_server.restart()  # no persistence: the cache and queues are empty again
        wait_subscribed(client, settings, ["realtime"])
        client.sadd(members_key("t", 42), 7, 9)
        latencies = pickup_latencies(client, settings, 4, wake=True)
        wait_drained(client, settings)
    assert statistics.median(latencies) < 0.05, latencies


def test_stock_polling_mode_still_delivers(client: redis.Redis, settings: Settings) -> None:
    # wake=False is the benchmark's baseline: dramatiq's own consumer, same actors.
    client.sadd(members_key("t", 42), 7, 9)
    with running_worker(settings, ["realtime"], wake=False) as runtime:
        assert runtime.broker.wake is None
        enqueue(client, settings, receipt())
        wait_until(lambda: client.xlen(inbox_key("t", 7)) == 1, timeout=5)


def test_a_closed_consumer_requeues_the_jobs_it_fetched_but_never_handed_out(
        client: redis.Redis, settings: Settings) -> None:
    # dramatiq's consumer thread stops between two messages: the rest of the fetched page must go
    # back to the queue at once, not wait in this broker's acks for the heartbeat recovery.
    ids = enqueue(client, settings, *(receipt(user) for user in (9, 10, 11, 12, 13)))
    broker = build_broker(settings, WorkerMetrics())
    try:
        consumer = broker.consume("realtime", prefetch=4, timeout=100)
        taken = next(consumer)
        assert taken is not None and taken.message_id == ids[0]
        assert client.llen(queue_key("t", "realtime")) == 1  # four fetched, one left
        consumer.close()
        waiting = [i.decode() for i in client.lrange(queue_key("t", "realtime"), 0, -1)]
        assert sorted(waiting) == sorted(ids[1:]), waiting
    finally:
        broker.close()
