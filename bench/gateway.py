"""Benchmark one gateway process: N concurrent SSE streams, fan-out rate, latency, memory.

    python bench/gateway.py                       # 10,000 streams over 2,000 users
    python bench/gateway.py --streams 2000 --users 400 --burst 10000 --rate 2000
    python bench/gateway.py --quick --json out.json   # 1,000 streams, well under a minute
    python bench/gateway.py --streams 50000 --users 2000 --rate 2000   # as many as the fd limit allows
    python bench/gateway.py --quick --tracemalloc 10 --top 20tb         # who holds a stream's memory

What it does, all on 127.0.0.1 and free ports:

1. starts its own redis-server (tests/servers.py's RedisServer) and one gateway subprocess
   (``fechatter-notify gateway`` run by this script's ``--role gateway``, which adds a probe
   thread on a Unix socket: ``gc`` runs a full collection in the gateway and answers its
   /proc/self/smaps_rollup, so memory is read after a GC); measures its memory and, over
   ``--idle-window`` seconds (two keep-alive intervals), its idle CPU (utime + stime);
2. starts ``--clients`` client processes (so their CPU is not the gateway's; on uvloop, so they
   take as little of the shared cores as they can) that open the streams with raw sockets, like
   browsers would: ``GET /events?access_token=...``, from many loopback source addresses
   (at most 40 streams each); as root it first raises the open-files limits (where the
   container allows: without CAP_SYS_RESOURCE, or in a sandbox that refuses it even to a root that has
   it (seen: EPERM with the capability in the effective set), the hard limit stays, and the streams are
   clamped to what it lets one gateway hold); then, all streams open and idle, memory per stream
   after a GC net of the idle process (with the kernel's TCP buffer and slab memory beside it,
   machine-wide, so noisy on a shared machine) and idle CPU per stream net of the idle window
   with no stream, in microseconds per second;
3. burst phase: publishes ``--burst`` notifications as fast as Redis takes them (XADD + PUBLISH
   in one Lua call per notification, pipelined, exactly the worker's contract) and measures
   frames/s delivered from the first publish to the last frame received;
4. paced phase: publishes ``--rate`` notifications/s for ``--duration`` s and measures the
   publish-to-frame latency (each notification carries its publish time; clients and publisher
   share the clock);
5. prints the numbers measured next to the targets (10,000 streams within 300 MB RSS,
   >= 50,000 frames/s), plus the CPU each party used, so a client-bound run is visible.

Users get ``streams / users`` streams each (the web client opens one per chat switch), so each
notification fans out to that many frames.

``--compare off`` runs the same load twice per round, with every ``gateway.limits`` protection
off ("before") and at its defaults ("after"), and prints both side by side with their ratio:
what the edge protections cost (budget: at most 5 % of frames/s). ``--compare DIR`` takes
"before" from a checkout of an earlier commit instead (``git archive REV | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _lines import ask, client_loop, complete_frames  # noqa: E402 - bench/, the script's own directory

TARGET_STREAMS = 10_000
TARGET_RSS_MB = 300
TARGET_FRAMES_PER_S = 50_000
#: The target: memory per idle stream, net of the idle process, after a GC.
TARGET_KB_PER_STREAM = 11
#: The target: gateway CPU per idle stream at the 20 s keep-alive, microseconds per second.
TARGET_IDLE_US = 2
#: Concurrent connection attempts per client process (the listen backlog is 4096).
CONNECT_CONCURRENCY = 500
#: Streams per client source address (127.0.0.2 ...): inside the default connect burst of 100,
#: and far below the ~28,000 ephemeral ports of one address.
STREAMS_PER_ADDRESS = 40
#: The fewest source addresses used (10,000 streams are then 40 per address).
MIN_SOURCE_ADDRESSES = 250
_T = re.compile(rb'"t":([0-9.]+)')


#: Descriptors beyond one per stream: the gateway's reserve (gateway/limits.py) and then some.
FD_HEADROOM = 4096


#: Descriptors the gateway keeps back from its limit (gateway/limits.py: FD_RESERVE and
#: PROBE_RESERVE), plus a margin: more streams than the limit minus this cannot be held.
GATEWAY_FD_RESERVE = 256 + 64 + 100


def raise_fd_limit(streams: int = 0) -> tuple[int, int]:
    """Soft RLIMIT_NOFILE := hard limit (each stream is one descriptor on each side); as root,
    first raise the hard limit to what ``streams`` need (children inherit both). Raising the
    hard limit takes CAP_SYS_RESOURCE, which a container's root may lack: then it stays."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = streams + FD_HEADROOM
    if hard != resource.RLIM_INFINITY and hard < wanted and os.geteuid() == 0:
        ceiling = int(_read(Path("/proc/sys/fs/nr_open")))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, ceiling), min(wanted, ceiling)))
        except (ValueError, OSError) as exc:
            print(f"cannot raise the hard open-files limit above {hard} ({exc}: raising it takes CAP_SYS_RESOURCE, "
                  "and some sandboxes refuse it even to a root that has the capability)")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _read(path: Path) -> str:
    # Small local files, read once: not worth a thread.
    return path.read_text()


def proc_stat(pid: int) -> dict[str, float]:
    """RSS now and peak (MB) and CPU seconds used, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "hwm_mb": int(fields["VmHWM"].split()[0]) / 1024,
        "cpu_s": (int(stat[11]) + int(stat[12])) / ticks,
    }


# ---------------------------------------------------------------------------- client side


class _Stats:
    def __init__(self) -> None:
        self.confirmed = 0
        self.failed = 0
        self.closed = 0
        self.frames = 0
        self.first_frame = 0.0
        self.last_frame = 0.0
        self.latencies = array("d")


class _SseConnection(asyncio.Protocol):
    """Counts notification frames (``id:`` lines) and samples their publish time."""

    def __init__(
        self, request: bytes, stats: _Stats, confirmed: asyncio.Future[None], timed: bool
    ) -> None:
        self.request, self.stats, self.confirmed = request, stats, confirmed
        #: Only some streams parse publish times: the clients' CPU is not free either.
        self.timed = timed
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        chunk, self.buffer = complete_frames(self.buffer, data)
        if not chunk:
            return
        if not self.confirmed.done():
            if b"connection_confirmed" in chunk:
                self.confirmed.set_result(None)
            elif b" 401 " in chunk[:20]:
                self.confirmed.set_exception(RuntimeError("401"))
        frames = chunk.count(b"id: ")
        if frames:
            now = time.time()
            stats = self.stats
            if not stats.frames:
                stats.first_frame = now
            stats.frames += frames
            stats.last_frame = now
            if self.timed:
                stats.latencies.extend(now - float(t) for t in _T.findall(chunk))

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.closed += 1
        if not self.confirmed.done():
            self.confirmed.set_exception(ConnectionError("closed before confirmation"))


def source_addresses(streams: int) -> int:
    """How many loopback source addresses ``streams`` streams come from."""
    return max(MIN_SOURCE_ADDRESSES, -(-streams // STREAMS_PER_ADDRESS))


def source_address(index: int, addresses: int) -> str:
    """The loopback address stream ``index`` connects from: streams come from ``addresses``
    addresses (127.0.0.2, ..., 127.0.0.251, 127.0.1.2, ...: all of 127/8 is loopback), as from
    many browsers, so the gateway's per-address connect rate (``gateway.limits.connect_rate``)
    applies as it would in production."""
    k = index % addresses
    return f"127.0.{k // 250}.{2 + k % 250}"


async def client_main(args: argparse.Namespace) -> None:
    """One client process: opens its share of streams, then reports on request (stdin)."""
    raise_fd_limit()
    tokens: list[str] = json.loads(_read(Path(args.tokens)))
    stats = _Stats()
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    host = "127.0.0.1"
    connections: list[_SseConnection] = []

    async def open_one(index: int) -> None:
        token = tokens[index % len(tokens)]
        request = (f"GET /events?access_token={token} HTTP/1.1\r\nHost: {host}:{args.port}\r\n"
                   f"Accept: text/event-stream\r\n\r\n").encode()
        confirmed: asyncio.Future[None] = loop.create_future()
        async with gate:
            try:
                _, protocol = await loop.create_connection(
                    lambda: _SseConnection(request, stats, confirmed, index % args.sample == 0),
                    host, args.port, local_addr=(source_address(index, args.addresses), 0))
                connections.append(protocol)
                await asyncio.wait_for(confirmed, 60)
                stats.confirmed += 1
            except (OSError, RuntimeError, TimeoutError):
                stats.failed += 1

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def say(**fields: Any) -> None:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    while line := await reader.readline():
        command = line.decode().strip()
        if command == "connect":
            started = time.time()
            await asyncio.gather(*(open_one(i) for i in range(args.first, args.first + args.count)))
            say(confirmed=stats.confirmed, failed=stats.failed, started=started, done=time.time())
        elif command == "reset":
            stats.frames, stats.first_frame, stats.last_frame = 0, 0.0, 0.0
            stats.latencies = array("d")
            say(ok=True)
        elif command == "report":
            say(frames=stats.frames, first=stats.first_frame, last=stats.last_frame,
                closed=stats.closed, latencies=list(stats.latencies),
                cpu_s=proc_stat(os.getpid())["cpu_s"])
        elif command == "quit":
            break
    for connection in connections:
        if connection.transport is not None:
            connection.transport.abort()


# ---------------------------------------------------------------------------- gateway side


def _probe_answer(command: str) -> dict[str, Any]:
    """One probe command, run in the gateway process (on the probe thread)."""
    import gc
    import tracemalloc

    verb, _, arg = command.partition(" ")
    if verb == "trim":
        # A diagnostic, not part of the figure: how much of the RSS is memory glibc's malloc
        # holds free (fragmentation) rather than memory in use.
        import ctypes

        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return _smaps_rollup()
    if verb == "mark" and tracemalloc.is_tracing():
        _marks.append(tracemalloc.take_snapshot())
        return {"ok": True}
    if verb == "gc":
        # Every generation, frozen objects aside (the gateway freezes its start-up objects):
        # what is left is what the streams really hold.
        collected = gc.collect()
        return {"collected": collected, **_smaps_rollup()}
    if verb == "top" and tracemalloc.is_tracing():
        gc.collect()
        snapshot = tracemalloc.take_snapshot().filter_traces(
            (tracemalloc.Filter(False, tracemalloc.__file__),))
        key = "traceback" if arg.endswith("tb") else "lineno"
        limit = int(arg.rstrip("tb") or 25)
        # Since the mark (taken with no stream open), when there is one: what the streams added.
        stats = snapshot.compare_to(_marks[-1], key) if _marks else snapshot.statistics(key)
        return {"top": [{"kb": getattr(stat, "size_diff", stat.size) / 1024,
                         "count": getattr(stat, "count_diff", stat.count),
                         "where": [str(frame) for frame in stat.traceback.format(most_recent_first=True)[:8]]}
                        for stat in stats[:limit]],
                "traced_kb": tracemalloc.get_traced_memory()[0] / 1024}
    return {"error": f"unknown command {command!r}"}


#: tracemalloc snapshots taken by the probe's ``mark``.
_marks: list[Any] = []


def _smaps_rollup() -> dict[str, float]:
    """Resident, proportional and anonymous memory of this process, KB."""
    values: dict[str, float] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss", "Anonymous"):
            values[name.lower() + "_kb"] = float(rest.split()[0])
    return values


def _serve_probe(path: str) -> None:
    """Answer probe commands on a Unix socket, one JSON line per command line.

    A thread, not a task or a signal handler: it needs nothing of the gateway's event loop
    (uvloop or not), and gc.collect() is safe from any thread under the GIL.
    """
    import socket
    import threading

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            with conn, conn.makefile("rwb") as stream:
                for line in stream:
                    stream.write(json.dumps(_probe_answer(line.decode().strip())).encode() + b"\n")
                    stream.flush()

    threading.Thread(target=serve, name="bench-probe", daemon=True).start()


def gateway_main(args: argparse.Namespace, argv: list[str]) -> int:
    """``--role gateway``: the gateway (``fechatter-notify`` with ``argv``) plus the probe."""
    # The checkout to run is the working directory (``--compare DIR`` runs an older one).
    sys.path.insert(0, os.getcwd())
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(args.tracemalloc)
    _serve_probe(args.probe)
    from fechatter_notify.cli import main as cli_main

    return cli_main(argv)


class _Probe:
    """The orchestrator's end of a gateway's probe socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def ask(self, command: str) -> dict[str, Any]:
        if self._streams is None:
            self._streams = await asyncio.open_unix_connection(str(self.path), limit=1 << 24)
        reader, writer = self._streams
        writer.write(command.encode() + b"\n")
        await writer.drain()
        answer: dict[str, Any] = json.loads(await reader.readline())
        return answer

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()


def tcp_socket_memory_kb() -> float:
    """The kernel's memory in TCP socket buffers, machine-wide (/proc/net/sockstat ``mem``, pages)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") / 1024
    return float("nan")


def slab_kb() -> float:
    """Kernel slab memory, machine-wide (/proc/meminfo ``Slab``): socket structures live there."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Slab:"):
            return float(line.split()[1])
    return float("nan")


async def _memory(pid: int, probe: _Probe) -> dict[str, float]:
    """The gateway's memory right after a full GC in it, and the kernel's socket memory."""
    after_gc = await probe.ask("gc")
    return {**proc_stat(pid), **after_gc, "tcp_mem_kb": tcp_socket_memory_kb(), "slab_kb": slab_kb()}


async def idle_cpu(pid: int, seconds: float) -> float:
    """CPU seconds (user + system) the process used during ``seconds`` of idleness."""
    before = proc_stat(pid)["cpu_s"]
    await asyncio.sleep(seconds)
    return proc_stat(pid)["cpu_s"] - before


# ---------------------------------------------------------------------------- orchestrator

_PUBLISH = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'n', ARGV[1])
redis.call('PUBLISH', KEYS[2], id .. '\\n' .. ARGV[1])
return id
"""


class _Client:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def ask(self, command: str) -> dict[str, Any]:
        return await ask(self.proc, command, "client")


async def _settle(clients: list[_Client], expected: int) -> tuple[list[dict[str, Any]], int]:
    """Poll the clients until ``expected`` frames arrived or none arrived for 3 s."""
    got, last_change, last_got = 0, time.time(), -1
    while True:
        reports = await asyncio.gather(*(c.ask("report") for c in clients))
        got = sum(r["frames"] for r in reports)
        if got != last_got:
            last_got, last_change = got, time.time()
        if got >= expected or time.time() - last_change > 3.0:
            return reports, got
        await asyncio.sleep(0.2)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _wait_ready(url: str, gateway: asyncio.subprocess.Process, log: Path) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for _ in range(3600):
            if gateway.returncode is not None:
                raise RuntimeError(f"gateway exited:\n{_read(log)[-3000:]}")
            try:
                async with session.get(url + "/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("gateway not ready after 180 s")


async def _metrics(url: str) -> dict[str, float]:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        text = await response.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("fechatter_notify_gateway_"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _publisher(redis_url: str, users: int, max_len: int) -> Any:
    import redis

    client = redis.Redis.from_url(redis_url)
    script = client.register_script(_PUBLISH)
    counter = {"n": 0}

    def publish(count: int) -> None:
        pipe = client.pipeline(transaction=False)
        for _ in range(count):
            n = counter["n"]
            counter["n"] = n + 1
            user = n % users + 1
            body = json.dumps({"type": "new_message", "id": n, "chat_id": 1, "sender_id": 1,
                               "content": "bench", "t": time.time()}, separators=(",", ":"))
            script(keys=[f"bench:inbox:{user}", f"bench:live:{user}"], args=[body, max_len],
                   client=pipe)
        pipe.execute()

    return publish


#: Gateway settings that turn every edge protection off (``--compare off``).
LIMITS_OFF: dict[str, str] = {
    f"NOTIFY__GATEWAY__LIMITS__{name}": "0"
    for name in ("MAX_STREAMS_PER_USER", "CONNECT_RATE", "MAX_CONNECTIONS", "MAX_MEMORY",
                 "STREAM_BUFFER_BYTES", "MAX_HEADER_BYTES", "MAX_QUERY_BYTES", "MAX_TOKEN_BYTES",
                 "HEADER_READ_TIMEOUT")
}


class _Setup:
    """What every gateway run of one bench invocation shares: Redis, the key, the tokens."""

    def __init__(self, work: Path, redis_url: str, public_pem: str) -> None:
        self.work, self.redis_url, self.public_pem = work, redis_url, public_pem


async def orchestrate(args: argparse.Namespace) -> dict[str, Any] | None:
    """Run the benchmark; returns the figures of a single run (None for ``--compare``)."""
    from gateway.testing import SigningKey
    from tests.servers import RedisServer

    soft, hard = raise_fd_limit(args.streams)
    args.streams_requested = args.streams
    if args.streams > soft - GATEWAY_FD_RESERVE:
        # One gateway process cannot hold more streams than its descriptors allow: measure
        # what it can hold rather than a run in which the rest is refused.
        args.streams = soft - GATEWAY_FD_RESERVE
        print(f"open-files limit {soft}: {args.streams} streams instead of {args.streams_requested}")
    print(f"fd limit (this process and its children): soft={soft} hard={hard}; cpus={os.cpu_count()}; "
          f"{source_addresses(args.streams)} client source addresses")
    work = Path(tempfile.mkdtemp(prefix="fechatter-notify-bench-"))
    key = SigningKey.generate()
    tokens = [key.token(user, lifetime=3600 * 4) for user in range(1, args.users + 1)]
    (work / "tokens.json").write_text(json.dumps(tokens))
    with RedisServer() as redis_server:
        setup = _Setup(work, redis_server.url, key.public_pem)
        if not args.compare:
            result = await run_gateway(args, setup, ROOT, {}, "run")
            _print_run(args, result)
            return figures(args, result)
        return await compare(args, setup)


async def compare(args: argparse.Namespace, setup: _Setup) -> dict[str, Any]:
    """``--compare``: the same load on the gateway without its edge protections ("before") and
    with them at their defaults ("after"), alternating for ``--rounds`` rounds; best of each."""
    if args.compare == "off":
        before: tuple[Path, dict[str, str]] = (ROOT, LIMITS_OFF)
        label = "protections off (gateway.limits.* = 0)"
    else:
        before = (Path(args.compare), {})  # made absolute in main()
        label = f"code at {before[0]}"
    results: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for round_ in range(args.rounds):
        # Alternate the order: a machine that slows down during the run penalises both alike.
        order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
        for mode in order:
            code, env = before if mode == "before" else (ROOT, {})
            print(f"\n== round {round_ + 1}/{args.rounds}: {mode} ({label if mode == 'before' else 'defaults'})")
            result = await run_gateway(args, setup, code, env, mode)
            _print_run(args, result)
            results[mode].append(result)
    _print_comparison(args, label, results)
    return _comparison_figures(args, label, results)


#: Figures of a comparison: (name, result field, unit).
_COMPARED = (
    ("burst_frames_per_cpu_s", "burst_frames_per_cpu_s", "frames/CPU-s"),
    ("paced_frames_per_cpu_s", "paced_frames_per_cpu_s", "frames/CPU-s"),
    ("burst_frames_per_s", "burst_rate", "frames/s"),
    ("rss_per_stream_after_gc", "kb_per_stream_gc", "KB"),
    ("idle_cpu_per_stream", "idle_cpu_us_per_s_per_stream", "us/s"),
)


def _comparison_figures(args: argparse.Namespace, label: str,
                        results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians of "before" and "after", each "after" figure naming its "before" as baseline."""
    figures_: list[dict[str, Any]] = []
    for name, field, unit in _COMPARED:
        for mode in ("before", "after"):
            figures_.append({"name": f"{name}_{mode}", "value": _median(results[mode], field), "unit": unit,
                             "baseline": f"{name}_before" if mode == "after" else None, "target": None})
    return {"figures": figures_, "meta": {"before": label, "rounds": args.rounds, "streams": args.streams,
                                          "users": args.users, "keep_alive_s": args.keep_alive,
                                          "machine": "shared"}}


def _median(runs: list[dict[str, Any]], field: str) -> float:
    values = sorted(float(r[field]) for r in runs)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def _print_comparison(args: argparse.Namespace, label: str, results: dict[str, list[dict[str, Any]]]) -> None:
    """Medians side by side. Frames per gateway CPU-second is the cost figure: wall-clock frames/s
    follows the share of the cores the gateway gets, which on a shared machine varies from run
    to run far more than 5 %."""
    before, after = results["before"], results["after"]
    rows = [
        ("burst: frames per gateway CPU-s", "burst_frames_per_cpu_s", "{:,.0f}"),
        ("paced: frames per gateway CPU-s", "paced_frames_per_cpu_s", "{:,.0f}"),
        ("burst fan-out, frames/s (wall clock)", "burst_rate", "{:,.0f}"),
        ("gateway share of a core in the burst", "burst_core_share", "{:.2f}"),
        ("paced frames/s", "paced_rate", "{:,.0f}"),
        ("publish->frame p99, ms", "p99_ms", "{:.1f}"),
        ("RSS per stream, KB", "kb_per_stream", "{:.1f}"),
        ("RSS per stream after a GC, KB", "kb_per_stream_gc", "{:.2f}"),
        (f"idle CPU per stream, us/s (keep-alive {args.keep_alive:g} s)", "idle_cpu_us_per_s_per_stream",
         "{:.2f}"),
        ("streams connected", "confirmed", "{:,.0f}"),
    ]
    width = max(len(r[0]) for r in rows) + 2
    after_label = "gateway.limits defaults" if args.compare == "off" else f"this tree ({ROOT})"
    print(f"\nbefore = {label}; after = {after_label}; median of {args.rounds} round(s) each, "
          f"{args.streams} streams / {args.users} users")
    print(f"{'metric':<{width}}{'before':>14}{'after':>14}{'after/before':>14}")
    for name, field, fmt in rows:
        b, a = _median(before, field), _median(after, field)
        ratio = a / b if b else float("nan")
        print(f"{name:<{width}}{fmt.format(b):>14}{fmt.format(a):>14}{ratio:>14.3f}")
    if args.compare != "off":
        return  # the ratios above are the comparison; the cost lines are about gateway.limits
    for phase in ("burst", "paced"):
        b = _median(before, f"{phase}_frames_per_cpu_s")
        a = _median(after, f"{phase}_frames_per_cpu_s")
        cost = (1 - a / b) * 100 if b else float("nan")
        print(f"cost of the protections, {phase} frames per CPU-s: {cost:+.1f} % (budget: at most 5 %)")
    b, a = _median(before, "kb_per_stream"), _median(after, "kb_per_stream")
    print(f"cost of the protections, memory per stream: {(a / b - 1) * 100 if b else float('nan'):+.1f} %")


async def run_gateway(
    args: argparse.Namespace, setup: _Setup, code: Path, extra_env: dict[str, str], name: str
) -> dict[str, Any]:
    """Start a gateway from ``code`` (a checkout) with ``extra_env``, load it, measure, stop it."""
    import redis

    from gateway.testing import UNREACHABLE_NATS
    from tests.servers import free_port

    redis.Redis.from_url(setup.redis_url).flushall()
    work = setup.work
    port = free_port()
    escaped = setup.public_pem.strip().replace("\n", "\\n")
    clients: list[_Client] = []
    (work / "notify.yml").write_text(
        f"redis:\n  url: {setup.redis_url}\n  namespace: bench\n"
        f"nats:\n  servers: [{UNREACHABLE_NATS}]\n"
        f"gateway:\n  host: 127.0.0.1\n  port: {port}\n"
        f'  jwt:\n    public_key: "{escaped}"\n'
    )
    log = work / f"gateway-{name}-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY")}
    env["NOTIFY__GATEWAY__KEEP_ALIVE"] = str(args.keep_alive)
    env.update(extra_env)
    probe = _Probe(work / f"probe-{name}-{port}.sock")
    with log.open("wb") as out:
        profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
        traced = ["--tracemalloc", str(args.tracemalloc)] if args.tracemalloc else []
        gateway = await asyncio.create_subprocess_exec(
            sys.executable, *profile, __file__, "--role", "gateway", "--probe", str(probe.path),
            *traced, "--", "--config", str(work / "notify.yml"), "gateway",
            stdout=out, stderr=out, env=env, cwd=code)
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_ready(url, gateway, log)
        fd_line = next((ln for ln in _read(log).splitlines() if "event=fd_limit" in ln), "")
        print(f"gateway pid {gateway.pid} ready on {url}; {fd_line.split('event=')[-1]}")
        idle = await _memory(gateway.pid, probe)
        idle_trimmed = await probe.ask("trim")
        if args.tracemalloc:
            await probe.ask("mark")
        idle_cpu_0 = await idle_cpu(gateway.pid, args.idle_window)
        share = args.streams // args.clients
        for i in range(args.clients):
            count = share if i < args.clients - 1 else args.streams - share * i
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--role", "client", "--port", str(port),
                "--tokens", str(work / "tokens.json"), "--first", str(i * share),
                "--count", str(count), "--sample", str(args.sample),
                "--addresses", str(source_addresses(args.streams)),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
                limit=1 << 30)  # a report carries every sampled latency on one line
            clients.append(_Client(proc))

        # -- connect
        answers = await asyncio.gather(*(c.ask("connect") for c in clients))
        confirmed = sum(a["confirmed"] for a in answers)
        connect_s = max(a["done"] for a in answers) - min(a["started"] for a in answers)
        print(f"connected {confirmed}/{args.streams} streams in {connect_s:.2f} s "
              f"({sum(a['failed'] for a in answers)} failed)")
        await asyncio.sleep(1.0)  # let presence updates settle before measuring memory
        connected = await _memory(gateway.pid, probe)
        connected_trimmed = await probe.ask("trim")
        # -- idle: every stream open, nothing published; the keep-alive comments and the
        # gateway's periodic work are all that runs.
        idle_cpu_n = await idle_cpu(gateway.pid, args.idle_window)
        top = (await probe.ask(f"top {args.top}"))["top"] if args.tracemalloc else []

        publish = _publisher(setup.redis_url, args.users, args.max_len)
        loop = asyncio.get_running_loop()

        # -- burst (streams that failed to connect get nothing: expect only the others)
        fanout = confirmed / args.users
        expected = int(args.burst * fanout)
        await asyncio.gather(*(c.ask("reset") for c in clients))
        cpu0 = proc_stat(gateway.pid)["cpu_s"]
        started = time.time()
        for offset in range(0, args.burst, 1000):
            await loop.run_in_executor(None, publish, min(1000, args.burst - offset))
        published_s = time.time() - started
        reports, got = await _settle(clients, expected)
        burst_cpu = proc_stat(gateway.pid)["cpu_s"] - cpu0
        last = max(r["last"] for r in reports)
        burst_s = last - started
        burst_rate = got / burst_s if burst_s > 0 else 0.0
        print(f"burst: {args.burst} notifications published in {published_s:.2f} s, "
              f"{got}/{expected} frames delivered in {burst_s:.2f} s")

        # -- paced
        await asyncio.gather(*(c.ask("reset") for c in clients))
        client_cpu0 = sum(r["cpu_s"] for r in await asyncio.gather(*(c.ask("report") for c in clients)))
        cpu0 = proc_stat(gateway.pid)["cpu_s"]
        tick = 0.005
        started = time.time()
        sent = 0
        while time.time() - started < args.duration:
            due = int((time.time() - started) * args.rate)
            if sent < due:
                batch = min(due - sent, max(1, args.rate // 20))
                await loop.run_in_executor(None, publish, batch)
                sent += batch
            else:
                await asyncio.sleep(tick)
        expected_paced = int(sent * fanout)
        reports, got_paced = await _settle(clients, expected_paced)
        paced_span = max(r["last"] for r in reports) - started
        paced_cpu = proc_stat(gateway.pid)["cpu_s"] - cpu0
        client_cpu = sum(r["cpu_s"] for r in reports) - client_cpu0
        latencies = [x for r in reports for x in r["latencies"]]
        end = proc_stat(gateway.pid)
        metrics = await _metrics(url)
    finally:
        probe.close()
        for client in clients:
            with contextlib.suppress(Exception):
                assert client.proc.stdin is not None
                client.proc.stdin.write(b"quit\n")
                await asyncio.wait_for(client.proc.wait(), 10)
        if gateway.returncode is None:
            gateway.terminate()
            await asyncio.wait_for(gateway.wait(), 20)
    streams = max(confirmed, 1)
    return {
        "log": log, "confirmed": confirmed, "connect_s": connect_s, "idle": idle, "top": top,
        "idle_cpu_0": idle_cpu_0, "idle_cpu_n": idle_cpu_n,
        "idle_cpu_us_per_s_per_stream": (idle_cpu_n - idle_cpu_0) / args.idle_window / streams * 1e6,
        "kb_per_stream_gc": (connected["rss_kb"] - idle["rss_kb"]) / streams,
        "kb_per_stream_trimmed": (connected_trimmed["rss_kb"] - idle_trimmed["rss_kb"]) / streams,
        "anon_kb_per_stream_gc": (connected["anonymous_kb"] - idle["anonymous_kb"]) / streams,
        "socket_kb_per_stream": (connected["tcp_mem_kb"] - idle["tcp_mem_kb"]) / streams,
        "slab_kb_per_stream": (connected["slab_kb"] - idle["slab_kb"]) / streams,
        "connected": connected, "end": end, "fanout": fanout, "burst_rate": burst_rate,
        "burst_cpu": burst_cpu, "burst_s": burst_s, "got": got, "got_paced": got_paced,
        "expected_paced": expected_paced, "paced_span": paced_span, "paced_cpu": paced_cpu,
        "client_cpu": client_cpu, "latencies": latencies, "metrics": metrics,
        "burst_us_per_frame": burst_cpu / max(got, 1) * 1e6,
        "burst_frames_per_cpu_s": got / max(burst_cpu, 1e-9),
        "paced_frames_per_cpu_s": got_paced / max(paced_cpu, 1e-9),
        "burst_core_share": burst_cpu / burst_s if burst_s > 0 else 0.0,
        "paced_rate": got_paced / paced_span if paced_span > 0 else 0.0,
        "paced_us_per_frame": paced_cpu / max(got_paced, 1) * 1e6,
        "p99_ms": _percentile(latencies, 0.99) * 1000.0,
        "kb_per_stream": (connected["rss_mb"] - idle["rss_mb"]) * 1024 / streams,
    }


def _print_run(args: argparse.Namespace, r: dict[str, Any]) -> None:
    ms = 1000.0
    confirmed, fanout, latencies = r["confirmed"], r["fanout"], r["latencies"]
    burst_cpu, burst_s, got = r["burst_cpu"], r["burst_s"], r["got"]
    paced_cpu, paced_span, got_paced = r["paced_cpu"], r["paced_span"], r["got_paced"]
    refused = sum(v for k, v in r["metrics"].items() if k.startswith("fechatter_notify_gateway_refusals_total"))
    rows = [
        ("streams connected", f"{confirmed} / {args.streams}", f"{TARGET_STREAMS}"),
        ("connect time (all streams)", f"{r['connect_s']:.2f} s", "-"),
        ("gateway RSS idle (0 streams)", f"{r['idle']['rss_mb']:.0f} MB", "-"),
        (f"gateway RSS with {confirmed} streams", f"{r['connected']['rss_mb']:.0f} MB",
         f"<= {TARGET_RSS_MB} MB at {TARGET_STREAMS}"),
        ("  RSS per stream", f"{r['kb_per_stream']:.1f} KB", "-"),
        ("  after a GC, net of idle: RSS per stream", f"{r['kb_per_stream_gc']:.2f} KB",
         f"<= {TARGET_KB_PER_STREAM} KB"),
        ("  after a GC, net of idle: anonymous per stream", f"{r['anon_kb_per_stream_gc']:.2f} KB", "-"),
        ("  (diagnostic) ... after malloc_trim too", f"{r['kb_per_stream_trimmed']:.2f} KB", "-"),
        ("  kernel TCP buffers per stream (machine)", f"{r['socket_kb_per_stream']:.2f} KB", "-"),
        ("  kernel slab per stream (machine, both ends)", f"{r['slab_kb_per_stream']:.2f} KB", "-"),
        (f"idle CPU per stream (keep-alive {args.keep_alive:g} s)",
         f"{r['idle_cpu_us_per_s_per_stream']:.2f} us/s "
         f"({r['idle_cpu_n']:.2f} vs {r['idle_cpu_0']:.2f} CPU-s in {args.idle_window:g} s)",
         f"<= {TARGET_IDLE_US} us/s" if args.keep_alive == 20 else "(target is at 20 s)"),
        ("gateway RSS peak (whole run)", f"{r['end']['hwm_mb']:.0f} MB", "-"),
        (f"burst fan-out ({args.burst} notif. x {fanout:g})", f"{r['burst_rate']:,.0f} frames/s",
         f">= {TARGET_FRAMES_PER_S:,} frames/s"),
        ("  gateway CPU during burst", f"{burst_cpu / burst_s * 100:.0f} % of one core", "-"),
        ("  gateway CPU per frame (burst)", f"{burst_cpu / max(got, 1) * 1e6:.1f} us "
         f"= {max(got, 1) / max(burst_cpu, 1e-9):,.0f} frames per CPU-s", "-"),
        (f"paced: {args.rate}/s x {fanout:g} for {args.duration:g} s",
         f"{got_paced:,}/{r['expected_paced']:,} frames, {got_paced / paced_span:,.0f} frames/s", "-"),
        ("  publish->frame latency p50", f"{_percentile(latencies, 0.50) * ms:.1f} ms", "-"),
        ("  publish->frame latency p90", f"{_percentile(latencies, 0.90) * ms:.1f} ms", "-"),
        ("  publish->frame latency p99", f"{_percentile(latencies, 0.99) * ms:.1f} ms", "-"),
        ("  publish->frame latency max", f"{max(latencies, default=float('nan')) * ms:.1f} ms", "-"),
        ("  gateway CPU while paced", f"{paced_cpu / paced_span * 100:.0f} % of one core", "-"),
        ("  gateway CPU per frame (paced)", f"{paced_cpu / max(got_paced, 1) * 1e6:.1f} us", "-"),
        ("  client processes CPU while paced", f"{r['client_cpu'] / paced_span * 100:.0f} % of one core",
         "-"),
        ("slow clients dropped",
         f"{r['metrics'].get('fechatter_notify_gateway_slow_clients_dropped_total', 0):.0f}", "0"),
        ("requests refused by a limit", f"{refused:.0f}", "0"),
    ]
    width = max(len(row[0]) for row in rows) + 2
    print(f"\n{'metric':<{width}}{'measured':<34}target")
    for name, measured, target in rows:
        print(f"{name:<{width}}{measured:<34}{target}")
    print(f"\n(latency samples: {len(latencies):,}, all frames of every {args.sample}th stream; "
          f"gateway log: {r['log']})")
    for entry in r["top"]:
        print(f"\n{entry['kb']:10.1f} KB {entry['count']:8d} blocks")
        for frame in entry["where"]:
            print(f"      {frame}")


def figures(args: argparse.Namespace, r: dict[str, Any]) -> dict[str, Any]:
    """The run's figures in bench/run_all.py's shape."""
    def fig(name: str, value: float, unit: str, target: str | None = None,
            baseline: str | None = None) -> dict[str, Any]:
        return {"name": name, "value": float(value), "unit": unit, "baseline": baseline, "target": target}

    return {
        "figures": [
            fig("streams_connected", r["confirmed"], "streams", f">= {args.streams}"),
            fig("rss_idle", r["idle"]["rss_kb"] / 1024, "MB"),
            fig("rss_connected", r["connected"]["rss_kb"] / 1024, "MB"),
            # net of rss_idle (subtracted), not a ratio to it: no baseline
            fig("rss_per_stream_after_gc", r["kb_per_stream_gc"], "KB", f"<= {TARGET_KB_PER_STREAM}"),
            fig("anon_per_stream_after_gc", r["anon_kb_per_stream_gc"], "KB"),
            fig("rss_per_stream_after_gc_and_malloc_trim", r["kb_per_stream_trimmed"], "KB"),
            fig("rss_per_stream_no_gc", r["kb_per_stream"], "KB"),
            fig("kernel_tcp_mem_per_stream", r["socket_kb_per_stream"], "KB"),
            fig("kernel_slab_per_stream", r["slab_kb_per_stream"], "KB"),
            fig("idle_cpu_per_stream", r["idle_cpu_us_per_s_per_stream"], "us/s",
                f"<= {TARGET_IDLE_US}" if args.keep_alive == 20 else None),
            fig("burst_frames_per_s", r["burst_rate"], "frames/s", f">= {TARGET_FRAMES_PER_S}"),
            fig("burst_frames_per_cpu_s", r["burst_frames_per_cpu_s"], "frames/CPU-s"),
            fig("paced_frames_per_cpu_s", r["paced_frames_per_cpu_s"], "frames/CPU-s"),
            fig("paced_p99", r["p99_ms"], "ms"),
            fig("rss_peak", r["end"]["hwm_mb"], "MB"),
        ],
        "meta": {"streams": args.streams, "streams_requested": args.streams_requested,
                 "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "users": args.users,
                 "clients": args.clients,
                 "burst": args.burst, "rate": args.rate, "duration_s": args.duration,
                 "keep_alive_s": args.keep_alive, "idle_window_s": args.idle_window,
                 "source_addresses": source_addresses(args.streams), "quick": args.quick,
                 "seed": args.seed, "cpus": os.cpu_count()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("orchestrator", "client", "gateway"), default="orchestrator")
    parser.add_argument("--streams", type=int, default=TARGET_STREAMS)
    parser.add_argument("--users", type=int, default=2000, help="streams are spread over them")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--burst", type=int, default=20_000, help="notifications in the burst")
    parser.add_argument("--rate", type=int, default=5000, help="paced notifications per second")
    parser.add_argument("--duration", type=float, default=10.0, help="paced phase, seconds")
    parser.add_argument("--max-len", type=int, default=1000, help="inbox cap (MAXLEN ~)")
    parser.add_argument("--sample", type=int, default=10,
                        help="every Nth stream records publish-to-frame latencies")
    parser.add_argument("--profile", metavar="PATH", help="run the gateway under cProfile, write PATH")
    parser.add_argument("--compare", metavar="off|DIR",
                        help="also run 'before': 'off' = every gateway.limits protection off, or DIR = "
                             "a checkout of an earlier commit (git archive REV | tar -x -C DIR); "
                             "prints before/after side by side")
    parser.add_argument("--rounds", type=int, default=3, help="--compare: before/after pairs")
    parser.add_argument("--keep-alive", type=float, default=20.0,
                        help="gateway.keep_alive, seconds (the idle-CPU figure is per this interval)")
    parser.add_argument("--idle-window", type=float,
                        help="seconds of idle CPU measured with 0 and with all streams "
                             "(default: two keep-alive intervals)")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                        help="trace the gateway's allocations (slow) and print the top owners "
                             "with all streams open")
    parser.add_argument("--top", default="25", help="--tracemalloc: how many owners ('25tb': by traceback)")
    parser.add_argument("--json", metavar="PATH", help="write the figures there")
    parser.add_argument("--quick", action="store_true",
                        help="1,000 streams, short phases, 5 s keep-alive: well under a minute")
    parser.add_argument("--seed", type=int, default=0, help="unused: the load is deterministic")
    # client role
    parser.add_argument("--port", type=int)
    parser.add_argument("--tokens")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--addresses", type=int, default=MIN_SOURCE_ADDRESSES)
    # gateway role
    parser.add_argument("--probe", help="the probe's Unix socket")
    args, rest = parser.parse_known_args()
    if args.role == "gateway":
        raise SystemExit(gateway_main(args, [a for a in rest if a != "--"]))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.quick:
        args.streams, args.users, args.burst, args.rate, args.duration = 1000, 200, 2000, 1000, 2.0
        args.keep_alive = 5.0
    if args.idle_window is None:
        args.idle_window = 2 * args.keep_alive
    if args.role == "client":
        # The clients stand in for browsers on other machines; uvloop keeps their share of
        # the 2 cores small, so the numbers are the gateway's rather than the clients'.
        with asyncio.Runner(loop_factory=client_loop()) as runner:
            runner.run(client_main(args))
    else:
        # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the gateway, the clients and
        # redis-server are stopped by the finally blocks instead of being left behind.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        if args.compare and args.compare != "off":
            args.compare = str(Path(args.compare).resolve())
        result = asyncio.run(orchestrate(args))
        if args.json and result is not None:
            Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
