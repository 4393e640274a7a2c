import pytest

from settings.subjects import subject_problem, subject_within, subjects_overlap


@pytest.mark.parametrize("subject", ["fechatter.realtime.>", "a.*.c", "fechatter.message.new", ">"])
def test_valid_subjects_have_no_problem(subject: str) -> None:
    assert subject_problem(subject) is None


@pytest.mark.parametrize(
    ("subject", "fragment"),
    [("", "empty"), ("a..b", "empty token"), (".a", "empty token"), ("a.", "empty token"),
     ("a.>.b", "last"), ("a b", "spaces"), ("a.b*.c", "alone")],
)
def test_invalid_subjects_say_what_is_wrong(subject: str, fragment: str) -> None:
    problem = subject_problem(subject)
    assert problem is not None and fragment in problem


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [("a.>", "a.b", True), ("a.*", "a.b.c", False), ("a.*.c", "a.b.*", True), ("a.b", "a.c", False),
     ("fechatter.realtime.>", "fechatter.>", True), ("fechatter.message.>", "fechatter.messages.>", False),
     (">", "x", True), ("a.b", "a.b.c", False)],
)
def test_overlap_means_some_subject_matches_both(a: str, b: str, overlap: bool) -> None:
    assert subjects_overlap(a, b) is overlap
    assert subjects_overlap(b, a) is overlap


@pytest.mark.parametrize(
    ("inner", "outer", "within"),
    [("a.b", "a.>", True), ("a.>", "a.>", True), ("a.>", "a.*", False), ("a.*", "a.>", True),
     ("a", "a.>", False), ("a.b.c", "a.*.c", True), ("a.*.c", "a.b.c", False), ("x.y", ">", True)],
)
def test_within_means_every_match_of_inner_matches_outer(inner: str, outer: str, within: bool) -> None:
    assert subject_within(inner, outer) is within
