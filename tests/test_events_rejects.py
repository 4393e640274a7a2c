"""Payloads that cannot become jobs are rejected with a stable code and a reason naming the fault."""

from __future__ import annotations

import pytest

from events import EventRejected, RejectCode, parse_event

REALTIME = "fechatter.realtime.chat.42"
MESSAGE_RECEIVED = b'{"MessageReceived":{"message":{"id":"1234","chat_id":42,"sender_id":7,"content":"Hi","files":[],"timestamp":1719456346},"chat_id":42,"recipients":[7,9,11]}}'  # noqa: E501
U_CREATED = b'{"version":"V1","kind":"Created","msg":{"id":1234,"chat_id":42,"sender_id":7,"content":"Hi team","files":[],"created_at":"2025-06-27T02:45:46.782538Z","idempotency_key":"0190b5e2-7c3a-7d82-9206-54b2f6b4f7c4"},"members":[7],"occurred_at":"2025-06-27T02:45:46.801002117Z","sender_name":"Alice Zhang","chat_name":"Design","workspace_id":2,"event_id":"5b0c7f3e-2d1a-4c53-9a55-1f0f3f6f9b21","trace_context":{}}'  # noqa: E501


def reject(subject: str, data: bytes) -> EventRejected:
    with pytest.raises(EventRejected) as info:
        parse_event(subject, data)
    return info.value


@pytest.mark.parametrize("data", [b"not json", b"", b'{"MessageReceived":', b'{"a":1} trailing'])
def test_a_payload_that_is_not_json_is_rejected_as_not_json(data: bytes) -> None:
    error = reject(REALTIME, data)
    assert error.code == RejectCode.NOT_JSON
    assert "is not JSON" in error.reason
    assert REALTIME in error.reason


@pytest.mark.parametrize("data", [b"[1, 2]", b'"MessageReceived"', b"42", b"null", b"  []"])
def test_json_that_is_not_an_object_is_rejected_as_not_object(data: bytes) -> None:
    error = reject(REALTIME, data)
    assert error.code == RejectCode.NOT_OBJECT
    assert "must be a JSON object" in error.reason


def test_a_json_array_on_a_message_subject_is_also_not_an_object() -> None:
    assert reject("fechatter.message.created", b"[]").code == RejectCode.NOT_OBJECT


def test_an_unknown_realtime_variant_is_named_in_the_reason() -> None:
    error = reject(REALTIME, b'{"Bogus":{}}')
    assert error.code == RejectCode.UNKNOWN_VARIANT
    assert "'Bogus'" in error.reason
    assert "MessageReceived" in error.reason  # and the known variants are listed


def test_an_empty_object_on_a_realtime_subject_has_no_variant() -> None:
    error = reject(REALTIME, b"{}")
    assert error.code == RejectCode.UNKNOWN_VARIANT
    assert "keys: none" in error.reason


def test_two_realtime_variants_in_one_payload_are_invalid() -> None:
    error = reject(
        REALTIME,
        b'{"TypingStopped":{"chat_id":42,"user_id":9},"MessageUnread":{"message_id":1,"chat_id":42,"user_id":9}}',
    )
    assert error.code == RejectCode.INVALID_PAYLOAD
    assert "MessageUnread, TypingStopped" in error.reason or "TypingStopped, MessageUnread" in error.reason


def test_an_unknown_internally_tagged_type_is_an_unknown_variant() -> None:
    error = reject(REALTIME, b'{"type":"MessageExploded","chat_id":42}')
    assert error.code == RejectCode.UNKNOWN_VARIANT
    assert "type 'MessageExploded'" in error.reason


def test_an_unknown_event_type_is_an_unknown_variant() -> None:
    error = reject("fechatter.message.new", b'{"event_type":"message_pinned","chat_id":42}')
    assert error.code == RejectCode.UNKNOWN_VARIANT
    assert "event_type 'message_pinned'" in error.reason
    assert "new_message" in error.reason


def test_an_unknown_core_kind_is_an_unknown_variant() -> None:
    error = reject("fechatter.message.created", b'{"kind":"Archived"}')
    assert error.code == RejectCode.UNKNOWN_VARIANT
    assert "kind 'Archived'" in error.reason


def test_a_missing_field_is_named_with_its_path() -> None:
    data = MESSAGE_RECEIVED.replace(b',"sender_id":7', b"")
    error = reject(REALTIME, data)
    assert error.code == RejectCode.INVALID_PAYLOAD
    assert "Object missing required field `sender_id` - at `$.MessageReceived.message`" in error.reason


def test_a_wrong_type_is_named_with_its_path() -> None:
    data = MESSAGE_RECEIVED.replace(b'"chat_id":42,"recipients"', b'"chat_id":"42","recipients"')
    error = reject(REALTIME, data)
    assert error.code == RejectCode.INVALID_PAYLOAD
    assert error.reason.endswith("Expected `int`, got `str` - at `$.MessageReceived.chat_id`")


def test_a_stream_message_id_that_is_not_digits_is_invalid() -> None:
    error = reject(REALTIME, MESSAGE_RECEIVED.replace(b'"id":"1234"', b'"id":"12a4"'))
    assert error.code == RejectCode.INVALID_PAYLOAD
    assert "$.MessageReceived.message.id" in error.reason


def test_a_message_whose_chat_disagrees_with_its_envelope_is_invalid() -> None:
    error = reject(REALTIME, MESSAGE_RECEIVED.replace(b'"chat_id":42,"recipients"', b'"chat_id":43,"recipients"'))
    assert error.code == RejectCode.INVALID_PAYLOAD
    assert "chat_id 43" in error.reason
    assert "chat_id 42" in error.reason


def test_a_timestamp_without_offset_is_invalid_rather_than_guessed() -> None:
    data = b'{"MessageRead":{"message_id":1234,"chat_id":42,"reader_id":9,"read_at":"2025-06-27T02:46:01"}}'
    error = reject("fechatter.realtime.chat.42.read", data)
    assert error.code == RejectCode.INVALID_PAYLOAD
    assert "timezone" in error.reason
    assert "$.MessageRead.read_at" in error.reason


def test_an_id_beyond_i64_is_an_invalid_id() -> None:
    data = b'{"TypingStopped":{"chat_id":9223372036854775808,"user_id":9}}'
    error = reject("fechatter.realtime.chat.42.typing", data)
    assert error.code == RejectCode.INVALID_ID
    assert "id 9223372036854775808 at $.TypingStopped.chat_id" in error.reason


C_CREATED = b'{"version":"V1","kind":"Created","msg":{"id":1234,"chat_id":42,"sender_id":7,"content":"Hi team","files":[],"created_at":"2025-06-27T02:45:46.782538Z","idempotency_key":null},"members":[7,9,11],"occurred_at":"2025-06-27T02:45:46.790112345Z"}'  # noqa: E501
N_NEW = b'{"event_type":"new_message","chat_id":42,"sender_id":7,"sender_name":"Alice Zhang","content":"Hi team","files":[],"timestamp":"2025-06-27T02:45:46.782538Z","message_id":1234,"workspace_id":2}'  # noqa: E501


@pytest.mark.parametrize(
    ("subject", "data", "path", "value"),
    [
        # Every id a route reads: chat, sender, user, message, and each kind of list.
        ("fechatter.realtime.chat.42.typing", b'{"TypingStarted":{"chat_id":0,"user_id":9}}',
         "$.TypingStarted.chat_id", 0),
        ("fechatter.realtime.chat.42.typing", b'{"type":"TypingStopped","chat_id":42,"user_id":-9}',
         "$.user_id", -9),
        ("fechatter.realtime.user.9.presence", b'{"UserPresence":{"user_id":0,"status":"online"}}',
         "$.UserPresence.user_id", 0),
        ("fechatter.realtime.chat.42.read",
         b'{"MessageRead":{"message_id":-1,"chat_id":42,"reader_id":9,"read_at":"2025-06-27T02:46:01Z"}}',
         "$.MessageRead.message_id", -1),
        (REALTIME, MESSAGE_RECEIVED.replace(b'"recipients":[7,9,11]', b'"recipients":[7,0,11]'),
         "$.MessageReceived.recipients[1]", 0),
        (REALTIME, MESSAGE_RECEIVED.replace(b'"sender_id":7', b'"sender_id":-7'),
         "$.MessageReceived.message.sender_id", -7),
        (REALTIME, MESSAGE_RECEIVED.replace(b'"id":"1234"', b'"id":"0"'), "$.MessageReceived.message.id", 0),
        (REALTIME, MESSAGE_RECEIVED.replace(b'"id":"1234"', b'"id":"-3"'), "$.MessageReceived.message.id", -3),
        ("fechatter.message.created", C_CREATED.replace(b'"members":[7,9,11]', b'"members":[7,9,-3]'),
         "$.members[2]", -3),
        ("fechatter.message.created", C_CREATED.replace(b'"id":1234', b'"id":0'), "$.msg.id", 0),
        ("fechatter.message.new", N_NEW.replace(b'"chat_id":42', b'"chat_id":0'), "$.chat_id", 0),
        ("fechatter.messages.created",
         b'{"message":' + C_CREATED[C_CREATED.index(b'{"id"'):C_CREATED.index(b',"members"')]
         + b',"chat_members":[0]}', "$.chat_members[0]", 0),
        ("fechatter.broadcast", b'{"target_users":[9,-1],"event_data":{}}', "$.target_users[1]", -1),
        ("fechatter.chat.joined", b'{"chat_id":42,"user_id":0,"occurred_at":"2025-06-27T03:00:00Z"}',
         "$.user_id", 0),
    ],
)
def test_a_zero_or_negative_id_is_an_invalid_id_naming_where_and_what(
    subject: str, data: bytes, path: str, value: int
) -> None:
    error = reject(subject, data)
    assert error.code == RejectCode.INVALID_ID
    assert f"id {value} at {path}:" in error.reason
    assert "positive" in error.reason


def test_a_workspace_id_is_not_an_address_so_an_odd_one_costs_nothing() -> None:
    # workspace_id routes nothing: a message carrying 0 there is still delivered.
    job = parse_event("fechatter.message.new", N_NEW.replace(b'"workspace_id":2', b'"workspace_id":0'))
    assert job.workspace_id == 0


def test_unix_seconds_out_of_range_stay_an_invalid_payload_not_an_id() -> None:
    error = reject(REALTIME, MESSAGE_RECEIVED.replace(b'"timestamp":1719456346', b'"timestamp":-1'))
    assert error.code == RejectCode.INVALID_PAYLOAD


def test_an_unsupported_version_is_invalid() -> None:
    data = b'{"version":"V2","chat_id":42,"user_id":11,"occurred_at":"2025-06-27T03:00:00Z"}'
    error = reject("fechatter.chat.joined", data)
    assert error.code == RejectCode.INVALID_PAYLOAD
    assert "$.version" in error.reason


def test_the_two_shape_deleted_subject_needs_event_type_or_kind() -> None:
    error = reject("fechatter.message.deleted", b'{"chat_id":42}')
    assert error.code == RejectCode.INVALID_PAYLOAD
    assert "'event_type'" in error.reason
    assert "'kind'" in error.reason


def test_an_unknown_subject_has_no_route() -> None:
    error = reject("fechatter.message.pinned", b"{}")
    assert error.code == RejectCode.NO_ROUTE
    assert "'fechatter.message.pinned'" in error.reason


@pytest.mark.parametrize(
    "subject",
    [
        "fechatter.search.index.message",
        "fechatter.search.index.delete",
        "fechatter.analytics.events",
        "fechatter.notification.events",
    ],
)
def test_subjects_of_other_consumers_are_not_for_notify(subject: str) -> None:
    error = reject(subject, b"{}")
    assert error.code == RejectCode.NOT_FOR_NOTIFY
    assert "not a notify subject" in error.reason


def test_the_disguised_read_receipt_is_dead_lettered_not_turned_into_a_message() -> None:
    # Given the U read receipt Fechatter builds as a fake Created message
    data = (
        U_CREATED.replace(b'"content":"Hi team"', b'"content":"Read 3 messages"')
        .replace(b'"sender_id":7', b'"sender_id":9')
        .replace(
            b'"trace_context":{}', b'"trace_context":{"event_type":"read_receipt","message_count":"3","read_by":"9"}'
        )
    )
    # Then it is rejected with its own code, naming reader, chat and count
    error = reject("fechatter.realtime.message.read_receipt.v1", data)
    assert error.code == RejectCode.DISGUISED_READ_RECEIPT
    assert "user 9 read 3 message(s) of chat 42" in error.reason


def test_domain_events_that_fechatter_never_constructs_are_unsupported() -> None:
    error = reject("FECHATTER_DOMAIN_EVENTS.message", b'{"Message":{}}')
    assert error.code == RejectCode.UNSUPPORTED_DIALECT


def test_a_deeply_nested_payload_is_rejected_not_crashed_on() -> None:
    data = b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert reject(REALTIME, data).code == RejectCode.INVALID_PAYLOAD


def test_the_rejection_message_starts_with_its_code() -> None:
    error = reject("nope", b"{}")
    assert str(error) == f"no_route: {error.reason}"
