"""A configuration problem is a record, not an exception: every one is collected and reported."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Level = Literal["error", "warning", "info"]
Path = tuple[str | int, ...]


def dotted(path: Path) -> str:
    """``("jetstream", "consumers", 0, "ack_wait")`` -> ``jetstream.consumers[0].ack_wait``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "<root>"


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth knowing) about the configuration, with its place.

    ``origin`` is ``file:line:col``, ``env NAME`` or ``default``; ``code`` is stable, for
    tests and scripts; ``fix`` says what to write instead.
    """

    level: Level
    code: str
    path: str
    message: str
    origin: str = "default"
    value: Any = field(default=None, compare=False)
    fix: str | None = None

    def format(self) -> str:
        """One line an operator can act on."""
        text = f"{self.origin}: {self.level} [{self.code}] {self.path}: {self.message}"
        if self.value is not None:
            text += f" (value: {self.value!r})"
        if self.fix:
            text += f"{'' if text.endswith(('.', '?', ')')) and self.value is None else '.'} Fix: {self.fix}"
        return text


def problem_at(origins: Mapping[Path, str], path: Path, code: str, message: str, value: object = None,
               fix: str | None = None, level: str = "error") -> Problem:
    """A problem at ``path``, its origin the nearest enclosing place that has one (else ``default``)."""
    origin = "default"
    for cut in range(len(path), 0, -1):
        if path[:cut] in origins:
            origin = origins[path[:cut]]
            break
    return Problem(level, code, dotted(path), message, origin=origin, value=value, fix=fix)  # type: ignore[arg-type]


class ConfigError(Exception):
    """The configuration has errors; ``problems`` holds every one of them (and the warnings)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.level == "error"]
        lines = "\n".join(p.format() for p in errors)
        super().__init__(f"{len(errors)} configuration error(s):\n{lines}")
