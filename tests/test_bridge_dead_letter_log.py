"""A flood of dead letters is logged as its first few lines and one summary per interval."""

from __future__ import annotations

import logging

import pytest

from bridge.dead_letter_log import DeadLetterLog
from tests.servers import async_wait_until

log = logging.getLogger("test.dead_letter_log")


def _events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == log.name]


async def test_a_flood_is_its_first_lines_then_one_summary_with_the_counts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=log.name)
    letters = DeadLetterLog(log, burst=3, interval_s=0.3)
    for i in range(10):
        letters.record(consumer="notification_processor", code="not_json", subject="fechatter.message.created", seq=i)
    letters.record(consumer="core", code="invalid_id", subject="fechatter.realtime.chat.1")
    # The first three are logged one by one, the rest wait for the interval's end
    assert _events(caplog) == ["dead_letter"] * 3
    await async_wait_until(lambda: "dead_letters_suppressed" in _events(caplog), timeout=5,
                           message="no summary at the interval's end")
    summary = next(r for r in caplog.records if r.getMessage() == "dead_letters_suppressed")
    assert summary.__dict__["count"] == 8
    assert summary.__dict__["counts"] == "core/invalid_id:1,notification_processor/not_json:7"
    # A new interval logs one by one again
    letters.record(consumer="core", code="not_json", subject="x")
    assert _events(caplog)[-1] == "dead_letter"


async def test_a_quiet_flow_is_logged_line_by_line_and_flush_says_nothing_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=log.name)
    letters = DeadLetterLog(log, burst=3, interval_s=60)
    for i in range(3):
        letters.record(consumer="core", code="not_json", subject="x", seq=i)
    letters.flush()
    assert _events(caplog) == ["dead_letter"] * 3
