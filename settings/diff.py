"""Which settings differ between two configurations (for reloads), as paths."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from settings.model import Settings
from settings.problems import Path

__all__ = ["changed_paths"]


def changed_paths(old: Settings, new: Settings) -> list[Path]:
    """Paths of the leaves that differ, in key order; lists of sections of equal length are
    compared item by item (``("jetstream", "consumers", 0, "batch")``), other lists whole."""
    return list(_changed(old.model_dump(), new.model_dump(), ()))


def _changed(old: Any, new: Any, path: Path) -> Iterator[Path]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys()):
            yield from _changed(old.get(key), new.get(key), (*path, key))
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and \
            all(isinstance(item, dict) for item in old + new):
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            yield from _changed(a, b, (*path, index))
    elif old != new:
        yield path
