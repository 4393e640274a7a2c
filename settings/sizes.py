"""Byte sizes in configuration: ``65536``, ``"64KiB"``, ``"512MB"``, and ``"80%"`` where a share of
the memory available is meant.

Binary (KiB, MiB, GiB) and decimal (KB, MB, GB) units are both accepted: an operator writes what
their dashboard shows, and a silent factor of 1.024 is no reason to refuse a file.
"""

from __future__ import annotations

import re
from typing import Final

_UNITS: Final = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
}
_SIZE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_PERCENT: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def parse_size(value: object) -> int:
    """Bytes from an int or a string with an optional unit.

    Raises:
      ValueError: anything else, naming what is accepted.
    """
    if isinstance(value, bool):
        raise ValueError("expected a byte size such as 65536 or '64KiB'")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match and match.group(2).lower() in _UNITS:
            return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    raise ValueError(f"{value!r} is not a byte size: use bytes (65536) or a unit (64KiB, 512MB, 1GiB)")


def parse_size_or_percent(value: object) -> int | str:
    """Bytes, or a percentage kept as the string ``"N%"`` (0 < N <= 100).

    Raises:
      ValueError: neither a size nor a percentage in range.
    """
    if isinstance(value, str):
        match = _PERCENT.match(value)
        if match:
            share = float(match.group(1))
            if not 0 < share <= 100:
                raise ValueError(f"{value!r}: a percentage must be above 0 and at most 100")
            return f"{match.group(1)}%"
    return parse_size(value)


def percent_of(value: int | str, total: int) -> int:
    """``value`` in bytes: a percentage is taken of ``total``."""
    if isinstance(value, str):
        return int(total * float(value.rstrip("%")) / 100)
    return value
