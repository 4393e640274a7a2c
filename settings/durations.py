"""Durations as operators write them: ``500ms``, ``45s``, ``1m30s``, ``12h`` or a bare number of seconds.

Every duration in the configuration is held as a ``float`` number of **seconds**, so no code
ever has to guess a unit.
"""

from __future__ import annotations

import re

_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")


class DurationError(ValueError):
    """A value that is not a duration; the message says what form is expected."""


def parse_duration(value: object) -> float:
    """Read ``value`` as a duration.

    Parameters:
      value(object): ``"500ms"``, ``"45s"``, ``"1m30s"``, ``"12h"``, or an int/float (seconds).

    Returns:
      float: the duration in seconds.

    Raises:
      DurationError: when the value is not a duration or is negative.
    """
    if isinstance(value, bool):
        raise DurationError(f"expected a duration like 45s, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise DurationError(f"a duration cannot be negative, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise DurationError(f"expected a duration like 45s, got {type(value).__name__} {value!r}")
    text = value.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise DurationError(
            f"{value!r} is not a duration: write a number and a unit (ms, s, m, h, d), "
            "e.g. 500ms, 45s, 1m30s, 12h, or a bare number of seconds"
        )
    return total


def format_duration(seconds: float) -> str:
    """Render seconds the way an operator would write them (``45s``, ``1m30s``, ``500ms``)."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)
