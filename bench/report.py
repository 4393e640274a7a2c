"""The benchmark report: figures of several rounds aggregated, written as markdown with PNG plots.

``bench/run_all.py`` runs every benchmark ``--rounds`` times with ``--json PATH``; each run writes
(the shape every bench script shares)::

    {"figures": [{"name": "bridge events/s", "value": 18849.0, "unit": "events/s",
                  "baseline": "fetch() events/s", "target": ">= 0.60"}, ...],
     "meta": {...}}

This is the pure part: the runs (:class:`Run`) become one :class:`Summary` per figure (median, min,
max over the rounds; bench/_report_figures.py), the markdown of ``RESULTS.md`` (here) and the plots
(bench/_report_plots.py). It starts no server and runs no benchmark, so ``tests/test_bench_report.py``
tests it on canned JSON. The bench scripts write their ``--json`` with :func:`write_figures`.

A figure's ``baseline`` names another figure of the same bench, measured in the same run:

* when both have the same unit (e.g. both events/s), the figure is a ratio to that baseline: the
  ratio is computed round by round (each round's value over the same round's baseline) and its
  median and min-max are reported; the target, if any, applies to that ratio;
* otherwise the value is reported as is: a ratio already when its unit says so (``ratio``, ``x``),
  else a figure beside a named baseline; so is a figure without a baseline, an absolute number on
  the machine the report names.

``python bench/report.py results/runs.json [--out DIR]`` writes the report again from the raw
runs that run_all saved (to change the layout without running the benchmarks again).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _report_figures import (
    BOOL_UNIT,
    DASH,
    TIMES,
    Figure,
    Run,
    Spread,
    Summary,
    Target,
    aggregate,
    bench_order,
    figure,
    is_ratio_unit,
    number,
    spread_text,
    stderr_tail,
    write_figures,
)
from _report_plots import (
    LoadStep,
    latency_curves,
    load_steps,
    ratio_summaries,
    scale_out_steps,
    throughput_summaries,
    write_plots,
)

__all__ = [
    "Figure", "LoadStep", "ReportContext", "Run", "Spread", "Summary", "Target", "aggregate", "bench_table",
    "figure", "latency_curves", "load_runs", "load_steps", "number", "ratio_summaries", "render",
    "scale_out_steps", "stderr_tail", "targets_table", "throughput_summaries", "value_text", "write_figures",
    "write_plots", "write_report",
]

#: The report's file name in its directory (bench/RESULTS.md by default).
REPORT_NAME = "RESULTS.md"
#: Where the plots go, relative to the report's directory (RESULTS.md links them with this prefix).
PLOTS_DIR = "results"
#: The raw runs beside the plots, enough to write the report again (``python bench/report.py``).
RUNS_FILE = "runs.json"


# --------------------------------------------------------------------------- markdown


def value_text(summary: Summary) -> tuple[str, str]:
    """(median, min-max) cells of a figure; a yes/no figure (unit ``bool``) says in how many rounds."""
    if summary.unit != BOOL_UNIT or summary.value is None:
        return spread_text(summary.value)
    yes = sum(1 for v in summary.value.values if v)
    if yes == summary.value.n:
        return "yes", DASH
    return ("no", DASH) if yes == 0 else (f"yes in {yes} of {summary.value.n}", DASH)


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
    for bench in bench_order(runs):
        lines += ["", *bench_section(bench, aggregated.get(bench, []), [r for r in runs if r.bench == bench],
                                     context.commands.get(bench), plots.get(bench, []), report_dir)]
    return "\n".join(lines) + "\n"

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


# --------------------------------------------------------------------------- files


def write_report(context: ReportContext, runs: Sequence[Run], out_dir: Path) -> Path:
    """RESULTS.md, its plots and the raw runs into ``out_dir``; returns the report's path.

    The plots directory is the report's own: an earlier report's PNGs go, so that none is left
    there that this report does not show (a bench left out with --only, a renamed plot)."""
    plots_dir = out_dir / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    for old in plots_dir.glob("*.png"):
        old.unlink()
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
