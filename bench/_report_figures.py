"""The figures of benchmark runs and their aggregation over rounds (bench/report.py's model).

A bench run's ``--json`` output (:class:`Run`, :class:`Figure`), the median and min-max of each
figure over the rounds (:class:`Spread`), ratios computed round by round against a baseline of the
same unit, and targets such as ``>= 0.60`` (:class:`Target`): see bench/report.py's docstring for the
rules. Pure: no files but the one a bench writes with :func:`write_figures`.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Typography of the tables and plots (written as escapes: ruff flags the characters as look-alikes).
DASH = "\u2013"
TIMES = "\u00d7"
#: The unit of a yes/no figure (1 = yes), shown as yes/no.
BOOL_UNIT = "bool"
#: Units of a figure that is itself a ratio (plotted with the computed ratios).
RATIO_UNITS = frozenset({"ratio", "x", "\u00d7", "", "fraction"})
#: Lines of a failed run's stderr kept in the report.
STDERR_TAIL_LINES = 20

_TARGET = re.compile(r"^\s*(>=|<=|==|!=|>|<|≥|≤)\s*([-+]?[0-9][0-9_,]*(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)\s*$")
_COMPARE = {
    ">=": lambda a, b: a >= b, "≥": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b, "≤": lambda a, b: a <= b,
    ">": lambda a, b: a > b, "<": lambda a, b: a < b,
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Figure:
    """One number a bench measured in one run."""

    name: str
    value: float | None
    unit: str = ""
    baseline: str | None = None
    target: str | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Figure:
        value = raw.get("value")
        number = None if value is None else float(value)
        if number is not None and not math.isfinite(number):
            number = None  # NaN/inf: "not measured" (e.g. no fault to recover from)
        return cls(name=str(raw["name"]), value=number, unit=str(raw.get("unit") or ""),
                   baseline=raw.get("baseline") or None, target=raw.get("target") or None)


@dataclass
class Run:
    """One bench run in one round: its figures, or why there are none."""

    bench: str
    round: int
    seconds: float = 0.0
    figures: list[Figure] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    #: The command's exit code (None: it did not finish, e.g. timed out).
    exit_code: int | None = 0
    #: Why the run counts as failed (None: it did not); the figures it wrote, if any, still count.
    error: str | None = None
    stderr_tail: str = ""

    @property
    def failed(self) -> bool:
        return self.error is not None

    @classmethod
    def from_output(cls, bench: str, round_: int, document: Mapping[str, Any], **fields: Any) -> Run:
        """A run from the JSON document the bench wrote (``{"figures": [...], "meta": {...}}``)."""
        figures = [Figure.from_json(raw) for raw in document.get("figures", [])]
        return cls(bench=bench, round=round_, figures=figures, meta=dict(document.get("meta") or {}), **fields)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Run:
        data = dict(raw)
        data["figures"] = [Figure.from_json(f) for f in data.get("figures", [])]
        return cls(**data)


def figure(name: str, value: float | None, unit: str, baseline: str | None = None,
           target: str | None = None) -> dict[str, Any]:
    """One entry of a bench's ``--json`` output (for the bench scripts that write it)."""
    number = None if value is None or not math.isfinite(value) else float(value)
    return {"name": name, "value": number, "unit": unit, "baseline": baseline, "target": target}


def write_figures(path: Path | str, figures: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> None:
    """A bench's ``--json PATH``: ``{"figures": [...], "meta": {...}}`` (NaN written as null)."""
    Path(path).write_text(json.dumps({"figures": list(figures), "meta": dict(meta)}, indent=1, default=str) + "\n")


def stderr_tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    """The last ``lines`` non-empty lines of a failed run's stderr."""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


# --------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class Spread:
    """Median, min and max of some rounds' values."""

    median: float
    low: float
    high: float
    n: int
    values: tuple[float, ...] = ()

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        if not values:
            return None
        return cls(statistics.median(values), min(values), max(values), len(values), tuple(values))


@dataclass(frozen=True)
class Target:
    """A target such as ``>= 0.60``, checked against a median."""

    text: str
    op: str | None
    bound: float | None

    @classmethod
    def parse(cls, text: str) -> Target:
        match = _TARGET.match(text)
        if match is None:
            return cls(text, None, None)  # free text: shown, not checked
        return cls(text, match.group(1), float(match.group(2).replace(",", "").replace("_", "")))

    def met_by(self, value: float) -> bool | None:
        if self.op is None or self.bound is None:
            return None
        return bool(_COMPARE[self.op](value, self.bound))


@dataclass(frozen=True)
class Summary:
    """One figure over every round of its bench."""

    bench: str
    name: str
    unit: str
    baseline: str | None
    target: Target | None
    value: Spread | None
    #: Per-round value / baseline when the baseline has the same unit (see the module's docstring).
    ratio: Spread | None
    rounds: int

    @property
    def checked(self) -> Spread | None:
        """What the target applies to: the computed ratio if there is one, else the value."""
        return self.ratio if self.ratio is not None else self.value

    @property
    def meets(self) -> bool | None:
        """Whether the median meets the target (None: no target, or nothing measured)."""
        if self.target is None or self.checked is None:
            return None
        return self.target.met_by(self.checked.median)


def aggregate(runs: Iterable[Run]) -> dict[str, list[Summary]]:
    """Each bench's figures (in the order the bench first wrote them) summarised over its rounds."""
    by_bench: dict[str, list[Run]] = {}
    for run in runs:
        by_bench.setdefault(run.bench, []).append(run)
    return {bench: _summarise(bench, sorted(runs_, key=lambda r: r.round)) for bench, runs_ in by_bench.items()}


def _summarise(bench: str, runs: Sequence[Run]) -> list[Summary]:
    first: dict[str, Figure] = {}
    for run in runs:
        for figure in run.figures:
            first.setdefault(figure.name, figure)
    per_round = [{f.name: f for f in run.figures} for run in runs]
    out = []
    for name, figure in first.items():
        values = [r[name].value for r in per_round if name in r and r[name].value is not None]
        ratio = None
        base = first.get(figure.baseline) if figure.baseline else None
        if base is not None and base.unit == figure.unit:
            ratio = Spread.of(_ratios(per_round, name, base.name))
        out.append(Summary(bench=bench, name=name, unit=figure.unit, baseline=figure.baseline,
                           target=Target.parse(figure.target) if figure.target else None,
                           value=Spread.of([v for v in values if v is not None]), ratio=ratio, rounds=len(runs)))
    return out


def _ratios(per_round: Sequence[Mapping[str, Figure]], name: str, baseline: str) -> list[float]:
    """value / baseline of each round that measured both (side by side, in the same run)."""
    out = []
    for figures in per_round:
        value = figures[name].value if name in figures else None
        base = figures[baseline].value if baseline in figures else None
        if value is not None and base:
            out.append(value / base)
    return out


# --------------------------------------------------------------------------- numbers


def number(value: float) -> str:
    """A figure as a reader wants it: thousands separated, about three significant digits."""
    size = abs(value)
    if value == int(value) and size < 1e15:
        return f"{int(value):,}"  # a count, or a ratio of exactly 1
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 0.01:
        return f"{value:.2f}"
    return f"{value:.2g}"


def spread_text(spread: Spread | None) -> tuple[str, str]:
    """(median, "min-max") cells; one round has no range."""
    if spread is None:
        return DASH, DASH
    if spread.n == 1 or spread.low == spread.high:
        return number(spread.median), DASH
    return number(spread.median), f"{number(spread.low)}{DASH}{number(spread.high)}"


def is_ratio_unit(unit: str) -> bool:
    return unit.strip().lower() in RATIO_UNITS


def bench_order(runs: Sequence[Run]) -> list[str]:
    return list(dict.fromkeys(r.bench for r in runs))
