"""The whole pipeline under load: NATS publish -> bridge -> workers -> gateway -> SSE frame.

    python bench/pipeline.py                 # load ladders for chats of 3 and 50, then scale-out
    python bench/pipeline.py --quick         # a small version (about 2 minutes)
    python bench/pipeline.py --json out.json --seed 7

Everything runs as in production, on this machine: tests/chaos/harness.py's :class:`Harness` starts a
nats-server (JetStream, file store) and a redis-server (AOF, ``appendfsync everysec``) on free ports,
runs the Procfile's ``release:`` line (provision), then its ``bridge:``, ``worker:`` and ``web:``
lines as subprocesses (``worker`` as the Procfile has it: ``-p`` = the CPU count; ``-p N`` where a
run needs another count). Helper processes (bench/_pipeline_roles.py) stand in for the rest of
the world:

- SSE clients (2 processes, uvloop): one stream per chat member, every recipient connected; with
  two gateways the users are spread over both;
- a publisher: Fechatter's ``fechatter.message.created`` (the ``Created`` dialect, member list
  included) on JetStream at a paced offered load, PubAcks counted asynchronously. Each message's
  content is its publish time, which the clients subtract from each frame's receive time (same
  clock): the publish -> SSE frame latency, end to end.

1. Load ladder, per chat size (3 and 50 members; every user in one chat, ``--users`` streams, chats
   drawn with ``--seed``): steps of increasing offered msg/s, each ``--step-seconds`` long, the
   system drained between steps. Per step: offered and delivered msg/s (``new_message`` jobs
   done), notifications/s (inbox entries written), frames/s at the clients, latency p50/p99/max,
   the backlog at the step's start and end and the stage it grew at (``jetstream``: pending + ack
   pending, the bridge's stage; ``queue``: dramatiq jobs waiting, the workers'; ``gateway``:
   notifications written but not yet received), the CPU of every process from /proc/<pid>/stat
   deltas (% of one core; "others" is the rest of the machine), and the time each spent runnable
   but waiting for a CPU (/proc/<pid>/task/*/schedstat): a single-threaded process whose running
   + waiting is near 100 % wanted a whole core, i.e. it is saturated, however little it got.
   A step is *held* when p99 <= 50 ms, the backlog did not grow, every frame arrived and the
   publisher kept the pace. The ladder stops at the first step that builds a backlog. Then the
   CPU each process spends per delivered message, and from it each stage's *full-core ceiling*:
   the msg/s at which it would fill its core(s) on a machine of its own (one core each for the
   bridge, gateway and redis-server event loops, one per worker process, all of them for
   nats-server). On a shared machine the measured limit follows the others' load; the costs per
   message, and so the ceilings, much less.
2. Scale-out, at one offered load above the 1-worker limit, in ``--scale-rounds`` rounds in
   alternating order: delivered notifications/s with 1, 2, 4 worker processes; 1 vs 2 bridges and
   1 vs 2 gateways (each beside ``--scale-others-workers`` worker processes), each a ratio to its
   one-process run of the same invocation; the CPU by kind (the pipeline's Python processes,
   redis-server, nats-server, the helpers, other processes) and where scaling stopped and why.

Before each run the bench waits (``--quiet-patience``, not with ``--quick``) for the machine to be
quiet. Several people editing one tree: to measure committed code only, run it from a snapshot,
``git archive HEAD | tar -x -C DIR; cd DIR; PYTHONPATH=$PWD /path/to/.venv/bin/python bench/pipeline.py``
(the processes inherit ``PYTHONPATH``, which wins over the venv's editable install).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _lines import ask  # noqa: E402 - bench/, the script's own directory

from tests.chaos.harness import Harness  # noqa: E402

ROLES = Path(__file__).with_name("_pipeline_roles.py")
#: Production defaults, but the gateway on loopback (the harness gives every process its ports).
CONFIG = """\
gateway:
  host: 127.0.0.1
"""
P99_TARGET_MS = 50.0
DEFAULT_STEPS = {3: [200, 500, 1000, 1500, 2000, 3000, 4000], 50: [50, 100, 200, 300, 500, 1000]}
QUICK_STEPS = {3: [500, 2000], 50: [100, 400]}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def runqueue_seconds(pid: int) -> float | None:
    """Seconds the process's threads spent runnable but waiting for a CPU (/proc/<pid>/task/*/schedstat):
    high when the machine is full, low when a process is idle waiting on another stage."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (a worker supervisor's worker processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return sorted(found)


def is_worker_process(pid: int) -> bool:
    """A supervisor's child that runs jobs, not multiprocessing's resource tracker."""
    try:
        return b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


async def wait_quiet(args: argparse.Namespace, what: str) -> float:
    """Before a run: wait (at most ``--quiet-patience`` s) until the machine's cores are less than
    ``--quiet-below`` % busy over 2 s (nothing of this bench runs then: it is the others' load).
    Returns the last busy share measured, in % of all cores."""
    if args.quiet_patience <= 0:
        return math.nan
    deadline = time.monotonic() + args.quiet_patience
    while True:
        a = machine_busy()
        await asyncio.sleep(2.0)
        b = machine_busy()
        busy = 100.0 * (b[0] - a[0]) / max(1, b[1] - a[1])
        if busy < args.quiet_below or time.monotonic() >= deadline:
            print(f"   ({what}: machine {busy:.0f} % busy before starting"
                  + ("" if busy < args.quiet_below else f", not below {args.quiet_below:g} % "
                     f"after {args.quiet_patience:g} s: started anyway") + ")", flush=True)
            return busy


# --------------------------------------------------------------------------- helpers' processes


class Helper:
    """A bench/_pipeline_roles.py process spoken to over its stdin/stdout."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name, self.proc = name, proc

    @classmethod
    async def spawn(cls, name: str, *args: str) -> Helper:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROLES), *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            cwd=ROOT, limit=1 << 30, start_new_session=True)
        return cls(name, proc)

    async def ask(self, command: str) -> dict[str, Any]:
        return await ask(self.proc, command, self.name)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"quit\n")
            await asyncio.wait_for(self.proc.wait(), 5)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


# --------------------------------------------------------------------------- the system under test


@dataclass(frozen=True)
class Layout:
    bridges: int = 1
    workers: int = 1
    gateways: int = 1

    def label(self) -> str:
        return f"{self.bridges} bridge, {self.workers} worker proc, {self.gateways} gateway"


def _scrape(url: str) -> dict[str, float]:
    """Counters of one /metrics page summed by metric name; new messages' samples also apart, as
    ``name{new_message,ok}`` (jobs done) and ``name{new_message}`` (notifications)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith("fechatter_notify_"):
            continue
        name, _, value = line.rpartition(" ")
        base = name.split("{", 1)[0]
        if 'outcome="ok"' in name and 'actor="new_message"' in name:
            base += "{new_message,ok}"
        elif 'type="new_message"' in name:
            base += "{new_message}"
        sums[base] = sums.get(base, 0.0) + float(value)
    return sums


@dataclass
class Rig:
    """Servers, the Procfile's processes, the publisher and the SSE clients of one run."""

    workdir: Path
    layout: Layout
    chat_size: int
    users: int
    seed: int
    client_procs: int = 2
    #: Run ``worker`` exactly as the Procfile says (no -p) when the layout's worker count is its default.
    procfile_default: bool = True
    harness: Harness | None = None
    publisher: Helper | None = None
    clients: list[Helper] = field(default_factory=list)
    chats: list[tuple[int, list[int]]] = field(default_factory=list)
    worker_pids: list[int] = field(default_factory=list)

    @property
    def h(self) -> Harness:
        assert self.harness is not None
        return self.harness

    @property
    def fanout(self) -> int:
        return self.chat_size - 1

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        h = self.harness = Harness(self.workdir, config=CONFIG, appendfsync="everysec")
        await asyncio.to_thread(h.start_servers)
        await h.run_once("release")
        h.add("bridge", self.layout.bridges)
        # The Procfile's own line when the layout asks for its default (-p = the CPU count).
        default = self.layout.workers == (os.cpu_count() or 1) and self.procfile_default
        h.add("worker", 1, [] if default else ["-p", str(self.layout.workers)])
        h.add("web", self.layout.gateways)
        h.start()
        await asyncio.to_thread(h.wait_ready, None, 120)
        await self._start_helpers()
        await self._warm_up()
        self.worker_pids = [c for i in self.instances("worker") for c in children(self._pid(i))
                            if is_worker_process(c)]

    def instances(self, role: str) -> list[str]:
        return [name for name, i in self.h.instances.items() if i.role == role]

    def _pid(self, name: str) -> int:
        proc = self.h.instances[name].proc
        assert proc is not None
        return proc.pid

    async def _start_helpers(self) -> None:
        rng = random.Random(self.seed)
        count = max(1, self.users // self.chat_size)
        users = list(range(1, count * self.chat_size + 1))
        rng.shuffle(users)
        self.chats = [(1 + c, sorted(users[c * self.chat_size:(c + 1) * self.chat_size])) for c in range(count)]
        (self.workdir / "chats.json").write_text(json.dumps(self.chats))
        ports = [self.h.instances[n].port for n in self.instances("web")]
        assign = [[u, ports[u % len(ports)], self.h.key.token(u, lifetime=6 * 3600)] for u in sorted(users)]
        (self.workdir / "assign.json").write_text(json.dumps(assign))
        self.publisher = await Helper.spawn("publisher", "publisher", "--nats", self.h.nats.url,
                                            "--chats", str(self.workdir / "chats.json"), "--seed", str(self.seed))
        # About 10 recipients of each message record latencies: enough for a p99, little client CPU.
        sample = max(1, round(self.fanout / 10))
        share = math.ceil(len(assign) / self.client_procs)
        for i in range(self.client_procs):
            first, n = i * share, min(share, len(assign) - i * share)
            self.clients.append(await Helper.spawn(
                f"client-{i + 1}", "client", "--assign", str(self.workdir / "assign.json"), "--first", str(first),
                "--count", str(n), "--sample", str(sample)))
        answers = await asyncio.gather(*(c.ask("connect") for c in self.clients))
        failed = sum(a["failed"] for a in answers)
        if failed:
            raise RuntimeError(f"{failed} SSE streams did not connect: {[a['failures'] for a in answers]}")

    async def _warm_up(self) -> None:
        """A little traffic first: connections, scripts and caches warm, and proof the path works."""
        base = await self.frames()
        assert self.publisher is not None
        sent = (await self.publisher.ask(json.dumps({"rate": 100, "seconds": 1.0})))["sent"]
        if not await self.wait_delivered(base + sent * self.fanout, 60):
            raise RuntimeError(f"the warm-up did not arrive: {await self.frames() - base} of "
                               f"{sent * self.fanout} frames\n{self.h.logs(10)}")
        await asyncio.gather(*(c.ask("take") for c in self.clients))

    async def frames(self) -> int:
        return sum(a["frames"] for a in await asyncio.gather(*(c.ask("report") for c in self.clients)))

    def stages(self) -> dict[str, int]:
        """What waits at each stage, in events: in JetStream for the bridge (pending + ack pending), in
        dramatiq's queues for the workers (jobs waiting or running)."""
        state = self.h.consumer_state()
        with self.h.client() as client:
            return {"jetstream": state["num_pending"] + state["num_ack_pending"],
                    "queue": self.h.jobs_waiting(client)}

    def backlog(self) -> int:
        """Events not yet turned into notifications (every stage)."""
        return sum(self.stages().values())

    async def wait_delivered(self, frames: int, patience_s: float) -> bool:
        """Until the clients counted ``frames`` and nothing is left in the pipeline; False at the deadline."""
        deadline = time.monotonic() + patience_s
        while time.monotonic() < deadline:
            if await self.frames() >= frames and await asyncio.to_thread(self.backlog) == 0:
                return True
            await asyncio.sleep(0.25)
        return False

    def pids(self) -> dict[str, int]:
        """Every process measured, by the name printed."""
        found = {name: self._pid(name) for role in ("bridge", "worker", "web") for name in self.instances(role)}
        found.update({f"wproc-{i + 1}": pid for i, pid in enumerate(self.worker_pids)})
        found.update({"nats-server": self.h.nats.pid or 0, "redis-server": self.h.redis.pid or 0})
        assert self.publisher is not None
        found["publisher"] = self.publisher.proc.pid
        found.update({c.name: c.proc.pid for c in self.clients})
        return found

    def scrape(self) -> dict[str, float]:
        """The pipeline's counters summed over the processes: acked, jobs done, notifications, frames sent."""
        totals: dict[str, float] = {}
        for instance in self.h.instances.values():
            for key, value in _scrape(f"http://127.0.0.1:{instance.port}/metrics").items():
                totals[key] = totals.get(key, 0.0) + value
        return {
            "acked": totals.get("fechatter_notify_bridge_events_acked_total", 0.0),
            "jobs": totals.get("fechatter_notify_worker_jobs_total{new_message,ok}", 0.0),
            # new_message only: the gateway's presence announcements on connect are notifications too.
            "notifications": totals.get("fechatter_notify_worker_notifications_total{new_message}", 0.0),
            "frames_sent": totals.get("fechatter_notify_gateway_frames_sent_total", 0.0),
        }

    async def close(self) -> None:
        for helper in [*self.clients, *([self.publisher] if self.publisher else [])]:
            await helper.close()
        if self.harness is not None:
            await asyncio.to_thread(self.harness.close)


@dataclass
class Snapshot:
    at: float
    cpu: dict[str, float | None]
    busy: tuple[float, float]
    counters: dict[str, float]
    frames: int
    runq: dict[str, float | None]
    #: Events waiting per stage (Rig.stages), and "gateway": notifications written but not yet
    #: received as frames, in events (divided by the fan-out).
    stages: dict[str, int]

    @classmethod
    async def take(cls, rig: Rig, pids: dict[str, int]) -> Snapshot:
        frames = await rig.frames()
        counters = await asyncio.to_thread(rig.scrape)
        stages = await asyncio.to_thread(rig.stages)
        stages["gateway"] = max(0, round((counters["notifications"] - frames) / rig.fanout))
        return cls(time.time(), {n: cpu_seconds(p) for n, p in pids.items()}, machine_busy(), counters, frames,
                   {n: runqueue_seconds(p) for n, p in pids.items()}, stages)

    @property
    def backlog(self) -> int:
        return sum(self.stages.values())


def rates(a: Snapshot, b: Snapshot) -> dict[str, Any]:
    """Per-second rates and CPU shares between two snapshots."""
    span = b.at - a.at
    cpu = {n: 100.0 * (b.cpu[n] - v) / span for n, v in a.cpu.items()  # type: ignore[operator]
           if v is not None and b.cpu.get(n) is not None}
    busy, total = b.busy[0] - a.busy[0], b.busy[1] - a.busy[1]
    runq = {n: 100.0 * (b.runq[n] - v) / span for n, v in a.runq.items()  # type: ignore[operator]
            if v is not None and b.runq.get(n) is not None}
    return {
        "runq": runq,
        "span_s": span,
        "delivered_msgs_s": (b.counters["jobs"] - a.counters["jobs"]) / span,
        "acked_s": (b.counters["acked"] - a.counters["acked"]) / span,
        "notifications_s": (b.counters["notifications"] - a.counters["notifications"]) / span,
        "frames_sent_s": (b.counters["frames_sent"] - a.counters["frames_sent"]) / span,
        "frames_s": (b.frames - a.frames) / span,
        "cpu": cpu,
        "machine_cpu": 100.0 * (os.cpu_count() or 1) * busy / total if total else 0.0,
        "stage_growth": {k: b.stages[k] - v for k, v in a.stages.items()},
        "stages_end": dict(b.stages),
    }


def cost_us(step: dict[str, Any]) -> dict[str, float]:
    """CPU microseconds per delivered message, per process: what each costs whatever the machine's
    load (a busy machine slows processes down; it inflates their cost per message far less)."""
    delivered = step["delivered_msgs_s"]
    if delivered <= 0:
        return {}
    return {n: 1e4 * v / delivered for n, v in step["cpu"].items()}


def ceilings(step: dict[str, Any], workers: int) -> dict[str, float]:
    """msg/s at which each stage's process(es) would fill their cores, from ``step``'s costs: one
    core each for the bridge, the gateway and redis-server (single-threaded event loops), ``workers``
    cores for the worker processes together, all cores for nats-server (Go, multi-threaded); and
    ``all_on_this_machine``: every process of the pipeline together on all the machine's cores."""
    cost = cost_us(step)
    cores = os.cpu_count() or 1
    found: dict[str, float] = {}
    groups = {"bridge": ("bridge-",), "workers": ("wproc-",), "gateway": ("web-",), "redis": ("redis",),
              "nats": ("nats",)}
    for stage, prefixes in groups.items():
        us = sum(v for n, v in cost.items() if n.startswith(prefixes))
        width = {"workers": min(workers, cores), "nats": cores}.get(stage, 1)
        if us > 0:
            found[stage] = 1e6 * width / us
    # The whole pipeline (helpers left out: they stand in for other machines) on every core.
    system = sum(v for n, v in cost.items() if not n.startswith(("client", "publisher")))
    if system > 0:
        found["all_on_this_machine"] = 1e6 * cores / system
    return found


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- the load ladder


async def run_step(rig: Rig, rate: float, seconds: float, drain_s: float) -> dict[str, Any]:
    """One offered-load step, then the drain; what it measured (see the module docstring)."""
    assert rig.publisher is not None
    pids = rig.pids()
    start = await Snapshot.take(rig, pids)
    publish = asyncio.create_task(rig.publisher.ask(json.dumps({"rate": rate, "seconds": seconds})))
    peak = start.backlog
    while not publish.done():
        await asyncio.wait({publish}, timeout=1.0)
        peak = max(peak, await asyncio.to_thread(rig.backlog))
    sent = publish.result()
    end = await Snapshot.take(rig, pids)
    expected = start.frames + sent["sent"] * rig.fanout
    drained = await rig.wait_delivered(expected, drain_s)
    received = await rig.frames() - start.frames
    takes = await asyncio.gather(*(c.ask("take") for c in rig.clients))
    latency = sorted(1000.0 * x for t in takes for x in t["latency"])
    missing = max(0, sent["sent"] * rig.fanout - received)
    # Frames that never came within the drain count as infinitely late: more than 1 % missing
    # makes the p99 infinite, one missing the max.
    share_missing = missing / max(1, sent["sent"] * rig.fanout)
    p99 = math.inf if share_missing > 0.01 else percentile(latency, 0.99)
    result = rates(start, end)
    offered = sent["sent"] / (sent["t1"] - sent["t0"])
    growth = end.backlog - start.backlog
    # In flight at a steady p99 of 50 ms is rate/20: a quarter second of the load is clearly more.
    growing = growth > max(100.0, 0.25 * rate)
    result.update({
        "target_msgs_s": rate, "offered_msgs_s": offered, "sent": sent["sent"], "pub_acked": sent["acked"],
        "pub_errors": sent["errors"], "p50_ms": percentile(latency, 0.5), "p99_ms": p99,
        "max_ms": math.inf if missing else (latency[-1] if latency else math.nan), "samples": len(latency),
        "missing_frames": missing, "backlog_start": start.backlog, "backlog_end": end.backlog,
        "backlog_peak": peak, "growing_backlog": growing, "drained": drained,
        "load_avg": os.getloadavg()[0],
    })
    result["held"] = bool(p99 <= P99_TARGET_MS and not growing and not missing and offered >= 0.95 * rate)
    return result


def why_not_held(step: dict[str, Any]) -> str:
    reasons = []
    if step["p99_ms"] > P99_TARGET_MS:
        reasons.append(f"p99 {_ms(step['p99_ms'])} ms")
    if step["growing_backlog"]:
        reasons.append(f"backlog {step['backlog_start']}->{step['backlog_end']}")
    if step["missing_frames"]:
        reasons.append(f"{step['missing_frames']} frames missing after the drain")
    if step["offered_msgs_s"] < 0.95 * step["target_msgs_s"]:
        reasons.append(f"the publisher offered only {step['offered_msgs_s']:.0f} msg/s")
    return ", ".join(reasons)


STAGE_PROCESSES = {"jetstream": "bridge", "queue": "wproc", "gateway": "web"}


def saturated(step: dict[str, Any]) -> str:
    """Where ``step``'s backlog piled up (the stage that did not keep up), its processes' CPU, and
    whether the machine's cores were all busy."""
    growth = step["stage_growth"]
    stage = max(growth, key=lambda k: growth[k])
    prefix = STAGE_PROCESSES[stage]
    cpu = ", ".join(f"{n} {v:.0f} %" for n, v in step["cpu"].items() if n.startswith(prefix))
    ours = sum(step["cpu"].values())
    cores = os.cpu_count() or 1
    machine = step["machine_cpu"]
    text = f"the {stage} stage (+{growth[stage]} events waiting; {cpu} of a core)"
    wanting = full_demand(step)
    if wanting:
        text += "; wanting a whole core (running + waiting for one): " + ", ".join(
            f"{n} {step['cpu'][n]:.0f}+{step['runq'][n]:.0f} %" for n in wanting)
    if machine >= 90.0 * cores:
        text += (f"; all {cores} cores busy ({machine:.0f} %: this run's processes {ours:.0f} %, "
                 f"other processes {max(0.0, machine - ours):.0f} %)")
    return text


#: Processes that run Python or Lua on one thread: CPU + run-queue wait near 100 % means saturated.
SINGLE_THREADED = ("bridge-", "web-", "redis-server")


def full_demand(step: dict[str, Any]) -> list[str]:
    """Single-threaded processes that were running or runnable >= 90 % of the time: each would have
    used a whole core had it got one, so it is that stage's ceiling (highest first)."""
    runq = step.get("runq", {})
    demand = {n: v + runq.get(n, 0.0) for n, v in step["cpu"].items() if n.startswith(SINGLE_THREADED)}
    return sorted((n for n, v in demand.items() if v >= 90.0), key=lambda n: -demand[n])


async def ladder(args: argparse.Namespace, size: int, steps: list[int], work: Path) -> dict[str, Any]:
    rig = Rig(Path(tempfile.mkdtemp(prefix=f"ladder-{size}-", dir=work)), Layout(1, args.workers, 1), size,
              args.users, args.seed)
    quiet = await wait_quiet(args, f"ladder, chats of {size}")
    results: list[dict[str, Any]] = []
    try:
        await rig.start()
        print(f"\n== chats of {size} members: {len(rig.chats)} chats, {len(rig.chats) * size} SSE streams, "
              f"{rig.layout.label()}, steps of {args.step_seconds:g} s", flush=True)
        print(LADDER_HEADER)
        for rate in steps:
            step = await run_step(rig, rate, args.step_seconds, args.drain_seconds)
            results.append(step)
            print_step(size, step)
            if step["growing_backlog"] or not step["drained"]:
                print(f"   (ladder stopped: the backlog grew at {rate} msg/s"
                      + ("" if step["drained"] else " and did not drain") + ")", flush=True)
                break
    finally:
        await rig.close()
    held = [s["target_msgs_s"] for s in results if s["held"]]
    first_fail = next((s for s in results if not s["held"]), None)
    first_growing = next((s for s in results if s["growing_backlog"]), None)
    summary = {
        "chat_size": size, "steps": results, "machine_busy_before": quiet, "max_held_msgs_s": max(held) if held else 0,
        "failed_at_msgs_s": first_fail["target_msgs_s"] if first_fail else None,
        "failed_because": why_not_held(first_fail) if first_fail else None,
        "saturates_first": (f"at {first_growing['target_msgs_s']} msg/s: {saturated(first_growing)}"
                            if first_growing else "no stage built a backlog within the steps run"),
    }
    rows = [(f"{s['target_msgs_s']}/s", s) for s in results]
    print_cpu(f"CPU per step, chats of {size} (% of one core)", rows)
    print_cost(f"CPU per delivered message, chats of {size} (us; one message = {size - 1} notifications)", rows)
    # Costs per message fall with the load (batches grow): take them at the highest load run.
    basis = results[-1]
    limits = ceilings(basis, args.workers)
    summary["ceilings_msgs_s"] = limits
    summary["ceilings_basis_msgs_s"] = basis["target_msgs_s"]
    if limits:
        lowest = min((k for k in limits if k != "all_on_this_machine"), key=lambda k: limits[k])
        print(f"full-core ceilings from the costs at {basis['target_msgs_s']} msg/s (the rate at which each would "
              f"fill its cores on a machine of its own): "
              + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(limits.items(), key=lambda kv: kv[1]))
              + f" msg/s -> {lowest} first")
    print(f"chats of {size}: highest load held with p99 <= {P99_TARGET_MS:g} ms and no growing backlog: "
          f"{summary['max_held_msgs_s']} msg/s ({summary['max_held_msgs_s'] * (size - 1)} notifications/s); "
          f"first step not held: {summary['failed_at_msgs_s']} ({summary['failed_because']}); "
          f"saturates first: {summary['saturates_first']}", flush=True)
    return summary


def _ms(value: float) -> str:
    return "inf" if math.isinf(value) else ("-" if math.isnan(value) else f"{value:.1f}")


LADDER_HEADER = (f"{'size':>4} {'target':>7} {'offered':>8} {'deliv/s':>8} {'notif/s':>8} {'frames/s':>9} "
                 f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'missing':>7} {'backlog':>13} {'grew at':>9} "
                 f"{'held':>5}")


def print_step(size: int, s: dict[str, Any]) -> None:
    backlog = f"{s['backlog_start']}->{s['backlog_end']}"
    growth = s["stage_growth"]
    grew = max(growth, key=lambda k: growth[k]) if s["growing_backlog"] else "-"
    print(f"{size:>4} {s['target_msgs_s']:>7.0f} {s['offered_msgs_s']:>8.0f} {s['delivered_msgs_s']:>8.0f} "
          f"{s['notifications_s']:>8.0f} {s['frames_s']:>9.0f} {_ms(s['p50_ms']):>7} {_ms(s['p99_ms']):>7} "
          f"{_ms(s['max_ms']):>7} {s['missing_frames']:>7} {backlog:>13} {grew:>9} {'yes' if s['held'] else 'NO':>5}",
          flush=True)


def print_cpu(title: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
    names: list[str] = []
    for _, s in rows:
        names += [n for n in s["cpu"] if n not in names]
    short = {n: n.replace("-server", "").replace("client-", "cli-").replace("publisher", "pub") for n in names}
    width = max(12, *(len(label) for label, _ in rows)) + 1
    print(f"\n{title}; machine = all {os.cpu_count()} cores (max {100 * (os.cpu_count() or 1)} %)")
    print(f"{'':<{width}}" + "".join(f"{short[n]:>9}" for n in names) + f"{'ours':>7}{'others':>7}{'machine':>8}")
    for label, s in rows:
        cells = "".join(f"{s['cpu'][n]:>9.0f}" if n in s["cpu"] else f"{'':>9}" for n in names)
        ours = sum(s["cpu"].values())
        print(f"{label:<{width}}{cells}{ours:>7.0f}{max(0.0, s['machine_cpu'] - ours):>7.0f}{s['machine_cpu']:>8.0f}")
    print("waiting for a CPU (runnable, not running: the machine full), % of the time, threads summed:")
    for label, s in rows:
        runq = s.get("runq", {})
        cells = "".join(f"{runq[n]:>9.0f}" if n in runq else f"{'':>9}" for n in names)
        print(f"{label:<{width}}{cells}")


def print_cost(title: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
    costs = [(label, cost_us(s)) for label, s in rows]
    names: list[str] = []
    for _, c in costs:
        names += [n for n in c if n not in names]
    width = max(12, *(len(label) for label, _ in rows)) + 1
    print(f"\n{title}")
    print(f"{'':<{width}}" + "".join(f"{n.replace('-server', '')[:8]:>9}" for n in names) + f"{'system':>8}")
    for label, c in costs:
        cells = "".join(f"{c[n]:>9.0f}" if n in c else f"{'':>9}" for n in names)
        system = sum(v for n, v in c.items() if not n.startswith(("client", "publisher")))
        print(f"{label:<{width}}{cells}{system:>8.0f}")


# --------------------------------------------------------------------------- scale-out


async def scale_point(args: argparse.Namespace, layout: Layout, work: Path) -> dict[str, Any]:
    """Delivered rates at ``--scale-rate`` with ``layout``, measured after a warm-up of the load."""
    rig = Rig(Path(tempfile.mkdtemp(prefix=f"scale-{layout.bridges}b{layout.workers}w{layout.gateways}g-", dir=work)),
              layout, args.scale_size, args.users, args.seed)
    quiet = await wait_quiet(args, layout.label())
    try:
        await rig.start()
        assert rig.publisher is not None
        pids = rig.pids()
        total = args.scale_warm + args.scale_seconds
        publish = asyncio.create_task(rig.publisher.ask(json.dumps({"rate": args.scale_rate, "seconds": total})))
        await asyncio.sleep(args.scale_warm)
        start = await Snapshot.take(rig, pids)
        await asyncio.sleep(args.scale_seconds)
        end = await Snapshot.take(rig, pids)
        sent = await publish
        result = rates(start, end)
        result.update({"layout": layout.__dict__, "machine_busy_before": quiet,
                       "offered_msgs_s": sent["sent"] / (sent["t1"] - sent["t0"]),
                       "backlog_start": start.backlog, "backlog_end": end.backlog})
        await asyncio.gather(*(c.ask("take") for c in rig.clients))  # drop the samples
    finally:
        await rig.close()
    print(f"   {layout.label():<42} offered {result['offered_msgs_s']:>6.0f} msg/s: delivered "
          f"{result['delivered_msgs_s']:>6.0f} msg/s, {result['notifications_s']:>7.0f} notif/s, "
          f"{result['frames_s']:>7.0f} frames/s, backlog {start.backlog}->{end.backlog} "
          f"(grew: " + ", ".join(f"{k} {v:+}" for k, v in result["stage_growth"].items()) + ")", flush=True)
    return result


def _average(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of several runs of one layout (numbers and the CPU table); the runs kept too."""
    mean: dict[str, Any] = dict(runs[-1])
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            mean[key] = sum(r[key] for r in runs) / len(runs)
    for table in ("cpu", "runq"):
        mean[table] = {n: sum(r[table].get(n, 0.0) for r in runs) / len(runs) for n in runs[0][table]}
    mean["runs"] = [{k: v for k, v in r.items() if k != "runs"} for r in runs]
    return mean


def cpu_groups(point: dict[str, Any]) -> dict[str, float]:
    """CPU (% of one core) by kind: the Python processes of the pipeline, redis-server, nats-server,
    the bench's helpers, and everything else on the machine."""
    groups = dict.fromkeys(("python", "redis", "nats", "helpers"), 0.0)
    for name, value in point["cpu"].items():
        kind = ("redis" if name.startswith("redis") else "nats" if name.startswith("nats")
                else "helpers" if name.startswith(("client", "publisher")) else "python")
        groups[kind] += value
    groups["others"] = max(0.0, point["machine_cpu"] - sum(groups.values()))
    return groups


def _groups_text(point: dict[str, Any]) -> str:
    cores = os.cpu_count() or 1
    g = cpu_groups(point)
    fullest = max((n for n in point["cpu"] if not n.startswith(("client", "publisher"))), key=lambda n: point["cpu"][n])
    return (f"machine {point['machine_cpu']:.0f} % of {100 * cores} ("
            + ", ".join(f"{k} {v:.0f}" for k, v in g.items())
            + f"); fullest process {fullest} {point['cpu'][fullest]:.0f} %")


#: A step that adds less than this (as a ratio to the previous count) is where scaling stopped.
MIN_GAIN = 1.15


def why_limited(point: dict[str, Any]) -> str:
    """What was full in ``point``: every core, one process's core, or nothing (a wait, not CPU)."""
    cores = os.cpu_count() or 1
    g = cpu_groups(point)
    full = [n for n, v in point["cpu"].items() if v >= 90.0 and not n.startswith(("client", "publisher"))]
    wanting = full_demand(point)
    if point["machine_cpu"] >= 90.0 * cores:
        kinds = sorted(g.items(), key=lambda kv: -kv[1])
        return (f"every core is busy ({point['machine_cpu']:.0f} % of {100 * cores}): "
                + ", ".join(f"{k} {v:.0f} %" for k, v in kinds)
                + ("; wanting a whole core (running + waiting for one): "
                   + ", ".join(f"{n} {point['cpu'][n]:.0f}+{point['runq'][n]:.0f} %" for n in wanting)
                   if wanting else ""))
    if full:
        return "a full core: " + ", ".join(f"{n} {point['cpu'][n]:.0f} %" for n in full)
    if wanting:
        return ("wanting a whole core (running + waiting for one): "
                + ", ".join(f"{n} {point['cpu'][n]:.0f}+{point['runq'][n]:.0f} %" for n in wanting))
    return f"no core is full ({_groups_text(point)}): the stage waits (round trips), it is not CPU-bound"


def demand(point: dict[str, Any], prefix: str) -> str:
    """Running + waiting-for-a-CPU of the processes named ``prefix...``, as text."""
    runq = point.get("runq", {})
    return ", ".join(f"{n} {v:.0f}+{runq.get(n, 0.0):.0f} %" for n, v in point["cpu"].items() if n.startswith(prefix))


def spread(point: dict[str, Any]) -> float:
    """max/min of notifications/s over the rounds of one layout (1.0 with one round): the noise."""
    values = [r["notifications_s"] for r in point.get("runs", [])] or [point["notifications_s"]]
    return max(values) / min(values) if min(values) > 0 else math.inf


def verdicts(points: dict[str, dict[str, Any]], w: int) -> list[str]:
    lines = []
    n1, n2, n4 = (points[f"workers={n}"]["notifications_s"] for n in (1, 2, 4))
    if n1 <= 0:
        return ["no notifications were delivered with 1 worker process: no verdict"]
    others = max(cpu_groups(p)["others"] for p in points.values())
    if others >= 20.0:
        lines.append(f"shared machine: other processes used up to {others:.0f} % of a core during these runs; the "
                     f"scheduler shares the cores per thread, so more processes also take a larger share from "
                     f"them: a ratio > 1 can come from that as much as from the design")
    noise = max(spread(p) for p in points.values())
    if noise > 1.0:
        lines.append(f"noise: the rounds of one layout differ by up to x{noise:.2f}; ratios within that are noise")
    one = f"with 1 (running+waiting for a CPU): {demand(points['workers=1'], 'wproc-')}"
    if n2 / n1 < MIN_GAIN:
        lines.append(f"workers: stops scaling at 1 -> 2 processes (x{n2 / n1:.2f}; {one}); with 2: "
                     f"{why_limited(points['workers=2'])}")
    elif n4 / max(n2, 1e-9) < MIN_GAIN:
        lines.append(f"workers: x{n2 / n1:.2f} with 2 processes ({one}), stops at 2 -> 4 (x{n4 / n1:.2f} of one); "
                     f"with 4: {why_limited(points['workers=4'])}")
    else:
        lines.append(f"workers: still scaling at 4 processes (x{n2 / n1:.2f} with 2, x{n4 / n1:.2f} with 4; {one}); "
                     f"with 4: {why_limited(points['workers=4'])}")
    base = points[f"workers={w}"]
    for label, key, prefix in (("bridges", f"bridges=2 (w={w})", "bridge-"),
                               ("gateways", f"gateways=2 (w={w})", "web-")):
        ratio = points[key]["notifications_s"] / max(base["notifications_s"], 1e-9)
        busy = demand(base, prefix)
        idle = all(v + base.get("runq", {}).get(n, 0.0) < 50.0 for n, v in base["cpu"].items() if n.startswith(prefix))
        note = (f"; the one {label[:-1]} was not the limit ({busy}, running+waiting for a CPU), so a second one has "
                f"nothing to take over" if idle else f"; the one {label[:-1]}: {busy}")
        if ratio < MIN_GAIN:
            lines.append(f"{label}: 2 do not scale over 1 (x{ratio:.2f}){note}; with 1: {why_limited(base)}")
        else:
            lines.append(f"{label}: 2 give x{ratio:.2f} of 1{note}")
    return lines


async def scale_out(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    print(f"\n== scale-out: chats of {args.scale_size}, offered {args.scale_rate:g} msg/s, "
          f"{args.scale_warm:g} s warm-up then {args.scale_seconds:g} s measured, {args.scale_rounds} round(s) "
          f"in alternating order, {cores} cores", flush=True)
    w = args.scale_others_workers
    layouts = {"workers=1": Layout(1, 1, 1), "workers=2": Layout(1, 2, 1), "workers=4": Layout(1, 4, 1),
               f"bridges=2 (w={w})": Layout(2, w, 1), f"gateways=2 (w={w})": Layout(1, w, 2)}
    if w not in (1, 2, 4):
        layouts[f"workers={w}"] = Layout(1, w, 1)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in layouts}
    for round_ in range(args.scale_rounds):
        # Alternate the order: a machine that gets busier during the run penalises every layout alike.
        order = list(layouts) if round_ % 2 == 0 else list(reversed(layouts))
        for name in order:
            runs[name].append(await scale_point(args, layouts[name], work))
    points = {name: _average(found) for name, found in runs.items()}
    base_w = points[f"workers={w}"]
    # (printed name, figure key, its point, the baseline's figure key, the baseline's point)
    ratios = [
        ("2 worker procs / 1", "workers2", points["workers=2"], "workers1", points["workers=1"]),
        ("4 worker procs / 1", "workers4", points["workers=4"], "workers1", points["workers=1"]),
        (f"2 bridges / 1 (w={w})", "bridges2", points[f"bridges=2 (w={w})"], f"workers{w}", base_w),
        (f"2 gateways / 1 (w={w})", "gateways2", points[f"gateways=2 (w={w})"], f"workers{w}", base_w),
    ]
    print(f"\n{'scale-out ratio':<26}{'notif/s':>10}{'of one':>10}{'ratio':>8}{'frames/s ratio':>16}")
    table = []
    for name, key, point, base_key, base in ratios:
        ratio = point["notifications_s"] / base["notifications_s"] if base["notifications_s"] else math.nan
        frames = point["frames_s"] / base["frames_s"] if base["frames_s"] else math.nan
        table.append({"name": name, "key": key, "baseline_key": base_key, "notifications_s": point["notifications_s"],
                      "baseline_notifications_s": base["notifications_s"], "ratio": ratio, "frames_ratio": frames})
        print(f"{name:<26}{point['notifications_s']:>10.0f}{base['notifications_s']:>10.0f}{ratio:>8.2f}"
              f"{frames:>16.2f}")
    print_cpu("CPU per scale-out run (% of one core, mean of the rounds)", list(points.items()))
    print_cost("CPU per delivered message per scale-out run (us)", list(points.items()))
    print("\nwhere the CPU went (% of one core: python = bridge + workers + gateway processes):")
    for name, point in points.items():
        print(f"   {name:<22} {_groups_text(point)}")
    found = verdicts(points, w)
    print("\nwhere it stops scaling on this machine, and why:")
    for line in found:
        print(f"   {line}")
    return {"points": points, "ratios": table, "verdicts": found}


# --------------------------------------------------------------------------- output


def figures(ladders: list[dict[str, Any]], scale: dict[str, Any] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def fig(name: str, value: float, unit: str, baseline: str | None = None, target: str | None = None) -> None:
        out.append({"name": name, "value": None if math.isinf(value) or math.isnan(value) else float(value),
                    "unit": unit, "baseline": baseline, "target": target})

    for lad in ladders:
        size = lad["chat_size"]
        fig(f"pipeline.chat{size}.max_held_msgs_s", lad["max_held_msgs_s"], "msg/s", target=None)
        for stage, value in lad.get("ceilings_msgs_s", {}).items():
            fig(f"pipeline.chat{size}.ceiling.{stage}_msgs_s", value, "msg/s")
        for s in lad["steps"]:
            p = f"pipeline.chat{size}.at{s['target_msgs_s']}"
            fig(f"{p}.offered_msgs_s", s["offered_msgs_s"], "msg/s")
            fig(f"{p}.delivered_msgs_s", s["delivered_msgs_s"], "msg/s")
            fig(f"{p}.notifications_s", s["notifications_s"], "notifications/s")
            fig(f"{p}.frames_s", s["frames_s"], "frames/s")
            fig(f"{p}.p50_ms", s["p50_ms"], "ms")
            fig(f"{p}.p99_ms", s["p99_ms"], "ms", target=f"<= {P99_TARGET_MS:g}")
            fig(f"{p}.max_ms", s["max_ms"], "ms")
            fig(f"{p}.backlog_growth", s["backlog_end"] - s["backlog_start"], "events")
    if scale is not None:
        for name, point in scale["points"].items():
            key = name.split(" ")[0].replace("=", "")
            fig(f"pipeline.scale.{key}.notifications_s", point["notifications_s"], "notifications/s")
            cost = sum(v for n, v in cost_us(point).items() if not n.startswith(("client", "publisher")))
            fig(f"pipeline.scale.{key}.system_cpu_us_per_msg", cost, "us/msg")
        for row in scale["ratios"]:
            fig(f"pipeline.scale.{row['key']}_vs_1", row["ratio"], "ratio",
                baseline=f"pipeline.scale.{row['baseline_key']}.notifications_s")
    return out


def _clean(value: Any) -> Any:
    """JSON without infinities (null instead)."""
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _revision() -> str | None:
    """The commit measured, when ROOT is a git checkout (a ``git archive`` snapshot is not)."""
    import subprocess

    try:
        done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _steps(text: str) -> tuple[int, list[int]]:
    size, _, rates_ = text.partition("=")
    return int(size), [int(r) for r in rates_.split(",") if r]


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="fechatter-notify-pipeline-"))
    started = time.time()
    steps = dict(QUICK_STEPS if args.quick else DEFAULT_STEPS)
    steps.update(dict(args.steps or []))
    print(f"bench/pipeline.py: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start "
          f"(the machine may be shared: other processes' CPU shows in the 'machine' column); work dir {work}")
    ladders: list[dict[str, Any]] = []
    scale = None
    try:
        if not args.no_ladder:
            for size in args.sizes:
                ladders.append(await ladder(args, size, steps[size], work))
        if not args.no_scale:
            scale = await scale_out(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\ndone in {time.time() - started:.0f} s; load average {os.getloadavg()[0]:.2f} at the end")
    meta = {"cpus": os.cpu_count(), "rev": _revision(), "quick": args.quick, "seed": args.seed, "users": args.users,
            "step_seconds": args.step_seconds, "scale_rate": args.scale_rate, "scale_size": args.scale_size,
            "load_avg_end": os.getloadavg()[0], "seconds": time.time() - started,
            "ladders": ladders, "scale_out": scale, "shared_machine": True}
    return _clean({"figures": figures(ladders, scale), "meta": meta})  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small steps and runs (about 2 minutes)")
    parser.add_argument("--seed", type=int, default=1, help="chats' membership and the traffic's draw")
    parser.add_argument("--json", metavar="PATH", help="write the figures there")
    parser.add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",")], default=[3, 50],
                        help="chat sizes of the load ladders (default 3,50)")
    parser.add_argument("--steps", type=_steps, action="append", metavar="SIZE=R1,R2,...",
                        help="offered msg/s steps for a chat size (default 3=200,...,4000 and 50=50,...,1000)")
    parser.add_argument("--users", type=int, default=600, help="SSE streams (users) per run: users/size chats")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes in the ladders (default: the Procfile's, -p = the CPU count)")
    parser.add_argument("--step-seconds", type=float, default=None, help="each step (default 10, quick 3)")
    parser.add_argument("--drain-seconds", type=float, default=30.0, help="wait for the backlog to drain")
    parser.add_argument("--scale-rate", type=float, default=4000, help="offered msg/s of the scale-out runs")
    parser.add_argument("--scale-size", type=int, default=3, help="chat size of the scale-out runs")
    parser.add_argument("--scale-seconds", type=float, default=None, help="measured (default 8, quick 3)")
    parser.add_argument("--scale-warm", type=float, default=None, help="load before measuring (default 3, quick 1.5)")
    parser.add_argument("--scale-rounds", type=int, default=None, help="runs of each layout (default 2, quick 1)")
    parser.add_argument("--scale-others-workers", type=int, default=2,
                        help="worker processes beside the 1-vs-2 bridge and gateway runs")
    parser.add_argument("--quiet-below", type=float, default=25.0,
                        help="before each run wait until the machine is less busy than this (%% of all cores)")
    parser.add_argument("--quiet-patience", type=float, default=None,
                        help="...but at most this many seconds (default 30, quick 0: no wait)")
    parser.add_argument("--no-ladder", action="store_true")
    parser.add_argument("--no-scale", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = parser.parse_args()
    if args.step_seconds is None:
        args.step_seconds = 3.0 if args.quick else 10.0
    if args.scale_seconds is None:
        args.scale_seconds = 3.0 if args.quick else 8.0
    if args.quiet_patience is None:
        args.quiet_patience = 0.0 if args.quick else 30.0
    if args.scale_rounds is None:
        args.scale_rounds = 1 if args.quick else 2
    if args.scale_warm is None:
        args.scale_warm = 1.5 if args.quick else 3.0
    if args.quick:
        args.drain_seconds = min(args.drain_seconds, 15.0)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwind: the harness kills what it started
    report = asyncio.run(orchestrate(args))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
