"""Chaos scenario 2, a 3-node NATS cluster: leaders killed -9, then a node lost for good.

Three nats-server nodes on loopback (tests/cluster.py) hold the JetStream stream and its durable
with 3 replicas each, provisioned by the Procfile's ``release:`` (``fechatter-notify provision``)
from settings that say ``replicas: 3``. The bridge and a worker run the Procfile's own commands with
``NATS_URL`` naming all three servers, while Fechatter-shaped traffic (tests/chaos/traffic.py)
flows. Faults, at seeded times: kill -9 of the stream's leader (restarted on its store a few seconds
later), then of the durable's leader (restarted too), then of a whole node for good (the stream's
leader again, so that this one also forces an election).

Invariants: nothing lost, nothing duplicated (inbox audit), each malformed event one dead letter;
after each fault the pipeline delivers an event published after the kill within
:data:`RECOVER_BOUND_S` (the harness's ``recover_max_s``). Measured per fault (the outage: from the
kill until the stream and the durable both have a leader again) and printed: the pull requests and
consumer checks the bridge sent meanwhile (its /metrics), held to a bound derived from its NATS
circuit (no tight loop), beside the JetStream API requests the nodes counted (``/jsz`` ``api.total``,
which misses requests nobody answered); and the time from the leaders' return to the first event
delivered after it, held to one probe interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import urllib.error
import urllib.request
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Final

import pytest
import redis
import yaml

from bridge.metrics import PREFIX
from bridge.nats_circuit import PROBE_BASE_S, probe_cap
from bridge.testing import deep_merge
from runtime.fleet import parse_metrics
from tests.chaos.audit import audit_inboxes, inbox_entries
from tests.chaos.harness import (
    CHAOS_CONFIG,
    Fault,
    FaultRecord,
    Harness,
    ScenarioResult,
    check_dead_letters,
    drive_traffic,
    recover_times,
    settle,
)
from tests.chaos.traffic import Event, Publisher, TrafficPlan, plan_traffic
from tests.cluster import ClusterSnapshot, NatsCluster
from tests.servers import WaitTimeout, wait_until

SCENARIO: Final = "nats_cluster"
CI_EVENTS: Final = 800
CI_TRAFFIC_S: Final = 34.0
SEED: Final = 2
STREAM: Final = "FECHATTER_EVENTS"
DURABLE: Final = "notification_processor"
#: Each fault: an event published after the kill reaches an inbox within this (the scenario's promise).
RECOVER_BOUND_S: Final = 10.0
#: Seconds between the faults: a leader election takes 4-9 s (nats-server's raft election timeout,
#: not configurable), so each fault's outage ends before the next fault begins.
FAULT_SPACING_S: Final = 11.0
#: How long a killed leader's node stays down before it restarts on its store.
DOWN_S: Final = (2.0, 4.0)
#: How often the sampler reads the nodes' /jsz.
SAMPLE_EVERY_S: Final = 0.2
#: After the traffic, how long the sampler may still wait to see the last fault's leaders back.
LEADERS_BACK_S: Final = 20.0

# The pulling consumer's timings in CHAOS_CONFIG (pull expiry unset: 2 x idle_heartbeat).
IDLE_HEARTBEAT_S: Final = 2.0
BATCH: Final = 100
#: Most events per second the scenario publishes (its CI rate is about 25 per second).
RATE_BOUND: Final = 100.0
#: After the leaders are back, an event is delivered within one probe interval: the next probe comes
#: within the probe cap (+20 % jitter), its check answers at once, and its trial pull and the worker's
#: write take well under one idle heartbeat.
FIRST_DELIVERY_BOUND_S: Final = 1.2 * probe_cap(2 * IDLE_HEARTBEAT_S) + IDLE_HEARTBEAT_S
MAX_MISSED_HEARTBEATS: Final = 3  # jetstream.max_missed_heartbeats' default: the circuit's threshold


def cluster_config() -> str:
    """CHAOS_CONFIG with the stream replicated on three nodes (the durable follows its stream)."""
    data = deep_merge(yaml.safe_load(CHAOS_CONFIG), {"jetstream": {"streams": [{"name": STREAM, "replicas": 3}]}})
    return yaml.safe_dump(data, sort_keys=False)


# --------------------------------------------------------------------------- the harness on a cluster


class ClusterHarness(Harness):
    """The chaos harness with a 3-node cluster in place of its one nats-server.

    Fault targets: ``stream-leader`` and ``consumer-leader`` (the node leading it when the fault
    fires, restarted after the fault's down time) and ``node`` (the stream's leader, removed for good).
    """

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, config=cluster_config())
        self.cluster = NatsCluster()
        #: Fault target -> the node it killed (last time).
        self.victims: dict[str, str] = {}
        self.victim_log: list[tuple[str, str]] = []

    def start_servers(self) -> None:
        self.cluster.start()
        self.redis.start()

    def _env(self, role: str, port: int) -> dict[str, str]:
        env = super()._env(role, port)
        env["NATS_URL"] = ",".join(self.cluster.urls)  # every process is given all three servers
        return env

    def close(self) -> None:
        super().close()
        self.cluster.close()

    def kill(self, target: str) -> None:
        if target not in ("stream-leader", "consumer-leader", "node"):
            super().kill(target)
            return
        # A leader still being elected after the previous fault: wait for it (the fault needs a victim).
        if target == "consumer-leader":
            victim = self.cluster.wait_consumer_leader(STREAM, DURABLE, timeout=20)
        else:
            victim = self.cluster.wait_stream_leader(STREAM, timeout=20)
        self.victims[target] = victim
        self.victim_log.append((target, victim))
        if target == "node":
            self.cluster.remove(victim)
        else:
            self.cluster.kill(victim)

    def restart(self, target: str) -> None:
        if target == "node":
            return  # gone for good
        if target in self.victims:
            self.cluster.restart(self.victims[target])
            return
        super().restart(target)

    def consumer_state(self) -> dict[str, int]:
        """The durable's counts as its leader has them (a follower may lag); -1 while it has no leader."""
        for node, detail in self.cluster.stream_views(STREAM):
            for consumer in detail.get("consumer_detail") or []:
                if consumer.get("name") == DURABLE and (consumer.get("cluster") or {}).get("leader") == node.name:
                    return {"num_pending": int(consumer.get("num_pending", 0)),
                            "num_ack_pending": int(consumer.get("num_ack_pending", 0)), "consumers": 1}
        return {"num_pending": -1, "num_ack_pending": -1, "consumers": 0}

    def logs(self, lines: int = 25) -> str:
        parts = [super().logs(lines), f"--- cluster: {self.cluster.describe()}; faults hit {self.victim_log}"]
        parts += [f"--- nats-server {n.name} ---\n{n.log_tail(lines)}" for n in self.cluster.nodes]
        return "\n".join(parts)


class Sampler:
    """Every :data:`SAMPLE_EVERY_S`, in a thread: the cluster's /jsz (API totals, leaders) and the bridge's
    own count of the JetStream requests it sent (pulls and consumer checks, from its /metrics)."""

    def __init__(self, cluster: NatsCluster, bridge_metrics_url: str) -> None:
        self.cluster = cluster
        self.bridge_metrics_url = bridge_metrics_url
        self.snapshots: list[ClusterSnapshot] = []
        #: (time.time(), pull requests + consumer checks the bridge had sent by then).
        self.bridge_requests: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.snapshots.append(self.cluster.snapshot(STREAM, DURABLE))
            sent = bridge_requests_sent(self.bridge_metrics_url)
            if sent is not None:
                self.bridge_requests.append((time.time(), sent))
            self._stop.wait(SAMPLE_EVERY_S)


def bridge_requests_sent(metrics_url: str) -> float | None:
    """MSG.NEXT pull requests plus consumer checks (a CONSUMER.INFO each, a CREATE when gone) the bridge
    has sent, from its /metrics; None when it does not answer."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=1) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    return sum(value for name, _, value in parse_metrics(text)
               if name in (f"{PREFIX}_pull_requests_total", f"{PREFIX}_consumer_recoveries_total"))


# --------------------------------------------------------------------------- what is measured


@dataclass(frozen=True)
class Outage:
    """One fault seen from the cluster: from the kill until the stream and the durable have leaders again."""

    target: str
    killed_at: float
    back_at: float | None
    #: JetStream API requests the nodes counted (``/jsz`` ``api.total``): a request to a leaderless
    #: asset that nobody answers is not always among them, so the bridge's own count is the bound's.
    api_requests: int
    #: Pull requests and consumer checks the bridge sent meanwhile (its /metrics).
    bridge_requests: float
    #: From ``back_at`` to the first inbox entry written after it (None: none came).
    first_delivery_s: float | None

    @property
    def outage_s(self) -> float | None:
        return None if self.back_at is None else self.back_at - self.killed_at


def api_requests_between(snapshots: Sequence[ClusterSnapshot], begin: float, end: float) -> int:
    """JetStream API requests the nodes served from ``begin`` to ``end`` (a restarted node counts from 0)."""
    window = [s for s in snapshots if begin - SAMPLE_EVERY_S * 2 <= s.at <= end]
    total = 0
    for before, after in pairwise(window):
        for node, count in after.api_totals.items():
            previous = before.api_totals.get(node)
            total += count - previous if previous is not None and count >= previous else count
    return total


def bridge_requests_between(samples: Sequence[tuple[float, float]], begin: float, end: float) -> float:
    """What the bridge sent from ``begin`` to ``end``: the counter's rise from the last sample before
    ``begin`` to the first at or after ``end``."""
    before = [count for at, count in samples if at <= begin]
    after = [count for at, count in samples if at >= end]
    if not before or not after:
        return float("nan")
    return after[0] - before[-1]


def inbox_times(client: redis.Redis, namespace: str, users: Iterable[int]) -> list[float]:
    """Every inbox entry's write time (Redis stream ids are server milliseconds), sorted."""
    return sorted(int(entry_id.split("-", 1)[0]) / 1000 for user in users
                  for entry_id, _ in inbox_entries(client, namespace, user))


def leaders_back_at(sampler: Sampler, record: FaultRecord) -> float | None:
    """When the sampler first saw the stream and the durable with leaders after ``record``'s kill, or None."""
    return next((s.at for s in sampler.snapshots
                 if s.at > record.killed_at and s.stream_leader and s.consumer_leader), None)


def leaders_seen_back(sampler: Sampler, records: Sequence[FaultRecord]) -> bool:
    """The sampler saw the stream and the durable with leaders after every fault."""
    return all(leaders_back_at(sampler, record) is not None for record in records)


def outages(records: Sequence[FaultRecord], sampler: Sampler, delivered: Sequence[float]) -> list[Outage]:
    """Each fault's outage as the sampler saw it, and what the bridge did meanwhile and after."""
    found = []
    for record in records:
        back = leaders_back_at(sampler, record)
        end = back if back is not None else time.time()
        first = None
        if back is not None:
            i = bisect_left(delivered, back)
            first = delivered[i] - back if i < len(delivered) else None
        found.append(Outage(record.fault.target, record.killed_at, back,
                            api_requests_between(sampler.snapshots, record.killed_at, end),
                            bridge_requests_between(sampler.bridge_requests, record.killed_at, end), first))
    return found


def request_bound(outage_s: float) -> int:
    """The most pull requests + consumer checks a bridge with a NATS circuit sends in an outage this long.

    Each round of the circuit is one consumer check and one pull. Rounds: the ``max_missed_heartbeats``
    failures that open the circuit (each followed by a check and a pull), then one probe per delay, the
    delays growing from PROBE_BASE_S, doubling, capped at the pull expiry, each at least 80 % of its
    nominal value (the jitter); plus a reconnect's immediate pull and probe, and one round in flight at
    each edge of the window. Pulls that fetched messages (a backlog served by a surviving leader) are
    healthy pulls, not retries: one per half batch delivered at most, the traffic's rate bounds them.
    A loop re-checking on every failure without waiting sends more than this within its first second.
    """
    cap = probe_cap(2 * IDLE_HEARTBEAT_S)
    probes, elapsed, n = 0, 0.0, 0
    while True:
        elapsed += 0.8 * min(PROBE_BASE_S * 2**n, cap)
        if elapsed > outage_s:
            break
        probes, n = probes + 1, n + 1
    rounds = MAX_MISSED_HEARTBEATS + probes + 1 + 2
    healthy_pulls = int(outage_s * RATE_BOUND / (BATCH // 2)) + 1
    return 2 * rounds + healthy_pulls


def describe(outage: Outage) -> str:
    length = outage.outage_s
    if length is None:
        return f"fault {outage.target}: the leaders never came back"
    first = "none" if outage.first_delivery_s is None else f"{outage.first_delivery_s:.1f}s"
    return (f"fault {outage.target}: leaders back after {length:.1f}s; meanwhile the bridge sent "
            f"{outage.bridge_requests:.0f} pull requests + consumer checks (bound {request_bound(length)}), the "
            f"nodes counted {outage.api_requests} JetStream API requests; first delivery {first} after")


# --------------------------------------------------------------------------- the scenario


def schedule(seed: int) -> list[Fault]:
    """Stream leader, then durable leader, then a node for good: FAULT_SPACING_S apart, seeded jitter."""
    rng = random.Random(seed)
    at = 2.0 + rng.uniform(0, 1)
    faults = []
    for target in ("stream-leader", "consumer-leader", "node"):
        faults.append(Fault(round(at, 3), target, round(rng.uniform(*DOWN_S), 3)))
        at += FAULT_SPACING_S + rng.uniform(0, 1)
    return faults


async def provision(h: ClusterHarness) -> None:
    """Run the Procfile's ``release:`` (``fechatter-notify provision``) once, as a deploy does."""
    await h.run_once("release", within_s=60)


def replicated(h: ClusterHarness) -> dict[str, Any]:
    """The stream's and durable's replica counts as the stream leader has them."""
    for node, detail in h.cluster.stream_views(STREAM):
        if (detail.get("cluster") or {}).get("leader") == node.name:
            durable = next(c for c in detail.get("consumer_detail") or [] if c.get("name") == DURABLE)
            return {"stream": 1 + len(detail["cluster"].get("replicas") or []),
                    "durable": 1 + len((durable.get("cluster") or {}).get("replicas") or []),
                    "num_replicas": detail["config"].get("num_replicas")}
    return {}


async def run(h: ClusterHarness, plan: TrafficPlan, faults: Sequence[Fault],
              rate: float) -> tuple[ScenarioResult, list[Outage]]:
    """Warm-up, then the traffic at ``rate`` during the faults, then settle and check."""
    publisher = await Publisher.connect(h.cluster.urls)
    bridge = h.instances["bridge-1"]
    with Sampler(h.cluster, f"http://127.0.0.1:{bridge.port}/metrics") as sampler:
        try:
            published_s = await drive_traffic(h, publisher, plan, faults, rate)
        finally:
            await publisher.close()
        await asyncio.to_thread(h.wait_ready, None, 60)
        stored: list[Event] = [e for e in plan.events if e.stored]
        expected = plan.expected(stored)
        settle_error, settled_s = await settle(h, plan, expected, 60)
        # The last fault can fall late in the traffic: its leaders may be elected after the pipeline has
        # settled, so sample on until each fault's leaders were seen back (or the deadline: reported then).
        with contextlib.suppress(WaitTimeout):
            await asyncio.to_thread(wait_until, lambda: leaders_seen_back(sampler, h.faults), LEADERS_BACK_S, 0.2)
    with h.client() as client:
        audit = await asyncio.to_thread(audit_inboxes, client, expected, namespace=h.namespace)
        letters = h.dead_letters(client)
        failed = h.failed_jobs(client)
        recover = await asyncio.to_thread(recover_times, client, h.namespace, plan, h.faults)
        delivered = await asyncio.to_thread(inbox_times, client, h.namespace, plan.users)
    result = ScenarioResult(SCENARIO, len(stored), list(h.faults), audit, letters, check_dead_letters(plan, letters),
                            failed, recover, published_s, settled_s, settle_error,
                            extra={"retries": publisher.retries, "duplicate_acks": publisher.duplicates})
    return result, outages(h.faults, sampler, delivered)


@pytest.mark.timeout(300)
async def test_the_bridge_keeps_consuming_through_leader_kills_and_a_lost_node(
        tmp_path: Path, chaos_events: int | None, chaos_seed: int | None) -> None:
    began = time.monotonic()
    events = chaos_events or CI_EVENTS
    seed = SEED if chaos_seed is None else chaos_seed
    faults = schedule(seed)
    # Traffic goes on past the last fault's recovery bound, so that a delivery after its leaders' return
    # can be seen (with 34 s of traffic a node kill at 26 s whose leaders took 8 s left none).
    traffic_s = max(CI_TRAFFIC_S * max(1.0, events / CI_EVENTS), faults[-1].at_s + RECOVER_BOUND_S + 2.0)
    plan = plan_traffic(events, seed)
    h = ClusterHarness(tmp_path)
    try:
        h.start_servers()
        await provision(h)
        h.add("bridge")
        h.add("worker", 1, ("-p", "1"))
        h.start()
        h.wait_ready(timeout=60)
        # The settings' replicas reached the server: stream and durable on all three nodes
        placement = wait_until(lambda: replicated(h), timeout=10, message="no stream leader after provisioning")
        assert placement == {"stream": 3, "durable": 3, "num_replicas": 3}, placement
        result, seen = await run(h, plan, faults, rate=events / traffic_s)
        print(result.line())
        print(f"published in {result.published_s:.1f}s, settled in {result.settled_s:.1f}s, total "
              f"{time.monotonic() - began:.1f}s; publisher {result.extra}; faults hit {h.victim_log}; "
              f"recover_s={[round(r, 1) for r in result.recover_s]}")
        for outage in seen:
            print(describe(outage))
        problems = result.problems()
        assert not problems, result.line() + "\n" + "\n".join(problems) + "\n" + h.logs()
        # Every fault happened, each hit a leader, and the pipeline delivered within the bound after each
        assert [r.fault.target for r in result.faults] == ["stream-leader", "consumer-leader", "node"]
        assert len(result.recover_s) == 3, result.recover_s
        assert max(result.recover_s) <= RECOVER_BOUND_S, (result.line(), result.recover_s, h.logs())
        for outage in seen:
            assert outage.outage_s is not None, f"{outage.target}: the leaders never came back"
            # No tight loop: what the bridge sent during the outage stays within its NATS circuit's rounds
            assert outage.bridge_requests <= request_bound(outage.outage_s), (describe(outage), h.logs())
            # and once the leaders are back, an event is delivered within one probe interval
            assert outage.first_delivery_s is not None and outage.first_delivery_s <= FIRST_DELIVERY_BOUND_S, (
                describe(outage), h.logs())
    finally:
        h.close()
