"""Benchmark: the bridge's JetStream -> Redis throughput beside the raw nats-py pull + ack limit.

Starts its own nats-server and redis-server (tests/servers.py), publishes N Fechatter-shaped
events into JetStream, then measures in the same run, each on its own durable over the same
stored events:

* raw own MSG.NEXT: a pull loop publishing ``$JS.API.CONSUMER.MSG.NEXT`` itself, ack per message;
* raw fetch(): nats-py ``pull_subscribe`` + ``fetch(batch)``, ack per message;
* the bridge: parse, enqueue onto dramatiq's Redis queues (one script call per batch), ack.

Usage: ``python bench/bridge.py [-n 50000] [--batch 500] [--runs 3] [--profile out.prof]``
Prints events/s for each and the bridge's ratio to both raw limits (the target is >= 60 % of
the fetch() limit, the one a nats-py consumer would otherwise use).

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
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from bridge.app import Bridge
from bridge.testing import bridge_settings
from tests.servers import NatsServer, RedisServer, async_wait_until, wait_until

STREAM = "FECHATTER_EVENTS"

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


async def raw_own_pull(url: str, n: int, batch: int) -> float:
    """Own MSG.NEXT pull loop + ack per message; events/s."""
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
    began = time.perf_counter()
    pending = batch
    await nc.publish(subject, request, reply=inbox)
    await done.wait()
    await nc.flush()
    elapsed = time.perf_counter() - began
    await nc.close()
    return n / elapsed


async def raw_fetch(url: str, n: int, batch: int) -> float:
    """nats-py fetch(batch) + ack per message; events/s."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe("", durable="raw_fetch", stream=STREAM,
                                  config=ConsumerConfig(ack_wait=30, max_ack_pending=-1))
    count = 0
    began = time.perf_counter()
    while count < n:
        try:
            msgs = await sub.fetch(batch, timeout=2)
        except nats.errors.TimeoutError:
            continue
        for msg in msgs:
            await msg.ack()
        count += len(msgs)
    await nc.flush()
    elapsed = time.perf_counter() - began
    await nc.close()
    return n / elapsed


async def run_bridge(nats_url: str, redis_url: str, n: int, batch: int, durable: str,
                     profile: cProfile.Profile | None, min_replicas_acked: int = 0) -> float:
    """The bridge until every event is enqueued and acked; events/s (from its first pull)."""
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
    began = time.perf_counter()
    if profile is not None:
        profile.enable()
    await async_wait_until(lambda: acked._value.get() >= n, timeout=600, interval=0.005)
    elapsed = time.perf_counter() - began
    if profile is not None:
        profile.disable()
    stop.set()
    await task
    return n / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50_000, help="events (default 50000)")
    parser.add_argument("--batch", type=int, default=500, help="pull batch (default 500)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement; the median is printed")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the bridge's runs into FILE")
    parser.add_argument("--min-replicas-acked", type=int, default=0, metavar="N",
                        help="give Redis N replicas and also run the bridge with WAIT N (default 0: neither)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    profile = cProfile.Profile() if args.profile else None
    with NatsServer() as ns, RedisServer() as rs, contextlib.ExitStack() as replicas:
        for _ in range(args.min_replicas_acked):
            replicas.enter_context(RedisServer(extra_args=["--replicaof", "127.0.0.1", str(rs.port)]))
        if args.min_replicas_acked:
            client = rs.client()
            wait_until(lambda: int(client.info("replication")["connected_slaves"]) == args.min_replicas_acked,
                       timeout=30, message="replicas did not connect")
            client.close()
        began = time.perf_counter()
        await publish(ns.url, args.n)
        print(f"published {args.n} events in {time.perf_counter() - began:.1f}s")
        own, fetch, bridge, waiting = [], [], [], []
        for run in range(args.runs):
            # Each run reads the same stored events on fresh durables.
            nc = await nats.connect(ns.url)
            js = nc.jetstream()
            for durable in ("raw_next", "raw_fetch"):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_consumer(STREAM, durable)
            await nc.close()
            own.append(await raw_own_pull(ns.url, args.n, args.batch))
            fetch.append(await raw_fetch(ns.url, args.n, args.batch))
            bridge.append(await run_bridge(ns.url, rs.url, args.n, args.batch, f"bench_{run}", profile))
            if args.min_replicas_acked:
                waiting.append(await run_bridge(ns.url, rs.url, args.n, args.batch, f"bench_wait_{run}", None,
                                                args.min_replicas_acked))
            print(f"run {run + 1}: raw own MSG.NEXT {own[-1]:,.0f}/s  raw fetch() {fetch[-1]:,.0f}/s  "
                  f"bridge {bridge[-1]:,.0f}/s" + (f"  bridge+WAIT {waiting[-1]:,.0f}/s" if waiting else ""))
    o, f, b = statistics.median(own), statistics.median(fetch), statistics.median(bridge)
    print(f"\nmedian of {args.runs} runs, {args.n} events, batch {args.batch}:")
    print(f"  raw nats-py own MSG.NEXT pull + ack : {o:10,.0f} events/s")
    print(f"  raw nats-py fetch() + ack           : {f:10,.0f} events/s")
    print(f"  bridge (parse + enqueue + ack)      : {b:10,.0f} events/s")
    print(f"  bridge / raw fetch()                : {b / f:10.0%}   (target >= 60 %)")
    print(f"  bridge / raw own MSG.NEXT           : {b / o:10.0%}")
    if waiting:
        w = statistics.median(waiting)
        print(f"  bridge + WAIT (min_replicas_acked)  : {w:10,.0f} events/s")
        print(f"  bridge + WAIT / bridge              : {w / b:10.0%}   ({args.min_replicas_acked} replica(s), "
              "both on the replicated server)")
    if profile is not None:
        profile.dump_stats(args.profile)
        print(f"profile written to {args.profile}")


if __name__ == "__main__":
    asyncio.run(main())
