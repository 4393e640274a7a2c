"""Chaos scenario: kill -9 the Redis primary while events flow; Sentinel promotes a replica.

One primary, two replicas and three sentinels on loopback (tests/sentinel.py, failover in a few
seconds); the Procfile's bridge, worker and web processes name them with a ``redis+sentinel://``
``REDIS_URL``. Traffic as in the other chaos scenarios (tests/chaos/traffic.py); a few seconds in,
the primary loses its replication links (its replicas are disconnected and refused when they come
back, as in a network failure between them) and :data:`LINK_CUT_S` later it is killed -9 and stays
dead: the processes must follow the promoted replica on their own, and what the primary accepted
during the cut exists nowhere else. (Killed with its links intact, a primary on the same machine
took nothing with it in our runs: its replicas had everything it had acknowledged.)

With ``redis.min_replicas_acked: 1`` the bridge acks a JetStream batch and a worker acks a job only
once a replica holds what they wrote (WAIT), so the promoted replica has every acknowledged write:
nothing lost, nothing duplicated (the audit of every inbox). Readiness of the bridge and the
gateway turns 503 during the failover and 200 after it, and a stream open on the gateway through
the failover keeps receiving notifications.

With 0 (Redis's asynchronous replication alone) what the primary acknowledged during the cut is
gone: jobs the bridge had already acked to JetStream, inbox entries whose jobs were acked. Run
``python -m tests.chaos.test_redis_failover --min-replicas-acked 0 [--link-cut-s S] [--runs R]`` to
measure it; the README's "Redis high availability" has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import redis

from gateway import read_frames
from tests.chaos.harness import CHAOS_CONFIG, Fault, Harness, ScenarioResult, _get, run_scenario
from tests.chaos.traffic import plan_traffic
from tests.sentinel import SentinelCluster
from tests.servers import RedisServer, async_wait_until

SCENARIO = "redis_failover"
CI_EVENTS = 800
CI_TRAFFIC_S = 12.0
#: The primary's replication links are cut this far into the traffic, in seconds.
KILL_AT_S = 4.0
#: How long the primary runs without replicas before it is killed, in seconds.
LINK_CUT_S = 1.0
SEED = 13


class SentinelHarness(Harness):
    """tests/chaos/harness.py's harness with a Sentinel-managed Redis in place of one redis-server.

    ``kill("redis")`` kills the current primary -9; ``restart("redis")`` leaves it dead and
    returns once the sentinels have promoted a replica (its record then times the failover).
    """

    def __init__(self, workdir: Path, *, min_replicas_acked: int, link_cut_s: float = LINK_CUT_S) -> None:
        super().__init__(workdir, config=CHAOS_CONFIG)
        self.cluster = SentinelCluster(replicas=2, sentinels=3)
        self.min_replicas_acked = min_replicas_acked
        self.link_cut_s = link_cut_s
        self.killed: RedisServer | None = None

    def start_servers(self) -> None:
        self.nats.start()
        self.cluster.start()

    def client(self) -> redis.Redis:
        return self.cluster.client(socket_timeout=10, socket_connect_timeout=2)

    def _env(self, role: str, port: int) -> dict[str, str]:
        env = super()._env(role, port)
        env.update({"REDIS_URL": self.cluster.url, "NOTIFY__REDIS__REPLICA_ACK_TIMEOUT": "500ms",
                    "NOTIFY__REDIS__MIN_REPLICAS_ACKED": str(self.min_replicas_acked)})
        return env

    def kill(self, target: str) -> None:
        if target == "redis":
            primary = self.cluster.primary()
            if self.link_cut_s:
                self._cut_replication(primary)
                time.sleep(self.link_cut_s)
            primary.kill()
            self.killed = primary
        else:
            super().kill(target)

    @staticmethod
    def _cut_replication(primary: RedisServer) -> None:
        """Disconnect the primary's replicas and refuse their reconnects (an ACL on the replication
        commands; the processes' connections and the sentinels' are untouched)."""
        with primary.client(socket_timeout=5) as client:
            client.execute_command("ACL", "SETUSER", "default", "-psync", "-sync", "-replconf")
            client.client_kill_filter(_type="replica")

    def restart(self, target: str) -> None:
        if target == "redis":
            assert self.killed is not None
            self.cluster.wait_failover(self.killed)
        else:
            super().restart(target)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.cluster.close()

    def logs(self, lines: int = 25) -> str:
        return super().logs(lines) + "\n" + self.cluster.log_tails(lines)


@dataclass
class Watch:
    """What was seen from outside while the scenario ran: readiness answers and one open stream."""

    #: instance name -> (time.time(), HTTP status or None) in order.
    readiness: dict[str, list[tuple[float, int | None]]] = field(default_factory=dict)
    #: time.time() of each new_message frame of the watched stream.
    frames: list[float] = field(default_factory=list)
    stream_errors: list[str] = field(default_factory=list)

    def went_unready_and_back(self, name: str, since: float) -> bool:
        seen = [status for at, status in self.readiness.get(name, []) if at >= since]
        unready = next((i for i, status in enumerate(seen) if status != 200), None)
        return unready is not None and 200 in seen[unready:]


async def _watch_readiness(h: Harness, watch: Watch, names: Sequence[str]) -> None:
    while True:
        for name in names:
            status = await asyncio.to_thread(_get, h.instances[name].ready_url, 0.5)
            watch.readiness.setdefault(name, []).append((time.time(), status))
        await asyncio.sleep(0.1)


async def _watch_stream(h: Harness, watch: Watch, user: int) -> None:
    url = f"http://127.0.0.1:{h.instances['web-1'].port}/events"
    async with aiohttp.ClientSession() as session, \
            session.get(url, params={"access_token": h.key.token(user)}) as resp:
        if resp.status != 200:
            watch.stream_errors.append(f"status {resp.status}: {await resp.text()}")
            return
        async for _, frame in read_frames(resp.content):
            if frame.get("type") == "new_message":
                watch.frames.append(time.time())
    watch.stream_errors.append("the stream ended")


async def redis_failover(workdir: Path, *, events: int, seed: int, traffic_s: float, min_replicas_acked: int,
                         link_cut_s: float = LINK_CUT_S,
                         settle_timeout: float = 60) -> tuple[ScenarioResult, Watch, SentinelHarness]:
    """Run the scenario once; the caller closes the returned harness (after reading its logs)."""
    plan = plan_traffic(events, seed)
    h = SentinelHarness(workdir, min_replicas_acked=min_replicas_acked, link_cut_s=link_cut_s)
    watch = Watch()
    watchers: list[asyncio.Task[None]] = []
    try:
        h.start_servers()
        h.add("bridge")
        h.add("worker", 1, ("-p", "1"))
        h.add("web")
        h.start()
        await asyncio.to_thread(h.wait_ready, None, 60)
        busiest = max(plan.users, key=lambda u: sum(u in c.members for c in plan.chats))
        watchers = [asyncio.create_task(_watch_readiness(h, watch, ["bridge-1", "web-1"])),
                    asyncio.create_task(_watch_stream(h, watch, busiest))]
        # down_s: how long after the kill the failover is awaited (restart() blocks until it is done).
        schedule = [Fault(KILL_AT_S, "redis", 0.0)]
        result = await run_scenario(h, SCENARIO, plan, schedule, rate=events / traffic_s,
                                    settle_timeout=settle_timeout)
        # The gateway's readiness is sampled after the settle too: it must be back by now.
        await async_wait_until(lambda: watch.readiness["web-1"][-1][1] == 200, timeout=10)
    except BaseException:
        h.close()
        raise
    finally:
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    return result, watch, h


@pytest.mark.timeout(180)
async def test_a_killed_primary_loses_and_doubles_nothing_with_one_replica_acking(
        tmp_path: Path, chaos_events: int | None, chaos_seed: int | None) -> None:
    events = chaos_events or CI_EVENTS
    traffic_s = CI_TRAFFIC_S * max(1.0, events / CI_EVENTS)
    began = time.monotonic()
    result, watch, h = await redis_failover(tmp_path, events=events, seed=SEED if chaos_seed is None else chaos_seed,
                                            traffic_s=traffic_s, min_replicas_acked=1)
    try:
        print(result.line())
        (fault,) = result.faults
        failover_s = (fault.restarted_at or float("nan")) - fault.killed_at
        print(f"failover (sentinels promote a replica) {failover_s:.1f}s; published in {result.published_s:.1f}s, "
              f"settled in {result.settled_s:.1f}s, total {time.monotonic() - began:.1f}s; publisher {result.extra}")
        problems = result.problems()
        assert not problems, result.line() + "\n" + "\n".join(problems) + "\n" + h.logs()
        assert result.events >= events and result.audit.expected > 0
        # Readiness said so: not ready while the primary was gone, ready again after.
        for name in ("bridge-1", "web-1"):
            assert watch.went_unready_and_back(name, fault.killed_at), (name, watch.readiness.get(name, [])[-50:])
        # The stream opened before the kill kept delivering after the failover, on the same connection.
        assert not watch.stream_errors, watch.stream_errors
        assert any(at > (fault.restarted_at or 0) for at in watch.frames), "no frame after the failover"
    finally:
        h.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenario by hand, e.g. ``--min-replicas-acked 0`` to measure what async replication loses."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--min-replicas-acked", type=int, default=1)
    parser.add_argument("--events", type=int, default=CI_EVENTS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--link-cut-s", type=float, default=LINK_CUT_S,
                        help=f"seconds the primary runs without replicas before the kill (default {LINK_CUT_S})")
    args = parser.parse_args(argv)
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="redis-failover-") as tmp:
            outcome: tuple[ScenarioResult, Watch, SentinelHarness] = asyncio.run(redis_failover(
                Path(tmp), events=args.events, seed=args.seed + run,
                traffic_s=CI_TRAFFIC_S * max(1.0, args.events / CI_EVENTS), min_replicas_acked=args.min_replicas_acked,
                link_cut_s=args.link_cut_s))
            result, _, h = outcome
            h.close()
            print(f"{result.line()} min_replicas_acked={args.min_replicas_acked} link_cut_s={args.link_cut_s} "
                  f"seed={args.seed + run}")
            for problem in result.problems():
                print(f"  {problem}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

