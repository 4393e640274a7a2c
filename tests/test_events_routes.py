"""The routing table covers every notify subject of docs/event-contract.md#subjects, with NATS wildcards."""

from __future__ import annotations

import pytest

from events import ROUTES, Status, route_for
from events.subjects import SubjectIndex, matches, validate_pattern

# Every subject of docs/event-contract.md#subjects, with concrete ids, and the job kind each produces.
NOTIFY_SUBJECTS = [
    "fechatter.realtime.chat.42",
    "fechatter.message.new",
    "fechatter.message.created",
    "fechatter.messages.message.created.v1",
    "fechatter.realtime.chat.42.read",
    "fechatter.realtime.chat.42.typing",
    "fechatter.realtime.user.9.presence",
    "fechatter.realtime.chat.42.unread",
    "fechatter.realtime.chat.42.deleted",
    "fechatter.message.edited",
    "fechatter.message.deleted",
    "fechatter.message.updated",
    "fechatter.messages.message.edited.v1",
    "fechatter.messages.message.deleted.v1",
    "fechatter.realtime.read_receipts",
    "fechatter.realtime.message.read_receipt.v1",
    "fechatter.chat.member_joined",
    "fechatter.chat.member_left",
    "fechatter.chat.joined",
    "fechatter.chat.left",
    "fechatter.chats.member.joined.v1",
    "fechatter.chats.member.left.v1",
    "fechatter.message.duplicate",
    "fechatter.messages.created",
    "fechatter.chats.member.joined",
    "fechatter.chats.member.left",
    "fechatter.messages.duplicate",
    "fechatter.user.9",
    "fechatter.broadcast",
]


@pytest.mark.parametrize("subject", NOTIFY_SUBJECTS)
def test_every_notify_subject_has_a_route_that_accepts_payloads(subject: str) -> None:
    route = route_for(subject)
    assert route is not None
    assert route.status is not Status.REJECTED
    assert route.dialects


@pytest.mark.parametrize(
    ("subject", "pattern"),
    [
        ("fechatter.realtime.chat.42", "fechatter.realtime.chat.*"),
        ("fechatter.realtime.chat.42.typing", "fechatter.realtime.chat.*.typing"),
        ("fechatter.realtime.read_receipts", "fechatter.realtime.read_receipts"),
        ("fechatter.realtime.message.read_receipt.v1", "fechatter.realtime.message.read_receipt.v1"),
        ("fechatter.realtime.something.else", "fechatter.realtime.>"),
        ("fechatter.realtime.chat.42.pinned", "fechatter.realtime.>"),
        ("fechatter.user.9.status", "fechatter.user.>"),
    ],
)
def test_the_most_specific_route_is_listed_first_and_wins(subject: str, pattern: str) -> None:
    route = route_for(subject)
    assert route is not None
    assert route.pattern == pattern


@pytest.mark.parametrize(
    "subject",
    [
        "fechatter.realtime",
        "fechatter.user",
        "fechatter.chat.42",
        "other.subject",
        "",
        "fechatter..chat",
        "fechatter.*",
    ],
)
def test_subjects_outside_the_table_have_no_route(subject: str) -> None:
    assert route_for(subject) is None


def test_the_table_lists_each_pattern_once() -> None:
    patterns = [route.pattern for route in ROUTES]
    assert len(patterns) == len(set(patterns))


def test_no_route_is_shadowed_by_an_earlier_one() -> None:
    # A pattern's own subject (wildcards filled in) must route to that pattern.
    for route in ROUTES:
        subject = route.pattern.replace("*", "7").replace(">", "x")
        found = route_for(subject)
        assert found is not None
        assert found.pattern == route.pattern, f"{route.pattern} is shadowed by {found.pattern}"


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.b.d", False),
        ("a.*", "a.b.c", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        ("a.b", "a.b", True),
        ("a.b", "a.b.c", False),
        ("*", "a", True),
        (">", "a.b", True),
    ],
)
def test_wildcards_match_like_the_nats_server(pattern: str, subject: str, expected: bool) -> None:
    assert matches(pattern, subject) is expected
    assert (SubjectIndex([(pattern, 1)]).lookup(subject) == 1) is expected


def test_the_index_agrees_with_a_linear_scan_of_the_table() -> None:
    subjects = [*NOTIFY_SUBJECTS, "fechatter.realtime.chat.1.2", "fechatter.search.index.x", "x"]
    for subject in subjects:
        linear = next((r for r in ROUTES if matches(r.pattern, subject)), None)
        assert route_for(subject) is linear


@pytest.mark.parametrize("pattern", ["a..b", "a.>.b", "a.b*", ""])
def test_malformed_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="subject pattern"):
        validate_pattern(pattern)


def test_a_pattern_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        SubjectIndex([("a.*", 1), ("a.*", 2)])
