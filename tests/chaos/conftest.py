"""Marks every chaos test ``slow`` (and puts them in one xdist group) and hands scenarios their size and seed."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.slow)
            # Under pytest-xdist (--dist loadgroup, as ./run test runs it) every scenario goes to the
            # same worker: each loads the machine on purpose, and two at once would measure each other.
            item.add_marker(pytest.mark.xdist_group("chaos"))


@pytest.fixture
def chaos_events(request: pytest.FixtureRequest) -> int | None:
    """``--events N``, or None: the scenario then uses its own CI size."""
    value: int | None = request.config.getoption("--events")
    return value


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int | None:
    """``--chaos-seed S``, or None: the scenario then uses its own fixed seed."""
    value: int | None = request.config.getoption("--chaos-seed")
    return value
