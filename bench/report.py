"""The benchmark report: figures of several rounds aggregated, written as markdown with PNG plots.

``bench/run_all.py`` runs every benchmark ``--rounds`` times with ``--json PATH``; each run writes
(the shape every bench script shares)::

    {"figures": [{"name": "bridge events/s", "value": 18849.0, "unit": "events/s",
                  "baseline": "fetch() events/s", "target": ">= 0.60"}, ...],
     "meta": {...}}

This module is the pure part: it turns those runs (:class:`Run`) into one :class:`Summary` per
figure (median, min, max over the rounds), the markdown of ``RESULTS.md`` and the plots. It starts
no server and runs no benchmark, so ``tests/test_bench_report.py`` tests it on canned JSON.

A figure's ``baseline`` names another figure of the same bench, measured in the same run:

* when both have the same unit (e.g. both events/s), the figure is a ratio to that baseline: the
  ratio is computed round by round (each round's value over the same round's baseline) and its
  median and min-max are reported; the target, if any, applies to that ratio;
* otherwise the value already is the ratio (unit ``ratio``, ``x``, ``%``...) and is reported as is;
  so is a figure without a baseline, an absolute number on the machine the report names.

``python bench/report.py results/runs.json [--out DIR]`` writes the report again from the raw
runs that run_all saved (to change the layout without running the benchmarks again).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: The report's file name in its directory (bench/RESULTS.md by default).
REPORT_NAME = "RESULTS.md"
#: Where the plots go, relative to the report's directory (RESULTS.md links them with this prefix).
PLOTS_DIR = "results"
#: The raw runs beside the plots, enough to write the report again (``python bench/report.py``).
RUNS_FILE = "runs.json"
#: Typography of the tables (written as escapes: ruff flags the characters as look-alikes).
DASH = "\u2013"
TIMES = "\u00d7"
#: The unit of a yes/no figure (1 = yes), shown as yes/no.
BOOL_UNIT = "bool"
#: Units of a figure that is itself a ratio (plotted with the computed ratios).
RATIO_UNITS = frozenset({"ratio", "x", "\u00d7", "", "fraction"})
#: Units of time per time (CPU microseconds per second...): rates, but not throughputs.
_TIME_PER_TIME = re.compile(r"^(ns|us|\u00b5s|ms|s|cpu-s)/s$", re.IGNORECASE)
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


# --------------------------------------------------------------------------- markdown


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


def value_text(summary: Summary) -> tuple[str, str]:
    """(median, min-max) cells of a figure; a yes/no figure (unit ``bool``) says in how many rounds."""
    if summary.unit != BOOL_UNIT or summary.value is None:
        return spread_text(summary.value)
    yes = sum(1 for v in summary.value.values if v)
    if yes == summary.value.n:
        return "yes", DASH
    return ("no", DASH) if yes == 0 else (f"yes in {yes} of {summary.value.n}", DASH)


def is_ratio_unit(unit: str) -> bool:
    return unit.strip().lower() in RATIO_UNITS


def _vs_baseline(summary: Summary) -> str:
    if summary.baseline is None:
        return DASH
    if summary.ratio is None:
        # Written as a ratio by the bench; a bench that names a baseline of another kind gets it named only.
        return f"ratio to {summary.baseline}" if is_ratio_unit(summary.unit) else f"baseline: {summary.baseline}"
    median, span = spread_text(summary.ratio)
    return f"**{median}{TIMES}** {summary.baseline}" + (f" ({span})" if span != DASH else "")


def _met(summary: Summary) -> str:
    meets = summary.meets
    if meets is None:
        return "" if summary.target is None else "?"
    return "yes" if meets else "**no**"


def bench_table(summaries: Sequence[Summary]) -> list[str]:
    """The markdown table of one bench's figures."""
    lines = [f"| figure | median | min{DASH}max | unit | vs baseline (same run) | target | met | rounds |",
             "|---|--:|--:|---|---|---|---|--:|"]
    for s in summaries:
        median, span = value_text(s)
        measured = s.checked.n if s.checked is not None else 0
        rounds = str(s.rounds) if measured == s.rounds else f"{measured} of {s.rounds}"
        lines.append(f"| {_cell(s.name)} | {median} | {span} | {_cell(s.unit)} | {_cell(_vs_baseline(s))} | "
                     f"{_cell(s.target.text if s.target else '')} | {_met(s)} | {rounds} |")
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def targets_table(aggregated: Mapping[str, Sequence[Summary]]) -> list[str]:
    """Every figure with a target, in one table: the report's first answer."""
    rows = [s for summaries in aggregated.values() for s in summaries if s.target is not None]
    if not rows:
        return []
    lines = ["| bench | figure | target | median | met |", "|---|---|---|--:|---|"]
    for s in rows:
        if s.ratio is not None:
            what = f"{number(s.ratio.median)}{TIMES} {s.baseline}"
        elif s.unit == BOOL_UNIT or s.value is None or is_ratio_unit(s.unit):
            what = value_text(s)[0]
        else:
            what = f"{number(s.value.median)} {s.unit}"
        lines.append(f"| {s.bench} | {_cell(s.name)} | {_cell(s.target.text if s.target else '')} | {_cell(what)} | "
                     f"{_met(s)} |")
    return lines


@dataclass(frozen=True)
class ReportContext:
    """What the report says about the run as a whole."""

    started: str
    command: str
    rounds: int
    seed: int
    quick: bool
    elapsed_s: float
    machine: Mapping[str, str]
    #: bench name -> the command line of one of its runs (``--json`` path left out)
    commands: Mapping[str, str] = field(default_factory=dict)
    #: Stopped (Ctrl-C, SIGTERM) before every run was done.
    interrupted: bool = False


def render(context: ReportContext, runs: Sequence[Run], plots: Mapping[str, Sequence[Path]],
           report_dir: Path) -> str:
    """RESULTS.md: the run, the machine, the targets, then one section per bench."""
    aggregated = aggregate(runs)
    size = "at --quick size (small: for trying the tooling, not for numbers)" if context.quick else "at full size"
    lines = ["# Benchmark results", "",
             f"Run {context.started}: `{context.command}`, {context.rounds} round(s) interleaved (every bench once "
             f"per round), seed {context.seed} in every round, {size}; {context.elapsed_s / 60:.1f} min in all.",
             "", f"Each figure is the median over the rounds, with its min{DASH}max. A figure with a baseline is a "
             "ratio to another figure measured side by side in the same run (computed round by round when both carry "
             "the same unit); a figure without one is an absolute number, valid on the machine below only.", "",
             "## Machine", "", "| | |", "|---|---|"]
    if context.interrupted:
        lines[4:4] = ["**Interrupted**: this report covers only the runs that finished before.", ""]
    lines += [f"| {_cell(key)} | {_cell(value)} |" for key, value in context.machine.items()]
    targets = targets_table(aggregated)
    if targets:
        lines += ["", "## Targets", "", *targets]
    failures = [r for r in runs if r.failed]
    if failures:
        lines += ["", f"**{len(failures)} run(s) failed**: see the bench sections below."]
    for plot in plots.get("", []):
        lines += ["", f"![{plot.stem}]({_link(plot, report_dir)})"]
    for bench in _bench_order(runs):
        lines += ["", *bench_section(bench, aggregated.get(bench, []), [r for r in runs if r.bench == bench],
                                     context.commands.get(bench), plots.get(bench, []), report_dir)]
    return "\n".join(lines) + "\n"


def _bench_order(runs: Sequence[Run]) -> list[str]:
    return list(dict.fromkeys(r.bench for r in runs))


def bench_section(bench: str, summaries: Sequence[Summary], runs: Sequence[Run], command: str | None,
                  plots: Sequence[Path], report_dir: Path) -> list[str]:
    """One bench: its command, its table, its plots, its failures."""
    lines = [f"## {bench}", ""]
    if command:
        lines += [f"`{command}`", ""]
    seconds = [r.seconds for r in runs]
    if seconds:
        lines += [f"{len(runs)} run(s), {number(statistics.median(seconds))} s each (median).", ""]
    lines += bench_table(summaries) if summaries else ["No figures: every run failed."]
    for plot in plots:
        lines += ["", f"![{bench} {plot.stem}]({_link(plot, report_dir)})"]
    for run in runs:
        if run.failed:
            code = "did not finish" if run.exit_code is None else f"exit code {run.exit_code}"
            lines += ["", f"Round {run.round} failed ({code}, after {number(run.seconds)} s): {run.error}"]
            if run.stderr_tail:
                lines += ["", "```", run.stderr_tail, "```"]
    return lines


def _link(plot: Path, report_dir: Path) -> str:
    try:
        return plot.relative_to(report_dir).as_posix()
    except ValueError:
        return plot.as_posix()


# --------------------------------------------------------------------------- plot data

#: meta keys a bench may use for its latency distribution per load step (see latency_curves).
CDF_KEYS = ("cdf", "samples")
#: meta key of the scale-out steps (see scale_out_steps).
SCALE_OUT_KEY = "scale_out"
#: meta key of the load ladders (see load_steps).
LADDERS_KEY = "ladders"
#: A figure of one load step (bench/pipeline.py names them ``...chat3.at200.p99_ms``): the load-step
#: plot shows those, the throughput bars leave them out.
STEP_FIGURE = re.compile(r"\.at\d+\.")


def latency_curves(runs: Sequence[Run]) -> dict[str, list[tuple[float, float]]]:
    """Each load step's latency CDF as (ms, fraction <= ms) points, from the bench's ``meta``.

    ``meta["samples"]``: {step label: [latency ms, ...]}, pooled over the rounds;
    ``meta["cdf"]``: {step label: [[ms, fraction], ...]} (or {"ms": [...], "p": [...]}), the
    last round that carries the step. A bench without either has no curves.
    """
    samples: dict[str, list[float]] = {}
    points: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        sections = [run.meta.get(key) for key in CDF_KEYS] + [_ladder_curves(run.meta, key) for key in CDF_KEYS]
        for section in sections:
            if not isinstance(section, Mapping):
                continue
            for label, data in section.items():
                parsed = _curve(data)
                if parsed is None:
                    continue
                kind, values = parsed
                if kind == "samples":
                    samples.setdefault(str(label), []).extend(v for v, _ in values)
                else:
                    points[str(label)] = values
    curves = dict(points)
    for label, values in samples.items():
        ordered = sorted(values)
        curves[label] = [(v, (i + 1) / len(ordered)) for i, v in enumerate(ordered)]
    return curves


def _ladder_curves(meta: Mapping[str, Any], key: str) -> dict[str, Any]:
    """{step label: data} of ``key`` in each load step of ``meta["ladders"]`` (bench/pipeline.py)."""
    return {_step_label(ladder, step): step[key] for ladder, step in _ladder_steps(meta) if key in step}


def _ladder_steps(meta: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    ladders = meta.get(LADDERS_KEY)
    if not isinstance(ladders, list):
        return []
    return [(ladder, step) for ladder in ladders if isinstance(ladder, Mapping)
            for step in ladder.get("steps") or [] if isinstance(step, Mapping)]


def _step_label(ladder: Mapping[str, Any], step: Mapping[str, Any]) -> str:
    return f"chats of {ladder.get('chat_size', '?')}, {step.get('target_msgs_s', '?')} msg/s"


@dataclass(frozen=True)
class LoadStep:
    """One offered-load step of a ladder over the rounds (None: not measured, e.g. a p99 that is
    infinite because frames never came)."""

    rate: float
    offered: Spread | None
    delivered: Spread | None
    p50: Spread | None
    p99: Spread | None
    max: Spread | None


def load_steps(runs: Sequence[Run]) -> dict[str, list[LoadStep]]:
    """bench/pipeline.py's load ladders (``meta["ladders"]``: [{"chat_size": n, "steps": [{"target_msgs_s",
    "offered_msgs_s", "delivered_msgs_s", "p50_ms", "p99_ms", "max_ms"}, ...]}]) per chat size."""
    values: dict[str, dict[float, dict[str, list[float]]]] = {}
    for run in runs:
        for ladder, step in _ladder_steps(run.meta):
            try:
                rate = float(step["target_msgs_s"])
            except (KeyError, TypeError, ValueError):
                continue
            per = values.setdefault(f"chats of {ladder.get('chat_size', '?')}", {}).setdefault(rate, {})
            for key in ("offered_msgs_s", "delivered_msgs_s", "p50_ms", "p99_ms", "max_ms"):
                value = step.get(key)
                if isinstance(value, int | float) and math.isfinite(value):
                    per.setdefault(key, []).append(float(value))
    return {label: [LoadStep(rate, *(Spread.of(v.get(k, [])) for k in ("offered_msgs_s", "delivered_msgs_s",
                                                                          "p50_ms", "p99_ms", "max_ms")))
                     for rate, v in sorted(by_rate.items())]
            for label, by_rate in values.items()}


def _curve(data: Any) -> tuple[str, list[tuple[float, float]]] | None:
    """("samples" | "cdf", points) of one step's data; None when it is neither (e.g. a sample count)."""
    if isinstance(data, Mapping):
        xs, ps = data.get("ms") or data.get("x"), data.get("p") or data.get("fraction")
        if isinstance(xs, list) and isinstance(ps, list) and len(xs) == len(ps):
            return "cdf", _finite_pairs(zip(xs, ps, strict=True))
        return None
    if not isinstance(data, list) or not data:
        return None
    if all(isinstance(v, int | float) or v is None for v in data):
        return "samples", _finite_pairs((v, 0.0) for v in data)
    if all(isinstance(v, list | tuple) and len(v) == 2 for v in data):
        return "cdf", _finite_pairs(data)
    return None


def _finite_pairs(pairs: Iterable[Any]) -> list[tuple[float, float]]:
    """The pairs of two finite numbers (a null stands for an infinite latency: a frame that never came)."""
    out = []
    for x, p in pairs:
        if isinstance(x, int | float) and isinstance(p, int | float) and math.isfinite(x) and math.isfinite(p):
            out.append((float(x), float(p)))
    return out


def scale_out_steps(runs: Sequence[Run]) -> dict[str, list[tuple[float, Spread]]]:
    """Throughput per scale-out step as a ratio to the first step, median over the rounds.

    ``meta["scale_out"]``: {what is scaled: steps}, steps either {"1": v, "2": v, ...},
    [[1, v], [2, v], ...] or [{"n": 1, "value": v}, ...], v a throughput (any unit, the same
    within one series); or bench/pipeline.py's {"points": {name: {"layout": {"bridges": b,
    "workers": w, "gateways": g}, "notifications_s": v}}} (see :func:`_layout_series`). Each
    round's steps are divided by that round's first step.
    """
    ratios: dict[str, dict[float, list[float]]] = {}
    for run in runs:
        section = run.meta.get(SCALE_OUT_KEY)
        if not isinstance(section, Mapping):
            continue
        if isinstance(section.get("points"), Mapping):
            section = _layout_series(section["points"])
        for series, raw in section.items():
            steps = sorted(_steps(raw))
            if not steps or not steps[0][1]:
                continue
            one = steps[0][1]
            for n, value in steps:
                ratios.setdefault(str(series), {}).setdefault(n, []).append(value / one)
    out: dict[str, list[tuple[float, Spread]]] = {}
    for series, by_n in ratios.items():
        out[series] = [(n, spread) for n, values in sorted(by_n.items()) if (spread := Spread.of(values))]
    return out


def _layout_series(points: Mapping[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """bench/pipeline.py's scale-out runs as series: one process kind varied, the others fixed.

    "workers": the runs with one bridge and one gateway, by worker processes; "bridges (w=N)" and
    "gateways (w=N)": the runs with N workers and one of the other kind, by bridges or gateways
    (the run with one of each is the series' first step).
    """
    layouts: list[tuple[int, int, int, float]] = []
    for point in points.values():
        try:
            layout, value = point["layout"], float(point["notifications_s"])
            layouts.append((int(layout["bridges"]), int(layout["workers"]), int(layout["gateways"]), value))
        except (KeyError, TypeError, ValueError):
            continue
    series: dict[str, list[tuple[float, float]]] = {}
    for b, w, g, value in layouts:
        if b == 1 and g == 1:
            series.setdefault("workers", []).append((w, value))
    for kind, index in (("bridges", 0), ("gateways", 2)):
        for layout in layouts:
            if layout[index] == 1:
                continue
            w = layout[1]
            steps = [(float(x[index]), x[3]) for x in layouts
                     if x[1] == w and x[2 - index] == 1 and (x[index] == 1 or x == layout)]
            series[f"{kind} (w={w})"] = sorted(set(steps))
    return {name: steps for name, steps in series.items() if len(steps) > 1}


def _steps(raw: Any) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    try:
        if isinstance(raw, Mapping):
            out = [(float(n), float(v)) for n, v in raw.items()]
        elif isinstance(raw, list):
            for item in raw:
                if isinstance(item, Mapping):
                    out.append((float(item["n"]), float(item["value"])))
                else:
                    n, v = item
                    out.append((float(n), float(v)))
    except (KeyError, TypeError, ValueError):
        return []
    return out


def throughput_summaries(aggregated: Mapping[str, Sequence[Summary]]) -> dict[str, list[Summary]]:
    """Per bench, its absolute throughputs: figures whose unit is a rate ("/s")."""
    out = {}
    for bench, summaries in aggregated.items():
        rates = [s for s in summaries
                 if s.unit.endswith("/s") and not _TIME_PER_TIME.match(s.unit) and s.value is not None
                 and not STEP_FIGURE.search(s.name)]
        if rates:
            out[bench] = rates
    return out


def ratio_summaries(aggregated: Mapping[str, Sequence[Summary]]) -> list[Summary]:
    """Every figure that is a ratio to a baseline (computed, or written as a ratio)."""
    return [s for summaries in aggregated.values() for s in summaries
            if s.baseline is not None and (s.ratio is not None or (s.value is not None and is_ratio_unit(s.unit)))]


# --------------------------------------------------------------------------- plots


def write_plots(runs: Sequence[Run], plots_dir: Path) -> dict[str, list[Path]]:
    """The PNG plots; keys: "" for the whole run, else the bench a plot belongs to. A plot that
    cannot be drawn (odd data from a bench) is skipped with a line on stderr: the tables matter more."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a benchmark machine
    plots_dir.mkdir(parents=True, exist_ok=True)
    aggregated = aggregate(runs)
    out: dict[str, list[Path]] = {}

    def draw(key: str, plot: Callable[..., Path], *args: Any) -> None:
        try:
            out.setdefault(key, []).append(plot(*args))
        except Exception as exc:  # any plotting failure: say so and go on
            print(f"report: {args[-1]} not drawn: {exc!r}", file=sys.stderr)

    rates = throughput_summaries(aggregated)
    if rates:
        draw("", _plot_throughput, rates, plots_dir / "throughput.png")
    ratios = ratio_summaries(aggregated)
    if ratios:
        draw("", _plot_ratios, ratios, plots_dir / "ratios.png")
    for bench in _bench_order(runs):
        mine = [r for r in runs if r.bench == bench]
        ladders = load_steps(mine)
        if ladders:
            bound = _p99_bound(aggregated.get(bench, []))
            draw(bench, _plot_load_steps, bench, ladders, bound, plots_dir / f"{bench}-load-steps.png")
        steps = scale_out_steps(mine)
        if steps:
            draw(bench, _plot_scale_out, bench, steps, plots_dir / f"{bench}-scale-out.png")
        curves = latency_curves(mine)
        if curves:
            draw(bench, _plot_cdf, bench, curves, plots_dir / f"{bench}-cdf.png")
    return out


def _plot_throughput(rates: Mapping[str, Sequence[Summary]], path: Path) -> Path:
    import matplotlib.pyplot as plt

    heights = [max(1.2, 0.35 * len(s) + 0.6) for s in rates.values()]
    fig, axes = plt.subplots(len(rates), 1, figsize=(8, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (bench, summaries) in zip(axes[:, 0], rates.items(), strict=True):
        medians = [s.value.median for s in summaries if s.value]
        errors = [[s.value.median - s.value.low for s in summaries if s.value],
                  [s.value.high - s.value.median for s in summaries if s.value]]
        labels = [f"{s.name} ({s.unit})" for s in summaries]
        ax.barh(range(len(medians)), medians, xerr=errors, color="tab:blue", capsize=3)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(bench, fontsize=10, loc="left")
        for i, (value, high) in enumerate(zip(medians, errors[1], strict=True)):
            ax.text(value + high, i, " " + number(value), va="center", fontsize=7)  # right of the error bar
    fig.suptitle(f"Throughput per stage (median, min{DASH}max over rounds)", fontsize=11)
    return _save(fig, path)


def _plot_ratios(ratios: Sequence[Summary], path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(8, max(1.5, 0.35 * len(ratios) + 1)))
    for i, s in enumerate(ratios):
        spread = s.ratio or s.value
        if spread is None or spread.low <= 0:
            continue  # a log axis has no 0
        color = {True: "tab:green", False: "tab:red", None: "tab:gray"}[s.meets]
        # Dots, not bars: on a log axis a bar's length means nothing.
        ax.errorbar(spread.median, i, xerr=[[spread.median - spread.low], [spread.high - spread.median]],
                    fmt="o", color=color, capsize=3)
        ax.text(spread.high, i, "  " + number(spread.median), va="center", fontsize=7)
        if s.target is not None and s.target.bound is not None and s.target.bound > 0:
            ax.plot([s.target.bound] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
    ax.axvline(1.0, color="gray", linestyle=":", linewidth=1)
    ax.set_xscale("log")  # 0.5 and 2 equally far from 1; ratios here span 0.1 to 100
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: number(x)))
    ax.grid(True, axis="x", which="major", alpha=0.3)
    labels = [f"{s.bench}: {s.name} / {s.baseline}" if s.ratio is not None else f"{s.bench}: {s.name}"
              for s in ratios]
    ax.set_yticks(range(len(ratios)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (black mark: target; green: met, red: not met, gray: no target)", fontsize=8)
    ax.set_title("Ratios to baselines measured in the same run", fontsize=10, loc="left")
    return _save(fig, path)


def _plot_scale_out(bench: str, steps: Mapping[str, Sequence[tuple[float, Spread]]], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    top = 1.0
    for series, points in steps.items():
        ns = [n for n, _ in points]
        medians = [s.median for _, s in points]
        errors = [[s.median - s.low for _, s in points], [s.high - s.median for _, s in points]]
        ax.errorbar(ns, medians, yerr=errors, marker="o", capsize=3, label=series)
        top = max(top, *ns)
    ax.plot([1, top], [1, top], color="gray", linestyle=":", linewidth=1, label="linear")
    ax.set_xlabel("processes")
    ax.set_ylabel("throughput as a ratio to the first step (one)")
    ax.set_title(f"{bench}: scale-out (median, min{DASH}max over rounds)", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _p99_bound(summaries: Sequence[Summary]) -> float | None:
    """The p99 target of the load steps' figures (bench/pipeline.py: ``<= 50`` ms), if any."""
    for s in summaries:
        if STEP_FIGURE.search(s.name) and "p99" in s.name and s.target is not None and s.target.bound is not None:
            return s.target.bound
    return None


def _plot_load_steps(bench: str, ladders: Mapping[str, Sequence[LoadStep]], p99_bound: float | None,
                     path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    top = 1.0
    for label, steps in ladders.items():
        rates = [s.rate for s in steps]
        top = max(top, *rates)
        _errorline(left, rates, [s.delivered for s in steps], label=label, marker="o")
        line = _errorline(right, rates, [s.p99 for s in steps], label=f"{label}: p99", marker="o")
        _errorline(right, rates, [s.p50 for s in steps], label=f"{label}: p50", marker=".", linestyle="--",
                   color=line)
    left.plot([0, top], [0, top], color="gray", linestyle=":", linewidth=1, label="delivered = offered")
    left.set_xlabel("offered msg/s (step)")
    left.set_ylabel("delivered msg/s")
    left.legend(fontsize=7)
    left.set_title("throughput per load step", fontsize=10)
    right.set_yscale("log")
    if p99_bound is not None:
        right.axhline(p99_bound, color="red", linestyle=":", linewidth=1, label=f"p99 target {number(p99_bound)} ms")
    right.set_xlabel("offered msg/s (step)")
    right.set_ylabel("publish -> frame latency, ms (log)")
    right.legend(fontsize=7)
    right.set_title("latency per load step (missing: frames that never came)", fontsize=10)
    fig.suptitle(f"{bench}: load steps (median, min{DASH}max over rounds)", fontsize=11)
    return _save(fig, path)


def _errorline(ax: Any, xs: Sequence[float], spreads: Sequence[Spread | None], color: Any = None,
               **style: Any) -> Any:
    """A line of medians with min-max bars, skipping unmeasured steps; returns its color."""
    points = [(x, s) for x, s in zip(xs, spreads, strict=True) if s is not None]
    if not points:
        return color
    drawn = ax.errorbar([x for x, _ in points], [s.median for _, s in points],
                        yerr=[[s.median - s.low for _, s in points], [s.high - s.median for _, s in points]],
                        capsize=3, color=color, **style)
    return drawn.lines[0].get_color()


def _plot_cdf(bench: str, curves: Mapping[str, Sequence[tuple[float, float]]], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in curves.items():
        xs = [max(x, 0.1) for x, _ in points]  # a log axis: 0 ms and below (Redis ms clocks) drawn at 0.1
        ax.step(xs, [p for _, p in points], where="post", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (log)")
    ax.set_ylabel("fraction of events")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{bench}: latency CDF (pooled over rounds)", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- files


def write_report(context: ReportContext, runs: Sequence[Run], out_dir: Path) -> Path:
    """RESULTS.md, its plots and the raw runs into ``out_dir``; returns the report's path."""
    plots_dir = out_dir / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    (plots_dir / RUNS_FILE).write_text(json.dumps(
        {"context": asdict(context), "runs": [r.to_json() for r in runs]}, separators=(",", ":")) + "\n")
    plots = write_plots(runs, plots_dir)
    report = out_dir / REPORT_NAME
    report.write_text(render(context, runs, plots, out_dir))
    return report


def load_runs(path: Path) -> tuple[ReportContext, list[Run]]:
    """What write_report saved in ``runs.json``."""
    raw = json.loads(path.read_text())
    return ReportContext(**raw["context"]), [Run.from_json(r) for r in raw["runs"]]


def main() -> int:
    parser = argparse.ArgumentParser(description="Write RESULTS.md again from the runs run_all.py saved.")
    parser.add_argument("runs", type=Path, help=f"the {PLOTS_DIR}/{RUNS_FILE} of an earlier run")
    parser.add_argument("--out", type=Path, help="directory of RESULTS.md (default: the runs file's parent's parent)")
    args = parser.parse_args()
    context, runs = load_runs(args.runs)
    out = args.out or args.runs.resolve().parent.parent
    print(write_report(context, runs, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
