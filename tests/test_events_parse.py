"""Every example payload of docs/event-contract.md#payloads, and the broadcast, becomes the exact job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from events import (
    DEFAULT_PRESENCE_TTL_S,
    DEFAULT_TYPING_TTL_S,
    Broadcast,
    Dialect,
    DuplicateMessage,
    Job,
    MemberJoined,
    MemberLeft,
    MessageDeleted,
    MessageEdited,
    MessagesRead,
    MessageUnread,
    NewMessage,
    Origin,
    TypingStarted,
    TypingStopped,
    UserPresence,
    dedupe_key,
    parse_event,
)

RECEIVED = datetime(2025, 6, 27, 2, 45, 47, 5000, tzinfo=UTC)
KEY = "0190b5e2-7c3a-7d82-9206-54b2f6b4f7c4"
EVENT_ID = "5b0c7f3e-2d1a-4c53-9a55-1f0f3f6f9b21"
CREATED = datetime(2025, 6, 27, 2, 45, 46, 782538, tzinfo=UTC)

# docs/event-contract.md#payloads, verbatim (Fechatter's wire bytes, not our rendering).
R_MESSAGE_RECEIVED = b'{"MessageReceived":{"message":{"id":"1234","chat_id":42,"sender_id":7,"content":"Hi team","files":[],"timestamp":1750992346},"chat_id":42,"recipients":[7,9,11]}}'  # noqa: E501
N_NEW_MESSAGE = b'{"event_type":"new_message","chat_id":42,"sender_id":7,"sender_name":"Alice Zhang","content":"Hi team","files":[],"timestamp":"2025-06-27T02:45:46.782538Z","message_id":1234,"workspace_id":2}'  # noqa: E501
C_CREATED = b'{"version":"V1","kind":"Created","msg":{"id":1234,"chat_id":42,"sender_id":7,"content":"Hi team","files":[],"created_at":"2025-06-27T02:45:46.782538Z","idempotency_key":"0190b5e2-7c3a-7d82-9206-54b2f6b4f7c4"},"members":[7,9,11],"occurred_at":"2025-06-27T02:45:46.790112345Z"}'  # noqa: E501
U_CREATED = b'{"version":"V1","kind":"Created","msg":{"id":1234,"chat_id":42,"sender_id":7,"content":"Hi team","files":[],"created_at":"2025-06-27T02:45:46.782538Z","idempotency_key":"0190b5e2-7c3a-7d82-9206-54b2f6b4f7c4"},"members":[7],"occurred_at":"2025-06-27T02:45:46.801002117Z","sender_name":"Alice Zhang","chat_name":"Design","workspace_id":2,"event_id":"5b0c7f3e-2d1a-4c53-9a55-1f0f3f6f9b21","trace_context":{}}'  # noqa: E501
L_CREATED = b'{"message":{"id":1234,"chat_id":42,"sender_id":7,"content":"Hi team","files":null,"created_at":"2025-06-27T02:45:46.782538Z","idempotency_key":null},"chat_members":[7,9,11]}'  # noqa: E501
T_MESSAGE_RECEIVED = b'{"type":"MessageReceived","message":{"id":"1234","chat_id":42,"sender_id":7,"content":"Hi team","files":[],"timestamp":1750992346},"chat_id":42,"recipients":[7,9,11]}'  # noqa: E501


def parse(
    subject: str,
    data: bytes,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> Job:
    return parse_event(subject, data, headers, received_at=RECEIVED, **kwargs)


def origin(subject: str, dialect: Dialect, event_id: str | None = None) -> Origin:
    return Origin(subject=subject, dialect=dialect, event_id=event_id, received_at=RECEIVED)


TYPING_EXPIRES = RECEIVED + timedelta(seconds=DEFAULT_TYPING_TTL_S)
PRESENCE_EXPIRES = RECEIVED + timedelta(seconds=DEFAULT_PRESENCE_TTL_S)


# -- one chat message, four dialects ------------------------------------------


def test_realtime_message_received_becomes_a_new_message_with_its_recipients() -> None:
    subject = "fechatter.realtime.chat.42"
    assert parse(subject, R_MESSAGE_RECEIVED) == NewMessage(
        origin=origin(subject, Dialect.REALTIME),
        chat_id=42,
        message_id=1234,
        sender_id=7,
        content="Hi team",
        files=[],
        created_at=datetime(2025, 6, 27, 2, 45, 46, tzinfo=UTC),
        recipients=[7, 9, 11],
    )


def test_notify_flat_new_message_becomes_a_new_message_without_recipients() -> None:
    subject = "fechatter.message.new"
    assert parse(subject, N_NEW_MESSAGE) == NewMessage(
        origin=origin(subject, Dialect.NOTIFY_FLAT),
        chat_id=42,
        message_id=1234,
        sender_id=7,
        content="Hi team",
        files=[],
        created_at=CREATED,
        sender_name="Alice Zhang",
        workspace_id=2,
        recipients=None,
    )


def test_core_created_becomes_a_new_message_whose_members_are_the_recipients() -> None:
    subject = "fechatter.message.created"
    assert parse(subject, C_CREATED) == NewMessage(
        origin=origin(subject, Dialect.CORE),
        chat_id=42,
        message_id=1234,
        sender_id=7,
        content="Hi team",
        files=[],
        created_at=CREATED,
        idempotency_key=KEY,
        recipients=[7, 9, 11],
    )


def test_unified_created_becomes_a_new_message_ignoring_its_sender_only_members() -> None:
    subject = "fechatter.messages.message.created.v1"
    assert parse(subject, U_CREATED) == NewMessage(
        origin=origin(subject, Dialect.UNIFIED, event_id=EVENT_ID),
        chat_id=42,
        message_id=1234,
        sender_id=7,
        content="Hi team",
        files=[],
        created_at=CREATED,
        idempotency_key=KEY,
        sender_name="Alice Zhang",
        workspace_id=2,
        recipients=None,
    )


def test_legacy_created_becomes_a_new_message_with_chat_members_and_null_files_as_empty() -> None:
    subject = "fechatter.messages.created"
    assert parse(subject, L_CREATED) == NewMessage(
        origin=origin(subject, Dialect.LEGACY),
        chat_id=42,
        message_id=1234,
        sender_id=7,
        content="Hi team",
        files=[],
        created_at=CREATED,
        idempotency_key=None,
        recipients=[7, 9, 11],
    )


def test_internally_tagged_message_received_is_accepted_on_the_realtime_subject() -> None:
    subject = "fechatter.realtime.chat.42"
    job = parse(subject, T_MESSAGE_RECEIVED)
    assert job == NewMessage(
        origin=origin(subject, Dialect.TAGGED),
        chat_id=42,
        message_id=1234,
        sender_id=7,
        content="Hi team",
        files=[],
        created_at=datetime(2025, 6, 27, 2, 45, 46, tzinfo=UTC),
        recipients=[7, 9, 11],
    )


def test_every_dialect_of_message_1234_shares_one_dedupe_key() -> None:
    # Given the up-to-five copies Fechatter (and its tests) publish for one message
    copies = [
        ("fechatter.realtime.chat.42", R_MESSAGE_RECEIVED),
        ("fechatter.message.new", N_NEW_MESSAGE),
        ("fechatter.message.created", C_CREATED),
        ("fechatter.messages.message.created.v1", U_CREATED),
        ("fechatter.messages.created", L_CREATED),
        ("fechatter.realtime.chat.42", T_MESSAGE_RECEIVED),
    ]
    # When each is parsed
    jobs = [parse(subject, data) for subject, data in copies]
    # Then all are new messages with the same identity
    assert all(isinstance(job, NewMessage) for job in jobs)
    assert {dedupe_key(job) for job in jobs} == {"42:1234"}


def test_issue_3_message_received_example_gives_ints_and_aware_datetime() -> None:
    data = b'{"MessageReceived":{"message":{"id":"1234","chat_id":42,"sender_id":7,"content":"Hi","files":[],"timestamp":1719456346},"chat_id":42,"recipients":[7,9,11]}}'  # noqa: E501
    job = parse("fechatter.realtime.chat.42", data)
    assert isinstance(job, NewMessage)
    assert job.message_id == 1234
    assert type(job.message_id) is int
    assert job.created_at == datetime(2024, 6, 27, 2, 45, 46, tzinfo=UTC)
    assert job.created_at.tzinfo is not None
    assert job.recipients == [7, 9, 11]


# -- read, typing, presence (event-contract: read-typing-and-presence) ---------


def test_realtime_message_read_becomes_messages_read_by_the_reader() -> None:
    subject = "fechatter.realtime.chat.42.read"
    data = b'{"MessageRead":{"message_id":1234,"chat_id":42,"reader_id":9,"read_at":"2025-06-27T02:46:01.120394512+00:00"}}'  # noqa: E501
    assert parse(subject, data) == MessagesRead(
        origin=origin(subject, Dialect.REALTIME),
        chat_id=42,
        user_id=9,
        message_ids=[1234],
        # nine fraction digits are rounded to the nearest microsecond
        read_at=datetime(2025, 6, 27, 2, 46, 1, 120395, tzinfo=UTC),
    )


def test_realtime_typing_started_expires_after_the_default_typing_ttl() -> None:
    subject = "fechatter.realtime.chat.42.typing"
    data = b'{"TypingStarted":{"chat_id":42,"user_id":9,"user_name":"Bob Li"}}'
    assert parse(subject, data) == TypingStarted(
        origin=origin(subject, Dialect.REALTIME),
        chat_id=42,
        user_id=9,
        user_name="Bob Li",
        expires_at=TYPING_EXPIRES,
    )


def test_realtime_typing_stopped_on_the_same_subject_becomes_typing_stopped() -> None:
    subject = "fechatter.realtime.chat.42.typing"
    data = b'{"TypingStopped":{"chat_id":42,"user_id":9}}'
    assert parse(subject, data) == TypingStopped(
        origin=origin(subject, Dialect.REALTIME),
        chat_id=42,
        user_id=9,
        expires_at=TYPING_EXPIRES,
    )


def test_realtime_user_presence_expires_after_the_default_presence_ttl() -> None:
    subject = "fechatter.realtime.user.9.presence"
    data = b'{"UserPresence":{"user_id":9,"status":"away","last_seen":"2025-06-27T02:47:00.000512339+00:00"}}'
    assert parse(subject, data) == UserPresence(
        origin=origin(subject, Dialect.REALTIME),
        user_id=9,
        status="away",
        last_seen=datetime(2025, 6, 27, 2, 47, 0, 512, tzinfo=UTC),
        expires_at=PRESENCE_EXPIRES,
    )


def test_ttls_passed_by_the_caller_set_expires_at() -> None:
    typing = parse(
        "fechatter.realtime.chat.42.typing",
        b'{"TypingStopped":{"chat_id":42,"user_id":9}}',
        typing_ttl_s=2.5,
    )
    presence = parse(
        "fechatter.realtime.user.9.presence",
        b'{"UserPresence":{"user_id":9,"status":"online","last_seen":null}}',
        presence_ttl_s=10,
    )
    assert isinstance(typing, TypingStopped)
    assert typing.expires_at == RECEIVED + timedelta(seconds=2.5)
    assert isinstance(presence, UserPresence)
    assert presence.expires_at == RECEIVED + timedelta(seconds=10)
    assert presence.last_seen is None


# -- not live, publisher present (event-contract: published-by-code-no-route-reaches)


def test_realtime_message_unread_becomes_message_unread() -> None:
    subject = "fechatter.realtime.chat.42.unread"
    data = b'{"MessageUnread":{"message_id":1234,"chat_id":42,"user_id":9}}'
    assert parse(subject, data) == MessageUnread(
        origin=origin(subject, Dialect.REALTIME), chat_id=42, user_id=9, message_id=1234
    )


def test_realtime_message_deleted_keeps_who_deleted_it() -> None:
    subject = "fechatter.realtime.chat.42.deleted"
    data = b'{"MessageDeleted":{"message_id":1234,"chat_id":42,"deleted_by":7,"deleted_at":"2025-06-27T02:50:00.417000001+00:00"}}'  # noqa: E501
    assert parse(subject, data) == MessageDeleted(
        origin=origin(subject, Dialect.REALTIME),
        chat_id=42,
        message_id=1234,
        deleted_by=7,
        deleted_at=datetime(2025, 6, 27, 2, 50, 0, 417000, tzinfo=UTC),
    )


def test_notify_flat_message_edited_loses_the_edited_marker() -> None:
    subject = "fechatter.message.edited"
    data = '{"event_type":"message_edited","chat_id":42,"sender_id":7,"sender_name":"Alice Zhang","content":"✏️ [EDITED] Hi all","files":[],"timestamp":"2025-06-27T02:45:46.782538Z","message_id":1234,"workspace_id":2}'.encode()  # noqa: E501
    assert parse(subject, data) == MessageEdited(
        origin=origin(subject, Dialect.NOTIFY_FLAT),
        chat_id=42,
        message_id=1234,
        sender_id=7,
        content="Hi all",
        files=[],
        edited_at=CREATED,
        sender_name="Alice Zhang",
        workspace_id=2,
    )


def test_core_updated_becomes_message_edited_at_occurred_at() -> None:
    subject = "fechatter.message.updated"
    data = C_CREATED.replace(b'"Created"', b'"Updated"')
    assert parse(subject, data) == MessageEdited(
        origin=origin(subject, Dialect.CORE),
        chat_id=42,
        message_id=1234,
        sender_id=7,
        content="Hi team",
        files=[],
        edited_at=datetime(2025, 6, 27, 2, 45, 46, 790112, tzinfo=UTC),
        recipients=[7, 9, 11],
    )


def test_unified_edit_has_empty_members_so_recipients_stay_unresolved() -> None:
    subject = "fechatter.messages.message.edited.v1"
    data = U_CREATED.replace(b'"Created"', b'"Updated"').replace(b'"members":[7]', b'"members":[]')
    assert parse(subject, data) == MessageEdited(
        origin=origin(subject, Dialect.UNIFIED, event_id=EVENT_ID),
        chat_id=42,
        message_id=1234,
        sender_id=7,
        content="Hi team",
        files=[],
        edited_at=datetime(2025, 6, 27, 2, 45, 46, 801002, tzinfo=UTC),
        sender_name="Alice Zhang",
        workspace_id=2,
        recipients=None,
    )


def test_message_deleted_subject_dispatches_on_payload_keys_not_subject() -> None:
    # Given both shapes Fechatter publishes on the one subject
    subject = "fechatter.message.deleted"
    flat = '{"event_type":"message_deleted","chat_id":42,"sender_id":7,"sender_name":"Alice Zhang","content":"🗑️ [Message Deleted]","files":[],"timestamp":"2025-06-27T02:50:00.417Z","message_id":1234,"workspace_id":2}'.encode()  # noqa: E501
    core = C_CREATED.replace(b'"Created"', b'"Deleted"')
    # Then each becomes a deletion, stamped with its own dialect
    assert parse(subject, flat) == MessageDeleted(
        origin=origin(subject, Dialect.NOTIFY_FLAT),
        chat_id=42,
        message_id=1234,
        deleted_at=datetime(2025, 6, 27, 2, 50, 0, 417000, tzinfo=UTC),
    )
    assert parse(subject, core) == MessageDeleted(
        origin=origin(subject, Dialect.CORE),
        chat_id=42,
        message_id=1234,
        deleted_at=datetime(2025, 6, 27, 2, 45, 46, 790112, tzinfo=UTC),
        recipients=[7, 9, 11],
    )


def test_unified_deleted_becomes_message_deleted_without_recipients() -> None:
    subject = "fechatter.messages.message.deleted.v1"
    data = U_CREATED.replace(b'"Created"', b'"Deleted"').replace(b'"members":[7]', b'"members":[]')
    job = parse(subject, data)
    assert job == MessageDeleted(
        origin=origin(subject, Dialect.UNIFIED, event_id=EVENT_ID),
        chat_id=42,
        message_id=1234,
        deleted_at=datetime(2025, 6, 27, 2, 45, 46, 801002, tzinfo=UTC),
    )
    assert dedupe_key(job) == "42:1234:deleted"


def test_notify_flat_messages_read_keeps_every_message_id() -> None:
    subject = "fechatter.realtime.read_receipts"
    data = b'{"event_type":"messages_read","chat_id":42,"user_id":9,"message_ids":[1233,1234],"read_at":"2025-06-27T02:46:01.120394512Z"}'  # noqa: E501
    assert parse(subject, data) == MessagesRead(
        origin=origin(subject, Dialect.NOTIFY_FLAT),
        chat_id=42,
        user_id=9,
        message_ids=[1233, 1234],
        read_at=datetime(2025, 6, 27, 2, 46, 1, 120395, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("subject", "event_type", "job_type"),
    [
        ("fechatter.chat.member_joined", "member_added", MemberJoined),
        ("fechatter.chat.member_left", "member_removed", MemberLeft),
    ],
)
def test_notify_flat_member_events_become_membership_jobs(
    subject: str, event_type: str, job_type: type[MemberJoined] | type[MemberLeft]
) -> None:
    data = (
        f'{{"event_type":"{event_type}","chat_id":42,"user_id":11,"user_name":"Carol",'
        '"timestamp":"2025-06-27T03:00:00.120Z"}'
    ).encode()
    assert parse(subject, data) == job_type(
        origin=origin(subject, Dialect.NOTIFY_FLAT),
        chat_id=42,
        user_id=11,
        user_name="Carol",
        at=datetime(2025, 6, 27, 3, 0, 0, 120000, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("subject", "job_type"),
    [("fechatter.chat.joined", MemberJoined), ("fechatter.chat.left", MemberLeft)],
)
def test_core_member_events_take_joined_or_left_from_the_subject(
    subject: str, job_type: type[MemberJoined] | type[MemberLeft]
) -> None:
    data = b'{"version":"V1","chat_id":42,"user_id":11,"occurred_at":"2025-06-27T03:00:00.120441876Z"}'
    assert parse(subject, data) == job_type(
        origin=origin(subject, Dialect.CORE),
        chat_id=42,
        user_id=11,
        at=datetime(2025, 6, 27, 3, 0, 0, 120442, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("subject", "job_type"),
    [
        ("fechatter.chats.member.joined.v1", MemberJoined),
        ("fechatter.chats.member.left.v1", MemberLeft),
    ],
)
def test_unified_member_events_carry_the_user_name_and_event_id(
    subject: str, job_type: type[MemberJoined] | type[MemberLeft]
) -> None:
    data = (
        b'{"version":"V1","chat_id":42,"user_id":11,"occurred_at":"2025-06-27T03:00:00.120441876Z",'
        b'"event_id":"5b0c7f3e-2d1a-4c53-9a55-1f0f3f6f9b21","workspace_id":2,"chat_name":"Design",'
        b'"user_name":"Carol","trace_context":{}}'
    )
    assert parse(subject, data) == job_type(
        origin=origin(subject, Dialect.UNIFIED, event_id=EVENT_ID),
        chat_id=42,
        user_id=11,
        user_name="Carol",
        at=datetime(2025, 6, 27, 3, 0, 0, 120442, tzinfo=UTC),
    )


def test_core_duplicate_becomes_duplicate_message() -> None:
    subject = "fechatter.message.duplicate"
    data = b'{"version":"V1","idempotency_key":"0190b5e2-7c3a-7d82-9206-54b2f6b4f7c4","chat_id":42,"sender_id":7,"occurred_at":"2025-06-27T02:45:47.003812554Z"}'  # noqa: E501
    assert parse(subject, data) == DuplicateMessage(
        origin=origin(subject, Dialect.CORE), chat_id=42, sender_id=7, idempotency_key=KEY
    )


def test_version_defaults_to_v1_when_absent() -> None:
    data = b'{"chat_id":42,"user_id":11,"occurred_at":"2025-06-27T03:00:00.120441876Z"}'
    assert isinstance(parse("fechatter.chat.joined", data), MemberJoined)


# -- notify-only N forms (event-contract: notify-only-forms) --------------------


def test_notify_only_typing_started_is_accepted_on_a_realtime_subject() -> None:
    subject = "fechatter.realtime.chat.42.typing"
    data = b'{"event_type":"typing_started","chat_id":42,"user_id":9,"user_name":"Bob Li"}'
    assert parse(subject, data) == TypingStarted(
        origin=origin(subject, Dialect.NOTIFY_FLAT),
        chat_id=42,
        user_id=9,
        user_name="Bob Li",
        expires_at=TYPING_EXPIRES,
    )


def test_notify_only_singular_message_read_is_read_at_reception() -> None:
    subject = "fechatter.realtime.chat.42.read"
    data = b'{"event_type":"message_read","chat_id":42,"user_id":9,"message_id":1234}'
    assert parse(subject, data) == MessagesRead(
        origin=origin(subject, Dialect.NOTIFY_FLAT),
        chat_id=42,
        user_id=9,
        message_ids=[1234],
        read_at=RECEIVED,
    )


@pytest.mark.parametrize(
    ("subject", "data"),
    [
        ("fechatter.realtime.user.9.presence", b'{"event_type":"user_presence","user_id":9,"status":"away"}'),
        ("fechatter.user.9", b'{"event_type":"status_changed","user_id":9,"status":"away"}'),
    ],
)
def test_notify_only_presence_forms_become_user_presence(subject: str, data: bytes) -> None:
    assert parse(subject, data) == UserPresence(
        origin=origin(subject, Dialect.NOTIFY_FLAT),
        user_id=9,
        status="away",
        expires_at=PRESENCE_EXPIRES,
    )


# -- legacy (event-contract: legacy-forms) and broadcast ------------------------


@pytest.mark.parametrize(
    ("subject", "job_type"),
    [("fechatter.chats.member.joined", MemberJoined), ("fechatter.chats.member.left", MemberLeft)],
)
def test_legacy_member_events_both_use_joined_at(subject: str, job_type: type[MemberJoined] | type[MemberLeft]) -> None:
    data = b'{"chat_id":42,"user_id":11,"joined_at":"2025-06-27T03:00:00.120441Z"}'
    assert parse(subject, data) == job_type(
        origin=origin(subject, Dialect.LEGACY),
        chat_id=42,
        user_id=11,
        at=datetime(2025, 6, 27, 3, 0, 0, 120441, tzinfo=UTC),
    )


def test_legacy_duplicate_becomes_duplicate_message() -> None:
    subject = "fechatter.messages.duplicate"
    data = b'{"idempotency_key":"0190b5e2-7c3a-7d82-9206-54b2f6b4f7c4","chat_id":42,"sender_id":7}'
    assert parse(subject, data) == DuplicateMessage(
        origin=origin(subject, Dialect.LEGACY), chat_id=42, sender_id=7, idempotency_key=KEY
    )


def test_broadcast_keeps_its_targets_and_opaque_event_data() -> None:
    subject = "fechatter.broadcast"
    data = b'{"target_users":[7,9],"event_data":{"type":"maintenance","minutes":5}}'
    assert parse(subject, data) == Broadcast(
        origin=origin(subject, Dialect.BROADCAST),
        target_users=[7, 9],
        event_data={"type": "maintenance", "minutes": 5},
    )


# -- origin --------------------------------------------------------------------


def test_origin_carries_jetstream_metadata_and_the_msg_id_header() -> None:
    job = parse(
        "fechatter.message.created",
        C_CREATED,
        headers={"Nats-Msg-Id": "abc-1"},
        stream="NOTIFY",
        stream_seq=17,
        delivered=2,
    )
    assert job.origin == Origin(
        subject="fechatter.message.created",
        dialect=Dialect.CORE,
        stream="NOTIFY",
        stream_seq=17,
        delivered=2,
        event_id="abc-1",
        received_at=RECEIVED,
    )


def test_the_payload_event_id_wins_over_the_msg_id_header() -> None:
    job = parse("fechatter.messages.message.created.v1", U_CREATED, headers={"Nats-Msg-Id": "x"})
    assert job.origin.event_id == EVENT_ID


def test_received_at_defaults_to_now_in_utc() -> None:
    before = datetime.now(UTC)
    job = parse_event("fechatter.realtime.chat.42", R_MESSAGE_RECEIVED)
    assert before <= job.origin.received_at <= datetime.now(UTC)


def test_a_naive_received_at_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_event("fechatter.realtime.chat.42", R_MESSAGE_RECEIVED, received_at=datetime(2025, 1, 1))


# -- timestamp and id forms (event-contract: dialects) --------------------------


@pytest.mark.parametrize("digits", range(10))
@pytest.mark.parametrize("offset", ["Z", "+00:00"])
def test_rfc3339_times_with_0_to_9_fraction_digits_decode_to_aware_utc(digits: int, offset: str) -> None:
    fraction = "." + "123456789"[:digits] if digits else ""
    stamp = f"2025-06-27T02:46:01{fraction}{offset}"
    data = f'{{"MessageRead":{{"message_id":1,"chat_id":42,"reader_id":9,"read_at":"{stamp}"}}}}'.encode()
    job = parse("fechatter.realtime.chat.42.read", data)
    assert isinstance(job, MessagesRead)
    # Beyond six digits msgspec rounds to the nearest microsecond (fromisoformat would truncate).
    micros = round(int("123456789"[:digits].ljust(9, "0")) / 1000) if digits else 0
    assert job.read_at == datetime(2025, 6, 27, 2, 46, 1, micros, tzinfo=UTC)
    assert job.read_at.utcoffset() == timedelta(0)


def test_a_nanosecond_time_just_below_a_second_rounds_up_into_the_next_second() -> None:
    data = b'{"MessageRead":{"message_id":1,"chat_id":42,"reader_id":9,"read_at":"2025-06-27T23:59:59.9999996Z"}}'
    job = parse("fechatter.realtime.chat.42.read", data)
    assert isinstance(job, MessagesRead)
    assert job.read_at == datetime(2025, 6, 28, tzinfo=UTC)


def test_a_stream_message_also_accepts_a_numeric_id_and_an_rfc3339_timestamp() -> None:
    data = R_MESSAGE_RECEIVED.replace(b'"id":"1234"', b'"id":1234').replace(
        b'"timestamp":1750992346', b'"timestamp":"2025-06-27T02:45:46Z"'
    )
    job = parse("fechatter.realtime.chat.42", data)
    assert isinstance(job, NewMessage)
    assert (job.message_id, job.created_at) == (1234, datetime(2025, 6, 27, 2, 45, 46, tzinfo=UTC))


def test_null_files_in_a_core_message_become_an_empty_list() -> None:
    job = parse("fechatter.message.created", C_CREATED.replace(b'"files":[]', b'"files":null'))
    assert isinstance(job, NewMessage)
    assert job.files == []


def test_unknown_keys_are_ignored_everywhere() -> None:
    data = C_CREATED.replace(b'"version":"V1"', b'"version":"V1","sig":"ab12","extra":{"x":[1]}')
    assert parse("fechatter.message.created", data) == parse("fechatter.message.created", C_CREATED)
