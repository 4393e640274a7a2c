"""Publishes malformed payloads on a schedule, in a process of its own.

``python -m tests.chaos.badsender NATS_URL PAYLOADS.pickle RESULT.json SCHEDULE_JSON``

Scenario 7 measures the good traffic's latency while this sends the malformed traffic. In the
test's own event loop, the malformed publishing (thousands of JetStream requests) delayed the
good messages' writes after their timestamps were taken, so part of what looked like the bridge's
latency was the test's. Here the malformed traffic has its own process, connection and loop.

``PAYLOADS.pickle`` holds ``[(subject, data, core), ...]``. Once loaded and connected, the process
prints ``ready`` and reads one line from stdin: the ``time.monotonic()`` (one clock for every
process on Linux) at which the schedule begins, so that its start-up costs fall outside the
measured windows. ``SCHEDULE_JSON`` is
``[[kind, seconds], ...]``: the payloads are spread evenly over the ``mixed`` windows, in slices
every 20 ms. ``RESULT.json`` receives ``{"js": [[index, stream seq], ...], "core": [index, ...]}``.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import sys
import time
from pathlib import Path
from typing import Final

import nats

SLICE_S: Final = 0.02


async def send(url: str, payloads: list[tuple[str, bytes, bool]],
               schedule: list[tuple[str, float]]) -> dict[str, list[object]]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    print("ready", flush=True)
    start = float(await asyncio.to_thread(sys.stdin.readline))
    done: dict[str, list[object]] = {"js": [], "core": []}

    async def stored(index: int) -> None:
        subject, data, _ = payloads[index]
        ack = await js.publish(subject, data, timeout=10)
        done["js"].append([index, ack.seq])

    async def send_range(first: int, last: int) -> None:
        for index in range(first, last):
            subject, data, core = payloads[index]
            if core:
                await nc.publish(subject, data)
                done["core"].append(index)
        await asyncio.gather(*(stored(i) for i in range(first, last) if not payloads[i][2]))

    per_second = len(payloads) / sum(seconds for kind, seconds in schedule if kind == "mixed")
    sent, mixed_done, window_start = 0, 0.0, start
    try:
        for kind, seconds in schedule:
            for tick in range(int(seconds / SLICE_S) if kind == "mixed" else 0):
                await asyncio.sleep(max(0.0, window_start + tick * SLICE_S - time.monotonic()))  # pacing
                due = min(len(payloads), round(per_second * (mixed_done + (tick + 1) * SLICE_S)))
                await send_range(sent, max(sent, due))
                sent = max(sent, due)
            mixed_done += seconds if kind == "mixed" else 0.0
            window_start += seconds
        await send_range(sent, len(payloads))  # rounding leftovers
        await nc.flush()
    finally:
        await nc.close()
    return done


def main(argv: list[str]) -> int:
    url, payload_file, result_file, schedule = argv
    payloads = pickle.loads(Path(payload_file).read_bytes())
    done = asyncio.run(send(url, payloads, [(k, float(s)) for k, s in json.loads(schedule)]))
    Path(result_file).write_text(json.dumps(done))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
