import pytest

from settings.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("45s", 45.0), ("1m30s", 90.0), ("12h", 43200.0), ("2d", 172800.0),
     (30, 30.0), (1.5, 1.5), ("30", 30.0), (" 10s ", 10.0)],
)
def test_durations_are_read_in_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "fast", "10 s", "10sec", "-5s", -1, True, "1h30", None, [1]])
def test_non_durations_are_rejected_with_the_expected_form(bad: object) -> None:
    with pytest.raises(DurationError):
        parse_duration(bad)


@pytest.mark.parametrize(("seconds", "text"), [(45.0, "45s"), (90.0, "1m30s"), (0.5, "500ms"), (43200, "12h")])
def test_durations_are_rendered_as_written(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds
