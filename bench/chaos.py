"""Chaos scenario 1, "everything at once", at full size, by hand.

    .venv/bin/python bench/chaos.py                        # 1,000,000 events, appendfsync always
    .venv/bin/python bench/chaos.py --events 100000 --appendfsync everysec --seed 7
    .venv/bin/python bench/chaos.py --quick --json out.json     # 500 events, for bench/run_all.py

The same scenario as tests/chaos/test_everything_at_once.py (the bridge killed -9 every few
seconds, one of two worker processes killed -9 repeatedly, nats-server and redis-server killed -9
and restarted on their stores, while new messages in every JetStream dialect flow, about 1 %
malformed), sized by ``--events`` and paced by ``--rate``. Prints one line per run:

    scenario=everything_at_once/always events=N faults=F lost=L duplicated=D dead_lettered=X recover_max_s=R

then the details (durations, recovery times, problems). Exit code 1 when an invariant failed.
Memory: each notification is an inbox entry kept in Redis for the audit (about 0.3 KB; a chat
has about 8 members on average, so 1,000,000 events need a few GB).

``--json PATH`` writes the figures for bench/run_all.py: per fsync policy, lost, duplicated and
unexpected notifications, dead-letter problems, failed jobs (each must be 0 with ``always``), whether
every invariant held, and the faults, dead letters and recovery times (absolute, this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from report import figure, write_figures

from tests.chaos.harness import ScenarioResult
from tests.chaos.test_everything_at_once import CI_SETTLE_S, SCENARIO, everything_at_once

QUICK_EVENTS = 500


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events to publish (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the traffic and the fault schedule")
    parser.add_argument("--appendfsync", choices=("always", "everysec"), action="append",
                        help="Redis AOF fsync policy; repeat to run both (default: always)")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="events per second offered (default 100, what the CI run offers)")
    parser.add_argument("--settle", type=float, default=600.0,
                        help="seconds allowed, after the traffic, for the backlog to drain (default 600)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, stores) and print it")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_EVENTS} events, {CI_SETTLE_S:g} s to settle (unless given explicitly)")
    parser.add_argument("--json", metavar="PATH", help="write the figures there (bench/run_all.py reads them)")
    args = parser.parse_args()
    given = sys.argv[1:]
    if args.quick and "--events" not in given:
        args.events = QUICK_EVENTS
    if args.quick and "--settle" not in given:
        args.settle = CI_SETTLE_S
    return args


async def _run(args: argparse.Namespace, appendfsync: str, outcomes: dict[str, dict[str, Any]]) -> bool:
    workdir = Path(tempfile.mkdtemp(prefix=f"chaos-{appendfsync}-"))
    began = time.monotonic()
    result, harness = await everything_at_once(workdir, events=args.events, seed=args.seed,
                                               traffic_s=args.events / args.rate,
                                               appendfsync=appendfsync,  # type: ignore[arg-type]
                                               settle_timeout=args.settle)
    try:
        line = result.line().replace(f"scenario={SCENARIO}", f"scenario={SCENARIO}/{appendfsync}")
        print(line, flush=True)
        recover = sorted(result.recover_s)
        median = recover[len(recover) // 2] if recover else float("nan")
        print(f"  published in {result.published_s:.0f}s, settled {result.settled_s:.0f}s later, "
              f"{time.monotonic() - began:.0f}s in all; recovery median {median:.1f}s over {len(recover)} faults; "
              f"publisher {result.extra}", flush=True)
        problems = result.problems()
        for problem in problems:
            print("  " + problem.replace("\n", "\n  "), flush=True)
        outcomes[appendfsync] = _outcome(result, problems)
        return not problems
    finally:
        harness.close()
        if args.keep:
            print(f"  work dir: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _outcome(result: ScenarioResult, problems: list[str]) -> dict[str, Any]:
    recover = sorted(result.recover_s)
    return {"faults": len(result.faults), "lost": result.audit.lost, "duplicated": result.audit.duplicated,
            "unexpected": result.audit.unexpected, "dead_lettered": len(result.dead_letters),
            "dead_letter_problems": len(result.dead_letter_problems), "failed_jobs": result.failed_jobs,
            "recover_max_s": recover[-1] if recover else None,
            "recover_median_s": recover[len(recover) // 2] if recover else None,
            "published_s": result.published_s, "settled_s": result.settled_s, "ok": not problems,
            "problems": [p[:500] for p in problems[:20]], "line": result.line()}


def figures(outcomes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per fsync policy; the invariants are targets with ``always`` (``everysec`` is measured, not promised)."""
    out = []
    for policy, o in outcomes.items():
        must = "== 0" if policy == "always" else None
        out += [figure(f"{policy} lost", o["lost"], "notifications", target=must),
                figure(f"{policy} duplicated", o["duplicated"], "notifications", target=must),
                figure(f"{policy} unexpected", o["unexpected"], "notifications", target=must),
                figure(f"{policy} dead-letter problems", o["dead_letter_problems"], "problems", target=must),
                figure(f"{policy} failed jobs", o["failed_jobs"], "jobs", target=must),
                figure(f"{policy} invariants held", float(o["ok"]), "bool",
                       target="== 1" if policy == "always" else None),
                figure(f"{policy} faults", o["faults"], "kill -9s"),
                figure(f"{policy} dead lettered", o["dead_lettered"], "events"),
                figure(f"{policy} recovery max", o["recover_max_s"], "s"),
                figure(f"{policy} recovery median", o["recover_median_s"], "s")]
    return out


def main() -> int:
    args = _arguments()
    ok = True
    outcomes: dict[str, dict[str, Any]] = {}
    for appendfsync in args.appendfsync or ["always"]:
        ok = asyncio.run(_run(args, appendfsync, outcomes)) and ok
    if args.json:
        write_figures(args.json, figures(outcomes), {"events": args.events, "rate": args.rate, "seed": args.seed,
                                                     "cpus": os.cpu_count(), "outcomes": outcomes})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
