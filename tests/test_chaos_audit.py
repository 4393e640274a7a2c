"""The chaos suite's inbox auditor (tests/chaos/audit.py) on a real Redis: lost, duplicated, unexpected."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from events.inbox import INBOX_FIELD, inbox_key
from tests.chaos.audit import Key, audit_inboxes, notification_key
from tests.servers import RedisServer

NS = "chaos-audit"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.client() as c:
        yield c


def message(chat: int, ident: int, kind: str = "new_message") -> dict[str, Any]:
    return {"type": kind, "id": ident, "chat_id": chat, "sender_id": 1, "content": "hi"}


def deliver(client: redis.Redis, user: int, *notifications: dict[str, Any]) -> None:
    for n in notifications:
        client.xadd(inbox_key(NS, user), {INBOX_FIELD: json.dumps(n)})


def test_keys_identify_messages_and_ignore_live_and_membership_types() -> None:
    assert notification_key(message(42, 1001)) == ("new_message", 42, 1001)
    assert notification_key(message(42, 1001, "message_deleted")) == ("message_deleted", 42, 1001)
    assert notification_key({"type": "typing_started", "chat_id": 42, "user_id": 9}) is None
    assert notification_key({"type": "chat_member_added", "chat_id": 42, "user_id": 9}) is None
    with pytest.raises(ValueError, match="integer chat_id and id"):
        notification_key({"type": "new_message", "chat_id": 42, "id": "1001"})


def test_a_complete_inbox_is_ok(client: redis.Redis) -> None:
    deliver(client, 7, message(42, 1), message(42, 2), {"type": "typing_started", "chat_id": 42, "user_id": 9})
    audit = audit_inboxes(client, {7: [("new_message", 42, 1), ("new_message", 42, 2)]}, namespace=NS)
    assert audit.ok(), audit.summary()
    assert (audit.lost, audit.duplicated, audit.unexpected, audit.ignored, audit.received) == (0, 0, 0, 1, 2)


def test_lost_duplicated_and_unexpected_are_reported_per_user(client: redis.Redis) -> None:
    deliver(client, 7, message(42, 1), message(42, 1), message(42, 1), message(43, 9))
    deliver(client, 9, message(42, 1))
    expected: dict[int, list[Key]] = {7: [("new_message", 42, 1), ("new_message", 42, 2)],
                                      9: [("new_message", 42, 1), ("new_message", 42, 2)]}
    audit = audit_inboxes(client, expected, namespace=NS)
    assert not audit.ok()
    seven, nine = audit.users[7], audit.users[9]
    assert seven.lost == [("new_message", 42, 2)]
    assert seven.duplicated == {("new_message", 42, 1): 3}
    assert seven.unexpected == [("new_message", 43, 9)]
    assert nine.lost == [("new_message", 42, 2)] and not nine.duplicated and not nine.unexpected
    assert (audit.lost, audit.duplicated, audit.unexpected) == (2, 1, 1)
    summary = audit.summary()
    assert "user 7:" in summary and "duplicated=1" in summary and "lost=2" in summary.splitlines()[0]


def test_a_user_with_entries_but_nothing_expected_is_unexpected(client: redis.Redis) -> None:
    deliver(client, 11, message(42, 1))
    audit = audit_inboxes(client, {7: []}, namespace=NS, users=[7, 11])
    assert audit.users[11].unexpected == [("new_message", 42, 1)]
    assert audit.unexpected == 1 and audit.users[7].ok()


def test_inboxes_longer_than_one_page_are_read_whole(client: redis.Redis) -> None:
    deliver(client, 7, *(message(42, i) for i in range(12_000)))
    audit = audit_inboxes(client, {7: [("new_message", 42, i) for i in range(12_000)]}, namespace=NS)
    assert audit.ok(), audit.summary()
    assert audit.received == 12_000
