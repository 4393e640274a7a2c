"""Chaos scenario 3, a silent network cut between the bridge and nats-server.

The bridge (the Procfile's ``bridge:`` line) reaches nats-server only through a TCP proxy under the
test's control (tests/faultproxy.py); the worker, Redis and the publisher are not behind it. While
Fechatter-shaped traffic flows, the proxy goes silent: it stops forwarding both ways and closes
nothing, as a dead network path does. It stays silent until the bridge has noticed, and
:data:`HOLD_S` longer, so the bridge's first reconnect attempts also meet the black hole; then the
path heals.

Invariants:

- the bridge notices within ``ping_interval`` x ``max_outstanding_pings`` plus a margin
  (:func:`notice_bound_s`), reconnects, re-issues its pulls, and every event JetStream stored reaches
  every recipient's inbox exactly once (the inbox audit), malformed ones as dead letters;
- the log says what happened once: one disconnect naming the stale connection, one line for the
  failing reconnect attempts, one reconnect, one re-issued pull, at most one missed idle heartbeat
  per durable (no storm), and the NATS circuit stays closed: the connection's
  own stale detection handled the fault, so the durable's circuit saw one failure at most (the
  heartbeat missed before the pings ran out), below its threshold;
- the JetStream API requests the server saw from the cut until the bridge pulled again are bounded
  (:data:`MAX_API_REQUESTS`): no loop of checks and pulls while the path was dead.

The timings (:data:`OVERRIDES`) put the first missed heartbeat (2 x 1.1 s of silence) before the
stale-connection verdict (3 unanswered pings at 1 s: 3 to 4 s), so that the scenario shows the miss
logged once and then absorbed, as the seed's missed-heartbeat storms were not.

CI size: :data:`CI_EVENTS` events in about :data:`CI_TRAFFIC_S` s; ``--events N`` runs it bigger,
``--chaos-seed S`` draws another traffic plan.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import nats
import pytest
import yaml
from nats.aio.msg import Msg

from bridge.testing import deep_merge
from tests.chaos.harness import (
    CHAOS_CONFIG,
    Fault,
    FaultRecord,
    Harness,
    Instance,
    LogTail,
    ScenarioResult,
    logged_at,
    run_scenario,
)
from tests.chaos.traffic import TrafficPlan, plan_traffic
from tests.faultproxy import FaultProxy
from tests.servers import HOST, async_wait_until

pytestmark = pytest.mark.timeout(180)

SCENARIO: Final = "silent_cut"
CI_EVENTS: Final = 1000
CI_TRAFFIC_S: Final = 11.0
SEED: Final = 3
#: The path stays silent this long after the bridge noticed (its first reconnects meet the black hole).
HOLD_S: Final = 1.5
#: Main-traffic events JetStream must hold before the cut (events are flowing).
FLOWING_AFTER: Final = 100
#: Seconds on top of the detection bound: nats-py's PING timer is an asyncio.sleep loop, and on this
#: 2-core machine, shared by up to 8 test sessions, each of its 4 ticks can run late by a tenth of a
#: second or so. (The time is read from the log line's own timestamp, not from when it was polled.)
SCHEDULING_MARGIN_S: Final = 0.5
#: API requests the server may see from the cut to the first pull after it, for the one durable: the
#: consumer check the missed heartbeat started (its bytes were held by the dead path and arrive when
#: it heals), a lag poll (bridge/lag.py, every 5 s) caught the same way, the check on reconnect and
#: its pull, and one more of each in case the reconnect raced the check. A loop would be hundreds.
MAX_API_REQUESTS: Final = 8
#: Shorter heartbeats than CHAOS_CONFIG's and one more outstanding ping (see the module docstring);
#: idle_heartbeat stays above ping_interval, the seed's rule that `config check` enforces.
OVERRIDES: Final[dict[str, Any]] = {
    "nats": {"ping_interval": "1s", "max_outstanding_pings": 3, "connect_timeout": "1s"},
    "jetstream": {"max_missed_heartbeats": 3,
                  "consumers": [{"durable": "notification_processor", "ack_wait": "5s", "idle_heartbeat": "1100ms",
                                 "batch": 100}]},
}
PING_INTERVAL_S: Final = 1.0
MAX_OUTSTANDING_PINGS: Final = 3


def config() -> str:
    return yaml.safe_dump(deep_merge(yaml.safe_load(CHAOS_CONFIG), OVERRIDES), sort_keys=False)


def notice_bound_s() -> float:
    """nats-py counts an outstanding PING at each tick of ``ping_interval`` and declares the connection
    stale when the count exceeds ``max_outstanding_pings``: ``max_outstanding_pings`` intervals after the
    first tick that follows the cut, which is up to one interval after it."""
    return PING_INTERVAL_S * MAX_OUTSTANDING_PINGS + PING_INTERVAL_S + SCHEDULING_MARGIN_S


@dataclass
class Cut:
    """What the cut measured."""

    noticed_s: float = 0.0
    silent_s: float = 0.0
    reconnected_s: float = 0.0
    api_requests: list[str] = field(default_factory=list)


class ApiWatch:
    """Every ``$JS.API.>`` request the server routes, with its arrival time."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str]] = []

    async def on(self, msg: Msg) -> None:
        self.seen.append((time.time(), msg.subject))

    def since(self, start: float, end: float) -> list[str]:
        return [subject for at, subject in self.seen if start <= at <= end]


async def cut_while_flowing(h: Harness, proxy: FaultProxy, bridge: Instance, plan: TrafficPlan,
                            watch: ApiWatch, log: list[LogTail]) -> Cut:
    """Wait for main traffic, cut silently, wait until the bridge notices, hold, restore, wait for its pull."""
    warm = sum(len(event.copies) for event in plan.warmup)
    await async_wait_until(lambda: asyncio.to_thread(h.stream_messages), timeout=60, interval=0.1,
                           message="traffic never flowed")
    await async_wait_until(lambda: _at_least(h, warm + FLOWING_AFTER), timeout=60, interval=0.05)
    bridge_log = LogTail(bridge)
    log.append(bridge_log)
    cut = Cut()
    await asyncio.to_thread(proxy.cut_silently)
    cut_at = time.time()
    record = FaultRecord(Fault(0.0, "nats-path", 0.0), killed_at=cut_at)
    h.faults.append(record)  # recover_max_s: from the cut to the first delivery of an event published after it
    [noticed] = await async_wait_until(lambda: bridge_log.events("nats_disconnected"), timeout=30, interval=0.01,
                                       message="the bridge never noticed the dead path")
    cut.noticed_s = logged_at(noticed) - cut_at
    await asyncio.sleep(HOLD_S)  # the fault's duration, not a wait for a condition
    await asyncio.to_thread(proxy.restore)
    record.restarted_at = time.time()
    cut.silent_s = record.restarted_at - cut_at
    await async_wait_until(lambda: bridge_log.events("pull_reissued", reason="reconnected"), timeout=30,
                           interval=0.01, message="the bridge did not pull again after the path healed")
    cut.reconnected_s = time.time() - cut_at
    # The pull after the reconnect reaches the server within a round trip; then count.
    await async_wait_until(lambda: any(".MSG.NEXT." in s for s in watch.since(record.restarted_at, time.time())),
                           timeout=10, interval=0.01)
    cut.api_requests = watch.since(cut_at, time.time())
    return cut


async def _at_least(h: Harness, messages: int) -> bool:
    return await asyncio.to_thread(h.stream_messages) >= messages


async def silent_cut(workdir: Path, *, events: int, seed: int,
                     traffic_s: float) -> tuple[ScenarioResult, Cut, LogTail, Harness, FaultProxy]:
    """Run scenario 3 once; the caller closes the harness and the proxy."""
    plan = plan_traffic(events, seed)
    h = Harness(workdir, config=config())
    h.start_servers()
    proxy = FaultProxy(HOST, h.nats.port).start()
    [bridge] = h.add("bridge")
    bridge.env["NATS_URL"] = proxy.url()
    h.add("worker", 1, ("-p", "1"))
    h.start()
    h.wait_ready(timeout=60)
    watcher = await nats.connect(h.nats.url)
    watch = ApiWatch()
    await watcher.subscribe("$JS.API.>", cb=watch.on)
    log: list[LogTail] = []
    try:
        cutting = asyncio.create_task(cut_while_flowing(h, proxy, bridge, plan, watch, log))
        result = await run_scenario(h, SCENARIO, plan, [], rate=events / traffic_s, settle_timeout=60)
        cut = await cutting
    finally:
        await watcher.close()
    return result, cut, log[0], h, proxy


@pytest.mark.timeout(240)
async def test_a_silent_cut_is_noticed_by_pings_healed_by_a_reconnect_and_logged_once(
        tmp_path: Path, chaos_events: int | None, chaos_seed: int | None) -> None:
    events = chaos_events or CI_EVENTS
    traffic_s = CI_TRAFFIC_S * max(1.0, events / CI_EVENTS)
    began = time.monotonic()
    result, cut, log, h, proxy = await silent_cut(tmp_path, events=events, seed=SEED if chaos_seed is None
                                                  else chaos_seed, traffic_s=traffic_s)
    try:
        print(result.line())
        missed = log.events("missed_idle_heartbeat")
        print(f"noticed after {cut.noticed_s:.2f}s (bound {notice_bound_s():.1f}s), silent {cut.silent_s:.2f}s, "
              f"pulling again {cut.reconnected_s:.2f}s after the cut; {len(cut.api_requests)} API requests "
              f"{sorted(set(cut.api_requests))}; missed-heartbeat lines {len(missed)}; "
              f"published in {result.published_s:.1f}s, settled in {result.settled_s:.1f}s, "
              f"total {time.monotonic() - began:.1f}s")
        problems = result.problems()
        assert not problems, result.line() + "\n" + "\n".join(problems) + "\n" + h.logs()
        assert cut.noticed_s <= notice_bound_s(), cut
        # Once each: the disconnect, the reconnect, the re-issued pull; at most one missed heartbeat
        [disconnected] = log.events("nats_disconnected")
        assert "stale connection" in disconnected, disconnected
        assert len(log.events("nats_reconnect_failing")) <= 1, log.events("nats_reconnect_failing")
        assert len(log.events("nats_reconnected")) == 1, log.events("nats_reconnected")
        assert len(log.events("pull_reissued")) == 1, log.events("pull_reissued")
        assert len(missed) <= 1, missed
        # The circuit: one failure at most, below the threshold; closed throughout
        assert not log.events("nats_circuit_opened"), log.events("nats_circuit_opened")
        assert len(cut.api_requests) <= MAX_API_REQUESTS, cut.api_requests
        assert result.recover_max_s is not None
    finally:
        proxy.close()
        h.close()
