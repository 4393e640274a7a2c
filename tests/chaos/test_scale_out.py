"""Chaos scenario 6, scale-out under faults.

Two bridges and four worker supervisors (the Procfile's lines, ``worker -p 1`` each: four worker
processes) share one JetStream durable and one core NATS queue group (``realtime.queue_group``).
While JetStream domain traffic flows (tests/chaos/traffic.py: new messages in every dialect, about
1 % malformed) and realtime core NATS traffic with it (tests/chaos/realtime.py: read receipts,
which become inbox entries, and typing indicators, which are live only), ``bridge-1`` is killed -9
mid-run and restarted :data:`DOWN_S` later.

Invariants:

- JetStream: every event JetStream stored reaches every recipient's inbox exactly once, malformed
  ones are dead letters (:meth:`ScenarioResult.problems`); and every stored copy was enqueued once:
  the four workers ran exactly one ``new_message`` job per stored copy (their summed metrics; a
  copy the killed bridge had enqueued but not acked is redelivered to the other, whose enqueue
  recognises it);
- realtime: each read receipt is in the inbox of every member of its chat but the reader exactly
  once, never once per bridge (no dedupe key hides a second copy: the queue group must); the
  workers ran one ``messages_read`` job per read receipt delivered and at most one
  ``typing_started`` job per typing event; no typing indicator is stored;
- core NATS has no redelivery: a realtime event the server handed to ``bridge-1`` just before the
  kill dies with it. Such losses are allowed only for events published within
  :data:`KILL_WINDOW_S` of the kill, counted and printed apart (``realtime_lost_at_kill``, and
  ``lost_at_kill_s``: when each was published, from the kill; seed 9 loses one read receipt
  published 6 ms before it), never hidden; any other loss, a partial delivery or a duplicate fails;
- both bridges consumed: the surviving one JetStream and core events, the restarted one too after
  its restart.

The line's ``events`` counts the JetStream events stored (as in every scenario); the realtime
figures follow it on a second line.

CI size: :data:`CI_EVENTS` JetStream events and :data:`CI_REALTIME` realtime ones in about
:data:`CI_TRAFFIC_S` s; ``--events N`` runs it bigger (realtime in proportion), ``--chaos-seed S``
draws other plans.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chaos.harness import Fault, Harness, Instance, ScenarioResult, run_scenario
from tests.chaos.realtime import ReadAudit, RealtimeEvent, RealtimePublisher, audit_reads, plan_realtime
from tests.chaos.traffic import TrafficPlan, membership_known, plan_traffic
from tests.servers import async_wait_until

SCENARIO: Final = "scale_out"
CI_EVENTS: Final = 1000
CI_REALTIME: Final = 600
CI_TRAFFIC_S: Final = 14.0
SEED: Final = 6
WORKER_ARGS: Final = ("-p", "1")
#: bridge-1 is killed this far into the traffic (a share of it), and restarted DOWN_S later: longer
#: than ack_wait (5 s), so what it held is redelivered to bridge-2 while it is down.
KILL_AT: Final = 0.3
DOWN_S: Final = 3.0
#: A realtime event published this long before / after the kill may have been in bridge-1's hands
#: (its buffer, its socket) or routed to it before the server saw the connection close.
KILL_WINDOW_S: Final = (1.0, 1.0)
DURABLE: Final = "notification_processor"


@dataclass
class Run:
    result: ScenarioResult
    plan: TrafficPlan
    realtime: list[RealtimeEvent]
    reads: ReadAudit
    #: actor -> jobs the four workers finished (retries not counted).
    jobs: Counter[str]
    #: bridge name -> {consumer label: events fetched since its (re)start}.
    fetched: dict[str, dict[str, float]]
    deduplicated: float
    harness: Harness


def scrape(instance: Instance) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """An instance's /metrics: sample name -> labels -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{instance.port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def finished_jobs(workers: list[Instance]) -> Counter[str]:
    """Jobs the workers finished, by actor: every outcome but ``retried`` (a retry finishes later)."""
    jobs: Counter[str] = Counter()
    for worker in workers:
        for labels, value in scrape(worker).get("fechatter_notify_worker_jobs_total", {}).items():
            named = dict(labels)
            if named.get("outcome") != "retried":
                jobs[named["actor"]] += int(value)
    return jobs


async def publish_realtime(h: Harness, plan: TrafficPlan, events: list[RealtimeEvent], rate: float) -> None:
    """Once the warm-up filled the membership cache (as the main traffic starts), publish ``events``."""
    with h.client() as client:
        await async_wait_until(lambda: membership_known(client, plan.chats, h.namespace), timeout=120, interval=0.1,
                               message="the warm-up never filled the membership cache")
    nc = await nats.connect(h.nats.url, name="chaos-realtime")
    try:
        await RealtimePublisher(nc).publish(events, rate)
    finally:
        await nc.close()


async def scale_out(workdir: Path, *, events: int, realtime: int, seed: int, traffic_s: float) -> Run:
    """Run scenario 6 once; the caller closes ``Run.harness``."""
    plan = plan_traffic(events, seed)
    planned = plan_realtime(plan.chats, realtime, seed)
    h = Harness(workdir)
    h.start_servers()
    bridges = h.add("bridge", 2)
    workers = h.add("worker", 4, WORKER_ARGS)
    h.start()
    h.wait_ready(timeout=90)
    schedule = [Fault(round(traffic_s * KILL_AT, 3), bridges[0].name, DOWN_S)]
    publishing = asyncio.create_task(publish_realtime(h, plan, planned, realtime / traffic_s))
    result = await run_scenario(h, SCENARIO, plan, schedule, rate=events / traffic_s, settle_timeout=60)
    await publishing
    with h.client() as client:
        # The realtime jobs of the last events may still wait (the settle looked at the domain traffic).
        await async_wait_until(lambda: h.jobs_waiting(client) == 0, timeout=30, interval=0.1,
                               message="realtime jobs still waiting")
        reads = await asyncio.to_thread(audit_reads, client, h.namespace, sorted(plan.users), planned)
    jobs = await asyncio.to_thread(finished_jobs, workers)
    fetched: dict[str, dict[str, float]] = {}
    deduplicated = 0.0
    for bridge in bridges:
        samples = await asyncio.to_thread(scrape, bridge)
        fetched[bridge.name] = {dict(k)["consumer"]: v
                                for k, v in samples.get("fechatter_notify_bridge_events_fetched_total", {}).items()}
        deduplicated += sum(samples.get("fechatter_notify_bridge_jobs_deduplicated_total", {}).values())
    return Run(result, plan, planned, reads, jobs, fetched, deduplicated, h)


# --------------------------------------------------------------------------- the checks


def near_kill(event: RealtimeEvent, kills: list[float]) -> bool:
    at = event.published_at or 0.0
    before, after = KILL_WINDOW_S
    return any(kill - before <= at <= kill + after for kill in kills)


def realtime_problems(run: Run) -> tuple[list[str], dict[str, object]]:
    """Problems with the realtime traffic, and its figures (``lost_at_kill_s``: when each read receipt
    lost at the kill was published, in seconds from the kill)."""
    kills = [r.killed_at for r in run.result.faults]
    reads = [e for e in run.realtime if e.kind == "read"]
    typing = [e for e in run.realtime if e.kind == "typing"]
    states = {e.index: run.reads.state(e) for e in reads}
    excused = [e for e in reads if states[e.index] == "lost" and near_kill(e, kills)]
    bad = [(e.index, e.key, states[e.index], round((e.published_at or 0.0) - min(kills, default=0.0), 3))
           for e in reads if states[e.index] != "once" and e not in excused]
    delivered = sum(states[e.index] != "lost" for e in reads)
    typing_near = sum(near_kill(e, kills) for e in typing)
    figures: dict[str, object] = {
        "realtime": len(run.realtime), "reads": len(reads), "typing": len(typing),
        "realtime_lost_at_kill": len(excused),
        "lost_at_kill_s": [round((e.published_at or 0.0) - min(kills), 3) for e in excused][:10],
        "reads_delivered": delivered,
        "messages_read_jobs": run.jobs["messages_read"], "typing_jobs": run.jobs["typing_started"]}
    problems = []
    if bad:
        problems.append(f"{len(bad)} read receipts not delivered once to each recipient (index, key, state, "
                        f"published s after the kill): {bad[:10]}")
    if run.reads.live_only_stored or run.reads.unknown:
        problems.append(f"inboxes hold {run.reads.live_only_stored} live-only entries and {run.reads.unknown} "
                        "unknown read receipts")
    if run.jobs["messages_read"] != delivered:
        problems.append(f"{run.jobs['messages_read']} messages_read jobs for {delivered} read receipts delivered")
    if not len(typing) - typing_near <= run.jobs["typing_started"] <= len(typing):
        problems.append(f"{run.jobs['typing_started']} typing jobs for {len(typing)} typing events "
                        f"({typing_near} published near the kill)")
    return problems, figures


@pytest.mark.timeout(300)
async def test_two_bridges_and_four_workers_deliver_everything_once_while_a_bridge_dies(
        tmp_path: Path, chaos_events: int | None, chaos_seed: int | None) -> None:
    events = chaos_events or CI_EVENTS
    scale = max(1.0, events / CI_EVENTS)
    began = time.monotonic()
    seed = SEED if chaos_seed is None else chaos_seed
    run = await scale_out(tmp_path, events=events, realtime=int(CI_REALTIME * scale), seed=seed,
                          traffic_s=CI_TRAFFIC_S * scale)
    h, result = run.harness, run.result
    try:
        print(result.line())
        problems, figures = realtime_problems(run)
        print(" ".join(f"{k}={v}".replace(" ", "") for k, v in figures.items()))
        # Each stored copy of a good event is one new_message job (warm-up included).
        copies = sum(len(e.seqs) for e in run.plan.events if not e.malformed)
        print(f"new_message jobs {run.jobs['new_message']} for {copies} stored copies; enqueues recognised as "
              f"done {run.deduplicated:.0f}; fetched per bridge {run.fetched}; published in "
              f"{result.published_s:.1f}s, settled in {result.settled_s:.1f}s, total {time.monotonic() - began:.1f}s; "
              f"publisher {result.extra}; recover_s={[round(r, 2) for r in result.recover_s]}")
        problems = result.problems() + problems
        if run.jobs["new_message"] != copies:
            problems.append(f"{run.jobs['new_message']} new_message jobs for {copies} stored copies: "
                            "a copy enqueued twice, or not at all")
        for name, fetched in run.fetched.items():
            if not fetched.get("core") or not fetched.get(DURABLE):
                problems.append(f"{name} did not consume both paths since its (re)start: {fetched}")
        assert [r.fault.target for r in result.faults] == ["bridge-1"], result.faults
        assert not problems, result.line() + "\n" + "\n".join(problems) + "\n" + h.logs()
    finally:
        h.close()
