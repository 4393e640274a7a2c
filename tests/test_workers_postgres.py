"""Membership cache fill from Fechatter's ``chat_members`` table in a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import redis

from events.inbox import chats_key, members_key
from settings.model import Settings
from tests.servers import RedisServer
from tests.test_workers_support import (
    N_MESSAGE,
    LiveChannels,
    counter,
    enqueue,
    inbox,
    make_settings,
    parse,
    running_worker,
    wait_drained,
)
from workers.metrics import WorkerMetrics

# Chat 42: 7 (sender), 9, 11 current; 13 left. Chat 43: 9 and 20. Chats 100..119: 50 + 51.
ROWS = [(42, 7, None), (42, 9, None), (42, 11, None), (42, 13, "2025-06-01T00:00:00Z"),
        (43, 9, None), (43, 20, None)] + [(c, u, None) for c in range(100, 120) for u in (50, 51)]


@pytest.fixture
def fechatter_db(postgres_url: str) -> str:
    """Fechatter's chat_members table, freshly filled."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS chat_members")
        conn.execute("CREATE TABLE chat_members (chat_id bigint NOT NULL, user_id bigint NOT NULL, "
                     "joined_at timestamptz NOT NULL DEFAULT now(), left_at timestamptz)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO chat_members (chat_id, user_id, left_at) VALUES (%s, %s, %s)", ROWS)
    return postgres_url


@pytest.fixture
def settings(redis_server: RedisServer, fechatter_db: str) -> Settings:
    return make_settings(redis_server.url, database={"url": fechatter_db, "pool_min": 0, "pool_max": 2})


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = redis_server.client()
    yield c
    c.close()


def test_an_unknown_chat_is_read_from_postgres_once_and_cached(client: redis.Redis, settings: Settings) -> None:
    metrics = WorkerMetrics()
    with running_worker(settings, metrics=metrics):
        # When a notify-flat message (no recipient list) arrives for chat 42, twice
        enqueue(client, settings, parse("fechatter.message.new", N_MESSAGE))
        wait_drained(client, settings)
        second = N_MESSAGE.replace(b'"message_id":1234', b'"message_id":1235')
        enqueue(client, settings, parse("fechatter.message.new", second))
        wait_drained(client, settings)
    # Then current members but the sender get both; the member who left gets nothing
    for user in (9, 11):
        assert [n["id"] for n in inbox(client, settings, user)] == [1234, 1235]
    assert inbox(client, settings, 7) == inbox(client, settings, 13) == []
    # And the table was read once; the cache holds the current members with a TTL
    assert counter(metrics.membership_fills, "chat") == 1
    assert client.smembers(members_key("t", 42)) == {b"7", b"9", b"11"}
    assert 0 < client.ttl(members_key("t", 42)) <= settings.delivery.membership_ttl
    assert client.smembers(chats_key("t", 11)) == {b"42"}


def test_many_chats_share_a_small_pool(client: redis.Redis, settings: Settings) -> None:
    # Given 20 uncached chats, a read receipt in each, processed by 8 threads
    with running_worker(settings, threads=8) as runtime:
        jobs = [parse(f"fechatter.realtime.chat.{c}.read", {"MessageRead": {
                    "message_id": 1, "chat_id": c, "reader_id": 50, "read_at": "2025-06-27T02:46:01Z"}})
                for c in range(100, 120)]
        enqueue(client, settings, *jobs)
        wait_drained(client, settings)
        assert runtime.services.table is not None
        stats = runtime.services.table._pool.get_stats()
    # Then every chat was resolved, through at most pool_max connections (never one per event)
    assert len(inbox(client, settings, 51)) == 20
    assert 0 < stats["connections_num"] <= settings.database.pool_max


def test_presence_of_an_uncached_user_is_scoped_through_postgres(client: redis.Redis, settings: Settings) -> None:
    with running_worker(settings), LiveChannels(client, settings, [7, 9, 11, 13, 20, 50]) as live:
        enqueue(client, settings, parse("fechatter.realtime.user.9.presence",
                                        {"UserPresence": {"user_id": 9, "status": "online", "last_seen": None}}))
        wait_drained(client, settings)
        # 9 shares chat 42 with 7 and 11, chat 43 with 20; 13 left chat 42; 50 shares nothing
        for user in (7, 11, 20):
            assert [n["type"] for n in live.notifications(user)] == ["user_presence"]
        for user in (9, 13, 50):
            assert live.notifications(user) == []
    assert client.smembers(chats_key("t", 9)) == {b"42", b"43"}


def test_a_chat_set_learned_from_events_is_completed_from_postgres_once(
    client: redis.Redis, settings: Settings
) -> None:
    # Given user 9's chat set holding only chat 42 (an event of chat 42 passed; chat 43 was quiet)
    client.sadd(chats_key("t", 9), 42)
    metrics = WorkerMetrics()
    with running_worker(settings, metrics=metrics), LiveChannels(client, settings, [11, 20]) as live:
        # When 9's presence changes twice
        for status in ("online", "away"):
            enqueue(client, settings, parse("fechatter.realtime.user.9.presence",
                                            {"UserPresence": {"user_id": 9, "status": status, "last_seen": None}}))
            wait_drained(client, settings)
        # Then 20, who shares only the quiet chat 43 with 9, hears both; the table was read once
        assert [n["status"] for n in live.notifications(20)] == ["online", "away"]
        assert [n["status"] for n in live.notifications(11)] == ["online", "away"]
    assert counter(metrics.membership_fills, "user") == 1
    assert client.smembers(chats_key("t", 9)) == {b"42", b"43"}
