"""The fleet: self-registration in Redis (runtime.fleet.registration) and the snapshot
(runtime.fleet.snapshot) against a real redis-server and real metrics endpoints.

The processes' own registration (bridge, worker supervisor, gateway as real processes) is tested
in tests/test_top.py; here the component, including a registering process killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import dramatiq
import nats
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from dramatiq.middleware import SkipMessage
from nats.js.api import ConsumerConfig
from prometheus_client import generate_latest

from bridge.acks import Settler, delivery_count
from bridge.jsapi import JetStreamApi
from bridge.lag import poll_lag
from bridge.metrics import BridgeMetrics
from gateway.testing import SigningKey, gateway_settings, running_gateway
from runtime import Registration, collect_snapshot
from runtime.fleet import index_key, read_registrations, record_key
from settings import Consumer
from tests.servers import NatsServer, RedisServer, async_wait_until, wait_until
from tests.test_workers_support import make_settings
from workers.connections import ThreadConnections
from workers.delivery import Delivery
from workers.expiry import Expiry
from workers.metrics import WorkerMetrics

NS = "fleet-test"


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_server.url)
    yield c
    await c.aclose()


async def test_registration_appears_refreshes_and_leaves_on_clean_stop(client: aioredis.Redis) -> None:
    reg = Registration("bridge", NS, metrics_url="http://127.0.0.1:1/metrics", details={"queues": ["a"]},
                       ttl_s=0.6, refresh_s=0.1)
    await reg.start(client)
    try:
        [record] = await async_wait_until(lambda: read_registrations(client, NS), timeout=3,
                                          message="registration never written")
        assert (record.id, record.role, record.pid, record.details) == (reg.id, "bridge", reg.record().pid,
                                                                        {"queues": ["a"]})
        assert 0 < await client.pttl(record_key(NS, reg.id)) <= 600
        # Refreshed: still there twice its TTL after it was first written.
        await async_wait_until(lambda: _alive_since(client, reg, 1.2), timeout=3, interval=0.05,
                               message="record not refreshed past its TTL")
        # The last warning of the process travels with the record.
        import logging
        logging.getLogger("some.part").warning("disk_almost_full")
        reg.set_metrics_url("http://127.0.0.1:2/metrics")

        async def warned() -> bool:
            [r] = await read_registrations(client, NS)
            return bool(r.last_warning) and r.last_warning["event"] == "disk_almost_full" \
                and r.metrics_url == "http://127.0.0.1:2/metrics"
        await async_wait_until(warned, timeout=3, message="warning / new URL not written")
    finally:
        await reg.stop()
    assert await read_registrations(client, NS) == []
    assert await client.exists(record_key(NS, reg.id)) == 0
    assert await client.zcard(index_key(NS)) == 0


async def _count(client: aioredis.Redis, expected: int) -> bool:
    return len(await read_registrations(client, NS)) == expected


async def _alive_since(client: aioredis.Redis, reg: Registration, age_s: float) -> bool:
    if not await client.exists(record_key(NS, reg.id)):
        raise AssertionError("the record expired while its process was alive")
    return time.time() - reg.record().started_at > age_s


_CHILD = """
import sys, time, redis
from runtime import Registration
reg = Registration("worker", sys.argv[2], metrics_url="http://127.0.0.1:9/metrics", ttl_s=1.0, refresh_s=0.2)
reg.start_thread(redis.Redis.from_url(sys.argv[1]))
print(reg.id, flush=True)
time.sleep(60)
"""


def test_registration_expires_after_kill_9(redis_server: RedisServer) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, redis_server.url, NS], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        process_id = proc.stdout.readline().decode().strip()
        sync = redis_server.client()
        wait_until(lambda: sync.exists(record_key(NS, process_id)), timeout=5, message="never registered")
        assert json.loads(sync.get(record_key(NS, process_id)))["role"] == "worker"
        # Alive past its TTL: it is refreshed by the thread.
        wait_until(lambda: _age(sync, process_id) > 1.2,
                   timeout=5, interval=0.05, message="registration not kept alive past its TTL")
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        killed_at = time.monotonic()
        wait_until(lambda: not sync.exists(record_key(NS, process_id)), timeout=5, interval=0.05,
                   message="record of a SIGKILLed process did not expire")
        assert time.monotonic() - killed_at <= 1.5  # within its TTL (1 s) plus polling
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _age(sync: object, process_id: str) -> float:
    record = json.loads(sync.get(record_key(NS, process_id)))  # type: ignore[attr-defined]
    return time.time() - float(record["started_at"])


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


async def test_snapshot_figures_rates_lag_queues_and_a_dead_process(client: aioredis.Redis) -> None:
    bridge, worker = BridgeMetrics(), WorkerMetrics()

    async def bridge_metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(bridge.registry))

    async def worker_metrics(_: web.Request) -> web.Response:
        return web.Response(body=worker.render())

    app = web.Application()
    app.router.add_get("/bridge", bridge_metrics)
    app.router.add_get("/worker", worker_metrics)
    runner, port = await _serve(app)
    regs = [Registration("bridge", NS, metrics_url=f"http://127.0.0.1:{port}/bridge",
                         details={"queues": ["realtime", "domain"]}),
            Registration("worker", NS, metrics_url=f"http://127.0.0.1:{port}/worker"),
            Registration("gateway", NS, metrics_url=f"http://127.0.0.1:{port}/nothing-here")]
    try:
        for reg in regs:
            await reg.start(client)
        await async_wait_until(lambda: _count(client, 3), timeout=3, message="registrations not all written")
        bridge.fetched.labels("notification_processor").inc(10)
        bridge.acked.labels("notification_processor").inc(7)
        bridge.num_pending.labels("notification_processor").set(42)
        bridge.num_ack_pending.labels("notification_processor").set(5)
        worker.jobs.labels("new_message", "ok").inc(3)
        worker.jobs.labels("new_message", "failed").inc(1)
        for _ in range(4):
            bridge.enqueue_latency.observe(0.003)
        await client.rpush(f"{NS}:domain", "a", "b")
        await client.zadd(f"{NS}:domain.XQ", {"x": 1})

        first = await collect_snapshot(client, NS)
        views = {v.record.role: v for v in first.processes}
        assert views["bridge"].totals["fetched"] == 10 and views["bridge"].totals["acked"] == 7
        assert views["bridge"].rates["fetched"] is None  # no previous snapshot: no rate yet
        assert views["worker"].totals["jobs_done"] == 3 and views["worker"].totals["jobs_failed"] == 1
        assert not views["gateway"].up and "404" in (views["gateway"].error or "")
        latency = views["bridge"].latency["enqueue"]
        assert latency["count"] == 4 and 0.002 <= (latency["p50"] or 0) <= 0.005

        bridge.fetched.labels("notification_processor").inc(30)
        second = await collect_snapshot(client, NS, previous=first)
        data = json.loads(json.dumps(second.as_dict()))  # JSON-ready
        assert second.interval_s is not None and second.interval_s > 0
        assert data["rates"]["fetched"] == pytest.approx(30 / second.interval_s)
        assert data["lag"] == {"notification_processor": {"pending": 42, "ack_pending": 5}}
        assert data["queues"]["domain"] == {"ready": 2, "delayed": 0, "dead": 1}
        assert data["queues"]["realtime"] == {"ready": 0, "delayed": 0, "dead": 0}
        # Latency over the interval: nothing new was observed.
        assert next(p for p in data["processes"] if p["role"] == "bridge")["latency"]["enqueue"]["count"] == 0
        assert {p["role"] for p in data["processes"]} == {"bridge", "worker", "gateway"}
    finally:
        for reg in regs:
            await reg.stop()
        await runner.cleanup()


# --- the metrics top shows, each with a real value ---------------------------------------------------------


def _sample(metrics: BridgeMetrics, name: str, durable: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"consumer": durable})


async def test_consumer_lag_and_redeliveries_of_a_real_durable(nats_server: NatsServer) -> None:
    """num_pending / num_ack_pending as the bridge's poller reads them, and the redeliveries counter as
    its settler counts them, on a real JetStream durable."""
    nc = await nats.connect(nats_server.url)
    metrics = BridgeMetrics()
    poller: asyncio.Task[None] | None = None
    try:
        js = nc.jetstream()
        await js.add_stream(name="LAG", subjects=["lag.>"])
        await js.add_consumer("LAG", ConsumerConfig(durable_name="lagging", ack_wait=1.0, max_deliver=5))
        for _ in range(7):
            await js.publish("lag.x", b"{}")
        # Nobody pulls (the bridge is stopped): the gauge shows all 7 waiting.
        poller = asyncio.create_task(poll_lag(JetStreamApi(nc), [Consumer(durable="lagging", stream="LAG")],
                                              metrics, 0.1))
        await async_wait_until(lambda: _sample(metrics, "fechatter_notify_bridge_consumer_num_pending",
                                               "lagging") == 7, timeout=5, message="lag gauge never showed 7")
        pull = await js.pull_subscribe("lag.x", durable="lagging", stream="LAG")
        first = await pull.fetch(3, timeout=5)
        await async_wait_until(lambda: (_sample(metrics, "fechatter_notify_bridge_consumer_num_pending", "lagging"),
                                        _sample(metrics, "fechatter_notify_bridge_consumer_num_ack_pending",
                                                "lagging")) == (4, 3), timeout=5, message="lag after a fetch")
        # Not acked within ack_wait: JetStream delivers them again, with delivery count 2.
        settler = Settler(Consumer(durable="lagging", stream="LAG"))
        settler.count_redeliveries(metrics.redeliveries.labels("lagging"))
        await settler.ack(await pull.fetch(4, timeout=5))  # the 4 first deliveries
        assert _sample(metrics, "fechatter_notify_bridge_redeliveries_total", "lagging") == 0
        again = await pull.fetch(3, timeout=5)
        assert sorted(m.metadata.sequence.stream for m in again) == sorted(m.metadata.sequence.stream for m in first)
        assert {m.metadata.num_delivered for m in again} == {2}
        await settler.ack(again)
        assert _sample(metrics, "fechatter_notify_bridge_redeliveries_total", "lagging") == 3
        await async_wait_until(lambda: _sample(metrics, "fechatter_notify_bridge_consumer_num_ack_pending",
                                               "lagging") == 0, timeout=5, message="acks not seen by the lag poll")
    finally:
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        await nc.close()


def test_the_delivery_count_is_read_from_both_forms_of_reply_subject() -> None:
    assert delivery_count("$JS.ACK.S.dur.3.17.12.1764434700123456789.0") == 3
    assert delivery_count("$JS.ACK.hub.ACCHASH.S.dur.2.17.12.1764434700123456789.0.token") == 2
    assert delivery_count("_INBOX.abc") == delivery_count(None) == delivery_count("$JS.ACK.S.dur.x.1.1.1.0") == 1


def test_an_expired_realtime_job_is_dropped_and_counted_with_its_reason() -> None:
    metrics = WorkerMetrics()
    late: dramatiq.Message[Any] = dramatiq.Message(queue_name="realtime", actor_name="typing_started",
                            args=({"expires_at": "2020-01-01T00:00:00+00:00"},), kwargs={}, options={})
    with pytest.raises(SkipMessage):
        Expiry(metrics).before_process_message(dramatiq.Broker(), dramatiq.MessageProxy(late))
    assert metrics.registry.get_sample_value("fechatter_notify_worker_realtime_dropped_total",
                                             {"reason": "expired"}) == 1


async def test_frames_of_a_slow_client_are_counted_as_dropped(redis_server: RedisServer) -> None:
    """A gateway closes a stream whose client does not read; the frames it still held are counted."""
    key = SigningKey.generate()
    async with running_gateway(gateway_settings(redis_server.url, key.public_pem, stream_buffer=4), key) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (host, int(port)))
            await loop.sock_sendall(sock, f"GET /events?access_token={key.token(18)} HTTP/1.1\r\nHost: {host}"
                                          "\r\n\r\n".encode())
            await async_wait_until(lambda: gw.metric("fechatter_notify_gateway_connected_users") == 1)
            sent = 0

            async def dropped() -> bool:
                nonlocal sent
                await gw.publish(18, {"type": "new_message", "id": sent, "content": "x" * 65536})
                sent += 1
                return gw.metric("fechatter_notify_gateway_slow_clients_dropped_total") == 1

            await async_wait_until(dropped, timeout=30.0, interval=0.0)
            frames = gw.metric("fechatter_notify_gateway_frames_dropped_total", {"reason": "slow_client"})
            assert 1 <= frames <= sent
        finally:
            sock.close()


def test_writes_into_full_inboxes_are_counted_as_inbox_trims(redis_server: RedisServer) -> None:
    client = redis_server.client()
    try:
        metrics = WorkerMetrics()
        settings = make_settings(redis_server.url, delivery={"inbox_max_len": 3})
        delivery = Delivery(ThreadConnections(client), "t", settings.delivery, metrics)
        for message_id in range(5):  # to users 7 and 9, whose inboxes hold 3
            delivery.deliver({"type": "new_message", "id": message_id}, users=[7, 9], key=f"42:{message_id}",
                             ttl_s=60)
        delivery.deliver({"type": "new_message", "id": 4}, users=[7, 9], key="42:4", ttl_s=60)  # duplicates
        assert metrics.registry.get_sample_value("fechatter_notify_worker_inbox_trims_total") == 2 * 2
    finally:
        client.close()
