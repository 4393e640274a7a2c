"""Every benchmark, several rounds interleaved, into one report: bench/RESULTS.md and its plots.

    .venv/bin/python bench/run_all.py                      # full size, 3 rounds (run it on a quiet machine)
    .venv/bin/python bench/run_all.py --quick --rounds 1 --out /tmp/report   # try the tooling
    .venv/bin/python bench/run_all.py --only bridge,workers --rounds 5

Runs each bench of :data:`BENCHES` as its own process with ``--json PATH`` (and ``--quick`` or its
full-size arguments, and ``--seed``): round 1 runs every bench once, then round 2 again, and so on,
so that a slow spell of the machine spreads over all the benches instead of spoiling one. The same
seed is used in every round: the rounds differ by the machine's noise only. A bench that fails
(exit code, timeout, no JSON) is named in the report with the tail of its stderr, and the run goes
on; figures it wrote before failing still count.

Writes ``RESULTS.md`` into ``--out`` (default bench/), plots and the raw runs into its
``results/`` (bench/report.py writes the report again from those). Each bench's stdout and
stderr stay in a temporary directory, printed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import _report_machine  # noqa: E402
import report  # noqa: E402

DEFAULT_SEED = 1
DEFAULT_ROUNDS = 3
#: After this, a run is stopped (its process group gets SIGTERM, then SIGKILL) and counted failed.
QUICK_TIMEOUT_S = 300.0
FULL_TIMEOUT_S = 3600.0
STOP_GRACE_S = 20.0


@dataclass(frozen=True)
class Bench:
    """One benchmark script and how run_all runs it."""

    name: str
    script: str
    #: Arguments of the full-size run (the script's own defaults when empty).
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ("--quick",)
    full_timeout_s: float = FULL_TIMEOUT_S

    def argv(self, *, quick: bool, seed: int, json_path: Path) -> list[str]:
        sizes = self.quick if quick else self.full
        return [sys.executable, str(ROOT / self.script), *sizes, "--seed", str(seed), "--json", str(json_path)]

    def timeout_s(self, quick: bool) -> float:
        return QUICK_TIMEOUT_S if quick else self.full_timeout_s


#: In the order each round runs them: the stages first (bridge, workers, gateway), then the whole
#: pipeline, then latency and chaos.
BENCHES = (
    Bench("bridge", "bench/bridge.py"),
    Bench("workers", "bench/workers.py"),
    Bench("gateway", "bench/gateway.py"),
    Bench("pipeline", "bench/pipeline.py"),
    # It waits for a quiet machine before each mode (up to 300 s by default); the previous bench's load
    # average decays in about a minute.
    Bench("latency", "bench/latency.py", full=("--quiet-patience", "90")),
    # The script's default is 1,000,000 events (hours); 20,000 at its 100/s is about 4 minutes a round.
    Bench("chaos", "bench/chaos.py", full=("--events", "20000"), full_timeout_s=3 * 3600),
)


def _arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"comma-separated benches to run (of: {', '.join(b.name for b in BENCHES)})")
    parser.add_argument("--quick", action="store_true", help="each bench's --quick size (not for numbers)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"every bench's --seed (default {DEFAULT_SEED})")
    parser.add_argument("--out", type=Path, default=BENCH_DIR,
                        help="directory of RESULTS.md and its results/ (default: bench/)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.benches = _select(parser, args.only)
    return args


def _select(parser: argparse.ArgumentParser, only: str | None) -> list[Bench]:
    if not only:
        return list(BENCHES)
    known = {b.name: b for b in BENCHES}
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown bench {', '.join(unknown)}; known: {', '.join(known)}")
    return [b for b in BENCHES if b.name in names]


def run_one(bench: Bench, round_: int, args: argparse.Namespace, logs: Path) -> report.Run:
    """Run one bench once; a failure becomes a Run that says why, never an exception."""
    json_path = logs / f"{bench.name}-r{round_}.json"
    out_path, err_path = logs / f"{bench.name}-r{round_}.out", logs / f"{bench.name}-r{round_}.err"
    argv = bench.argv(quick=args.quick, seed=args.seed, json_path=json_path)
    began = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with out_path.open("wb") as out, err_path.open("wb") as err:
        # Its own session: on a timeout the whole group goes (a bench's servers, workers, clients).
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            code: int | None = proc.wait(bench.timeout_s(args.quick))
        except subprocess.TimeoutExpired:
            _stop(proc)
            code = None
        except BaseException:  # Ctrl-C: take the bench's processes down with us
            _stop(proc)
            raise
    seconds = time.monotonic() - began
    run = _collect(bench, round_, code, seconds, json_path, err_path)
    left = _group_members(proc.pid)
    if left:
        # Whatever it left running (a server, a worker) would load the machine under the next bench.
        _stop_group(proc.pid)
        run.meta["left_behind"] = left
        if not run.failed:
            run.error = f"left {len(left)} process(es) running, stopped now: {', '.join(left[:5])}"
    return run


def _group_members(pgid: int) -> list[str]:
    """The processes still in the process group ``pgid`` (Linux /proc), as "pid name"."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
            name, fields = rest.rsplit(") ", 1)
        except (OSError, ValueError):
            continue
        state, _ppid, pgrp = fields.split()[:3]
        if int(pgrp) == pgid and state != "Z":  # a zombie is gone already, waiting for its parent
            found.append(f"{pid} {name}")
    return found


def _stop_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _collect(bench: Bench, round_: int, code: int | None, seconds: float, json_path: Path,
             err_path: Path) -> report.Run:
    tail = report.stderr_tail(err_path.read_text(errors="replace"))
    fields = {"seconds": seconds, "exit_code": code, "stderr_tail": tail}
    error = None
    if code is None:
        error = f"stopped after the {seconds:.0f} s timeout"
    elif code != 0:
        error = f"exit code {code}"
    if not json_path.exists():
        return report.Run(bench.name, round_, error=error or "wrote no JSON", **fields)
    try:
        document = json.loads(json_path.read_text())
        run = report.Run.from_output(bench.name, round_, document, error=error, **fields)
    except (ValueError, KeyError, TypeError) as exc:
        return report.Run(bench.name, round_, error=f"unreadable JSON: {exc}", **fields)
    if not error:
        run.stderr_tail = ""  # a successful run's stderr is its own business (kept in the logs)
    return run


def _command_lines(args: argparse.Namespace) -> dict[str, str]:
    """Each bench's command line as the report shows it (``--json`` to a temp file left out)."""
    out = {}
    for bench in args.benches:
        argv = bench.argv(quick=args.quick, seed=args.seed, json_path=Path("PATH"))
        shown = ["python", bench.script, *argv[2:]]
        out[bench.name] = " ".join(shlex.quote(a) for a in shown)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    # SIGTERM as Ctrl-C: the running bench is stopped and the report of the runs so far is written.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    console = Console(stderr=True, log_path=False)
    logs = Path(tempfile.mkdtemp(prefix="fechatter-notify-run-all-"))
    started = datetime.now(UTC)
    console.print(f"measuring the machine's load before starting (logs: {logs})")
    machine = _report_machine.machine()
    command = " ".join(shlex.quote(a) for a in ["python", "bench/run_all.py", *sys.argv[1:]])
    began = time.monotonic()
    runs: list[report.Run] = []

    interrupted = False

    def context(*, final: bool) -> report.ReportContext:
        info = dict(machine)
        if final:
            info["other load at end"] = _report_machine.other_load()
        return report.ReportContext(started=started.strftime("%Y-%m-%d %H:%M UTC"), command=command,
                                    rounds=args.rounds, seed=args.seed, quick=args.quick,
                                    elapsed_s=time.monotonic() - began, machine=info,
                                    commands=_command_lines(args), interrupted=interrupted)

    try:
        _run_rounds(args, logs, runs, console, lambda: report.write_report(context(final=False), runs, args.out))
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: writing the report of the runs so far[/]")
    path = report.write_report(context(final=True), runs, args.out)
    failed = [r for r in runs if r.failed]
    console.print(f"wrote {path} ({len(runs)} runs, {len(failed)} failed); each run's stdout/stderr: {logs}")
    for run in failed:
        console.print(f"  [red]{run.bench} round {run.round}: {run.error}[/]")
    return 130 if interrupted else (1 if failed else 0)


def _run_rounds(args: argparse.Namespace, logs: Path, runs: list[report.Run], console: Console,
                checkpoint: Callable[[], object]) -> None:
    # "runs done/all" on the overall line only; the current run's line pulses (its length is unknown).
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
               TextColumn("elapsed"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        total = args.rounds * len(args.benches)
        overall = progress.add_task("all runs", total=total, count=f"0/{total}")
        current = progress.add_task("", total=None, count="")
        for round_ in range(1, args.rounds + 1):
            for bench in args.benches:
                progress.reset(current, description=f"[bold]{bench.name}[/] round {round_}/{args.rounds}",
                               total=None)
                run = run_one(bench, round_, args, logs)
                runs.append(run)
                progress.advance(overall)
                progress.update(overall, count=f"{len(runs)}/{total}")
                status = f"[red]failed: {run.error}[/]" if run.failed else "[green]ok[/]"
                progress.console.log(f"{bench.name} round {round_}: {status} in {run.seconds:.0f} s, "
                                     f"{len(run.figures)} figures")
            if round_ < args.rounds:
                checkpoint()  # a report after every round: a long run stopped midway still leaves one
        progress.update(current, visible=False)


if __name__ == "__main__":
    raise SystemExit(main())
