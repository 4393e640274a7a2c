"""Chaos scenario 1, "everything at once", at full size, by hand.

    .venv/bin/python bench/chaos.py                        # 1,000,000 events, appendfsync always
    .venv/bin/python bench/chaos.py --events 100000 --appendfsync everysec --seed 7

The same scenario as tests/chaos/test_everything_at_once.py (the bridge killed -9 every few
seconds, one of two worker processes killed -9 repeatedly, nats-server and redis-server killed -9
and restarted on their stores, while new messages in every JetStream dialect flow, about 1 %
malformed), sized by ``--events`` and paced by ``--rate``. Prints one line per run:

    scenario=everything_at_once/always events=N faults=F lost=L duplicated=D dead_lettered=X recover_max_s=R

then the details (durations, recovery times, problems). Exit code 1 when an invariant failed.
Memory: each notification is an inbox entry kept in Redis for the audit (about 0.3 KB; a chat
has about 8 members on average, so 1,000,000 events need a few GB).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.chaos.test_everything_at_once import SCENARIO, everything_at_once


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
    return parser.parse_args()


async def _run(args: argparse.Namespace, appendfsync: str) -> bool:
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
        return not problems
    finally:
        harness.close()
        if args.keep:
            print(f"  work dir: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    args = _arguments()
    ok = True
    for appendfsync in args.appendfsync or ["always"]:
        ok = asyncio.run(_run(args, appendfsync)) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
