"""The report's plots (PNG, matplotlib) and the data they are drawn from.

Throughput per stage (every bench's rate figures), the ratios to their baselines, and from a bench's
``meta``: load steps (bench/pipeline.py's ladders), scale-out series and latency CDFs. A bench without
such data has no such plot; a plot that cannot be drawn is skipped with a line on stderr.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _report_figures import DASH, Run, Spread, Summary, aggregate, bench_order, is_ratio_unit, number

#: Units of time per time (CPU microseconds per second...): rates, but not throughputs.
_TIME_PER_TIME = re.compile(r"^(ns|us|\u00b5s|ms|s|cpu-s)/s$", re.IGNORECASE)

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
    for bench in bench_order(runs):
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
