"""The bridge as a real process (``python -m fechatter_notify bridge``): refusal, SIGTERM, kill -9."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import redis

from bridge.testing import settings_yaml
from tests.bridge_proc import BridgeProcess, created
from tests.servers import NatsServer, RedisServer, async_wait_until, free_port

NS = "test-notify"
STREAM = "FECHATTER_EVENTS"
DURABLE = "notification_processor"


@pytest.fixture
def config_file(tmp_path: Path, nats_server: NatsServer, redis_server_aof: RedisServer) -> Path:
    path = tmp_path / "notify.yml"
    port = free_port()
    path.write_text(settings_yaml(nats_server.url, redis_server_aof.url, {
        "health": {"port": port}, "metrics": {"port": port},
        "jetstream": {"consumers": [{"durable": DURABLE, "stream": STREAM, "ack_wait": "3s", "idle_heartbeat": "1s",
                                     "expires": "2s", "batch": 50, "max_in_flight": 200}]},
    }))
    return path


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[BridgeProcess]]:
    started: list[BridgeProcess] = []
    yield started
    for proc in started:
        if proc.proc.poll() is None:
            proc.stop(signal.SIGKILL)


def queued_ids(client: redis.Redis) -> list[int]:
    ids = client.lrange(f"{NS}:domain", 0, -1)
    data = client.hmget(f"{NS}:domain.msgs", ids) if ids else []
    return [json.loads(d)["args"][0]["message_id"] for d in data if d is not None]


async def publish(url: str, ids: range) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for i in ids:
        await js.publish("fechatter.message.created", created(i))
    await nc.close()


async def consumer_info(url: str) -> dict[str, Any]:
    nc = await nats.connect(url)
    try:
        msg = await nc.request(f"$JS.API.CONSUMER.INFO.{STREAM}.{DURABLE}", b"", timeout=2)
        info: dict[str, Any] = json.loads(msg.data)
        return info
    finally:
        await nc.close()


def test_verify_with_the_stream_missing_exits_with_a_clear_refusal(tmp_path: Path, nats_server: NatsServer,
                                                                   redis_server: RedisServer,
                                                                   processes: list[BridgeProcess]) -> None:
    path = tmp_path / "notify.yml"
    path.write_text(settings_yaml(nats_server.url, redis_server.url, {
        "jetstream": {"provision": "verify"}, "health": {"port": free_port()}, "metrics": {"port": free_port()}}))
    proc = BridgeProcess(path, tmp_path / "bridge.log")
    processes.append(proc)
    assert proc.stop(sig=0, timeout=20) == 3
    assert f"stream {STREAM} does not exist" in proc.log()
    assert "bridge_refused_to_start" in proc.log()


@pytest.mark.slow
async def test_sigterm_stops_gracefully_with_exit_0_and_nothing_is_lost(
    tmp_path: Path, config_file: Path, nats_server: NatsServer, redis_server_aof: RedisServer,
    processes: list[BridgeProcess],
) -> None:
    client = redis_server_aof.client()
    proc = BridgeProcess(config_file, tmp_path / "bridge.log")
    processes.append(proc)
    await async_wait_until(lambda: ready(nats_server.url), timeout=20, message=proc.log)
    await publish(nats_server.url, range(1, 101))
    await async_wait_until(lambda: len(queued_ids(client)) >= 100, timeout=20, message=proc.log)
    # When SIGTERM arrives while events keep coming
    publishing = asyncio.get_running_loop().create_task(publish(nats_server.url, range(101, 1001)))
    await async_wait_until(lambda: len(queued_ids(client)) > 150, timeout=20)
    code = await asyncio.to_thread(proc.stop, signal.SIGTERM, 15)
    await publishing
    # Then it exits 0 within the bound, logging its stop
    assert code == 0, proc.log()
    assert "bridge_stopped" in proc.log()
    # and a second bridge delivers the rest: all 1000 exactly once
    second = BridgeProcess(config_file, tmp_path / "bridge2.log")
    processes.append(second)
    await async_wait_until(lambda: sorted(queued_ids(client)) == list(range(1, 1001)), timeout=30,
                           message=lambda: f"{len(queued_ids(client))} jobs, {len(set(queued_ids(client)))} distinct")
    assert second.stop() == 0


async def test_sigterm_after_an_expired_pull_for_give_ups_stops_at_once_without_an_error(
    tmp_path: Path, config_file: Path, nats_server: NatsServer, redis_server: RedisServer,
    processes: list[BridgeProcess],
) -> None:
    # Given a bridge whose pull for give-ups (bridge/advisories.py) expired empty (5 s) and whose next pull
    # has been waiting for a while: 9 s after the first (where the hang below was seen; stopped within a
    # second of a pull, it was not)
    watcher = await nats.connect(nats_server.url)
    pulls: list[float] = []

    async def seen(msg: Any) -> None:
        pulls.append(time.monotonic())

    await watcher.subscribe("$JS.API.CONSUMER.MSG.NEXT.FECHATTER_NOTIFY_ADVISORIES.fechatter_notify_advisories",
                            cb=seen)
    proc = BridgeProcess(config_file, tmp_path / "bridge.log")
    processes.append(proc)
    try:
        await async_wait_until(lambda: len(pulls) >= 2 and time.monotonic() - pulls[0] >= 9.0, timeout=30,
                               interval=0.05, message=proc.log)
    finally:
        await watcher.close()
    # When it is told to stop
    began = time.monotonic()
    code = await asyncio.to_thread(proc.stop, signal.SIGTERM, 15)
    took = time.monotonic() - began
    # Then it exits 0 at once: its pull subscription held the connection's drain for the whole 10 s
    # stop timeout (and the drain's cancelled gather was logged as an error)
    assert code == 0 and took < 5, f"exit {code} after {took:.1f} s\n{proc.log()}"
    assert "level=error" not in proc.log(), proc.log()


@pytest.mark.slow
async def test_killed_mid_batch_and_restarted_nothing_is_lost_or_duplicated(
    tmp_path: Path, config_file: Path, nats_server: NatsServer, redis_server_aof: RedisServer,
    processes: list[BridgeProcess],
) -> None:
    client = redis_server_aof.client()
    proc = BridgeProcess(config_file, tmp_path / "bridge.log")
    processes.append(proc)
    await async_wait_until(lambda: ready(nats_server.url), timeout=20, message=proc.log)
    publishing = asyncio.get_running_loop().create_task(publish(nats_server.url, range(1, 3001)))
    # When the bridge is SIGKILLed while it works
    await async_wait_until(lambda: len(queued_ids(client)) >= 300, timeout=20, interval=0.002, message=proc.log)
    assert proc.stop(signal.SIGKILL) == -signal.SIGKILL
    await publishing
    done_before = len(queued_ids(client))
    assert done_before < 3000, "the kill came too late"
    # Then a restarted bridge delivers everything exactly once (enqueued-but-unacked ones are deduplicated)
    second = BridgeProcess(config_file, tmp_path / "bridge2.log")
    processes.append(second)
    await async_wait_until(lambda: len(queued_ids(client)) >= 3000, timeout=40, message=second.log)
    await async_wait_until(lambda: _all_acked(nats_server.url, 3000), timeout=20)
    ids = queued_ids(client)
    assert sorted(ids) == list(range(1, 3001)), f"{len(ids)} jobs, {len(set(ids))} distinct"
    assert second.stop() == 0


async def ready(url: str) -> bool:
    """The bridge provisioned its durable (it pulls from then on)."""
    try:
        return "error" not in await consumer_info(url)
    except (nats.errors.Error, OSError):
        return False


async def _all_acked(url: str, seq: int) -> bool:
    info = await consumer_info(url)
    return bool("error" not in info and info["ack_floor"]["stream_seq"] >= seq and info["num_ack_pending"] == 0)


async def test_sigterm_during_a_nats_outage_is_a_clean_stop(tmp_path: Path, config_file: Path, nats_server: NatsServer,
                                                            processes: list[BridgeProcess]) -> None:
    # Given a running bridge whose NATS server has gone away (nats-py is reconnecting)
    proc = BridgeProcess(config_file, tmp_path / "bridge.log")
    processes.append(proc)
    await async_wait_until(lambda: "event=bridge_started" in proc.log(), timeout=20, message=proc.log)
    nats_server.kill()
    await async_wait_until(lambda: "event=nats_disconnected" in proc.log(), timeout=20, message=proc.log)
    await async_wait_until(lambda: "ConnectionRefusedError" in proc.log(), timeout=20, message=proc.log)
    # When it is asked to stop, then it stops cleanly: exit 0, not "bridge crashed"
    code = await asyncio.to_thread(proc.stop, signal.SIGTERM, 15)
    assert code == 0, proc.log()
    assert "crashed" not in proc.log() and "Traceback" not in proc.log()
    assert "event=bridge_stopped" in proc.log()
    # and its log names the server as host:port, never a ParseResult(...)
    assert "ParseResult" not in proc.log()


async def test_sigterm_while_nats_never_answered_is_a_clean_stop(tmp_path: Path, redis_server: RedisServer,
                                                                 processes: list[BridgeProcess]) -> None:
    # nats-py's own connect retries forever (max_reconnects -1) and never sees the stop request.
    path = tmp_path / "notify.yml"
    path.write_text(settings_yaml("nats://127.0.0.1:1", redis_server.url))
    proc = BridgeProcess(path, tmp_path / "bridge.log")
    processes.append(proc)
    await async_wait_until(lambda: "ConnectionRefusedError" in proc.log(), timeout=20, message=proc.log)
    code = await asyncio.to_thread(proc.stop, signal.SIGTERM, 15)
    assert code == 0, proc.log()
    assert "event=bridge_stopped_while_starting" in proc.log() and "Traceback" not in proc.log()
