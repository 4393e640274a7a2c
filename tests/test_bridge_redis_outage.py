"""A short Redis outage delays JetStream events by the outage, not by the pull expiry, and keeps their order.

While the Redis circuit is open the bridge holds what it was given (in-progress acks keep it ours)
and enqueues it oldest first when Redis answers. Every test runs with a pull expiry far longer than
the outage: today's nak-with-delay path (at least the expiry) would fail each delay bound by tens of
seconds. Events flow at a steady rate through the outage; a watcher polls the domain queue and
stamps the moment each job appears in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import time
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from redis.exceptions import RedisError

from bridge import holding
from bridge.app import Bridge
from bridge.testing import bridge_settings, running_bridge, settings_yaml
from tests.bridge_proc import BridgeProcess, created
from tests.servers import NatsServer, RedisServer, async_wait_until, free_port

NS = "test-notify"
STREAM = "FECHATTER_EVENTS"
DURABLE = "notification_processor"
#: Events per second published through an outage.
RATE = 25.0
#: Allowed delay beyond the outage itself: the probe's backoff cap (1 s + jitter) and the release.
SLACK_S = 2.0
#: Far longer than any outage here: an event nak'd with the expiry as its delay would miss every bound.
LONG_EXPIRY = "30s"


def consumer(ack_wait: str, expires: str = LONG_EXPIRY, **more: Any) -> dict[str, Any]:
    # The heartbeat is half the expiry (the smallest expiry the server accepts is 2 x heartbeat).
    heartbeat = f"{float(expires.removesuffix('s')) / 2}s"
    return {"durable": DURABLE, "stream": STREAM, "ack_wait": ack_wait, "idle_heartbeat": heartbeat,
            "expires": expires, "max_deliver": 3, "batch": 100, **more}


def test_the_hold_bound_derives_from_the_consumers_limits() -> None:
    from settings import Consumer

    assert holding.hold_limits(Consumer(max_in_flight=2000, max_ack_pending=1000), 256 * 1024) == (
        1000, holding.MAX_HELD_PAYLOAD_BYTES)
    assert holding.hold_limits(Consumer(max_in_flight=10, max_ack_pending=1000), 1000) == (10, 10_000)


async def test_a_reload_moves_the_hold_bound_with_max_in_flight(
    nats_server: NatsServer, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    # Given a bridge holding at most min(max_in_flight, max_ack_pending) = 1000 events
    limit = 2048
    started = bridge_settings(nats_server.url, redis_server.url, {"events": {"max_payload_bytes": limit}})
    async with running_bridge(started) as bridge:
        held = bridge.pull_consumers[0]._processor.holding
        assert held.limits == (1000, 1000 * limit)

        def reload(**fields: Any) -> Any:
            return bridge.reload(bridge_settings(nats_server.url, redis_server.url, {
                "events": {"max_payload_bytes": limit},
                "jetstream": {"consumers": [consumer("3s", "2s", **fields)]}}))

        # When a SIGHUP reload lowers max_in_flight, then raises it again
        reload(max_in_flight=10)
        lowered = held.limits
        reload(max_in_flight=20)
        raised = held.limits
        # and when it lowers max_ack_pending, the server's own limit (applied only by a restart)
        plan = reload(max_in_flight=20, max_ack_pending=5)
    # Then the bound follows max_in_flight each time, and stays with the max_ack_pending in effect
    assert (lowered, raised) == ((10, 10 * limit), (20, 20 * limit))
    assert "jetstream.consumers[0].max_ack_pending" in plan.restart and held.limits == raised
    changes = [(r.__dict__["limit_events"], r.__dict__["was_events"]) for r in caplog.records
               if r.getMessage() == "hold_bound_changed"]
    assert changes == [(10, 1000), (20, 10)]


async def test_room_for_keeps_a_prefix_within_both_bounds_and_nothing_once_overflowing() -> None:
    from nats.aio.msg import Msg

    from bridge.acks import Settler
    from bridge.metrics import BridgeMetrics
    from settings import Consumer

    def batch(*sizes: int) -> holding.Inbound:
        msgs = [Msg(None, "s", "", b"x" * n) for n in sizes]
        return holding.Inbound(msgs, [None] * len(msgs), datetime.now(UTC), sum(sizes), time.monotonic())

    held = holding.Holding("d", Settler(Consumer()), holding.HoldLimits(3, 100), 60.0, BridgeMetrics())
    assert held.room_for(batch(200)) == 1  # an empty hold takes one event whatever its size
    held.add(batch(40), "test")
    assert held.room_for(batch(30, 31, 1)) == 1  # 40 + 30 fits, + 31 would be 101 bytes
    assert held.room_for(batch(1, 1, 1)) == 2  # the count bound
    kept, over = batch(30, 30).split(1)
    assert (len(kept.msgs), kept.payload_bytes, len(over.msgs), over.payload_bytes) == (1, 30, 1, 30)
    held.overflowing = True
    assert held.room_for(batch(1)) == 0
    held.drop_front(1)
    assert not held and not held.overflowing and held.held == (0, 0)
    await held.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    yield client
    await client.close()


class QueueWatcher:
    """Polls ``{ns}:domain`` every 20 ms: the queue's message ids in order, each with when it appeared.

    Redis errors (it is down on purpose) are waited out.
    """

    def __init__(self, url: str) -> None:
        self._client = aioredis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.ids: list[int] = []
        self.delivered: list[int] = []
        self.seen_at: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> QueueWatcher:
        self._task = asyncio.get_running_loop().create_task(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._client.aclose()

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(RedisError, OSError):
                await self._read_new()
            await asyncio.sleep(0.02)

    async def _read_new(self) -> None:
        ids = await self._client.lrange(f"{NS}:domain", len(self.ids), -1)
        if not ids:
            return
        now = time.monotonic()
        for raw in await self._client.hmget(f"{NS}:domain.msgs", ids):
            assert raw is not None, "a queued id without its message"
            job = json.loads(raw)["args"][0]
            self.ids.append(job["message_id"])
            self.delivered.append(job["origin"]["delivered"])
            self.seen_at.setdefault(job["message_id"], now)


class Publisher:
    """Publishes ``created(1..)`` at :data:`RATE` until stopped; remembers when each was stored."""

    def __init__(self, nc: NATS) -> None:
        self._js = nc.jetstream()
        self.published_at: dict[int, float] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Publisher:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> int:
        """Stop publishing between two events (a cancelled publish may be stored yet unrecorded);
        the number of events published. Idempotent."""
        assert self._task is not None
        self._stop.set()
        await self._task
        return len(self.published_at)

    async def _run(self) -> None:
        began = time.monotonic()
        i = 0
        while not self._stop.is_set():
            i += 1
            await self._js.publish("fechatter.message.created", created(i))
            self.published_at[i] = time.monotonic()
            with contextlib.suppress(TimeoutError):  # the pace: RATE events per second
                await asyncio.wait_for(self._stop.wait(), max(began + i / RATE - time.monotonic(), 0))


async def consumer_info(nc: NATS) -> dict[str, Any]:
    info: dict[str, Any] = json.loads((await nc.request(f"$JS.API.CONSUMER.INFO.{STREAM}.{DURABLE}", b"",
                                                        timeout=2)).data)
    return info


def sample(bridge: Bridge, name: str, **labels: str) -> float:
    return bridge.metrics.registry.get_sample_value(f"fechatter_notify_bridge_{name}", labels) or 0.0


async def outage_while_events_flow(bridge: Bridge, nc: NATS, redis_server: RedisServer, watcher: QueueWatcher,
                                   *, down_s: float, kill: bool) -> tuple[int, float]:
    """Publish at RATE; take Redis down for ``down_s`` (kill -9 or a graceful stop) and bring it back.

    Returns how many events were published and how long Redis really was away, in seconds.
    """
    async with Publisher(nc) as publisher:
        return await _outage(bridge, redis_server, watcher, publisher, down_s=down_s, kill=kill)


async def _outage(bridge: Bridge, redis_server: RedisServer, watcher: QueueWatcher, publisher: Publisher,
                  *, down_s: float, kill: bool) -> tuple[int, float]:
    await async_wait_until(lambda: len(watcher.ids) >= 10, timeout=10, message="no events before the outage")
    began = time.monotonic()
    await asyncio.to_thread(redis_server.kill if kill else redis_server.stop)
    await async_wait_until(lambda: bridge.circuit.is_open, timeout=5, message="circuit never opened")
    await async_wait_until(lambda: sample(bridge, "events_held", consumer=DURABLE) > 0, timeout=5,
                           message="nothing held while Redis is down")
    await asyncio.sleep(max(began + down_s - time.monotonic(), 0))  # the outage itself: its length is the point
    await asyncio.to_thread(redis_server.start)
    outage = time.monotonic() - began
    newest = max(publisher.published_at)
    await async_wait_until(lambda: bool(watcher.ids) and watcher.ids[-1] > newest, timeout=10,
                           message="no event published after the outage arrived")
    total = await publisher.stop()
    await async_wait_until(lambda: len(watcher.ids) >= total, timeout=10,
                           message=lambda: f"{len(watcher.ids)} of {total} events enqueued")
    delays = {i: watcher.seen_at[i] - at for i, at in publisher.published_at.items()}
    worst = max(delays, key=lambda i: delays[i])
    print(f"redis away {outage:.2f}s, {total} events, worst delay {delays[worst]:.2f}s (event {worst}), "
          f"{sample(bridge, 'in_progress_acks_total', consumer=DURABLE):.0f} in-progress acks")
    assert delays[worst] <= outage + SLACK_S, (
        f"event {worst} arrived {delays[worst]:.2f}s after it was published; the outage lasted {outage:.2f}s")
    return total, outage


@pytest.mark.slow
async def test_a_short_redis_outage_delays_events_by_the_outage_in_their_order(
    nats_server: NatsServer, redis_server_aof: RedisServer, nc: NATS
) -> None:
    settings = bridge_settings(nats_server.url, redis_server_aof.url,
                               {"jetstream": {"consumers": [consumer(ack_wait="10s")]}})
    async with running_bridge(settings) as bridge, QueueWatcher(redis_server_aof.url) as watcher:
        # When Redis stops for 3 s while 25 events/s arrive (pull expiry 30 s)
        total, _ = await outage_while_events_flow(bridge, nc, redis_server_aof, watcher, down_s=3.0, kill=False)
        # Then each arrived at most the outage + 2 s late (checked above), every one once, oldest first,
        assert watcher.ids == list(range(1, total + 1))
        # none handed back to JetStream, none delivered twice, all acked
        assert sample(bridge, "events_naked_total", consumer=DURABLE) == 0
        assert_delivered_once(bridge, total)
        await async_wait_until(lambda: bridge_acked_all(nc, total), timeout=5)
        assert sample(bridge, "events_held", consumer=DURABLE) == 0


def assert_delivered_once(bridge: Bridge, total: int) -> None:
    """JetStream delivered each event once: a redelivered copy would be fetched again and then
    deduplicated (consumer info's ``num_redelivered`` only counts what is still unacked)."""
    assert sample(bridge, "events_fetched_total", consumer=DURABLE) == total
    assert sample(bridge, "jobs_deduplicated_total", consumer=DURABLE, job_type="NewMessage") == 0


async def bridge_acked_all(nc: NATS, seq: int) -> bool:
    info = await consumer_info(nc)
    return bool(info["ack_floor"]["stream_seq"] >= seq and info["num_ack_pending"] == 0)


@pytest.mark.slow
async def test_an_outage_longer_than_ack_wait_keeps_the_events_ours_with_in_progress_acks(
    nats_server: NatsServer, redis_server_aof: RedisServer, nc: NATS
) -> None:
    # ack_wait 2.5 s: without in-progress acks JetStream would redeliver the held events twice over
    settings = bridge_settings(nats_server.url, redis_server_aof.url,
                               {"jetstream": {"consumers": [consumer(ack_wait="2500ms")]}})
    async with running_bridge(settings) as bridge, QueueWatcher(redis_server_aof.url) as watcher:
        # When Redis is killed for 4 s
        total, outage = await outage_while_events_flow(bridge, nc, redis_server_aof, watcher, down_s=4.0, kill=True)
        assert outage > 2.5 * 1.5
        # Then nothing is lost, duplicated or reordered, and JetStream never redelivered a held event
        assert watcher.ids == list(range(1, total + 1))
        assert set(watcher.delivered) == {1}
        assert_delivered_once(bridge, total)
        await async_wait_until(lambda: bridge_acked_all(nc, total), timeout=5)
        # because in-progress acks went out for them
        assert sample(bridge, "in_progress_acks_total", consumer=DURABLE) > 0
        assert sample(bridge, "events_naked_total", consumer=DURABLE) == 0


@pytest.mark.slow
async def test_what_does_not_fit_under_the_hold_bound_is_nakd_and_arrives_after_the_held(
    nats_server: NatsServer, redis_server_aof: RedisServer, nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a hold bound of 10 events' payloads and a 2 s pull expiry
    size = len(created(10))
    monkeypatch.setattr(holding, "MAX_HELD_PAYLOAD_BYTES", 10 * size)
    redis = redis_server_aof
    settings = bridge_settings(nats_server.url, redis.url,
                               {"jetstream": {"consumers": [consumer(ack_wait="3s", expires="2s")]}})
    js = nc.jetstream()
    async with running_bridge(settings) as bridge, QueueWatcher(redis.url) as watcher:
        await js.publish("fechatter.message.created", created(1))
        await async_wait_until(lambda: watcher.ids == [1], timeout=5)
        # When 40 events arrive while Redis hangs (SIGSTOP: the first enqueue waits out its socket
        # timeout while pulls go on, so they all reach the bridge) and then dies (kill -9: the
        # script call it never ran is gone, the AOF keeps event 1)
        assert redis.pid is not None
        os.kill(redis.pid, signal.SIGSTOP)
        await asyncio.gather(*(js.publish("fechatter.message.created", created(i)) for i in range(2, 42)))

        def accounted() -> tuple[float, float] | None:
            """(held, nak'd over the bound) once every event that reached the bridge is one or the other."""
            held = sample(bridge, "events_held", consumer=DURABLE)
            over = sample(bridge, "held_events_naked_total", consumer=DURABLE, reason="overflow")
            reached = sample(bridge, "events_fetched_total", consumer=DURABLE) - 1
            return (held, over) if over > 0 and held + over == reached else None

        held, over = await async_wait_until(accounted, timeout=5, message="no overflow")
        await asyncio.to_thread(redis.kill)
        # Then at most the bound was held, the rest nak'd, and none of those came back while the pull
        # request sent before the outage was open (a shorter nak delay would redeliver into it)
        assert 1 <= held <= 10 < held + over
        puller = bridge.pull_consumers[0]
        await async_wait_until(lambda: puller.state.pending == 0, timeout=5, message="the pull request never expired")
        assert accounted() == (held, over)
        # and when Redis is back every event is enqueued once: the held ones first, in order, then the
        # nak'd ones, redelivered once (their delay waited out the pull request still open)
        await asyncio.to_thread(redis.start)
        await async_wait_until(lambda: len(watcher.ids) >= 41, timeout=10,
                               message=lambda: f"{len(watcher.ids)} of 41 enqueued")
        n = 1 + int(held)
        assert watcher.ids[:n] == list(range(1, n + 1))
        assert sorted(watcher.ids) == list(range(1, 42))
        assert watcher.delivered == [1] * n + [2] * (41 - n)
        assert await aioredis.Redis.from_url(redis.url).xlen(f"{NS}:dead-letters") == 0


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text: str = response.read().decode()
    for line in text.splitlines():
        if line.startswith(f"fechatter_notify_bridge_{name}{{") and f'consumer="{DURABLE}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.slow
async def test_sigterm_during_an_outage_naks_what_is_held_and_exits_0(
    tmp_path: Path, nats_server: NatsServer, redis_server_aof: RedisServer, nc: NATS
) -> None:
    # Given a bridge process holding 20 events through a Redis outage (ack_wait and expiry 30 s)
    config = tmp_path / "notify.yml"
    port = free_port()
    config.write_text(settings_yaml(nats_server.url, redis_server_aof.url, {
        "health": {"port": port}, "metrics": {"port": port},
        "jetstream": {"consumers": [consumer(ack_wait="30s")]}}))
    proc = BridgeProcess(config, tmp_path / "bridge.log")
    try:
        await async_wait_until(lambda: "event=bridge_started" in proc.log(), timeout=20, message=proc.log)
        await asyncio.to_thread(redis_server_aof.kill)
        js = nc.jetstream()
        for i in range(1, 21):
            await js.publish("fechatter.message.created", created(i))

        async def holding_all() -> bool:
            return await asyncio.to_thread(metric, port, "events_held") == 20

        await async_wait_until(holding_all, timeout=10, message=proc.log)
        # When it is asked to stop
        code = await asyncio.to_thread(proc.stop, signal.SIGTERM, 15)
    finally:
        if proc.proc.poll() is None:
            proc.stop(signal.SIGKILL)
    # Then it exits 0, having nak'd the 20 it held
    assert code == 0, proc.log()
    assert re.search(r"event=held_events_naked .*events=20", proc.log()), proc.log()
    assert "Traceback" not in proc.log()
    # so once Redis is back, the next bridge gets them at once, not after ack_wait or the expiry
    await asyncio.to_thread(redis_server_aof.start)
    began = time.monotonic()
    settings = bridge_settings(nats_server.url, redis_server_aof.url,
                               {"jetstream": {"consumers": [consumer(ack_wait="30s")]}})
    async with running_bridge(settings), QueueWatcher(redis_server_aof.url) as watcher:
        await async_wait_until(lambda: len(watcher.ids) >= 20, timeout=8,
                               message=lambda: f"{len(watcher.ids)} of 20 redelivered within 8 s")
        # (in any order: a redelivery the server pops while only the stopped bridge's pull request,
        # nobody's now, is waiting goes to the back of its redelivery queue)
        assert sorted(watcher.ids) == list(range(1, 21))
        assert set(watcher.delivered) == {2}
    assert time.monotonic() - began < 8
