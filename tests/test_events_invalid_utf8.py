"""Bytes that are not UTF-8 are refused as not_json wherever they are, and only as EventRejected.

Found by the chaos scenario "bad input at volume" (tests/chaos/test_bad_input.py): msgspec checks
UTF-8 only in the strings it decodes, so a bad byte in a key or value the decoder skips was
accepted, and on a realtime subject an unknown key with a bad byte raised msgspec.DecodeError out
of parse_event, which the bridge's core NATS flusher does not survive.
"""

from __future__ import annotations

import json

import pytest

from events import EventRejected, RejectCode, parse_event

REALTIME = {"MessageReceived": {"message": {"id": "1234", "chat_id": 42, "sender_id": 7, "content": "Hi",
                                            "files": [], "timestamp": 1750992346},
                                "chat_id": 42, "recipients": [7, 9, 11]}}
CREATED = {"version": "V1", "kind": "Created",
           "msg": {"id": 1234, "chat_id": 42, "sender_id": 7, "content": "Hi", "files": [],
                   "created_at": "2025-06-27T02:45:46.782538Z", "idempotency_key": None},
           "members": [7, 9, 11], "occurred_at": "2025-06-27T02:45:46.790112345Z"}


def _compact(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


@pytest.mark.parametrize(("subject", "data"), [
    ("fechatter.realtime.chat.42", b'{"\xffx":1}'),  # an unknown key: raised msgspec.DecodeError
    ("fechatter.realtime.chat.42", _compact(REALTIME).replace(b'{"Message', b'{"\xc3\x28":0,"Message')),
    ("fechatter.message.created", _compact(CREATED).replace(b'"version"', b'"\xffversion"')),
    ("fechatter.message.created", _compact(CREATED).replace(b'"files":[]', b'"files":["\xed\xa0\x80"]')),
])
def test_bytes_that_are_not_utf8_are_not_json_wherever_they_are(subject: str, data: bytes) -> None:
    with pytest.raises(EventRejected) as refused:
        parse_event(subject, data)
    assert refused.value.code is RejectCode.NOT_JSON
    assert "not UTF-8" in refused.value.reason


def test_utf8_text_beyond_ascii_is_still_accepted() -> None:
    payload = json.loads(json.dumps(CREATED))
    payload["msg"]["content"] = "Grüße, 你好 🎉"
    job = parse_event("fechatter.message.created", json.dumps(payload, ensure_ascii=False).encode())
    assert getattr(job, "content", None) == "Grüße, 你好 🎉"
