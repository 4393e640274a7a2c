"""Whatever arrives on a subject, parse_event returns a job or raises EventRejected, nothing else."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import JOB_TYPES, ROUTES, EventRejected, NewMessage, RejectCode, decode_job, job_to_args, parse_event

SUBJECTS = [route.pattern.replace("*", "42").replace(">", "x") for route in ROUTES] + ["unknown.subject"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)

# Objects that look like the real dialects, so the fuzzer reaches field validation.
KEYS = [
    "MessageReceived", "MessageRead", "MessageUnread", "TypingStarted", "TypingStopped", "UserPresence",
    "MessageDeleted", "type", "event_type", "kind", "version", "msg", "message", "members", "chat_members",
    "chat_id", "user_id", "sender_id", "message_id", "message_ids", "id", "content", "files", "timestamp",
    "created_at", "occurred_at", "read_at", "joined_at", "recipients", "status", "last_seen", "reader_id",
    "deleted_by", "deleted_at", "idempotency_key", "event_id", "sender_name", "user_name", "workspace_id",
    "target_users", "event_data", "trace_context",
]  # fmt: skip
TAGS = [
    "MessageReceived", "TypingStarted", "new_message", "message_read", "messages_read", "member_added",
    "status_changed", "Created", "Updated", "Deleted", "V1", "1234", "2025-06-27T02:45:46.782538Z",
    "2025-06-27T02:46:01.120394512+00:00", "0190b5e2-7c3a-7d82-9206-54b2f6b4f7c4",
]  # fmt: skip
lookalike_values = st.recursive(
    st.none() | st.integers(min_value=-(2**70), max_value=2**70) | st.sampled_from(TAGS) | st.booleans(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(KEYS), children, max_size=6),
    max_leaves=25,
)
lookalikes = st.dictionaries(st.sampled_from(KEYS), lookalike_values, max_size=8)


def check(subject: str, data: bytes) -> None:
    try:
        job = parse_event(subject, data)
    except EventRejected as error:
        assert error.reason
        assert error.code
        return
    assert isinstance(job, JOB_TYPES)
    assert decode_job(job_to_args(job)) == job


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SUBJECTS), st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_event_rejected(subject: str, data: bytes) -> None:
    check(subject, data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SUBJECTS), json_values)
def test_random_json_never_raises_anything_but_event_rejected(subject: str, value: Any) -> None:
    check(subject, json.dumps(value).encode())


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SUBJECTS), lookalikes, st.sampled_from(["", "MessageReceived", "TypingStarted", "Bogus"]))
def test_payloads_resembling_real_events_never_raise_anything_but_event_rejected(
    subject: str, value: dict[str, Any], wrap: str
) -> None:
    check(subject, json.dumps({wrap: value} if wrap else value).encode())


ids = st.integers(min_value=1, max_value=2**63 - 1)


@settings(max_examples=300)
@given(
    message_id=ids,
    chat_id=ids,
    sender_id=ids,
    content=st.text(),
    files=st.none() | st.lists(st.text(max_size=8), max_size=3),
    timestamp=st.integers(min_value=-(2**40), max_value=2**40),
    recipients=st.lists(ids, max_size=5),
)
def test_any_well_typed_message_received_becomes_a_new_message_or_a_named_rejection(
    message_id: int,
    chat_id: int,
    sender_id: int,
    content: str,
    files: list[str] | None,
    timestamp: int,
    recipients: list[int],
) -> None:
    message = {
        "id": str(message_id),
        "chat_id": chat_id,
        "sender_id": sender_id,
        "content": content,
        "files": files,
        "timestamp": timestamp,
    }
    payload = {"MessageReceived": {"message": message, "chat_id": chat_id, "recipients": recipients}}
    try:
        job = parse_event("fechatter.realtime.chat.1", json.dumps(payload).encode())
    except EventRejected as error:
        # Only a timestamp outside years 1970-9999 may be refused.
        assert not 0 <= timestamp <= 253_402_300_799
        assert "$.MessageReceived.message.timestamp" in error.reason
        return
    assert isinstance(job, NewMessage)
    assert job == decode_job(job_to_args(job))
    assert (job.message_id, job.recipients, job.files) == (message_id, recipients, files or [])


any_ints = st.integers(min_value=-(2**70), max_value=2**70)


@settings(max_examples=300)
@given(chat_id=any_ints, user_id=any_ints, members=st.lists(any_ints, max_size=4), message_id=any_ints)
def test_an_id_outside_1_to_2_63_is_always_an_invalid_id_and_never_reaches_a_job(
    chat_id: int, user_id: int, members: list[int], message_id: int
) -> None:
    message = {"id": message_id, "chat_id": chat_id, "sender_id": user_id, "content": "Hi",
               "files": [], "created_at": "2025-06-27T02:45:46Z", "idempotency_key": None}
    payload = {"kind": "Created", "msg": message, "members": members, "occurred_at": "2025-06-27T02:45:46Z"}
    bad = [i for i in (message_id, chat_id, user_id, *members) if not 1 <= i < 2**63]
    try:
        job = parse_event("fechatter.message.created", json.dumps(payload).encode())
    except EventRejected as error:
        assert bad and error.code == RejectCode.INVALID_ID, error
        return
    assert not bad
    assert isinstance(job, NewMessage)
    ids = [job.message_id, job.chat_id, job.sender_id, *(job.recipients or [])]
    assert all(1 <= i < 2**63 for i in ids)
