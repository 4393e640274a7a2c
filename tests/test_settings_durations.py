import pytest

from settings import ConfigError, load_settings
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


@pytest.mark.parametrize("key", ["gateway.keep_alive", "jetstream.consumers[0].ack_wait", "redis.dedupe_window"])
def test_a_duration_beyond_ten_years_is_refused_at_its_key(key: str) -> None:
    section, _, rest = key.partition(".")
    if rest.startswith("consumers[0]."):
        text = f"{section}:\n  consumers:\n    - {rest.split('.', 1)[1]}: 99999999999999999999d\n"
    else:
        text = f"{section}:\n  {rest}: 99999999999999999999d\n"
    with pytest.raises(ConfigError) as refused:
        load_settings(text=text, env={})
    assert [p.path for p in refused.value.problems if p.level == "error"] == [key]
    if key == "gateway.keep_alive":  # (the others' timing rules refuse 10 years for reasons of their own)
        assert load_settings(text=text.replace("99999999999999999999d", "3650d"), env={}).settings.gateway.keep_alive \
            == 3650 * 24 * 3600
