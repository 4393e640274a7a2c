"""Chaos scenario 1, "everything at once".

While Fechatter-shaped traffic flows (new messages in every JetStream dialect, about 1 % malformed,
chats of 3..50 members): the bridge is killed -9 every few seconds and restarted; one of two worker
processes is killed -9 repeatedly; nats-server is killed -9 (not stopped) and restarted on the
same JetStream store; redis-server is killed -9 and restarted on its AOF.

Invariant: every event JetStream stored reaches every recipient's inbox exactly once; each
malformed one is a dead letter with its reason; nothing else. With ``appendfsync always`` that
must hold with nothing lost; ``bench/chaos.py --appendfsync everysec`` measures the other setting.

CI size: :data:`CI_EVENTS` in about :data:`CI_TRAFFIC_S` seconds of traffic; ``--events N`` runs it
bigger, ``--chaos-seed S`` draws another plan and fault schedule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chaos.harness import AppendFsync, Fault, Harness, ScenarioResult, fault_schedule, run_scenario
from tests.chaos.traffic import plan_traffic

SCENARIO = "everything_at_once"
CI_EVENTS = 3000
CI_TRAFFIC_S = 30.0
SEED = 1
#: Once traffic and faults are over, the backlog drains in about 10 s here; a wait this long means
#: something will never arrive (the audit then names it).
CI_SETTLE_S = 60.0
#: Worker processes per ``fechatter-notify worker`` instance: two instances, one of them killed.
WORKER_ARGS = ("-p", "1")


@dataclass(frozen=True)
class Shape:
    """How hard and how long: events, their rate, and the faults' rhythm."""

    events: int
    traffic_s: float

    @property
    def rate(self) -> float:
        return self.events / self.traffic_s

    def schedule(self, seed: int) -> list[Fault]:
        # Faults stop before the traffic does, so the last of them is followed by traffic that
        # shows the system flowing again (recover_max_s needs events published after each fault).
        until = max(5.0, self.traffic_s * 0.8)
        every = {
            "bridge-1": (3.0, 6.0),     # the only bridge: every few seconds
            "worker-1": (4.0, 8.0),     # one of two worker processes
            "nats": (10.0, 20.0),
            "redis": (10.0, 20.0),
        }
        return fault_schedule(seed, until, every, down_s=(0.2, 1.5), start_s=2.0)


async def everything_at_once(workdir: Path, *, events: int, seed: int, traffic_s: float,
                             appendfsync: AppendFsync = "always",
                             settle_timeout: float = 90) -> tuple[ScenarioResult, Harness]:
    """Run scenario 1 once; the caller closes the returned harness (after reading its logs)."""
    shape = Shape(events, traffic_s)
    plan = plan_traffic(events, seed)
    h = Harness(workdir, appendfsync=appendfsync)
    try:
        h.start_servers()
        h.add("bridge")
        h.add("worker", 2, WORKER_ARGS)
        h.start()
        h.wait_ready(timeout=60)
        result = await run_scenario(h, SCENARIO, plan, shape.schedule(seed), rate=shape.rate,
                                    settle_timeout=settle_timeout)
    except BaseException:
        h.close()
        raise
    return result, h


@pytest.mark.timeout(600)
async def test_every_stored_event_reaches_every_recipient_once_while_everything_crashes(
        tmp_path: Path, chaos_events: int | None, chaos_seed: int | None) -> None:
    events = chaos_events or CI_EVENTS
    traffic_s = CI_TRAFFIC_S * max(1.0, events / CI_EVENTS)
    began = time.monotonic()
    result, h = await everything_at_once(tmp_path, events=events, seed=SEED if chaos_seed is None else chaos_seed,
                                         traffic_s=traffic_s, settle_timeout=CI_SETTLE_S)
    try:
        print(result.line())
        print(f"published in {result.published_s:.1f}s, settled in {result.settled_s:.1f}s, "
              f"total {time.monotonic() - began:.1f}s; publisher {result.extra}; "
              f"recover_s={[round(r, 1) for r in result.recover_s]}")
        problems = result.problems()
        assert not problems, result.line() + "\n" + "\n".join(problems) + "\n" + h.logs()
        # The faults did happen: each kind at least once, and events were dead-lettered.
        killed = {r.fault.target for r in result.faults}
        assert killed == {"bridge-1", "worker-1", "nats", "redis"}, killed
        assert len(result.dead_letters) >= 1
    finally:
        h.close()
