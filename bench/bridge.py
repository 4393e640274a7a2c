"""Benchmark: the bridge's JetStream -> Redis throughput beside the pull + ack limits and two user-built bridges.

Starts its own nats-server and redis-server (tests/servers.py), publishes N Fechatter-shaped
events into JetStream, then measures in the same run, each on its own durable over the same
stored events (interleaved over ``--runs``, in an order shuffled per run with ``--seed``):

* raw own MSG.NEXT: a pull loop publishing ``$JS.API.CONSUMER.MSG.NEXT`` itself, ``msg.ack()`` per
  message (the nats-py pull + ack limit);
* raw fetch(): nats-py ``pull_subscribe`` + ``fetch(batch)``, ``msg.ack()`` per message;
* naive bridge: ``fetch(batch)``, then per message ``json.loads`` + dramatiq ``actor.send()`` through
  a ``RedisBroker`` on the same redis-server, then ``msg.ack()`` (what a user would write first);
* faststream bridge: a faststream ``NatsBroker`` pull subscriber (``PullSub(batch)``) whose handler
  gets the decoded JSON and calls ``actor.send()``; faststream acks after the handler (its logger
  off, its best case);
* the bridge: parse, enqueue onto dramatiq's Redis queues (one script call per batch), ack.

Usage: ``python bench/bridge.py [-n 50000] [--batch 500] [--runs 3] [--seed 1] [--quick]
[--json PATH] [--profile out.prof] [--no-users]``

Prints events/s for each (median, min-max) and, beside the bridge's, the CPU time of this Python
process per event (the figure that matters on a shared machine), then the bridge's ratio to each
(median of the per-run ratios, each measured side by side; min-max). Targets: bridge / own MSG.NEXT
>= 0.60; bridge / fetch() > 1.

``--min-replicas-acked N`` gives the redis-server N replicas and adds, in each run, the bridge with
``redis.min_replicas_acked: N`` (every batch's enqueue followed by ``WAIT N`` in the same pipeline):
its events/s as a ratio to the bridge's run without WAIT on the same replicated server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dramatiq
import nats
from dramatiq.brokers.redis import RedisBroker
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from bridge.app import Bridge
from bridge.testing import bridge_settings
from runtime import tune_gc
from tests.servers import NatsServer, RedisServer, async_wait_until, wait_until

STREAM = "FECHATTER_EVENTS"
QUICK_EVENTS = 5000

#: The measurements, in the order printed; ``ratio`` ones get the bridge's ratio to them.
RAW_NEXT, RAW_FETCH, NAIVE, FASTSTREAM, BRIDGE, BRIDGE_WAIT = (
    "raw own MSG.NEXT pull + ack", "raw fetch() + ack", "naive bridge (fetch + send + ack)",
    "faststream bridge (PullSub + send)", "bridge (parse + enqueue + ack)", "bridge + WAIT (min_replicas_acked)")
KEYS = {RAW_NEXT: "raw_own_next", RAW_FETCH: "raw_fetch", NAIVE: "naive_bridge", FASTSTREAM: "faststream_bridge",
        BRIDGE: "bridge", BRIDGE_WAIT: "bridge_wait"}
TARGETS = {RAW_NEXT: ">= 0.60", RAW_FETCH: "> 1"}


#: Fechatter-shaped payloads (docs/event-contract.md#payloads), ids varied per event.
def _events(n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        chat, mid = 40 + i % 50, 1000 + i
        kind = i % 3
        if kind == 0:
            out.append(("fechatter.message.created", json.dumps({
                "version": "V1", "kind": "Created",
                "msg": {"id": mid, "chat_id": chat, "sender_id": 7, "content": f"Hi team {i}", "files": [],
                        "created_at": "2025-06-27T02:45:46.782538Z", "idempotency_key": None},
                "members": [7, 9, 11], "occurred_at": "2025-06-27T02:45:46.790112345Z"}).encode()))
        elif kind == 1:
            out.append(("fechatter.message.new", json.dumps({
                "event_type": "new_message", "chat_id": chat, "sender_id": 7, "sender_name": "Alice Zhang",
                "content": f"Hi team {i}", "files": [], "timestamp": "2025-06-27T02:45:46.782538Z",
                "message_id": mid, "workspace_id": 2}).encode()))
        else:
            out.append(("fechatter.chat.member_joined", json.dumps({
                "event_type": "member_added", "chat_id": chat, "user_id": 9, "user_name": "Bob Li",
                "timestamp": "2025-06-27T02:45:46.782538Z"}).encode()))
    return out


async def publish(url: str, n: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name=STREAM, subjects=["fechatter.messages.>", "fechatter.chats.>", "fechatter.message.>",
                                               "fechatter.chat.>", "fechatter.user.>", "fechatter.broadcast"])
    for i, (subject, data) in enumerate(_events(n)):
        await nc.publish(subject, data)
        if i % 5000 == 4999:
            await nc.flush()
    await nc.flush()

    async def stored() -> bool:
        return bool((await js.stream_info(STREAM)).state.messages >= n)

    await async_wait_until(stored, timeout=60, interval=0.05)
    await nc.close()


class Sample:
    """One measurement: events/s (wall clock) and this process's CPU time per event."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        self.rate = 0.0
        self.cpu_us = 0.0

    def stop(self) -> Sample:
        self.rate = self.n / (time.perf_counter() - self._wall)
        self.cpu_us = (time.process_time() - self._cpu) / self.n * 1e6
        return self


async def raw_own_pull(url: str, n: int, batch: int) -> Sample:
    """Own MSG.NEXT pull loop + ack per message."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_consumer(STREAM, ConsumerConfig(durable_name="raw_next", ack_wait=30, max_ack_pending=-1))
    done = asyncio.Event()
    count = 0
    pending = 0
    inbox = nc.new_inbox()
    request = json.dumps({"batch": batch, "expires": 2_000_000_000, "idle_heartbeat": 1_000_000_000}).encode()
    subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.raw_next"

    async def on_msg(msg: Msg) -> None:
        nonlocal count, pending
        if not msg.reply:  # status
            if msg.headers and msg.headers.get("Status") == "408":
                pending = max(0, pending - int(msg.headers.get("Nats-Pending-Messages", batch)))
            return
        await msg.ack()
        count += 1
        pending -= 1
        if count >= n:
            done.set()
        elif pending <= batch // 2:
            pending += batch
            await nc.publish(subject, request, reply=inbox)

    await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
    sample = Sample(n)
    pending = batch
    await nc.publish(subject, request, reply=inbox)
    await done.wait()
    await nc.flush()
    sample.stop()
    await nc.close()
    return sample


async def _fetch_loop(url: str, durable: str, ack_wait: float, n: int, batch: int,
                      each: Callable[[Msg], None] | None = None) -> Sample:
    """nats-py fetch(batch) on its own durable until ``n`` messages; ``each`` (if any), then ack, per message."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe("", durable=durable, stream=STREAM,
                                  config=ConsumerConfig(ack_wait=ack_wait, max_ack_pending=-1))
    count = 0
    sample = Sample(n)
    while count < n:
        try:
            msgs = await sub.fetch(batch, timeout=2)
        except nats.errors.TimeoutError:
            continue
        for msg in msgs:
            if each is not None:
                each(msg)
            await msg.ack()
        count += len(msgs)
    await nc.flush()
    sample.stop()
    await nc.close()
    return sample


async def raw_fetch(url: str, n: int, batch: int) -> Sample:
    """nats-py fetch(batch) + ack per message."""
    return await _fetch_loop(url, "raw_fetch", 30, n, batch)


def _actor(redis_url: str, namespace: str) -> dramatiq.Actor[..., None]:
    """A dramatiq actor on its own RedisBroker (default middleware), as a user's bridge would send to."""
    broker = RedisBroker(url=redis_url, namespace=namespace)

    def handle_event(subject: str, payload: Any) -> None:  # never runs here: no worker
        return None

    return dramatiq.actor(handle_event, broker=broker, actor_name="handle_event", queue_name="domain")


async def naive_bridge(url: str, redis_url: str, n: int, batch: int, run: int) -> Sample:
    """fetch(batch) -> per message json.loads + actor.send() (one Redis round trip each) -> ack."""
    actor = _actor(redis_url, f"bench-naive-{run}")

    def send(msg: Msg) -> None:
        actor.send(msg.subject, json.loads(msg.data))

    try:
        return await _fetch_loop(url, "naive", 60, n, batch, send)
    finally:
        actor.broker.close()


async def faststream_bridge(url: str, redis_url: str, n: int, batch: int, run: int) -> Sample:
    """A faststream NATS pull subscriber (PullSub(batch)) whose handler sends each event to dramatiq."""
    from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub

    actor = _actor(redis_url, f"bench-faststream-{run}")
    nc = await nats.connect(url)
    await nc.jetstream().add_consumer(STREAM, ConsumerConfig(durable_name="faststream", ack_wait=60,
                                                             max_ack_pending=-1))
    await nc.close()
    broker = NatsBroker(url, logger=None)
    done = asyncio.Event()
    count = 0

    @broker.subscriber("fechatter.>", stream=JStream(STREAM, declare=False), durable="faststream",
                       pull_sub=PullSub(batch, timeout=2))
    async def handle(body: dict[str, Any], message: NatsMessage) -> None:
        nonlocal count
        actor.send(message.raw_message.subject, body)
        count += 1
        if count >= n:
            done.set()

    sample = Sample(n)
    await broker.start()
    await done.wait()
    await asyncio.sleep(0)  # the last handler's ack follows its return
    sample.stop()
    await broker.stop()
    actor.broker.close()
    return sample


async def run_bridge(nats_url: str, redis_url: str, n: int, batch: int, durable: str,
                     profile: cProfile.Profile | None, min_replicas_acked: int = 0) -> Sample:
    """The bridge until every event is enqueued and acked (measured from its first pull)."""
    wait = {"min_replicas_acked": min_replicas_acked, "replica_ack_timeout": "2s"} if min_replicas_acked else {}
    settings = bridge_settings(nats_url, redis_url, {
        "nats": {"ping_interval": "5s"},
        "jetstream": {"provision": "auto", "consumers": [{
            "durable": durable, "stream": STREAM, "ack_wait": "30s", "idle_heartbeat": "6s", "expires": "12s",
            "max_deliver": 3, "batch": batch, "max_ack_pending": 20000, "max_in_flight": 4 * batch}]},
        "realtime": {"subjects": []},
        "redis": {"namespace": f"bench-{durable}", "socket_timeout": "5s", **wait},
    })
    bridge = Bridge(settings)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(bridge.run(stop))
    await bridge.started.wait()
    acked = bridge.metrics.acked.labels(durable)
    sample = Sample(n)
    if profile is not None:
        profile.enable()
    await async_wait_until(lambda: acked._value.get() >= n, timeout=600, interval=0.005)
    sample.stop()
    if profile is not None:
        profile.disable()
    stop.set()
    await task
    return sample


def _steps(nats_url: str, redis_url: str, args: argparse.Namespace, run: int,
           profile: cProfile.Profile | None) -> dict[str, Callable[[], Awaitable[Sample]]]:
    """Each measurement of run ``run``, to be started in the run's order."""
    n, b = args.n, args.batch
    return {
        RAW_NEXT: lambda: raw_own_pull(nats_url, n, b),
        RAW_FETCH: lambda: raw_fetch(nats_url, n, b),
        NAIVE: lambda: naive_bridge(nats_url, redis_url, n, b, run),
        FASTSTREAM: lambda: faststream_bridge(nats_url, redis_url, n, b, run),
        BRIDGE: lambda: run_bridge(nats_url, redis_url, n, b, f"bench_{run}", profile),
        BRIDGE_WAIT: lambda: run_bridge(nats_url, redis_url, n, b, f"bench_wait_{run}", None,
                                        args.min_replicas_acked),
    }


def _write_json(path: str, document: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(document, indent=2) + "\n")


def _median_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def report(samples: dict[str, list[Sample]], args: argparse.Namespace) -> dict[str, Any]:
    """Print the table and the ratios; return the --json document."""
    figures: list[dict[str, Any]] = []
    per_run: dict[str, list[float]] = {}
    print(f"\n{args.runs} run(s), {args.n} events, batch {args.batch} (median, min-max over the runs):")
    for name, got in samples.items():
        rate, low, high = _median_range([s.rate for s in got])
        cpu = statistics.median(s.cpu_us for s in got)
        print(f"  {name:36s}: {rate:10,.0f} events/s  ({low:,.0f}-{high:,.0f})   CPU {cpu:5.1f} us/event")
        key = KEYS[name]
        per_run[f"{key}_events_per_s"] = [round(s.rate, 1) for s in got]
        per_run[f"{key}_cpu_us_per_event"] = [round(s.cpu_us, 2) for s in got]
        figures.append({"name": f"{key}_events_per_s", "value": round(rate, 1), "unit": "events/s",
                        "baseline": None, "target": None})
        figures.append({"name": f"{key}_cpu_us_per_event", "value": round(cpu, 2), "unit": "us/event",
                        "baseline": None, "target": None})
    bridge = samples[BRIDGE]
    print("  the bridge's ratio to each (median of per-run ratios, min-max):")
    for name, got in samples.items():
        if name == BRIDGE:
            continue
        if name == BRIDGE_WAIT:
            ratios = [w.rate / b.rate for w, b in zip(got, bridge, strict=True)]
            label, key = "bridge + WAIT / bridge", "bridge_wait_over_bridge"
            baseline = "bridge_events_per_s"
        else:
            ratios = [b.rate / s.rate for b, s in zip(bridge, got, strict=True)]
            label, key = f"bridge / {name}", f"bridge_over_{KEYS[name]}"
            baseline = f"{KEYS[name]}_events_per_s"
        ratio, low, high = _median_range(ratios)
        target = TARGETS.get(name)
        print(f"    {label:44s}: {ratio:6.2f}  ({low:.2f}-{high:.2f})" + (f"   target {target}" if target else ""))
        per_run[key] = [round(r, 3) for r in ratios]
        figures.append({"name": key, "value": round(ratio, 3), "unit": "ratio", "baseline": baseline,
                        "target": target})
    cpu_ratio = statistics.median(s.cpu_us for s in samples[RAW_NEXT]) / statistics.median(s.cpu_us for s in bridge)
    print(f"    {'CPU/event: own MSG.NEXT / bridge':44s}: {cpu_ratio:6.2f}   (instructions the wall clock hides)")
    figures.append({"name": "raw_own_next_cpu_over_bridge_cpu", "value": round(cpu_ratio, 3), "unit": "ratio",
                    "baseline": "bridge_cpu_us_per_event", "target": None})
    return {"figures": figures, "meta": {"benchmark": "bridge", "events": args.n, "batch": args.batch,
                                         "runs": args.runs, "seed": args.seed, "per_run": per_run,
                                         "min_replicas_acked": args.min_replicas_acked}}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=None, help="events (default 50000; --quick: 5000)")
    parser.add_argument("--batch", type=int, default=500, help="pull batch (default 500)")
    parser.add_argument("--runs", type=int, default=None, help="runs of each measurement (default 3; --quick: 1)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the per-run measurement order (default 1)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EVENTS} events, 1 run (well under a minute)")
    parser.add_argument("--json", metavar="PATH", help="write the figures there (bench/run_all.py's format)")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the bridge's runs into FILE")
    parser.add_argument("--no-users", action="store_true", help="skip the naive and faststream bridges")
    parser.add_argument("--min-replicas-acked", type=int, default=0, metavar="N",
                        help="give Redis N replicas and also run the bridge with WAIT N (default 0: neither)")
    args = parser.parse_args()
    args.n = args.n or (QUICK_EVENTS if args.quick else 50_000)
    args.runs = args.runs or (1 if args.quick else 3)
    logging.basicConfig(level=logging.WARNING)
    profile = cProfile.Profile() if args.profile else None
    order = random.Random(args.seed)
    samples: dict[str, list[Sample]] = {RAW_NEXT: [], RAW_FETCH: []}
    if not args.no_users:
        samples.update({NAIVE: [], FASTSTREAM: []})
    samples[BRIDGE] = []
    if args.min_replicas_acked:
        samples[BRIDGE_WAIT] = []
    with NatsServer() as ns, RedisServer() as rs, contextlib.ExitStack() as replicas:
        for _ in range(args.min_replicas_acked):
            replicas.enter_context(RedisServer(extra_args=["--replicaof", "127.0.0.1", str(rs.port)]))
        client = rs.client()
        if args.min_replicas_acked:
            wait_until(lambda: int(client.info("replication")["connected_slaves"]) == args.min_replicas_acked,
                       timeout=30, message="replicas did not connect")
        began = time.perf_counter()
        await publish(ns.url, args.n)
        print(f"published {args.n} events in {time.perf_counter() - began:.1f}s")
        for run in range(args.runs):
            # Each run reads the same stored events on fresh durables.
            nc = await nats.connect(ns.url)
            js = nc.jetstream()
            for durable in ("raw_next", "raw_fetch", "naive", "faststream"):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_consumer(STREAM, durable)
            await nc.close()
            steps = _steps(ns.url, rs.url, args, run, profile)
            names = [name for name in samples if name != BRIDGE_WAIT]
            order.shuffle(names)
            if args.min_replicas_acked:  # right after the bridge: its ratio is to that run
                names.insert(names.index(BRIDGE) + 1, BRIDGE_WAIT)
            line = []
            for name in names:
                sample = await steps[name]()
                samples[name].append(sample)
                line.append(f"{KEYS[name]} {sample.rate:,.0f}/s")
                if not args.min_replicas_acked:
                    client.flushall()  # the queues written so far: keep Redis' memory flat (not timed)
            print(f"run {run + 1}: " + "  ".join(line))
        client.close()
    document = report(samples, args)
    if args.json:
        _write_json(args.json, document)
        print(f"figures written to {args.json}")
    if profile is not None:
        profile.dump_stats(args.profile)
        print(f"profile written to {args.profile}")


if __name__ == "__main__":
    tune_gc()  # as `fechatter-notify bridge` does (bridge/main.py); every measurement here runs with it
    asyncio.run(main())
