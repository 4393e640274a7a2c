"""Each job type -> the right notifications for the right users (real Redis, real dramatiq workers).

Cast (docs/event-contract.md#payloads): chat 42 with members 7 (Alice, the sender), 9 (Bob) and 11 (Carol).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from events import MessagesRead, NewMessage, TypingStarted, decode_job, job_to_args
from events.inbox import (
    chats_key,
    decode_announcement,
    inbox_key,
    live_channel,
    members_key,
    presence_key,
)
from settings.model import Settings
from tests.servers import RedisServer, wait_until
from tests.test_workers_support import (
    C_MESSAGE,
    DIALECTS,
    N_MESSAGE,
    R_MESSAGE,
    LiveChannels,
    counter,
    dead_letters,
    enqueue,
    inbox,
    make_settings,
    of_type,
    parse,
    running_worker,
    wait_drained,
)
from workers.metrics import WorkerMetrics
from workers.notifications import iso
from workers.process import WorkerRuntime


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    return make_settings(redis_server.url)


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = redis_server.client()
    yield c
    c.close()


@pytest.fixture
def metrics() -> WorkerMetrics:
    return WorkerMetrics()


@pytest.fixture
def worker(settings: Settings, metrics: WorkerMetrics) -> Iterator[WorkerRuntime]:
    with running_worker(settings, metrics=metrics) as runtime:
        yield runtime


def remember_chat(client: redis.Redis, settings: Settings, chat_id: int, members: list[int]) -> None:
    """Seed the membership cache the way an event carrying a member list would."""
    ns = settings.redis.namespace
    client.sadd(members_key(ns, chat_id), *members)
    for user in members:
        client.sadd(chats_key(ns, user), chat_id)


# -- new messages ---------------------------------------------------------------------------


def test_a_new_message_reaches_every_member_but_the_sender_as_a_flat_frame(
    worker: WorkerRuntime, client: redis.Redis, settings: Settings
) -> None:
    # Given the realtime dialect's MessageReceived (recipients 7, 9, 11; 7 sent it)
    enqueue(client, settings, parse("fechatter.realtime.chat.42", R_MESSAGE))
    wait_drained(client, settings)
    # Then 9 and 11 get the flat shape the web client reads, and the sender gets nothing
    expected = {"type": "new_message", "id": 1234, "chat_id": 42, "sender_id": 7, "sender_name": None,
                "content": "Hi team", "files": [], "created_at": "2025-06-27T02:45:46Z", "idempotency_key": None}
    assert inbox(client, settings, 9) == [expected]
    assert inbox(client, settings, 11) == [expected]
    assert inbox(client, settings, 7) == []
    # And the membership cache learnt the chat from the recipient list
    assert client.smembers(members_key("t", 42)) == {b"7", b"9", b"11"}
    assert client.smembers(chats_key("t", 9)) == {b"42"}


def test_a_member_list_that_grew_is_learnt_by_the_cache(
    worker: WorkerRuntime, client: redis.Redis, settings: Settings
) -> None:
    enqueue(client, settings, parse("fechatter.realtime.chat.42", R_MESSAGE))
    wait_drained(client, settings)
    grown = R_MESSAGE.replace(b'"id":"1234"', b'"id":"1235"').replace(b"[7,9,11]", b"[7,9,11,13]")
    enqueue(client, settings, parse("fechatter.realtime.chat.42", grown))
    wait_drained(client, settings)
    assert client.smembers(members_key("t", 42)) == {b"7", b"9", b"11", b"13"}
    assert client.smembers(chats_key("t", 13)) == {b"42"}
    assert [n["id"] for n in inbox(client, settings, 13)] == [1235]


def test_the_core_dialect_carries_idempotency_key_and_microseconds(
    worker: WorkerRuntime, client: redis.Redis, settings: Settings
) -> None:
    enqueue(client, settings, parse("fechatter.message.created", C_MESSAGE))
    wait_drained(client, settings)
    (frame,) = inbox(client, settings, 9)
    assert frame["created_at"] == "2025-06-27T02:45:46.782538Z"
    assert frame["idempotency_key"] == "0190b5e2-7c3a-7d82-9206-54b2f6b4f7c4"


def test_the_four_dialects_of_one_message_give_each_member_one_notification(
    worker: WorkerRuntime, client: redis.Redis, settings: Settings
) -> None:
    # Given the four copies Fechatter publishes for message 1234, processed concurrently
    jobs = [parse(subject, data) for subject, data in DIALECTS.items()]
    enqueue(client, settings, *jobs)
    wait_drained(client, settings)
    # Then each recipient has exactly one new_message, the sender none
    for user in (9, 11):
        frames = of_type(client, settings, user, "new_message")
        assert len(frames) == 1, frames
        assert (frames[0]["id"], frames[0]["chat_id"], frames[0]["content"]) == (1234, 42, "Hi team")
    assert inbox(client, settings, 7) == []
    assert client.get("t:delivered:9:42:1234") is not None
    assert client.ttl("t:delivered:9:42:1234") > 6 * 24 * 3600  # delivery.dedupe_ttl (7 d)


def test_many_messages_in_all_dialects_on_two_workers_stay_exactly_once(
    client: redis.Redis, settings: Settings
) -> None:
    # Given 30 messages, each in 4 dialects, redelivered once more, shuffled, on two worker "processes"
    jobs = []
    for message_id in range(1000, 1030):
        for subject, data in DIALECTS.items():
            payload = json.loads(data.replace(b"1234", str(message_id).encode()))
            jobs += [parse(subject, payload), parse(subject, payload)]
    random.Random(7).shuffle(jobs)
    with running_worker(settings, threads=8), running_worker(settings, threads=8):
        enqueue(client, settings, *jobs)
        wait_drained(client, settings, timeout=30)
    # Then every member has each message exactly once
    for user in (9, 11):
        ids = [f["id"] for f in of_type(client, settings, user, "new_message")]
        assert sorted(ids) == list(range(1000, 1030))
    assert inbox(client, settings, 7) == []


def test_a_notify_flat_message_uses_the_cached_membership(
    worker: WorkerRuntime, client: redis.Redis, settings: Settings
) -> None:
    remember_chat(client, settings, 42, [7, 9, 11, 13])
    enqueue(client, settings, parse("fechatter.message.new", N_MESSAGE))
    wait_drained(client, settings)
    for user in (9, 11, 13):
        (frame,) = inbox(client, settings, user)
        assert frame["sender_name"] == "Alice Zhang"
    assert inbox(client, settings, 7) == []


def test_an_event_without_recipients_for_an_unknown_chat_reaches_nobody_and_is_counted(
    worker: WorkerRuntime, client: redis.Redis, settings: Settings, metrics: WorkerMetrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="workers.recipients")
    # Given no cache entry for chat 42 and no database configured
    enqueue(client, settings, parse("fechatter.message.new", N_MESSAGE))
    enqueue(client, settings, parse("fechatter.message.new", N_MESSAGE))
    wait_drained(client, settings)
    # Then nobody is notified, it is counted, and one log line names the chat
    assert [inbox(client, settings, u) for u in (7, 9, 11)] == [[], [], []]
    assert counter(metrics.unknown_membership) == 2
    lines = [r for r in caplog.records if r.getMessage() == "membership_unknown"]
    assert len(lines) == 1 and lines[0].chat_id == 42  # type: ignore[attr-defined]
    assert counter(metrics.jobs, "new_message", "ok") == 2


def test_the_notification_is_announced_on_each_users_live_channel(
    worker: WorkerRuntime, client: redis.Redis, settings: Settings
) -> None:
    pubsub = client.pubsub()
    pubsub.subscribe(live_channel("t", 9))
    wait_until(lambda: pubsub.get_message(timeout=0.1), message="no subscribe confirmation")
    enqueue(client, settings, parse("fechatter.realtime.chat.42", R_MESSAGE))
    message = wait_until(lambda: pubsub.get_message(timeout=0.1), message="no announcement")
    entry_id, body = decode_announcement(message["data"])
    ((stream_id, fields),) = client.xrange(inbox_key("t", 9))
    assert entry_id == stream_id.decode()
    assert json.loads(body) == json.loads(fields[b"n"])
    pubsub.close()


# -- edits, deletes, duplicates, broadcasts ---------------------------------------------------


def test_edits_and_deletes_reach_the_members_but_their_author(
    worker: WorkerRuntime, client: redis.Redis, settings: Settings
) -> None:
    remember_chat(client, settings, 42, [7, 9, 11])
    edited = {"event_type": "message_edited", "chat_id": 42, "sender_id": 7, "sender_name": "Alice Zhang",
              "content": "✏️ [EDITED] Hi all", "files": [], "timestamp": "2025-06-27T02:45:46.782538Z",
              "message_id": 1234, "workspace_id": 2}
    deleted_r = {"MessageDeleted": {"message_id": 1234, "chat_id": 42, "deleted_by": 7,
                                    "deleted_at": "2025-06-27T02:50:00.417000001+00:00"}}
    deleted_c = json.loads(C_MESSAGE.replace(b'"Created"', b'"Deleted"'))
    enqueue(client, settings, parse("fechatter.message.edited", edited))
    wait_drained(client, settings)
    # The realtime copy names the deleter; the core copy (which does not) then changes nothing.
    enqueue(client, settings, parse("fechatter.realtime.chat.42.deleted", deleted_r))
    wait_drained(client, settings)
    enqueue(client, settings, parse("fechatter.message.deleted", deleted_c))
    wait_drained(client, settings)
    for user in (9, 11):
        edit, delete = inbox(client, settings, user)
        assert edit == {"type": "message_edited", "id": 1234, "chat_id": 42, "sender_id": 7,
                        "sender_name": "Alice Zhang", "content": "Hi all", "files": [],
                        "edited_at": edit["edited_at"]}
        assert (delete["type"], delete["id"], delete["chat_id"]) == ("message_deleted", 1234, 42)
    assert inbox(client, settings, 7) == []


def test_a_duplicate_message_goes_to_its_sender_only(
    worker: WorkerRuntime, client: redis.Redis, settings: Settings
) -> None:
    payload = {"idempotency_key": "0190b5e2-7c3a-7d82-9206-54b2f6b4f7c4", "chat_id": 42, "sender_id": 7}
    enqueue(client, settings, parse("fechatter.messages.duplicate", payload))
    wait_drained(client, settings)
    assert inbox(client, settings, 7) == [{"type": "duplicate_message", "chat_id": 42, "sender_id": 7,
                                           "idempotency_key": "0190b5e2-7c3a-7d82-9206-54b2f6b4f7c4"}]


def test_a_broadcast_delivers_its_event_data_with_a_string_type(
    worker: WorkerRuntime, client: redis.Redis, settings: Settings
) -> None:
    enqueue(client, settings,
            parse("fechatter.broadcast", {"target_users": [3, 4], "event_data": {"type": "system_maintenance",
                                                                                "at": "soon"}}),
            parse("fechatter.broadcast", {"target_users": [4], "event_data": {"text": "hello"}}))
    wait_drained(client, settings)
    assert inbox(client, settings, 3) == [{"type": "system_maintenance", "at": "soon"}]
    assert sorted(map(json.dumps, inbox(client, settings, 4))) == sorted(
        map(json.dumps, [{"type": "system_maintenance", "at": "soon"}, {"text": "hello", "type": "broadcast"}]))


# -- membership -------------------------------------------------------------------------------


def test_joins_and_leaves_notify_the_chat_and_edit_the_cache(
    worker: WorkerRuntime, client: redis.Redis, settings: Settings
) -> None:
    remember_chat(client, settings, 42, [7, 9, 11])
    joined = {"event_type": "member_added", "chat_id": 42, "user_id": 13, "user_name": "Dan",
              "timestamp": "2025-06-27T03:00:00.120Z"}
    enqueue(client, settings, parse("fechatter.chat.member_joined", joined))
    wait_drained(client, settings)
    for user in (7, 9, 11, 13):
        assert inbox(client, settings, user) == [{"type": "chat_member_added", "chat_id": 42, "user_id": 13,
                                                  "user_name": "Dan"}]
    assert client.smembers(members_key("t", 42)) == {b"7", b"9", b"11", b"13"}
    assert client.smembers(chats_key("t", 13)) == {b"42"}

    left = {"chat_id": 42, "user_id": 9, "joined_at": "2025-06-27T03:00:00.120441Z"}
    enqueue(client, settings, parse("fechatter.chats.member.left", left))
    wait_drained(client, settings)
    for user in (7, 9, 11, 13):
        assert of_type(client, settings, user, "chat_member_removed") == [
            {"type": "chat_member_removed", "chat_id": 42, "user_id": 9, "user_name": None}]
    assert client.smembers(members_key("t", 42)) == {b"7", b"11", b"13"}
    assert client.smembers(chats_key("t", 9)) == set()


def test_a_join_never_creates_a_partial_cache_entry(
    worker: WorkerRuntime, client: redis.Redis, settings: Settings
) -> None:
    # Given chat 77 unknown to the cache: a set holding only the joiner would hide the others
    joined = {"chat_id": 77, "user_id": 13, "joined_at": "2025-06-27T03:00:00.120441Z"}
    enqueue(client, settings, parse("fechatter.chats.member.joined", joined))
    wait_drained(client, settings)
    assert not client.exists(members_key("t", 77))
    assert client.smembers(chats_key("t", 13)) == {b"77"}
    assert of_type(client, settings, 13, "chat_member_added") != []


# -- realtime ---------------------------------------------------------------------------------


def test_typing_is_announced_live_to_the_other_members_and_never_stored_unlike_read_receipts(
    worker: WorkerRuntime, client: redis.Redis, settings: Settings
) -> None:
    remember_chat(client, settings, 42, [7, 9, 11])
    with LiveChannels(client, settings, [7, 9, 11]) as live:
        enqueue(client, settings,
                parse("fechatter.realtime.chat.42.typing", {"TypingStarted": {"chat_id": 42, "user_id": 9,
                                                                              "user_name": "Bob Li"}}))
        wait_drained(client, settings)
        enqueue(client, settings,
                parse("fechatter.realtime.chat.42.typing", {"TypingStopped": {"chat_id": 42, "user_id": 9}}))
        wait_drained(client, settings)
        read = parse("fechatter.realtime.chat.42.read", {"MessageRead": {
            "message_id": 1234, "chat_id": 42, "reader_id": 9, "read_at": "2025-06-27T02:46:01.120394512+00:00"}})
        assert isinstance(read, MessagesRead)
        enqueue(client, settings, read)
        wait_drained(client, settings)
        receipt = {"type": "message_read", "chat_id": 42, "user_id": 9, "message_ids": [1234],
                   "read_at": iso(read.read_at)}
        for user in (7, 11):
            # Then the other members' open streams get all three, typing without an inbox id
            ((typing_id, started), (stopped_id, stopped), (receipt_id, got_receipt)) = live.received(user)
            assert (typing_id, stopped_id) == (None, None)
            assert started == {"type": "typing_started", "chat_id": 42, "user_id": 9, "user_name": "Bob Li"}
            assert stopped == {"type": "typing_stopped", "chat_id": 42, "user_id": 9, "user_name": None}
            assert got_receipt == receipt
            # And only the read receipt is stored, under the id it was announced with
            ((entry_id, _),) = client.xrange(inbox_key("t", user))
            assert receipt_id == entry_id.decode()
            assert inbox(client, settings, user) == [receipt]
        assert live.received(9) == [] and inbox(client, settings, 9) == []
    # And typing left no dedupe marker behind (only the receipt's)
    markers = [k.decode() for k in client.scan_iter("t:delivered:*")]
    assert markers and all("messages_read" in k for k in markers), markers


def test_message_unread_goes_to_the_user_only(
    worker: WorkerRuntime, client: redis.Redis, settings: Settings
) -> None:
    remember_chat(client, settings, 42, [7, 9, 11])
    enqueue(client, settings, parse("fechatter.realtime.chat.42.unread",
                                    {"MessageUnread": {"message_id": 1234, "chat_id": 42, "user_id": 9}}))
    wait_drained(client, settings)
    assert inbox(client, settings, 9) == [{"type": "message_unread", "chat_id": 42, "user_id": 9,
                                           "message_id": 1234}]
    assert inbox(client, settings, 7) == inbox(client, settings, 11) == []


def test_stale_typing_is_dropped_and_counted_not_delivered_late(
    worker: WorkerRuntime, client: redis.Redis, settings: Settings, metrics: WorkerMetrics
) -> None:
    remember_chat(client, settings, 42, [7, 9, 11])
    # Given a typing event received 6 s ago (typing_ttl 5 s) and a fresh one
    stale = parse("fechatter.realtime.chat.42.typing",
                  {"TypingStarted": {"chat_id": 42, "user_id": 9, "user_name": "Bob Li"}},
                  received_at=datetime.now(UTC) - timedelta(seconds=6))
    fresh = parse("fechatter.realtime.chat.42.typing", {"TypingStarted": {"chat_id": 42, "user_id": 11}})
    with LiveChannels(client, settings, [7]) as live:
        enqueue(client, settings, stale, fresh)
        wait_drained(client, settings)
        # Then only the fresh one is announced; the stale one is counted, acked, not dead-lettered
        assert [n["user_id"] for n in live.notifications(7)] == [11]
    assert counter(metrics.stale_dropped, "typing_started") == 1
    assert counter(metrics.jobs, "typing_started", "skipped") == 1
    assert dead_letters(client, settings, "realtime") == 0


def test_presence_is_stored_and_told_live_only_to_chat_partners(
    worker: WorkerRuntime, client: redis.Redis, settings: Settings
) -> None:
    # Given 9 shares chat 42 with 7 and 11, chat 43 with 20; 30 and 31 share nothing with 9
    remember_chat(client, settings, 42, [7, 9, 11])
    remember_chat(client, settings, 43, [9, 20])
    remember_chat(client, settings, 50, [30, 31])
    everyone = [7, 9, 11, 20, 30, 31]
    with LiveChannels(client, settings, everyone) as live:
        enqueue(client, settings, parse("fechatter.realtime.user.9.presence", {"UserPresence": {
            "user_id": 9, "status": "away", "last_seen": "2025-06-27T02:47:00.000512339+00:00"}}))
        wait_drained(client, settings)
        expected = (None, {"type": "user_presence", "user_id": 9, "status": "away",
                           "last_seen": "2025-06-27T02:47:00.000512Z"})
        for user in (7, 11, 20):
            assert live.received(user) == [expected]
        for user in (9, 30, 31):
            assert live.received(user) == []
    # Then no inbox holds it (a resume must not replay an old presence), but the state is kept
    for user in everyone:
        assert not client.exists(inbox_key("t", user))
    assert client.hgetall(presence_key("t", 9)) == {b"status": b"away", b"last_seen": b"2025-06-27T02:47:00.000512Z"}
    assert 0 < client.pttl(presence_key("t", 9)) <= settings.gateway.presence_ttl * 1000


# -- failures ---------------------------------------------------------------------------------


def test_a_job_that_can_never_succeed_is_dead_lettered_at_once(
    worker: WorkerRuntime, client: redis.Redis, settings: Settings, metrics: WorkerMetrics
) -> None:
    args = job_to_args(parse("fechatter.realtime.chat.42", R_MESSAGE))
    del args["content"]
    enqueue(client, settings, ("domain", "new_message", args))
    wait_drained(client, settings)
    assert dead_letters(client, settings, "domain") == 1
    assert counter(metrics.jobs, "new_message", "failed") == 1
    assert counter(metrics.jobs, "new_message", "retried") == 0


def test_a_transient_failure_is_retried_with_backoff_then_delivered_once(
    worker: WorkerRuntime, client: redis.Redis, settings: Settings, metrics: WorkerMetrics
) -> None:
    # Given a Redis hiccup on the first two deliveries
    delivery = worker.services.delivery
    real = delivery.deliver
    failures = iter([redis.ConnectionError("hiccup"), redis.TimeoutError("hiccup")])

    def flaky(*args: Any, **kwargs: Any) -> Any:
        for exc in failures:
            raise exc
        return real(*args, **kwargs)

    delivery.deliver = flaky  # type: ignore[method-assign]
    remember_chat(client, settings, 42, [7, 9, 11])
    with LiveChannels(client, settings, [7]) as live:
        enqueue(client, settings, parse("fechatter.realtime.chat.42.typing",
                                        {"TypingStarted": {"chat_id": 42, "user_id": 9}}, typing_ttl_s=30))
        wait_drained(client, settings)
        assert counter(metrics.jobs, "typing_started", "retried") == 2
        assert counter(metrics.jobs, "typing_started", "ok") == 1
        assert len(live.received(7)) == 1


def test_a_transient_failure_past_max_retries_is_dead_lettered(
    worker: WorkerRuntime, client: redis.Redis, settings: Settings, metrics: WorkerMetrics
) -> None:
    def down(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("down")

    worker.services.delivery.deliver = down  # type: ignore[method-assign]
    enqueue(client, settings, parse("fechatter.message.new", N_MESSAGE))
    wait_drained(client, settings)
    assert counter(metrics.jobs, "new_message", "retried") == settings.delivery.max_retries
    assert counter(metrics.jobs, "new_message", "failed") == 1
    assert dead_letters(client, settings, "domain") == 1


# -- queues -----------------------------------------------------------------------------------


def test_a_worker_for_the_realtime_queue_leaves_domain_jobs_alone(
    client: redis.Redis, settings: Settings
) -> None:
    remember_chat(client, settings, 42, [7, 9, 11])
    with running_worker(settings, ["realtime"]), LiveChannels(client, settings, [11]) as live:
        enqueue(client, settings, parse("fechatter.realtime.chat.42", R_MESSAGE),
                parse("fechatter.realtime.chat.42.typing", {"TypingStarted": {"chat_id": 42, "user_id": 9}},
                      typing_ttl_s=30))
        wait_until(lambda: live.received(11), message="typing not delivered")
        assert [n["type"] for n in live.notifications(11)] == ["typing_started"]
        assert client.llen("t:domain") == 1


def test_jobs_round_trip_through_the_event_contract() -> None:
    # The actors decode exactly what the bridge encodes (a guard against contract drift).
    for job in (parse("fechatter.realtime.chat.42", R_MESSAGE),
                parse("fechatter.realtime.chat.42.typing", {"TypingStarted": {"chat_id": 42, "user_id": 9}}),
                parse("fechatter.realtime.chat.42.read", {"MessageRead": {
                    "message_id": 1, "chat_id": 42, "reader_id": 9, "read_at": "2025-06-27T02:46:01Z"}})):
        assert isinstance(decode_job(json.loads(json.dumps(job_to_args(job)))),
                          NewMessage | TypingStarted | MessagesRead)


