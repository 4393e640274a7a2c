"""Each job type has a stable actor and lane, and survives the trip through a dramatiq message."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from events import (
    ACTORS,
    JOB_TYPES,
    Dialect,
    InvalidJob,
    Job,
    Lane,
    MessageEdited,
    NewMessage,
    Origin,
    actor_name_for,
    decode_job,
    dedupe_key,
    encode_job,
    job_to_args,
    lane_for,
    parse_event,
)

RECEIVED = datetime(2025, 6, 27, 2, 45, 47, tzinfo=UTC)

# One realistic payload per job type.
# fmt: off
SAMPLES: list[tuple[str, bytes]] = [
    ("fechatter.message.created", b'{"version":"V1","kind":"Created","msg":{"id":1234,"chat_id":42,"sender_id":7,"content":"Hi team","files":["a.png"],"created_at":"2025-06-27T02:45:46.782538Z","idempotency_key":"0190b5e2-7c3a-7d82-9206-54b2f6b4f7c4"},"members":[7,9,11],"occurred_at":"2025-06-27T02:45:46.790112345Z"}'),  # noqa: E501
    ("fechatter.message.updated", b'{"version":"V1","kind":"Updated","msg":{"id":1234,"chat_id":42,"sender_id":7,"content":"Hi all","files":null,"created_at":"2025-06-27T02:45:46.782538Z","idempotency_key":null},"members":[7,9,11],"occurred_at":"2025-06-27T02:49:00Z"}'),  # noqa: E501
    ("fechatter.realtime.chat.42.deleted", b'{"MessageDeleted":{"message_id":1234,"chat_id":42,"deleted_by":7,"deleted_at":"2025-06-27T02:50:00.417000001+00:00"}}'),  # noqa: E501
    ("fechatter.realtime.chat.42.read", b'{"MessageRead":{"message_id":1234,"chat_id":42,"reader_id":9,"read_at":"2025-06-27T02:46:01.120394512+00:00"}}'),  # noqa: E501
    ("fechatter.realtime.chat.42.unread", b'{"MessageUnread":{"message_id":1234,"chat_id":42,"user_id":9}}'),
    ("fechatter.realtime.chat.42.typing", b'{"TypingStarted":{"chat_id":42,"user_id":9,"user_name":"Bob Li"}}'),
    ("fechatter.realtime.chat.42.typing", b'{"TypingStopped":{"chat_id":42,"user_id":9}}'),
    ("fechatter.realtime.user.9.presence", b'{"UserPresence":{"user_id":9,"status":"away","last_seen":"2025-06-27T02:47:00.000512339+00:00"}}'),  # noqa: E501
    ("fechatter.chat.joined", b'{"version":"V1","chat_id":42,"user_id":11,"occurred_at":"2025-06-27T03:00:00.120441876Z"}'),  # noqa: E501
    ("fechatter.chat.left", b'{"version":"V1","chat_id":42,"user_id":11,"occurred_at":"2025-06-27T03:00:00.120441876Z"}'),  # noqa: E501
    ("fechatter.message.duplicate", b'{"version":"V1","idempotency_key":"0190b5e2-7c3a-7d82-9206-54b2f6b4f7c4","chat_id":42,"sender_id":7,"occurred_at":"2025-06-27T02:45:47.003812554Z"}'),  # noqa: E501
    ("fechatter.broadcast", b'{"target_users":[7,9],"event_data":{"type":"maintenance","nested":{"a":[1,2]}}}'),
]
# fmt: on

EXPECTED_ACTORS = {
    "NewMessage": ("new_message", "domain"),
    "MessageEdited": ("message_edited", "domain"),
    "MessageDeleted": ("message_deleted", "domain"),
    "MessagesRead": ("messages_read", "realtime"),
    "MessageUnread": ("message_unread", "realtime"),
    "TypingStarted": ("typing_started", "realtime"),
    "TypingStopped": ("typing_stopped", "realtime"),
    "UserPresence": ("user_presence", "realtime"),
    "MemberJoined": ("member_joined", "domain"),
    "MemberLeft": ("member_left", "domain"),
    "DuplicateMessage": ("duplicate_message", "domain"),
    "Broadcast": ("broadcast", "domain"),
}


@pytest.fixture(params=SAMPLES, ids=lambda s: s[0])
def job(request: pytest.FixtureRequest) -> Job:
    subject, data = request.param
    return parse_event(
        subject, data, headers={"Nats-Msg-Id": "m-1"}, stream="S", stream_seq=5, delivered=1, received_at=RECEIVED
    )


def test_the_samples_cover_every_job_type() -> None:
    kinds = {type(parse_event(s, d, received_at=RECEIVED)) for s, d in SAMPLES}
    assert kinds == set(JOB_TYPES)


def test_actor_names_and_lanes_are_the_published_contract() -> None:
    table = {t.__name__: (spec.actor_name, str(spec.lane)) for t, spec in ACTORS.items()}
    assert table == EXPECTED_ACTORS


def test_each_job_names_its_actor_and_lane(job: Job) -> None:
    actor, lane = EXPECTED_ACTORS[type(job).__name__]
    assert actor_name_for(job) == actor
    assert lane_for(job) == Lane(lane)


def test_job_args_are_json_native_and_carry_the_kind(job: Job) -> None:
    args = job_to_args(job)
    assert args["kind"] == type(job).__name__
    assert json.loads(json.dumps(args)) == args


def test_a_job_survives_the_dramatiq_round_trip(job: Job) -> None:
    # What a worker gets back after Redis: the args through a JSON round trip.
    assert decode_job(json.loads(json.dumps(job_to_args(job)))) == job


def test_encoded_bytes_decode_to_the_same_job(job: Job) -> None:
    encoded = encode_job(job)
    assert decode_job(encoded) == job
    assert decode_job(encoded.decode()) == job
    assert json.loads(encoded) == job_to_args(job)


def test_datetimes_travel_as_rfc3339_utc_strings() -> None:
    origin = Origin(subject="s", dialect=Dialect.CORE, received_at=RECEIVED)
    edited = MessageEdited(
        origin=origin, chat_id=1, message_id=2, sender_id=3, content="x", files=[], edited_at=RECEIVED
    )
    args = job_to_args(edited)
    assert args["edited_at"] == "2025-06-27T02:45:47Z"
    assert args["origin"]["dialect"] == "C"


@pytest.mark.parametrize(
    "obj",
    [
        {"kind": "Nope"},
        {"kind": "TypingStopped", "chat_id": 1},
        {"chat_id": 1},
        b"not json",
        "[]",
    ],
)
def test_something_that_is_not_a_job_raises_invalid_job(obj: dict[str, object] | bytes | str) -> None:
    with pytest.raises(InvalidJob, match="not a job"):
        decode_job(obj)


def test_dedupe_key_is_chat_and_message_for_new_messages_only() -> None:
    new, edited, deleted, read = (parse_event(s, d, received_at=RECEIVED) for s, d in SAMPLES[:4])
    assert isinstance(new, NewMessage)
    assert dedupe_key(new) == "42:1234"
    assert dedupe_key(edited) is None  # edits have no id shared across dialects
    assert dedupe_key(deleted) == "42:1234:deleted"
    assert dedupe_key(read) is None
