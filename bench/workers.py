"""Worker throughput: a new message to a 50-member chat, 2 worker processes, ours vs stock dramatiq.

Both modes run the same actors (workers.actors) and the same delivery code in 2 spawned
processes; they differ in the broker:

* ``ours``  - workers.broker.build_broker: doorbell consumers, batched refills, per-thread
  connections for dispatch calls, our middleware stack (Expiry, Retries policy, Recovery, ...);
* ``stock`` - ``dramatiq.brokers.redis.RedisBroker(url=..., namespace=...)`` with dramatiq's
  default middleware (plus ``CurrentMessage``, which the actors read) and its polling consumer.

Jobs are written the way the bridge writes them (dramatiq's Redis layout, realtime dialect
``MessageReceived`` with the 50 recipients, one wake publish per 500) once both processes
are consuming; the clock runs from the first enqueue until every job is acked. Each job
delivers 49 notifications (everyone but the sender); the inboxes are counted afterwards to
prove exactly-once.

Usage: ``python bench/workers.py [--jobs 4000] [--processes 2] [--threads 8] [--modes ours,stock]
[--json PATH] [--quick] [--seed N]`` (``--quick``: 500 jobs; ``--seed``: the message ids; ``--json``:
the figures for bench/run_all.py, ours as ratios to stock measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dramatiq  # noqa: E402
from report import figure, write_figures  # noqa: E402

from events import actor_name_for, job_to_args, parse_event  # noqa: E402
from events.inbox import inbox_key, wake_channel  # noqa: E402
from settings.model import Settings  # noqa: E402
from tests.servers import RedisServer, wait_until  # noqa: E402

NAMESPACE = "bench"
MEMBERS = list(range(1001, 1051))  # 50 members; 1001 sends
SENDER = MEMBERS[0]
QUICK_JOBS = 500


def _worker(settings: Settings, mode: str, threads: int) -> None:
    """One worker process (spawned)."""
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.middleware import CurrentMessage

    from workers.actors import declare_actors
    from workers.process import WorkerRuntime
    from workers.services import Services

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    queues = [settings.queues.realtime, settings.queues.domain]
    if mode == "ours":
        runtime = WorkerRuntime(settings, queues=queues, threads=threads).start()
        stop.wait()
        runtime.stop(timeout_s=5)
        return
    services = Services.open(settings)
    broker = RedisBroker(url=settings.redis.url.get_secret_value(), namespace=settings.redis.namespace)  # type: ignore[no-untyped-call]
    broker.add_middleware(CurrentMessage())
    declare_actors(broker, services)
    worker = dramatiq.Worker(broker, queues=set(queues), worker_threads=threads)
    worker.start()
    stop.wait()
    worker.stop(timeout=5000)
    services.close()


def messages(settings: Settings, count: int, seed: int) -> list[tuple[str, bytes]]:
    """(redis message id, encoded dramatiq message) for ``count`` new messages in one chat."""
    rng = random.Random(seed)  # the message ids (uuid4-shaped), the same in every run of a seed
    out = []
    for n in range(count):
        payload = {"MessageReceived": {"message": {"id": str(10_000 + n), "chat_id": 42, "sender_id": SENDER,
                                                   "content": f"message {n}", "files": [], "timestamp": 1750992346},
                                       "chat_id": 42, "recipients": MEMBERS}}
        job = parse_event("fechatter.realtime.chat.42", json.dumps(payload).encode())
        message_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=settings.queues.domain, actor_name=actor_name_for(job), args=(job_to_args(job),), kwargs={},
            options={"redis_message_id": message_id}, message_id=message_id)
        out.append((message_id, message.encode()))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, in seconds (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_mode(mode: str, settings: Settings, server: RedisServer, args: argparse.Namespace) -> dict[str, float]:
    client = server.client()
    client.flushall()
    batch = messages(settings, args.jobs, args.seed)
    queue = settings.queues.domain
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(settings, mode, args.threads)) for _ in range(args.processes)]
    for proc in procs:
        proc.start()
    try:
        # Consuming = each process's broker has heartbeated (every fetch does).
        wait_until(lambda: client.zcard(f"{NAMESPACE}:__heartbeats__") >= args.processes, timeout=60)
        time.sleep(1.0)
        pids = {**{f"worker{i}": p.pid for i, p in enumerate(procs) if p.pid is not None}, "redis": server.pid or 0}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        began = time.perf_counter()
        for start in range(0, len(batch), 500):
            with client.pipeline(transaction=False) as pipe:
                for message_id, data in batch[start:start + 500]:
                    pipe.hset(f"{NAMESPACE}:{queue}.msgs", message_id, data)
                    pipe.rpush(f"{NAMESPACE}:{queue}", message_id)
                pipe.publish(wake_channel(NAMESPACE, queue), 500)
                pipe.execute()

        def drained() -> bool:
            return client.llen(f"{NAMESPACE}:{queue}") == 0 and client.hlen(f"{NAMESPACE}:{queue}.msgs") == 0

        wait_until(drained, timeout=600, interval=0.01, message="jobs not processed")
        elapsed = time.perf_counter() - began
        cpu = {name: round((cpu_seconds(pid) - before[name]) / elapsed, 2) for name, pid in pids.items()}
        with client.pipeline(transaction=False) as pipe:
            for user in MEMBERS:
                pipe.xlen(inbox_key(NAMESPACE, user))
            counts = pipe.execute()
        expected = [0] + [args.jobs] * (len(MEMBERS) - 1)
        if counts != expected:
            print(f"  ! {mode}: inbox counts {counts[:5]}... expected {expected[:5]}...", file=sys.stderr)
        notifications = sum(counts)
        return {"jobs_per_s": args.jobs / elapsed, "notifications_per_s": notifications / elapsed,
                "seconds": elapsed, "exactly_once": float(counts == expected),
                **{f"cpu_{k}": v for k, v in cpu.items()}}
    finally:
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.join(15)
            if proc.is_alive():
                proc.kill()
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4000, help="new-message jobs")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process")
    parser.add_argument("--modes", default="ours,stock", help="comma-separated: ours, stock")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_JOBS} jobs (unless --jobs is given)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the message ids")
    parser.add_argument("--json", metavar="PATH", help="write the figures there (bench/run_all.py reads them)")
    args = parser.parse_args()
    if args.quick and "--jobs" not in sys.argv[1:]:
        args.jobs = QUICK_JOBS
    with RedisServer() as server:
        settings = Settings.model_validate({
            "redis": {"url": server.url, "namespace": NAMESPACE},
            # Keep every entry so the inboxes can be counted afterwards.
            "delivery": {"inbox_max_len": args.jobs + 1000},
            "metrics": {"port": 0, "worker_port": 0}, "health": {"port": 0, "worker_port": 0},
        })
        results = {mode: run_mode(mode, settings, server, args) for mode in args.modes.split(",")}
    print(f"\nnew message to a {len(MEMBERS)}-member chat ({len(MEMBERS) - 1} notifications per job), "
          f"{args.jobs} jobs, {args.processes} worker processes x {args.threads} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'mode':<6} {'jobs/s':>8} {'notifications/s':>16} {'exactly once':>13}  CPU cores (workers..., redis)")
    for mode, r in results.items():
        cpu = ", ".join(f"{v:.2f}" for k, v in r.items() if k.startswith("cpu_"))
        print(f"{mode:<6} {r['jobs_per_s']:>8.0f} {r['notifications_per_s']:>16.0f} "
              f"{'yes' if r['exactly_once'] else 'NO':>13}  {cpu}")
    print(json.dumps({"workers": results}))
    if args.json:
        write_figures(args.json, figures(results), {"jobs": args.jobs, "processes": args.processes,
                                                    "threads": args.threads, "seed": args.seed,
                                                    "members": len(MEMBERS), "cpus": os.cpu_count(),
                                                    "load_average": os.getloadavg()[0], "modes": results})
    return 0


def figures(results: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """ours as a ratio to stock dramatiq (same run); exactly-once is a must for both."""
    out = []
    for mode, r in results.items():
        baseline = "stock" if mode != "stock" and "stock" in results else None
        for key, unit in (("jobs_per_s", "jobs/s"), ("notifications_per_s", "notifications/s")):
            out.append(figure(f"{mode} {unit}", r[key], unit, f"stock {unit}" if baseline else None))
    out += [figure(f"{mode} exactly once", r["exactly_once"], "bool", target="== 1") for mode, r in results.items()]
    return out


if __name__ == "__main__":
    raise SystemExit(main())
