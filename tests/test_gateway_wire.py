"""Wire formats of the gateway: SSE frames, stream ids, and the pub/sub RESP reader."""

from __future__ import annotations

import json

import pytest

from gateway.frames import ZERO_ID, StreamId, data_frame, json_frame, parse_stream_id
from gateway.resp import RespError, RespProtocolError, RespReader


def test_a_frame_has_an_id_line_and_one_data_line_and_no_event_name() -> None:
    assert data_frame(b'{"type":"x"}', b"1-0") == b'id: 1-0\ndata: {"type":"x"}\n\n'
    assert b"event:" not in data_frame(b'{"type":"x"}', b"1-0")


def test_multi_line_json_becomes_several_data_lines_that_join_back_to_the_json() -> None:
    text = json.dumps({"type": "x", "a": [1, 2]}, indent=2)
    frame = data_frame(text.encode())
    lines = [line.removeprefix(b"data: ") for line in frame.split(b"\n") if line]
    assert json.loads(b"\n".join(lines)) == {"type": "x", "a": [1, 2]}


def test_the_gateways_own_frames_carry_no_id() -> None:
    assert json_frame({"type": "resync_required"}) == b'data: {"type":"resync_required"}\n\n'


@pytest.mark.parametrize("text", [b"1700000000000-3", "1700000000000-3", " 1700000000000-3 "])
def test_stream_ids_parse_from_bytes_and_text(text: bytes | str) -> None:
    assert parse_stream_id(text) == StreamId(1700000000000, 3)


@pytest.mark.parametrize("text", [b"", b"1", b"1-", b"-1", b"a-1", b"1-2-3", "1-x", b"\xff-1",
                                  # Redis id parts are u64: one more makes every XRANGE fail
                                  "18446744073709551616-0", b"0-18446744073709551616",
                                  "99999999999999999999-0", b"1-99999999999999999999"])
def test_anything_else_is_not_a_stream_id(text: bytes | str) -> None:
    with pytest.raises(ValueError):
        parse_stream_id(text)


def test_the_largest_redis_stream_id_is_one() -> None:
    assert parse_stream_id("18446744073709551615-18446744073709551615") == StreamId(2**64 - 1, 2**64 - 1)
    assert parse_stream_id(b"18446744073709551615-0") == StreamId(2**64 - 1, 0)


def test_stream_ids_compare_as_numbers_not_strings() -> None:
    assert parse_stream_id("9-0") < parse_stream_id("10-0")
    assert parse_stream_id("10-2") < parse_stream_id("10-10")
    assert parse_stream_id("0-1") > ZERO_ID
    assert str(parse_stream_id(b"5-6")) == "5-6"


def _message(channel: bytes, payload: bytes) -> bytes:
    return (b"*3\r\n$7\r\nmessage\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
            % (len(channel), channel, len(payload), payload))


def test_the_resp_reader_parses_replies_split_at_every_byte() -> None:
    # Given two messages, a subscribe confirmation, a pong, an error and a null
    wire = (_message(b"ns:live:1", b"1-0\n{}") + b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
            + _message(b"ns:live:2", b"2-0\n" + b"x" * 300) + b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
            + b"-NOPERM no\r\n" + b"$-1\r\n" + b"+OK\r\n")
    # When it arrives one byte at a time
    reader = RespReader()
    replies = []
    for i in range(len(wire)):
        replies += reader.feed(wire[i:i + 1])
    # Then every reply comes out once, whole, in order
    assert replies[:4] == [
        [b"message", b"ns:live:1", b"1-0\n{}"],
        [b"subscribe", b"ch", 1],
        [b"message", b"ns:live:2", b"2-0\n" + b"x" * 300],
        [b"pong", b""],
    ]
    assert isinstance(replies[4], RespError) and str(replies[4]) == "NOPERM no"
    assert replies[5:] == [None, b"OK"]
    assert reader.feed(b"") == []


def test_the_resp_reader_refuses_bytes_that_are_not_resp() -> None:
    with pytest.raises(RespProtocolError):
        RespReader().feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(RespProtocolError):
        RespReader().feed(b"$abc\r\n")
