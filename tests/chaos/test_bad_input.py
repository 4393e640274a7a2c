"""Scenario 7, bad input at volume: malformed payloads and malformed configuration files.

Payloads: hypothesis draws at least 10,000 malformed payloads (tests/chaos/malformed.py), sent on
the domain subjects (JetStream) and the realtime subjects (core NATS) amid good traffic, through
the real bridge and worker. No process may crash; every malformed JetStream payload becomes one
dead letter with its reject code and a reason; every malformed core NATS payload is dead-lettered
too or, should the bridge shed load, counted as dropped (bridge/core.py: core NATS has no
redelivery, so "nothing silently dropped" means a dead letter or a count); the good traffic
reaches every inbox exactly once, and its latency (publish -> its last recipient's inbox entry) in
the windows with malformed traffic stays within 2x, at the median and at p90, of its latency in the
baseline windows between them, which carry the same good traffic alone (SCHEDULE). So that a
backlog carried from a mixed window into the next baseline cannot hide a slowdown (it would slow
both kinds alike), the baseline windows' median must also stay within 2x of the clean window's, the
first one, before any malformed payload. p99 is measured and printed, not bounded: see BOUNDED.

Configuration: 1,000 files drawn by hypothesis (tests/chaos/bad_configs.py) go through the loader
``fechatter-notify config check`` uses (settings.load_settings): no exception but the loader's own
refusal (ConfigError), each refusal naming the key (or the file's line:col for a document that is
not YAML we read), and every valid rewrite loading to the base configuration's settings.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import pickle
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import nats
import pytest
import redis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from bridge.advisories import stored_time_ns
from settings import ConfigError, load_settings
from tests.chaos.audit import inbox_entries
from tests.chaos.bad_configs import BASE, ConfigCase, _dump, config_cases
from tests.chaos.malformed import MAX_PAYLOAD_BYTES, BadPayload, Recipe, build, recipes
from tests.pipeline import Pipeline, shutdown, start_pipeline
from tests.servers import NatsServer, RedisServer, async_wait_until, wait_until

#: The issue's minimum, kept in CI.
CONFIGS: Final = 1000
#: A seed of our own for hypothesis (derandomize alone ties the draw to the test's name).
CONFIG_SEED: Final = 7


def _check_config(case: ConfigCase, path: Path, base_settings: object) -> None:
    path.write_bytes(case.data)
    try:
        loaded = load_settings(str(path), env={})
    except ConfigError as refusal:  # the loader's own refusal; anything else propagates and fails
        assert case.expect != "load", f"{case.kind}: a valid file was refused: {refusal}\n{case.data!r}"
        errors = [p for p in refusal.problems if p.level == "error"]
        assert errors, f"{case.kind}: refused without an error: {refusal.problems}"
        if case.expect == "key":
            assert any(p.path == case.path for p in errors), (
                f"{case.kind}: no error names {case.path}: {[p.format() for p in errors]}\n{case.data!r}")
        else:
            assert any(re.search(rf"{re.escape(str(path))}:\d+:\d+$", p.origin) for p in errors), (
                f"{case.kind}: no error gives line:col: {[p.format() for p in errors]}\n{case.data[:300]!r}")
        return
    assert case.expect == "load", f"{case.kind}: accepted, meant to be refused at {case.path or 'a place'}:\n" \
                                  f"{case.data[:500]!r}"
    assert loaded.settings == base_settings, f"a rewrite of the base configuration read differently:\n{case.data!r}"


def test_a_thousand_malformed_configuration_files_are_refused_naming_the_key(
    tmp_path: Path, chaos_seed: int | None,
) -> None:
    base_settings = load_settings(str(_write(tmp_path / "base.yml", _dump(BASE))), env={}).settings
    seen: Counter[str] = Counter()
    target = tmp_path / "notify.yml"

    @seed(CONFIG_SEED if chaos_seed is None else chaos_seed)
    @settings(max_examples=CONFIGS, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=config_cases())
    def check(case: ConfigCase) -> None:
        seen[case.kind] += 1
        _check_config(case, target, base_settings)

    check()
    print(f"configs={sum(seen.values())} " + " ".join(f"{k}={n}" for k, n in sorted(seen.items())))
    assert sum(seen.values()) >= CONFIGS, seen
    assert seen["valid"] and seen["alias_bomb"] and seen["invalid_utf8"], seen


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# =========================================================================== payloads

ROOT: Final = Path(__file__).resolve().parents[2]
#: The issue's minimum, kept in CI; ``--events N`` sends N instead.
PAYLOADS: Final = 10_000
PAYLOAD_SEED: Final = 7
#: Recipes per hypothesis example: one example per payload costs ~1 ms of hypothesis each.
RECIPES_PER_EXAMPLE: Final = 100
NAMESPACE: Final = "fechatter-notify"
STREAM: Final = "FECHATTER_EVENTS"
DEAD_LETTERS: Final = f"{NAMESPACE}:dead-letters"
#: Good traffic (half JetStream, half core NATS) runs at GOOD_RATE through the whole schedule;
#: the malformed payloads are sent only in its "mixed" windows. Baseline windows between them
#: measure the good traffic's latency alone under the same machine load (other processes on a
#: shared machine come and go; a baseline taken once before would compare two different loads).
#: The bridge must keep up with the mix for a latency bound to mean anything: 10,000 payloads
#: over 15 s took ~17 % of one core of the bridge here (~0.26 ms of bridge CPU per payload, before the
#: dead-letter log and argument packing were cut); at 1,000 a second on this shared 2-core machine a
#: backlog built up.
#: Windows of 1.5 s alternate, so that a burst of other work on the machine (the other xdist worker's
#: tests) falls on both kinds alike; with 3 pairs of 4-5 s windows one burst could land on one kind.
#: The "clean" window comes first: good traffic before any malformed payload was sent.
GOOD_RATE: Final = 40.0
SCHEDULE: Final = (("clean", 3.0), *(("mixed", 1.5), ("baseline", 1.5)) * 10)
WINDOWS: Final = ("clean", "baseline", "mixed")
WARM_UP: Final = 20
CHATS: Final = 20
CHAT_SIZE: Final = 5
#: The percentiles measured, and those the 2x bound applies to. p99 is printed with the stages, not
#: bounded: it is a handful of messages per run, and with other work on the 2 cores it follows the
#: machine (the worker's stage, which never sees a malformed payload, grew with it: CPU shared with
#: the malformed sender, nats-server and Redis, not a queue).
QUANTILES: Final = (50, 90, 99)
BOUNDED: Final = (50, 90)
#: Where the 2x bound applies: an entry's id is Redis's clock in whole milliseconds.
LATENCY_FLOOR_MS: Final = 5.0

pytestmark = pytest.mark.timeout(240)


def draw_payloads(count: int, seed_value: int) -> list[BadPayload]:
    """``count`` malformed payloads whose recipes hypothesis draws (seeded, no database, no shrinking)."""
    drawn: list[Recipe] = []

    @seed(seed_value)
    @settings(max_examples=-(-count // RECIPES_PER_EXAMPLE), database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(recipes, min_size=RECIPES_PER_EXAMPLE, max_size=RECIPES_PER_EXAMPLE))
    def collect(batch: list[Recipe]) -> None:
        drawn.extend(batch)

    collect()
    assert len(drawn) >= count, f"hypothesis ran out of examples: {len(drawn)}"
    return [build(recipe, i) for i, recipe in enumerate(drawn[:count])]


@dataclass
class Good:
    """One good message, when it was published (ms, the clock of Redis's entry ids) and in which window."""

    message_id: int
    chat: int
    core: bool
    recipients: tuple[int, ...]
    published_ms: float = 0.0
    window: str = "warm_up"
    #: JetStream only: the stream sequence its publication got, and when the stream stored it (ms).
    seq: int | None = None
    stored_ms: float | None = None


@dataclass
class Run:
    """What was sent, for the checks."""

    good: list[Good] = field(default_factory=list)
    js_bad: dict[int, BadPayload] = field(default_factory=dict)  # stream seq -> payload
    core_bad: list[BadPayload] = field(default_factory=list)

    def next_good(self) -> Good:
        n = len(self.good)
        chat = 1 + n % CHATS
        good = Good(n + 1, chat, core=n % 2 == 1, recipients=_members(chat)[1:])
        self.good.append(good)
        return good


def _members(chat: int) -> tuple[int, ...]:
    return tuple(range((chat - 1) * CHAT_SIZE + 1, chat * CHAT_SIZE + 1))


def _good_payload(good: Good) -> tuple[str, bytes]:
    members, sender = list(_members(good.chat)), _members(good.chat)[0]
    if good.core:  # R, as Fechatter's chat server publishes it on core NATS
        return f"fechatter.realtime.chat.{good.chat}", json.dumps({"MessageReceived": {
            "message": {"id": str(good.message_id), "chat_id": good.chat, "sender_id": sender,
                        "content": f"m{good.message_id}", "files": [], "timestamp": 1750992346},
            "chat_id": good.chat, "recipients": members}}).encode()
    return "fechatter.message.created", json.dumps({
        "version": "V1", "kind": "Created",
        "msg": {"id": good.message_id, "chat_id": good.chat, "sender_id": sender, "content": f"m{good.message_id}",
                "files": [], "created_at": "2025-06-27T02:45:46.782538Z", "idempotency_key": None},
        "members": members, "occurred_at": "2025-06-27T02:45:46.790112345Z"}).encode()


async def _send_good(nc: Any, js: Any, good: Good) -> None:
    subject, data = _good_payload(good)
    good.published_ms = time.time() * 1000
    if good.core:
        await nc.publish(subject, data)
        await nc.flush()
    else:
        good.seq = (await js.publish(subject, data)).seq


def _window_at(elapsed: float) -> str:
    for kind, seconds in SCHEDULE:
        if elapsed < seconds:
            return kind
        elapsed -= seconds
    return "after"


async def _publish_good(nc: Any, js: Any, run: Run, on_window: Callable[[str], Awaitable[None]]) -> None:
    """GOOD_RATE messages a second through the whole schedule, each tagged with its window;
    ``on_window`` is awaited as each window begins (and with "after" at the end)."""
    started = time.monotonic()
    total = sum(seconds for _, seconds in SCHEDULE)
    window = ""
    for n in range(int(total * GOOD_RATE)):
        await asyncio.sleep(max(0.0, started + n / GOOD_RATE - time.monotonic()))  # pacing, not a wait
        good = run.next_good()
        good.window = _window_at(time.monotonic() - started)
        if good.window != window:
            window = good.window
            await on_window(window)
        await _send_good(nc, js, good)
    await on_window("after")


def _start_bad_sender(pipeline: Pipeline, payloads: list[BadPayload]) -> subprocess.Popen[bytes]:
    """The malformed traffic, in a process of its own (tests/chaos/badsender.py says why)."""
    wire = pipeline.workdir / "malformed.pickle"
    wire.write_bytes(pickle.dumps([(p.subject, p.data, p.core) for p in payloads]))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.chaos.badsender", pipeline.nats.url, str(wire),
         str(pipeline.workdir / "malformed.json"), json.dumps(SCHEDULE)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def _bad_sent(pipeline: Pipeline, payloads: list[BadPayload], run: Run) -> None:
    done = json.loads((pipeline.workdir / "malformed.json").read_text())
    run.js_bad = {seq: payloads[index] for index, seq in done["js"]}
    run.core_bad = [payloads[index] for index in done["core"]]
    assert len(run.js_bad) + len(run.core_bad) == len(payloads), "the sender did not send every payload"


def _inboxes(client: redis.Redis) -> dict[int, list[tuple[int, dict[str, Any]]]]:
    """Every user's inbox as ``[(entry time ms, notification)]``."""
    return {user: [(int(entry.split("-")[0]), notification)
                   for entry, notification in inbox_entries(client, NAMESPACE, user)]
            for user in range(1, CHATS * CHAT_SIZE + 1)}


def _delivered(client: redis.Redis, goods: list[Good]) -> bool:
    want = sum(len(g.recipients) for g in goods)
    ids = {g.message_id for g in goods}
    have = sum(1 for entries in _inboxes(client).values() for _, n in entries if n.get("id") in ids)
    return have >= want


def _latencies_ms(inboxes: dict[int, list[tuple[int, dict[str, Any]]]], goods: list[Good]) -> list[float]:
    """Per message: from its publication to the inbox entry of its last recipient."""
    published = {g.message_id: g.published_ms for g in goods}
    last: dict[int, float] = {}
    for entries in inboxes.values():
        for entry_ms, n in entries:
            if n.get("id") in published:
                last[n["id"]] = max(last.get(n["id"], 0.0), entry_ms - published[n["id"]])
    return list(last.values())


async def _read_stored_times(nc: Any, goods: list[Good]) -> None:
    """When the stream stored each JetStream good message (STREAM.MSG.GET's ``time``), in ms."""
    for good in goods:
        if good.seq is None:
            continue
        reply = await nc.request(f"$JS.API.STREAM.MSG.GET.{STREAM}", json.dumps({"seq": good.seq}).encode(), timeout=5)
        stored = stored_time_ns(json.loads(reply.data)["message"]["time"])
        good.stored_ms = stored / 1e6 if stored is not None else None


def _last_inbox_ms(inboxes: dict[int, list[tuple[int, dict[str, Any]]]], goods: list[Good]) -> dict[int, float]:
    """Per message id: when its last recipient's inbox entry was written (Redis's clock, ms)."""
    ids = {g.message_id for g in goods}
    last: dict[int, float] = {}
    for entries in inboxes.values():
        for entry_ms, n in entries:
            if n.get("id") in ids:
                last[n["id"]] = max(last.get(n["id"], 0.0), float(entry_ms))
    return last


def _stage_lines(inboxes: dict[int, list[tuple[int, dict[str, Any]]]], goods: list[Good]) -> list[str]:
    """Where the good traffic's time goes, per window: p50/p90/p99 (ms) of the whole trip per lane, and
    for JetStream messages its two stages (publish -> stored by nats-server; stored -> last inbox entry:
    the bridge, Redis and the worker), so a tail under malformed traffic can be placed."""
    last = _last_inbox_ms(inboxes, goods)
    lines = []
    for window in WINDOWS:
        mine = [g for g in goods if g.window == window and g.message_id in last]
        stages = {
            "core total": [last[g.message_id] - g.published_ms for g in mine if g.core],
            "jetstream total": [last[g.message_id] - g.published_ms for g in mine if not g.core],
            "jetstream publish->stored": [g.stored_ms - g.published_ms for g in mine
                                          if not g.core and g.stored_ms is not None],
            "jetstream stored->inbox": [last[g.message_id] - g.stored_ms for g in mine
                                        if not g.core and g.stored_ms is not None],
        }
        parts = [f"{name} {'/'.join(f'{_percentile(v, q):.0f}' for q in QUANTILES)}"
                 for name, v in stages.items() if v]
        lines.append(f"stages {window} (p50/p90/p99 ms): " + "; ".join(parts))
    return lines


#: The worker's own stage: from the bridge's enqueue (the job's timestamp) to its first inbox write.
WORKER_LATENCY: Final = "fechatter_notify_worker_delivery_latency_seconds_bucket"


def _worker_buckets(pipeline: Pipeline) -> dict[float, float]:
    """The worker's delivery-latency histogram now: cumulative count per upper bound, all queues."""
    with urllib.request.urlopen(pipeline.metrics_urls["worker"], timeout=5) as resp:
        text = resp.read().decode()
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        bound = re.search(r'le="([^"]+)"', line) if line.startswith(WORKER_LATENCY) else None
        if bound:
            le = float(bound.group(1))
            buckets[le] = buckets.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def _worker_stage_line(snapshots: list[tuple[str, dict[float, float]]]) -> str:
    """The worker stage's p50/p90/p99 per kind of window, from the histogram's growth in each window
    (upper bucket bounds: the histogram's resolution), beside the whole trip's in the stage lines."""
    grown: dict[str, dict[float, float]] = {window: {} for window in WINDOWS}
    for (window, before), (_, after) in itertools.pairwise(snapshots):
        if window in grown:
            for le, count in before.items():
                grown[window][le] = grown[window].get(le, 0.0) + after.get(le, 0.0) - count
    parts = []
    for window, buckets in grown.items():
        total = buckets.get(float("inf"), 0.0)
        if not total:
            continue
        bounds = sorted(buckets)
        quantiles = [next(le for le in bounds if buckets[le] >= total * q / 100) * 1000 for q in QUANTILES]
        parts.append(f"{window} <= {'/'.join(f'{v:g}' for v in quantiles)}")
    return "stages worker enqueue->inbox (p50/p90/p99 ms, bucket bounds): " + "; ".join(parts)


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


@pytest.fixture
def pipeline(nats_server: NatsServer, redis_server: RedisServer, tmp_path: Path) -> Iterator[Pipeline]:
    """The bridge and a worker (no gateway: inboxes are read directly), payloads capped at 4 KiB."""
    running = start_pipeline(nats_server, redis_server, tmp_path, processes=())
    running.env["NOTIFY__EVENTS__MAX_PAYLOAD_BYTES"] = str(MAX_PAYLOAD_BYTES)
    running.start("bridge")
    running.start("worker")
    try:
        yield running
    finally:
        for name in running.processes:
            print(f"--- {name} log (last lines) ---\n{running.log_tail(name, 15)}")
        codes = shutdown(running)
        assert codes == {"bridge": 0, "worker": 0}, codes


def _ready(pipeline: Pipeline) -> bool:
    for name, proc in pipeline.processes.items():
        assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{pipeline.log_tail(name)}"
    try:
        with urllib.request.urlopen(f"{pipeline.health_urls['bridge']}/readyz", timeout=1) as resp:
            return resp.status == 200 and "worker_started" in (pipeline.workdir / "worker.log").read_text()
    except OSError:
        return False


def _bridge_metric(pipeline: Pipeline, name: str) -> float:
    """A bridge counter summed over its labels (its metrics port is in its start line)."""
    match = re.search(r"event=bridge_starting .*metrics_port=(\d+)", (pipeline.workdir / "bridge.log").read_text())
    assert match, pipeline.log_tail("bridge")
    with urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


async def test_ten_thousand_malformed_payloads_are_dead_letters_and_good_traffic_keeps_its_pace(
    pipeline: Pipeline, chaos_events: int | None, chaos_seed: int | None,
) -> None:
    # Drawn while the bridge and worker start (they are other processes).
    payloads = draw_payloads(chaos_events or PAYLOADS, PAYLOAD_SEED if chaos_seed is None else chaos_seed)
    wait_until(lambda: _ready(pipeline), timeout=60, message="bridge/worker not ready")
    client = redis.Redis.from_url(pipeline.redis.url)
    nc = await nats.connect(pipeline.nats.url)
    js = nc.jetstream()
    run = Run()
    sender = _start_bad_sender(pipeline, payloads)  # it loads and connects during the warm-up
    try:
        warm_up = [run.next_good() for _ in range(WARM_UP)]  # first connections and scripts, not measured
        for good in warm_up:
            await _send_good(nc, js, good)
        await async_wait_until(lambda: _delivered(client, warm_up), timeout=60, interval=0.2,
                               message="warm-up traffic not delivered")
        assert sender.stdout is not None and sender.stdin is not None
        line = await asyncio.wait_for(asyncio.to_thread(sender.stdout.readline), 60)
        assert line.strip() == b"ready", line + sender.stdout.read()
        sender.stdin.write(f"{time.monotonic()!r}\n".encode())
        sender.stdin.flush()
        snapshots: list[tuple[str, dict[float, float]]] = []

        async def snapshot(window: str) -> None:
            snapshots.append((window, await asyncio.to_thread(_worker_buckets, pipeline)))

        await _publish_good(nc, js, run, snapshot)
        out, _ = await asyncio.to_thread(sender.communicate, timeout=120)
        assert sender.returncode == 0, out.decode(errors="replace")[-3000:]
        _bad_sent(pipeline, payloads, run)
        await async_wait_until(lambda: _delivered(client, run.good), timeout=60, interval=0.2,
                               message="good traffic not delivered")

        def settled() -> bool:
            dropped = _bridge_metric(pipeline, "fechatter_notify_bridge_core_events_dropped")
            return bool(client.xlen(DEAD_LETTERS) + dropped >= len(run.js_bad) + len(run.core_bad))

        await async_wait_until(settled, timeout=60, interval=0.2,
                               message=lambda: f"{client.xlen(DEAD_LETTERS)} dead letters of {len(payloads)}")
        dropped = _bridge_metric(pipeline, "fechatter_notify_bridge_core_events_dropped")
        letters = client.xrange(DEAD_LETTERS)
        inboxes = _inboxes(client)
        await _read_stored_times(nc, run.good)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
        await nc.close()
        client.close()

    # Nobody crashed (the fixture checks the exit codes at the end), nothing logged an error.
    for name in ("bridge", "worker"):
        log = (pipeline.workdir / f"{name}.log").read_text(errors="replace")
        assert pipeline.processes[name].poll() is None, pipeline.log_tail(name)
        assert "level=error" not in log and "Traceback" not in log, pipeline.log_tail(name, 60)
    problems = _dead_letter_problems(run, letters, dropped)
    lost, duplicated = _inbox_check(run, inboxes)
    latencies = {w: _latencies_ms(inboxes, [g for g in run.good if g.window == w]) for w in WINDOWS}
    p = {(w, q): _percentile(v, q) for w, v in latencies.items() for q in QUANTILES}
    ratio = {q: p["mixed", q] / max(p["baseline", q], LATENCY_FLOOR_MS) for q in QUANTILES}
    carried = p["baseline", 50] / max(p["clean", 50], LATENCY_FLOOR_MS)
    print(f"scenario=bad_input events={len(payloads) + len(run.good)} faults=0 lost={lost} duplicated={duplicated} "
          f"dead_lettered={len(letters)} recover_max_s=0 latency_ratio_p50={ratio[50]:.2f} "
          f"latency_ratio_p90={ratio[90]:.2f} latency_ratio_p99={ratio[99]:.2f} baseline_to_clean_p50={carried:.2f} "
          f"(clean p50/p90/p99 {p['clean', 50]:.0f}/{p['clean', 90]:.0f}/{p['clean', 99]:.0f} ms, baseline "
          f"{p['baseline', 50]:.0f}/{p['baseline', 90]:.0f}/{p['baseline', 99]:.0f} ms, mixed "
          f"{p['mixed', 50]:.0f}/{p['mixed', 90]:.0f}/{p['mixed', 99]:.0f} ms; malformed: {len(run.js_bad)} JetStream, "
          f"{len(run.core_bad)} core NATS, {dropped:.0f} counted dropped)")
    for stage_line in [*_stage_lines(inboxes, run.good), _worker_stage_line(snapshots)]:
        print(stage_line)
    assert not problems, problems[:10]
    assert (lost, duplicated) == (0, 0)
    _dlq_cli_lists(pipeline, len(letters))
    assert carried <= 2, (
        f"a backlog carried into the baseline windows: p50 x{carried:.2f} of the clean window's "
        f"(clean {p['clean', 50]:.0f} ms, baseline {p['baseline', 50]:.0f} ms)")
    slowed = {q: ratio[q] for q in BOUNDED if ratio[q] > 2}
    assert not slowed, "good traffic slowed by the malformed traffic: " + ", ".join(
        f"p{q} x{r:.2f} (baseline {p['baseline', q]:.0f} ms, mixed {p['mixed', q]:.0f} ms)" for q, r in slowed.items())


def _dead_letter_problems(run: Run, letters: list[Any], dropped: float) -> list[str]:
    """Each malformed JetStream payload one dead letter with its code; core ones too, or counted dropped."""
    problems: list[str] = []
    core_expected = Counter(_core_key(p.subject, p.data, p.code) for p in run.core_bad)
    core_seen: Counter[tuple[str, bytes, str]] = Counter()
    js_seen: Counter[int] = Counter()
    for _, fields in letters:
        f = {k.decode(): v for k, v in fields.items()}
        code, reason = f["code"].decode(), f["reason"].decode()
        if not reason:
            problems.append(f"dead letter without a reason: {f}")
        if f["stream"]:
            seq = int(f["seq"])
            js_seen[seq] += 1
            payload = run.js_bad.get(seq)
            if payload is None:
                problems.append(f"seq {seq} dead-lettered ({code}: {reason}) but it was not malformed")
            elif payload.code != code:
                problems.append(f"seq {seq} ({payload.kind}) dead-lettered as {code}, expected {payload.code}")
        else:
            core_seen[_core_key(f["subject"].decode(), f["data"], code)] += 1
    missing = [seq for seq in run.js_bad if js_seen[seq] == 0]
    doubled = [seq for seq, n in js_seen.items() if n > 1]
    if missing or doubled:
        problems.append(f"JetStream: {len(missing)} malformed payloads without a dead letter (e.g. seqs "
                        f"{missing[:5]}), {len(doubled)} with more than one")
    unexpected = core_seen - core_expected
    unaccounted = sum((core_expected - core_seen).values())
    if unexpected:
        problems.append(f"core dead letters nobody sent (or with another code): {list(unexpected.items())[:3]}")
    if unaccounted != dropped:
        problems.append(f"core NATS: {unaccounted} malformed payloads neither dead-lettered nor counted "
                        f"(core_events_dropped={dropped:.0f})")
    return problems


def _core_key(subject: str, data: bytes, code: str) -> tuple[str, bytes, str]:
    # A too-large payload's dead letter keeps only its first 4 KiB (README, dead letters).
    return subject, data[:4096] if code == "payload_too_large" else data, code


def _inbox_check(run: Run, inboxes: dict[int, list[tuple[int, dict[str, Any]]]]) -> tuple[int, int]:
    want = Counter((user, g.message_id) for g in run.good for user in g.recipients)
    have = Counter((user, n.get("id")) for user, entries in inboxes.items() for _, n in entries
                   if n.get("type") == "new_message")
    return sum((want - have).values()), sum((have - want).values())


def _dlq_cli_lists(pipeline: Pipeline, count: int) -> None:
    """The user-facing reader (``fechatter-notify dlq list --format json``) shows every one, code and reason."""
    out = subprocess.run(
        [sys.executable, "-m", "fechatter_notify", "--config", str(pipeline.workdir / "notify.yml"), "dlq", "list",
         "--source", "bridge", "--format", "json"],
        env=pipeline.env, capture_output=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    rows = [json.loads(line) for line in out.stdout.decode().splitlines() if line.startswith("{")]
    assert len(rows) == count, (len(rows), count)
    assert all(row["code"] and row["reason"] for row in rows)
