"""Pure logic of the bridge: the next-pull function, status classification, config diffs, ids, encoding."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import dramatiq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.protocol.command import pub_cmd

from bridge.acks import Settler, nak_delay
from bridge.batch import EventBatch
from bridge.enqueue import Batch
from bridge.messages import MESSAGE_ID_NAMESPACE, MessageFactory, message_id_for
from bridge.process import reply_metadata
from bridge.provision import consumer_config, diff_consumer, diff_stream, stream_config
from bridge.pull_request import MIN_HEARTBEAT_S, PullState, next_pull
from bridge.status import Action, classify
from events import Lane, job_to_args, parse_event
from settings import ConfigError, load_settings
from settings.model import Consumer, Stream
from tests.test_events_parse import C_CREATED

NS = 1_000_000_000


# -- next_pull: the one function that computes the next pull request ------------------------


@given(
    batch=st.integers(1, 10_000),
    expires=st.floats(0.001, 600, allow_nan=False),
    heartbeat=st.floats(0.001, 600, allow_nan=False),
    max_in_flight=st.integers(1, 50_000),
    pending=st.integers(0, 20_000),
    in_flight=st.integers(0, 50_000),
)
def test_a_pull_request_never_asks_a_heartbeat_above_half_its_expiry(
    batch: int, expires: float, heartbeat: float, max_in_flight: int, pending: int, in_flight: int
) -> None:
    state = PullState(batch, expires, heartbeat, max_in_flight, pending=pending, in_flight=in_flight)
    request = next_pull(state)
    if request is None:
        return
    assert 2 * request.idle_heartbeat_ns <= request.expires_ns
    assert request.idle_heartbeat_ns > 0
    assert 1 <= request.batch <= batch
    assert request.batch + pending + in_flight <= max_in_flight
    body = json.loads(request.payload())
    assert body == {"batch": request.batch, "expires": request.expires_ns, "idle_heartbeat": request.idle_heartbeat_ns}


def test_the_heartbeat_is_clamped_to_half_the_expiry_and_raised_to_the_minimum() -> None:
    clamped = next_pull(PullState(100, 2.0, 45.0, 1000))
    assert clamped is not None and clamped.idle_heartbeat_ns == NS and clamped.expires_ns == 2 * NS
    raised = next_pull(PullState(100, 10.0, 0.1, 1000))
    assert raised is not None and raised.idle_heartbeat_ns == int(MIN_HEARTBEAT_S * NS)


def test_no_pull_while_disconnected_paused_above_the_refill_threshold_or_without_room() -> None:
    assert next_pull(PullState(100, 2, 1, 1000, connected=False)) is None
    assert next_pull(PullState(100, 2, 1, 1000, paused=True)) is None
    assert next_pull(PullState(100, 2, 1, 1000, pending=51)) is None
    assert next_pull(PullState(100, 2, 1, 1000, pending=50)) is not None  # ADR-37: refill at half
    assert next_pull(PullState(100, 2, 1, 1000, in_flight=960)) is None  # room for < half a batch
    smaller = next_pull(PullState(100, 2, 1, 1000, in_flight=930))
    assert smaller is not None and smaller.batch == 70


# -- classification ------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "err_code", "description", "action", "terminal"), [
    (100, 0, "Idle Heartbeat", Action.ACTIVITY, False),
    (404, 0, "No Messages", Action.PULL_ENDED, False),
    (408, 0, "Request Timeout", Action.PULL_ENDED, False),
    (409, 0, "Exceeded MaxWaiting", Action.PULL_ENDED, False),
    (409, 0, "Leadership Change", Action.REPULL, False),
    (409, 0, "Consumer Deleted", Action.RECOVER, False),
    (409, 0, "Consumer is push based", Action.FAIL, True),
    (503, 0, "", Action.RECOVER, False),
    (0, 0, "timeout", Action.RECOVER, False),
    (404, 10014, "consumer not found", Action.RECOVER, False),
    (404, 10059, "stream not found", Action.RECOVER, False),
    (400, 0, "Bad Request - heartbeat value too large", Action.FAIL, True),
    (-1, 0, "closed", Action.FAIL, True),
])
def test_statuses_and_api_errors_are_classified_by_code(code: int, err_code: int, description: str,
                                                        action: Action, terminal: bool) -> None:
    verdict = classify(code, err_code, description)
    assert (verdict.action, verdict.terminal) == (action, terminal)


# -- provisioning diffs ----------------------------------------------------------------------


def test_a_consumer_config_never_carries_a_heartbeat_or_an_inactivity_threshold() -> None:
    config = consumer_config(Consumer(idle_heartbeat=45, filter_subjects=["fechatter.message.>"]))
    assert "idle_heartbeat" not in config and "inactive_threshold" not in config
    assert config["filter_subjects"] == ["fechatter.message.>"] and config["ack_policy"] == "explicit"


def test_consumer_diffs_name_each_field_with_both_values() -> None:
    want = consumer_config(Consumer(ack_wait=3, max_deliver=3, filter_subjects=["a.>", "b.>"]))
    have = {**want, "ack_wait": 30 * NS, "filter_subject": "a.>", "inactive_threshold": 5 * NS}
    del have["filter_subjects"]
    assert diff_consumer(want, have) == [
        "ack_wait: server 30s, settings 3s",
        "filter_subjects: server ['a.>'], settings ['a.>', 'b.>']",
        "inactive_threshold: server 5s, settings 0s",
    ]
    assert diff_consumer(want, dict(want)) == []


def test_with_a_backoff_the_server_ack_wait_is_its_first_step() -> None:
    want = consumer_config(Consumer(ack_wait=3, max_deliver=3, backoff=[1, 2]))
    assert diff_consumer(want, {**want, "ack_wait": NS}) == []


def test_stream_diffs_ignore_subject_order() -> None:
    want = stream_config(Stream(subjects=["a.>", "b.>"]))
    assert diff_stream(want, {**want, "subjects": ["b.>", "a.>"]}) == []
    assert diff_stream(want, {**want, "max_age": 60 * NS}) == ["max_age: server 1m, settings 1d"]


# -- nak schedule -----------------------------------------------------------------------------


def test_nak_delays_follow_the_backoff_schedule_or_double_up_to_a_cap() -> None:
    with_backoff = Consumer(ack_wait=3, max_deliver=4, backoff=[1, 5, 10])
    assert [nak_delay(with_backoff, d) for d in (1, 2, 3, 4)] == [1, 5, 10, 10]
    plain = Consumer()
    assert [nak_delay(plain, d) for d in (1, 2, 3, 10)] == [1, 2, 4, 30]


# -- ids and metadata -------------------------------------------------------------------------


@given(st.text(max_size=50))
def test_message_ids_are_uuid5(identity: str) -> None:
    assert message_id_for(identity) == str(uuid.uuid5(uuid.UUID(bytes=MESSAGE_ID_NAMESPACE), identity))


def test_reply_metadata_reads_both_ack_subject_forms() -> None:
    assert reply_metadata("$JS.ACK.S.c.2.17.9.1700000000000000001.4") == ("S", 17, 2, 1700000000000000001)
    assert reply_metadata("$JS.ACK.dom.acc.S.c.3.18.9.1700000000000000002.4.tok") == ("S", 18, 3, 1700000000000000002)
    assert reply_metadata("_INBOX.x") is None


# -- acks --------------------------------------------------------------------------------------


async def test_a_batch_of_acks_is_the_bytes_of_one_ack_publish_each_in_one_buffer() -> None:
    # Given messages of one (not connected: its outbound buffer holds what is published) client
    client = NATS()
    client._max_pending_size = 2 * 1024 * 1024  # what connect() sets by default
    replies = ["$JS.ACK.S.d.1.7.7.1764448000123456789.0", "$JS.ACK.S.d.2.8.9.1764448000123456790.0"]
    msgs = [Msg(_client=client, subject="s", reply=reply, data=b"{}") for reply in replies]
    # When the settler acks them, twice
    settler = Settler(Consumer(stream="S", durable="d"))
    sent = await settler.ack(msgs)
    again = await settler.ack(msgs)
    # Then the buffer holds exactly what Msg.ack() would have published for each, once
    assert client._pending == [b"".join(pub_cmd(reply, "", b"") for reply in replies)]
    assert (sent, again, settler.lost) == (2, 0, 2)  # an acked message is not acked again
    assert all(msg._ackd for msg in msgs)


# -- dramatiq encoding --------------------------------------------------------------------------


def test_the_bridges_message_json_is_what_dramatiq_decodes_with_job_to_args() -> None:
    received = datetime(2025, 6, 27, 2, 45, 47, tzinfo=UTC)
    events = EventBatch(Batch("ns"), MessageFactory().begin(), {Lane.DOMAIN: "domain", Lane.REALTIME: "realtime"},
                        received, 5.0, 60.0)
    events.add("fechatter.message.created", C_CREATED, None, consumer="c", stream="S", stream_seq=7, delivered=1)
    kind, dedupe, queue_index = events.batch.entries[0][:3]
    message_id, data = events.batch.message(0)  # what enqueue.lua writes
    message = dramatiq.Message.decode(data.encode())
    job = parse_event("fechatter.message.created", C_CREATED, None, stream="S", stream_seq=7, delivered=1,
                      received_at=received)
    assert (kind, dedupe, events.batch.queues[queue_index - 1][0]) == ("J", "ns:bridge:dedupe:S:7", "ns:domain")
    assert message.args == (job_to_args(job),)
    assert (message.queue_name, message.actor_name, message.kwargs) == ("domain", "new_message", {})
    assert message.message_id == message_id == message_id_for("S:7")
    assert message.options["redis_message_id"] == message_id


def test_nats_msg_id_is_the_identity_when_present() -> None:
    events = EventBatch(Batch("ns"), MessageFactory().begin(), {Lane.DOMAIN: "d", Lane.REALTIME: "r"},
                        datetime.now(UTC), 5.0, 60.0)
    events.add("fechatter.message.created", C_CREATED, {"Nats-Msg-Id": "abc"}, consumer="c", stream="S",
               stream_seq=7, delivered=1)
    assert events.batch.entries[0][1] == "ns:bridge:dedupe:S:id:abc"
    assert events.batch.entries[0][3] == message_id_for("S:id:abc")


def test_the_payload_limit_is_inclusive_and_counted_in_bytes() -> None:
    # Given a limit exactly the size of a real payload
    events = EventBatch(Batch("ns"), MessageFactory().begin(), {Lane.DOMAIN: "d", Lane.REALTIME: "r"},
                        datetime.now(UTC), 5.0, 60.0, len(C_CREATED))
    # When that payload arrives, and one a byte longer
    events.add("fechatter.message.created", C_CREATED, None, consumer="c")
    events.add("fechatter.message.created", C_CREATED + b" ", None, consumer="c")
    # Then the first is a job and the second a payload_too_large dead letter, before any decoding
    assert events.job_types == ["NewMessage", None]
    reject = events.rejects[1]
    assert reject is not None and reject.code == "payload_too_large"
    assert f"payload of {len(C_CREATED) + 1} bytes" in reject.reason


@pytest.mark.parametrize(("value", "code"), [(100, "greater_than_equal"), (2**27, "less_than_equal"),
                                             ("256KiB", "int_parsing")])
def test_the_payload_limit_setting_is_validated_at_its_line(value: object, code: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings("notify.yml", env={}, text=f"events:\n  max_payload_bytes: {value}\n")
    (problem,) = [p for p in info.value.problems if p.level == "error"]
    assert (problem.code, problem.path) == (code, "events.max_payload_bytes")


def test_the_payload_limit_defaults_to_256_kib_and_is_set_from_the_environment() -> None:
    assert load_settings(env={}, text="").settings.events.max_payload_bytes == 256 * 1024
    env = {"NOTIFY__EVENTS__MAX_PAYLOAD_BYTES": "4096"}
    assert load_settings(env=env, text="").settings.events.max_payload_bytes == 4096
