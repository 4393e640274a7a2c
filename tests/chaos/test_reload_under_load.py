"""Chaos scenario 4, reload under load.

Two bridges and two worker supervisors (the Procfile's lines, one worker process each) consume one
durable while Fechatter-shaped traffic flows (tests/chaos/traffic.py). Every couple of seconds
notify.yml is replaced (:meth:`Harness.rewrite_config`) and the processes get a SIGHUP in a seeded
order: the bridges every round, the worker supervisors every other round (a worker's reload
replaces its process, which takes seconds). Each round changes the durable's ``idle_heartbeat``,
``expires`` (the pull expiry) and ``batch``, which the bridges apply to their next pull request,
and ``delivery.inbox_max_age``, which the worker supervisors apply by replacing their worker
processes (README, "SIGHUP"). Every value obeys ``config check``'s timing rules (settings/checks.py:
the heartbeat above ``nats.ping_interval``, at most half the expiry), except in one round, which
breaks the second rule on purpose and goes to every process: that reload must be refused with its
reason and change nothing.

Invariants:

- every event JetStream stored reaches every recipient's inbox exactly once, malformed ones are
  dead letters (the inbox audit, :meth:`ScenarioResult.problems`);
- each valid reload is logged as applied by each process signalled: a bridge logs
  ``config_reloaded`` and ``pull_retuned`` with the round's values (and names
  ``delivery.inbox_max_age`` as needing a restart: a bridge does not use it), a worker supervisor
  ``worker_processes_restarting`` and ``config_reloaded``; a process not signalled logs nothing;
- the pull requests on the wire (``$JS.API.CONSUMER.MSG.NEXT``, watched) carry the values in
  effect (see :func:`wire_problems`); no request ever carries the refused round's;
- the refused reload: each process logs ``config_reload_refused`` and the problem with its code
  and key, and nothing else: no retune, no reload, no worker process replaced;
- the workers applied ``inbox_max_age``: the newest inbox TTL (each write sets it) is the age of
  the last worker reload done while events flowed (see :func:`ttl_problems`);
- no reload opens a NATS circuit, and none stops the flow: ``recover_max_s`` at most
  :data:`RECOVER_BOUND_S`, every event in its last recipient's inbox within :data:`LATENCY_BOUND_S`
  of its publication; a worker reload stops its old process only once the new one consumes.

``faults`` counts the SIGHUPs (one per process signalled per round, the refused round's included);
``recover_max_s`` is, per SIGHUP, the time to the first inbox entry of an event published after it.

CI size: :data:`CI_EVENTS` events in about :data:`CI_TRAFFIC_S` s with :data:`CI_ROUNDS` rounds;
``--events N`` runs it bigger (more rounds), ``--chaos-seed S`` draws another plan and order.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import nats
import pytest
import redis
import yaml
from nats.aio.msg import Msg

from bridge.testing import deep_merge
from tests.chaos.audit import inbox_entries, notification_key
from tests.chaos.harness import (
    CHAOS_CONFIG,
    Fault,
    FaultRecord,
    Harness,
    LogTail,
    ScenarioResult,
    logged_at,
    run_scenario,
)
from tests.chaos.traffic import TrafficPlan, plan_traffic
from tests.servers import async_wait_until

SCENARIO: Final = "reload_under_load"
CI_EVENTS: Final = 1200
CI_TRAFFIC_S: Final = 18.0
#: Reload rounds in a CI run (the refused one included); a bigger run gets one per ROUND_EVERY_S.
CI_ROUNDS: Final = 5
SEED: Final = 4
WORKER_ARGS: Final = ("-p", "1")
#: Rounds start this far apart, and each stays in effect at least MIN_IN_EFFECT_S once applied everywhere.
ROUND_EVERY_S: Final = 2.0
MIN_IN_EFFECT_S: Final = 1.0
#: The worker supervisors get the SIGHUP of one round in this many (and the refused one's).
WORKER_EVERY: Final = 2
#: A request published just before a bridge retuned may reach the watcher just after its log line.
WIRE_GRACE_S: Final = 0.2
#: How long every process of a round may take to log its reload: a worker supervisor starts a new
#: worker process and waits until it consumes, then stops the old one gracefully (2.5-12 s seen on
#: the 2-core machine with a load average of 9; a deadline, not a wait).
APPLY_TIMEOUT_S: Final = 60.0
#: The refused round: breaks "heartbeat at most half the expiry" (3 s x 2 > 5 s).
REFUSED_CODE: Final = "heartbeat_above_half_expiry"
REFUSED_PATH: Final = "jetstream.consumers[0].expires"
REFUSED_AT: Final = 2
#: A reload must not stop the flow: from each SIGHUP to the first inbox entry of an event published
#: after it (0.01-0.1 s measured; 5-13 s when a worker reload stopped its old process before the new
#: one consumed).
RECOVER_BOUND_S: Final = 3.0
#: Nor delay any event: from publication to the last recipient's inbox entry (a job a reload left
#: in the stopped worker's hands came 10-15 s late; measured on the loaded 2-core machine: p99 0.75 s, max 0.77 s).
LATENCY_BOUND_S: Final = 5.0
DAY_S: Final = 24 * 3600


@dataclass(frozen=True)
class Tuning:
    """One round's values: the durable's per-request parameters and the workers' inbox age."""

    heartbeat_s: float
    expires_s: float | None
    batch: int
    inbox_max_age_d: int

    @property
    def pull_expiry_s(self) -> float:
        return self.expires_s if self.expires_s is not None else 2 * self.heartbeat_s

    @property
    def valid(self) -> bool:
        return 2 * self.heartbeat_s <= self.pull_expiry_s

    def request(self) -> tuple[int, int]:
        """(expires, idle_heartbeat) of a pull request with these values, in ms."""
        return round(self.pull_expiry_s * 1000), round(self.heartbeat_s * 1000)

    def config(self) -> str:
        consumer: dict[str, Any] = {"durable": "notification_processor", "ack_wait": "5s",
                                    "idle_heartbeat": f"{round(self.heartbeat_s * 1000)}ms", "batch": self.batch}
        if self.expires_s is not None:
            consumer["expires"] = f"{round(self.expires_s * 1000)}ms"
        over = {"jetstream": {"consumers": [consumer]}, "delivery": {"inbox_max_age": f"{self.inbox_max_age_d}d"}}
        return yaml.safe_dump(deep_merge(yaml.safe_load(CHAOS_CONFIG), over), sort_keys=False)


#: CHAOS_CONFIG's durable (heartbeat 2 s, no expiry: 4 s, batch 100) and the default inbox age.
INITIAL: Final = Tuning(2.0, None, 100, 7)
#: Valid rounds cycle through these (heartbeat > ping_interval 1 s, heartbeat <= expiry / 2), batches
#: growing: a smaller batch waits for the bigger request still outstanding (see :func:`wire_problems`).
VALID: Final = ((1.5, 3.0, 5), (1.2, None, 20), (3.0, 8.0, 150), (2.5, 6.0, 300))
REFUSED: Final = (3.0, 5.0, 40)


def rounds(count: int) -> list[Tuning]:
    """``count`` rounds: the valid values in turn, the refused one at :data:`REFUSED_AT`; the inbox
    age grows by a day each round, from 8 days (above the default 7)."""
    values: list[tuple[float, float | None, int]] = []
    valid = 0
    for index in range(count):
        if index == REFUSED_AT:
            values.append(REFUSED)
        else:
            values.append(VALID[valid % len(VALID)])
            valid += 1
    return [Tuning(hb, exp, batch, 8 + i) for i, (hb, exp, batch) in enumerate(values)]


# --------------------------------------------------------------------------- logs and the wire


class PullWatch:
    """Every MSG.NEXT request for the events' durable: (arrival ``time.time()``, batch, expires ms, heartbeat ms).

    Only that durable's: the bridges also pull the give-ups' durable (bridge/advisories.py), with its
    own fixed batch and expiry, which no reload changes.
    """

    SUBJECT: Final = "$JS.API.CONSUMER.MSG.NEXT.FECHATTER_EVENTS.notification_processor"

    def __init__(self) -> None:
        self.seen: list[tuple[float, int, int, int]] = []

    async def on(self, msg: Msg) -> None:
        body = json.loads(msg.data or b"{}")
        self.seen.append((time.time(), int(body.get("batch", 1)), round(int(body.get("expires", 0)) / 1_000_000),
                          round(int(body.get("idle_heartbeat", 0)) / 1_000_000)))


# --------------------------------------------------------------------------- the rounds


@dataclass
class Round:
    """One round: its values, the processes it signals, when, and what their logs said since."""

    index: int
    tuning: Tuning
    #: The values in effect once the round is done: its own, or (refused) the previous ones.
    effective: Tuning
    targets: list[str]
    signalled: dict[str, float] = field(default_factory=dict)
    tails: dict[str, LogTail] = field(default_factory=dict)
    #: Every process's log lines from before the round's SIGHUPs to the next round's (or the end).
    lines: dict[str, list[str]] = field(default_factory=dict)
    #: Each target's log line saying applied (or refused): its ``ts`` (``time.time()``).
    done_at: dict[str, float] = field(default_factory=dict)
    #: When the last bridge logged it (``time.time()``), and when the next round began (or the end).
    bridges_done_at: float = 0.0
    ended_at: float = 0.0

    def events(self, name: str, event: str, **fields: object) -> list[str]:
        return self.tails[name].events(event, **fields)

    @property
    def applied_s(self) -> dict[str, float]:
        """Seconds from each target's SIGHUP to its log line saying applied (or refused)."""
        return {name: max(0.0, at - self.signalled[name]) for name, at in self.done_at.items()}

    def workers_done_at(self) -> float | None:
        """When the last worker supervisor signalled logged the reload; None: none was signalled."""
        return max((at for name, at in self.done_at.items() if name.startswith("worker")), default=None)

    def __str__(self) -> str:
        t = self.tuning
        return (f"round {self.index} (heartbeat {t.heartbeat_s}s, expiry {t.pull_expiry_s}s, batch {t.batch}, "
                f"inbox_max_age {t.inbox_max_age_d}d{', refused' if not t.valid else ''}; {','.join(self.targets)})")


def plan_rounds(count: int, bridges: list[str], workers: list[str]) -> list[Round]:
    """``count`` rounds; the bridges get every SIGHUP, the worker supervisors one round in
    :data:`WORKER_EVERY` (the refused round included), as a worker's reload replaces its process."""
    made: list[Round] = []
    effective = INITIAL
    for index, tuning in enumerate(rounds(count)):
        effective = tuning if tuning.valid else effective
        to_workers = index % WORKER_EVERY == 0 or not tuning.valid
        made.append(Round(index, tuning, effective, bridges + (workers if to_workers else [])))
    return made


def _done_line(h: Harness, name: str, r: Round) -> str | None:
    """The log line that says ``name`` is done with round ``r``, or None yet."""
    if not r.tuning.valid:
        found = r.events(name, "config_problem", code=REFUSED_CODE, path=REFUSED_PATH)
        return found[-1] if found and r.events(name, "config_reload_refused") else None
    if h.instances[name].role == "worker":
        found = r.events(name, "config_reloaded")
        return found[-1] if found else None
    t = r.tuning
    retuned = r.events(name, "pull_retuned", batch=t.batch, expires_s=t.pull_expiry_s, heartbeat_s=t.heartbeat_s)
    reloaded = r.events(name, "config_reloaded")
    return max(retuned[-1], reloaded[-1], key=logged_at) if retuned and reloaded else None


async def play_round(h: Harness, r: Round, rng: random.Random) -> None:
    """Rewrite notify.yml, SIGHUP the round's targets in a seeded order, wait until each logged its reload."""
    r.tails = {name: LogTail(h.instances[name]) for name in h.instances}
    h.rewrite_config(r.tuning.config())
    for name in rng.sample(r.targets, len(r.targets)):
        await asyncio.to_thread(h.signal, name, signal.SIGHUP)
        r.signalled[name] = time.time()
        h.faults.append(FaultRecord(Fault(0.0, name, 0.0), killed_at=r.signalled[name]))
    done_at = r.done_at

    def done() -> bool:
        for name in r.targets:
            line = _done_line(h, name, r)
            if line is not None:
                done_at[name] = logged_at(line)
        return len(done_at) == len(r.targets)

    await async_wait_until(lambda: asyncio.to_thread(done), timeout=APPLY_TIMEOUT_S, interval=0.05,
                           message=lambda: f"{r}: no reload logged by {sorted(set(r.targets) - set(done_at))}\n"
                                           f"{h.logs(15)}")
    r.bridges_done_at = max(at for name, at in done_at.items() if h.instances[name].role == "bridge")


async def reload_while_flowing(h: Harness, plan: TrafficPlan, played: list[Round], seed: int) -> None:
    """Once the main traffic flows, play the rounds :data:`ROUND_EVERY_S` apart, each in effect at
    least :data:`MIN_IN_EFFECT_S` after it was done everywhere (a worker's reload takes seconds)."""
    warm = sum(len(event.copies) for event in plan.warmup)
    await async_wait_until(lambda: _stream_holds(h, warm + 1), timeout=120, interval=0.05,
                           message="the main traffic never started")
    rng = random.Random(seed)
    began, done = time.time(), 0.0
    for r in played:
        due = max(began + r.index * ROUND_EVERY_S, done + MIN_IN_EFFECT_S)
        await asyncio.sleep(max(0.0, due - time.time()))  # the schedule, not a wait for a condition
        if r.index:
            _close(played[r.index - 1])
        await play_round(h, r, rng)
        done = time.time()


def _close(r: Round) -> None:
    r.lines = {name: tail.lines() for name, tail in r.tails.items()}
    r.ended_at = time.time()


async def _stream_holds(h: Harness, messages: int) -> bool:
    return await asyncio.to_thread(h.stream_messages) >= messages


# --------------------------------------------------------------------------- the scenario


@dataclass
class Run:
    result: ScenarioResult
    rounds: list[Round]
    pulls: PullWatch
    harness: Harness
    inbox_ttls_ms: list[int]
    #: When the last event was published (``time.time()``).
    traffic_ended_at: float
    #: Per good event: from its publication to its entry in the last of its recipients' inboxes, s.
    latencies: list[float]
    #: Good events JetStream stored (each should have a latency).
    good_events: int


async def reload_under_load(workdir: Path, *, events: int, seed: int, traffic_s: float, round_count: int) -> Run:
    """Run scenario 4 once; the caller closes ``Run.harness``."""
    plan = plan_traffic(events, seed)
    h = Harness(workdir, config=INITIAL.config())
    h.start_servers()
    bridges = [i.name for i in h.add("bridge", 2)]
    workers = [i.name for i in h.add("worker", 2, WORKER_ARGS)]
    h.start()
    h.wait_ready(timeout=60)
    pulls = PullWatch()
    watcher = await nats.connect(h.nats.url)
    await watcher.subscribe(PullWatch.SUBJECT, cb=pulls.on)
    played = plan_rounds(round_count, bridges, workers)
    try:
        reloading = asyncio.create_task(reload_while_flowing(h, plan, played, seed))
        result = await run_scenario(h, SCENARIO, plan, [], rate=events / traffic_s, settle_timeout=60)
        await reloading
        await watcher.flush()
        _close(played[-1])
    finally:
        await watcher.close()
    with h.client() as client, client.pipeline(transaction=False) as pipe:
        for user in sorted(plan.users):
            pipe.pttl(f"{h.namespace}:inbox:{user}")
        ttls = [int(t) for t in pipe.execute() if int(t) > 0]
    with h.client() as client:
        latencies = await asyncio.to_thread(delivery_latencies, client, h.namespace, plan)
    ended = max(e.published_at or 0.0 for e in plan.events)
    good = sum(1 for e in plan.by_key().values() if e.stored)
    return Run(result, played, pulls, h, ttls, ended, latencies, good)


def delivery_latencies(client: redis.Redis, namespace: str, plan: TrafficPlan) -> list[float]:
    """Per good event, seconds from its publication to its entry in the last recipient's inbox
    (entry ids are Redis server milliseconds, the publisher's clock): a job stranded by a reload
    shows here even when the flow goes on around it."""
    by_key = plan.by_key()
    last: dict[int, float] = {}
    for user in plan.users:
        for entry_id, notification in inbox_entries(client, namespace, user):
            key = notification_key(notification)
            event = by_key.get(key) if key is not None else None
            if event is not None:
                at = int(entry_id.split("-", 1)[0]) / 1000
                last[event.index] = max(last.get(event.index, 0.0), at)
    return [last[e.index] - e.published_at for e in by_key.values()
            if e.published_at is not None and e.index in last]


# --------------------------------------------------------------------------- the checks


def percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values) or [0.0]
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], ordered[-1]


def _count(lines: list[str], event: str) -> int:
    return sum(bool(re.search(rf"\bevent={event}(\s|$)", line)) for line in lines)


def round_problems(h: Harness, r: Round) -> list[str]:
    """What each process's log says about round ``r`` that it should not (empty: as it should)."""
    problems: list[str] = []
    for name, lines in r.lines.items():
        where = f"{r}, {name}"
        counts = {e: _count(lines, e) for e in ("config_reloaded", "config_reload_refused", "pull_retuned",
                                                "worker_processes_restarting", "core_retuned")}
        if name not in r.targets or not r.tuning.valid:
            expected = {"config_reload_refused": 1} if name in r.targets else {}
            if {e: n for e, n in counts.items() if n} != expected:
                problems.append(f"{where}: expected only {expected or 'nothing'}, logged {counts}")
            continue
        if counts["config_reloaded"] != 1 or counts["config_reload_refused"]:
            problems.append(f"{where}: logged {counts}, expected one config_reloaded")
        if h.instances[name].role == "bridge":
            # delivery.inbox_max_age is the workers' alone: not the bridge's to report (bridge/reload.py)
            needs = [line for line in lines if "event=config_needs_restart" in line]
            if counts["pull_retuned"] != 1 or needs:
                problems.append(f"{where}: expected one pull_retuned and no config_needs_restart (the round "
                                f"changes delivery.inbox_max_age, which the bridge does not read): {counts} {needs}")
        elif counts["worker_processes_restarting"] != 1:
            problems.append(f"{where}: logged {counts}, expected one worker_processes_restarting")
    return problems


def wire_problems(pulls: PullWatch, played: list[Round]) -> tuple[list[str], list[int]]:
    """The pull requests on the wire against the rounds. Returns (problems, requests per round once
    both bridges had logged it).

    - Once both bridges logged a round (and until the next one), every request carries the values in
      effect (the batch at most);
    - each valid round's exact values went out after its SIGHUPs, unless its batch is smaller than
      the one before: a bridge pulls again when the outstanding requests are down to half a batch,
      so a smaller batch may wait for the bigger request still outstanding (nothing in flight is cut
      short); a larger one goes out at once;
    - no request ever carries the refused values.
    """
    problems: list[str] = []
    per_round: list[int] = []
    previous = INITIAL
    for r in played:
        t = r.effective
        window = [tuple(p) for at, *p in pulls.seen if r.bridges_done_at + WIRE_GRACE_S <= at < r.ended_at]
        per_round.append(len(window))
        wrong = sorted({p for p in window if (p[1], p[2]) != t.request() or p[0] > t.batch})
        if wrong:
            problems.append(f"{r}: {len(wrong)} kinds of pull requests not as {t}: {wrong[:5]}")
        began = min(r.signalled.values())
        exact = [at for at, *p in pulls.seen if tuple(p) == (t.batch, *t.request()) and began <= at < r.ended_at]
        if r.tuning.valid and not exact and t.batch >= previous.batch:
            problems.append(f"{r}: no pull request with its values")
        previous = t
    refused = {r.tuning.request() for r in played if not r.tuning.valid}
    if any((p[2], p[3]) in refused for p in pulls.seen):
        problems.append(f"a pull request carried the refused values {refused}")
    return problems, per_round


def ttl_problems(ttls_ms: list[int], played: list[Round], traffic_ended_at: float) -> list[str]:
    """Each inbox write sets the inbox's TTL to the writer's inbox_max_age, and the rounds' ages only
    grow: the newest TTL is the age of the last worker reload done while events still flowed."""
    applied = [r for r in played if r.tuning.valid and r.workers_done_at() is not None]
    before_end = [r for r in applied if (r.workers_done_at() or 0.0) < traffic_ended_at - 1.0]
    if not ttls_ms or not before_end:
        return [f"no inbox TTL ({len(ttls_ms)}) or no worker reload done while events flowed"]
    age_ms = before_end[-1].tuning.inbox_max_age_d * DAY_S * 1000
    ages = {r.tuning.inbox_max_age_d * DAY_S * 1000 for r in applied}
    newest = max(ttls_ms)
    if newest < age_ms - 60_000 or not any(a - 60_000 <= newest <= a for a in ages):
        return [f"the newest inbox TTL is {newest} ms: not the inbox_max_age of a reload at or after "
                f"{before_end[-1]} ({age_ms} ms)"]
    return []


@pytest.mark.timeout(240)
async def test_reloads_under_load_apply_live_lose_nothing_and_a_refused_one_changes_nothing(
        tmp_path: Path, chaos_events: int | None, chaos_seed: int | None) -> None:
    events = chaos_events or CI_EVENTS
    scale = max(1.0, events / CI_EVENTS)
    began = time.monotonic()
    run = await reload_under_load(tmp_path, events=events, seed=SEED if chaos_seed is None else chaos_seed,
                                  traffic_s=CI_TRAFFIC_S * scale, round_count=max(CI_ROUNDS, int(CI_ROUNDS * scale)))
    h, result = run.harness, run.result
    try:
        print(result.line())
        bridge_lines = [line for i in h.instances.values() if i.role == "bridge"
                        for line in i.log_path.read_text(errors="replace").splitlines()]
        wire, per_round = wire_problems(run.pulls, run.rounds)
        print(f"rounds={len(run.rounds)} (1 refused) sighups={len(result.faults)}; per round: slowest apply "
              f"{[round(max(r.applied_s.values()), 2) for r in run.rounds]}s, pull requests in effect "
              f"{per_round}; missed heartbeats {_count(bridge_lines, 'missed_idle_heartbeat')}; "
              f"published in {result.published_s:.1f}s, settled in {result.settled_s:.1f}s, total "
              f"{time.monotonic() - began:.1f}s; publisher {result.extra}; "
              f"recover_s per SIGHUP {[round(x, 2) for x in result.recover_s]}; delivery latency p50/p99/max "
              f"{'/'.join(f'{x:.3f}' for x in percentiles(run.latencies))}s")
        problems = result.problems()
        for r in run.rounds:
            problems += round_problems(h, r)
        problems += wire
        problems += ttl_problems(run.inbox_ttls_ms, run.rounds, run.traffic_ended_at)
        opened = [line for line in bridge_lines if "event=nats_circuit_opened" in line]
        if opened:
            problems.append(f"a reload opened a NATS circuit: {opened}")
        if result.recover_max_s is None or result.recover_max_s > RECOVER_BOUND_S:
            problems.append(f"events stopped flowing after a reload: recover_max_s {result.recover_max_s} "
                            f"above {RECOVER_BOUND_S}s")
        slowest = max(run.latencies, default=0.0)
        if slowest > LATENCY_BOUND_S or len(run.latencies) < run.good_events:
            problems.append(f"an event took {slowest:.1f}s to reach its last recipient (bound {LATENCY_BOUND_S}s), "
                            f"or some events were not timed ({len(run.latencies)} of {run.good_events})")
        late = [line for i in h.instances.values() if i.role == "worker"
                for line in i.log_path.read_text(errors="replace").splitlines()
                if "event=worker_processes_not_started" in line]
        if late:
            problems.append(f"a worker reload stopped its old process before the new one consumed: {late}")
        assert not problems, result.line() + "\n" + "\n".join(problems) + "\n" + h.logs()
    finally:
        h.close()
