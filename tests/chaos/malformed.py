"""Hypothesis strategies for malformed Fechatter payloads, each with the reject code it must get.

A :class:`BadPayload` is a subject, the bytes published on it, and the code the bridge must
dead-letter it with. The bytes start from a good payload of the subject's dialect (so the bad part
is reached, not refused at the first byte) and break it one way:

``truncated`` JSON, ``invalid_utf8`` inside a string, ``not_object`` (an array, string, number...),
``unknown_variant`` (a variant, ``event_type`` or ``kind`` nobody publishes), ``wrong_type`` (a
field the contract checks given a value of another type), ``bad_id`` (an id that is zero, negative
or beyond 2^63-1), ``deep`` (nesting hundreds to thousands of levels deep), ``huge`` (beyond
``events.max_payload_bytes``, which the bridge refuses before decoding), ``no_route`` (a subject the
stream captures but no route knows) and ``random_bytes``.

The expected code is the event contract's own answer (``events.parse_event``, the function the
bridge calls), except for ``huge``, which never reaches it. A strategy that produced a payload the
contract accepts raises at once: that is a generator bug, or a contract too lenient, and either
must be looked at, not counted as malformed.

Which fields a ``wrong_type`` / ``bad_id`` may hit is read from the contract at import (the fields
whose replacement it refuses), so fields it ignores by design are never "broken".
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from hypothesis import strategies as st

from events import EventRejected, parse_event

#: ``events.max_payload_bytes`` the scenario configures (small, so "huge" payloads stay cheap to send).
MAX_PAYLOAD_BYTES: Final = 4096
#: The stream captures these subjects but no route matches them (tests/chaos: no_route).
UNROUTED: Final = ("fechatter.message.exploded", "fechatter.chat.renamed.v9", "fechatter.user.x.unknown")
CREATED_AT: Final = "2025-06-27T02:45:46.782538Z"


@dataclass(frozen=True)
class BadPayload:
    subject: str
    data: bytes
    code: str
    kind: str
    core: bool  # core NATS (realtime subjects) rather than JetStream


def _created(chat: int, ident: int, sender: int, members: list[int]) -> dict[str, Any]:
    return {"version": "V1", "kind": "Created",
            "msg": {"id": ident, "chat_id": chat, "sender_id": sender, "content": f"m{ident}", "files": [],
                    "created_at": CREATED_AT, "idempotency_key": None},
            "members": members, "occurred_at": "2025-06-27T02:45:46.790112345Z"}


def _received(chat: int, ident: int, sender: int, members: list[int]) -> dict[str, Any]:
    return {"MessageReceived": {"message": {"id": str(ident), "chat_id": chat, "sender_id": sender,
                                            "content": f"m{ident}", "files": [], "timestamp": 1750992346},
                                "chat_id": chat, "recipients": members}}


#: Good payloads by subject (ids 42 / 7 / 9; realtime subjects carry the chat or user id).
GOOD: Final[dict[str, dict[str, Any]]] = {
    "fechatter.message.created": _created(42, 1234, 7, [7, 9, 11]),
    "fechatter.message.new": {"event_type": "new_message", "chat_id": 42, "sender_id": 7, "sender_name": "Alice",
                              "content": "Hi", "files": [], "timestamp": CREATED_AT, "message_id": 1234,
                              "workspace_id": 2},
    "fechatter.messages.created": {"message": {"id": 1234, "chat_id": 42, "sender_id": 7, "content": "Hi",
                                               "files": None, "created_at": CREATED_AT, "idempotency_key": None},
                                   "chat_members": [7, 9, 11]},
    "fechatter.realtime.chat.42": _received(42, 1234, 7, [7, 9, 11]),
    "fechatter.realtime.chat.42.typing": {"TypingStarted": {"chat_id": 42, "user_id": 9, "user_name": "Bob Li"}},
    "fechatter.realtime.user.9.presence": {"UserPresence": {"user_id": 9, "status": "away",
                                                            "last_seen": "2025-06-27T02:47:00.000512339+00:00"}},
    "fechatter.realtime.chat.42.read": {"MessageRead": {"message_id": 1234, "chat_id": 42, "reader_id": 9,
                                                        "read_at": "2025-06-27T02:46:01.120394512+00:00"}},
}
Path = tuple[str | int, ...]


def encode(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def reject_code(subject: str, data: bytes) -> str | None:
    """The contract's reject code for ``data`` on ``subject``; None when it accepts it."""
    try:
        parse_event(subject, data)
    except EventRejected as exc:
        return str(exc.code)
    return None


def _leaves(node: Any, path: Path = ()) -> list[Path]:
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _leaves(v, (*path, k))] + ([path] if path else [])
    if isinstance(node, list):
        return [leaf for i, v in enumerate(node) for leaf in _leaves(v, (*path, i))] + [path]
    return [path]


def _replace(node: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    copy = list(node) if isinstance(node, list) else dict(node)
    copy[path[0]] = _replace(node[path[0]], path[1:], value)
    return copy


def _get(node: Any, path: Path) -> Any:
    for part in path:
        node = node[part]
    return node


def _checked(subject: str, probe: Any, want_int: bool) -> list[Path]:
    """Paths of the good payload whose value, replaced by ``probe``, the contract refuses."""
    good = GOOD[subject]
    return [path for path in _leaves(good)
            if (not want_int or type(_get(good, path)) is int)
            and reject_code(subject, encode(_replace(good, path, probe))) is not None]


#: subject -> fields the contract type-checks, and the integer ids it range-checks.
TYPED: Final = {s: _checked(s, {"wrong": ["type"]}, want_int=False) for s in GOOD}
IDS: Final = {s: [p for p in _checked(s, 2**63, want_int=True) if reject_code(s, encode(_replace(GOOD[s], p, 0)))]
              for s in GOOD}


def _is_core(subject: str) -> bool:
    return subject.startswith("fechatter.realtime.")


def _truncated(rng: random.Random, subject: str) -> tuple[str, bytes]:
    data = encode(GOOD[subject])
    return subject, data[: rng.randrange(len(data))]


def _invalid_utf8(rng: random.Random, subject: str) -> tuple[str, bytes]:
    data = encode(GOOD[subject])
    quote = rng.choice([i for i, byte in enumerate(data) if byte == ord('"')])  # inside a key or a string
    return subject, data[: quote + 1] + rng.choice(BAD_UTF8) + data[quote + 1:]


def _not_object(rng: random.Random, subject: str) -> tuple[str, bytes]:
    values: list[Any] = [[rng.randrange(100) for _ in range(rng.randrange(4))], rng.randrange(-(2**70), 2**70),
                         _word(rng), None, rng.random() < 0.5, [GOOD[subject]], rng.random()]
    return subject, encode(rng.choice(values))


def _unknown_variant(rng: random.Random, subject: str) -> tuple[str, bytes]:
    good, name = GOOD[subject], "X" + _word(rng)
    if len(good) == 1:  # a Rust enum: {"Variant": {...}}
        payload: Any = {name: next(iter(good.values()))}
    elif "kind" in good:
        payload = {**good, "kind": name}
    elif "event_type" in good:
        payload = {**good, "event_type": name}
    else:
        payload = {name: good}
    return subject, encode(payload)


def _wrong_type(rng: random.Random, subject: str) -> tuple[str, bytes]:
    subject = subject if TYPED[subject] else "fechatter.message.created"
    wrong = rng.choice([{_word(rng): rng.randrange(10)}, {"list": [1, 2]}, {"s": _word(rng)}])
    return subject, encode(_replace(GOOD[subject], rng.choice(TYPED[subject]), wrong))


def _bad_id(rng: random.Random, subject: str) -> tuple[str, bytes]:
    subject = subject if IDS[subject] else "fechatter.message.created"
    value = rng.randrange(2**63, 2**80) if rng.random() < 0.5 else -rng.randrange(0, 2**70)
    return subject, encode(_replace(GOOD[subject], rng.choice(IDS[subject]), value))


def _deep(rng: random.Random, subject: str) -> tuple[str, bytes]:
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
    # Deep, yet within events.max_payload_bytes, so that the decoder (not the size check) refuses it.
    room = (MAX_PAYLOAD_BYTES - len(encode(GOOD[subject])) - 16) // (len(opener) + len(closer))
    depth = rng.randrange(100, room)
    nested = opener * depth + b"1" + closer * depth
    good = GOOD[subject]
    path = rng.choice([p for p in _leaves(good) if p])
    data = encode(_replace(good, path, "@@DEEP@@")).replace(b'"@@DEEP@@"', nested)
    if reject_code(subject, data) is None:  # a field the contract does not read: nest the whole payload
        data = opener * depth + encode(good) + closer * depth
    return subject, data


def _huge(rng: random.Random, subject: str) -> tuple[str, bytes]:
    data = encode(GOOD[subject])
    size = rng.randrange(MAX_PAYLOAD_BYTES + 1, 3 * MAX_PAYLOAD_BYTES)
    return subject, data[:-1] + b" " * (size - len(data)) + data[-1:]  # whitespace: the same JSON, too large


def _no_route(rng: random.Random, subject: str) -> tuple[str, bytes]:
    return rng.choice(UNROUTED), encode(GOOD["fechatter.message.created"])


def _random_bytes(rng: random.Random, subject: str) -> tuple[str, bytes]:
    return subject, rng.randbytes(rng.randrange(65))


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghij") for _ in range(rng.randrange(1, 10)))


BAD_UTF8: Final = (b"\xff", b"\xc3\x28", b"\x80", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80")
BUILDERS: Final[dict[str, Callable[[random.Random, str], tuple[str, bytes]]]] = {
    "truncated": _truncated, "invalid_utf8": _invalid_utf8, "not_object": _not_object,
    "unknown_variant": _unknown_variant, "wrong_type": _wrong_type, "bad_id": _bad_id, "deep": _deep,
    "huge": _huge, "no_route": _no_route, "random_bytes": _random_bytes,
}
#: One payload's recipe: its kind and subject, and the seed of the details (which field, which value).
Recipe = tuple[str, str, int]
recipes: Final[st.SearchStrategy[Recipe]] = st.tuples(
    st.sampled_from(sorted(BUILDERS)), st.sampled_from(sorted(GOOD)), st.integers(0, 2**32 - 1))


def build(recipe: Recipe, index: int) -> BadPayload:
    """The payload a recipe describes, with the code it must be dead-lettered with.

    ``index`` (the payload's place in the run) is mixed into the detail seed: hypothesis repeats
    small seeds often, and 10,000 payloads should be 10,000 different ones.
    """
    kind, subject, detail = recipe
    subject, data = BUILDERS[kind](random.Random(f"{detail}:{index}"), subject)
    code = "payload_too_large" if len(data) > MAX_PAYLOAD_BYTES else reject_code(subject, data)
    if code is None:
        raise AssertionError(f"generator bug or lenient contract: {kind} payload accepted on {subject}: {data[:300]!r}")
    return BadPayload(subject, data, code, kind, _is_core(subject))
