"""``fechatter-notify top`` against the live system: bridge, worker and gateway as real processes
(tests/pipeline.py) register themselves in Redis; the snapshot's figures are checked against what
the test published, and every registration is gone after the processes stop cleanly.

One pipeline serves the whole module's test (starting one costs seconds of the suite's budget).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import redis.asyncio as aioredis
from rich.console import Console

from fechatter_notify.top import render
from gateway import read_frames
from runtime import Snapshot, collect_snapshot
from runtime.fleet import parse_metrics, read_registrations
from tests.pipeline import Pipeline, start_pipeline
from tests.servers import NatsServer, RedisServer, async_wait_until

NS = "fechatter-notify"
MESSAGES = 20
#: Chat 42's members; 7 sends every message, so 9 and 11 each get each one.
MEMBERS = [7, 9, 11]

pytestmark = pytest.mark.timeout(150)


def _created(message_id: int) -> bytes:
    """Fechatter's ``Created`` dialect of message ``message_id`` in chat 42 (JetStream)."""
    return json.dumps({"version": "V1", "kind": "Created",
                       "msg": {"id": message_id, "chat_id": 42, "sender_id": 7, "content": f"m{message_id}",
                               "files": [], "created_at": "2025-06-27T02:45:46.782538Z",
                               "idempotency_key": f"0190b5e2-7c3a-7d82-9206-{message_id:012d}"},
                       "members": MEMBERS, "occurred_at": "2025-06-27T02:45:46.790112345Z"}).encode()


def stop_all(pipeline: Pipeline) -> dict[str, int]:
    """SIGTERM every process of ``pipeline`` at once (each drains on its own: one after the other cost
    seconds of the suite's budget); returns their exit codes, as ``tests.pipeline.shutdown`` does."""
    names = list(pipeline.processes)
    with ThreadPoolExecutor(max_workers=len(names) or 1) as pool:
        codes = list(pool.map(pipeline.stop, names))
    return dict(zip(names, codes, strict=True))


def _top_json(pipeline: Pipeline) -> dict[str, Any]:
    """``fechatter-notify top --once --format json``, run as an operator would."""
    done = subprocess.run([sys.executable, "-m", "fechatter_notify", "--config", str(pipeline.workdir / "notify.yml"),
                           "top", "--once", "--format", "json", "--interval", "0.3"],
                          env=pipeline.env, capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def _by_role(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    roles = [p["role"] for p in data["processes"]]
    assert sorted(roles) == ["bridge", "gateway", "worker"], roles
    return {p["role"]: p for p in data["processes"]}


async def _scrape(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        samples = parse_metrics(await resp.text())
    sums: dict[str, float] = {}
    for name, labels, value in samples:
        key = name + "".join(f"{{{k}={v}}}" for k, v in sorted(labels.items()))
        sums[key] = value
    return sums


async def _quiet(client: aioredis.Redis, pipeline: Pipeline) -> bool:
    """JetStream has nothing pending or unacked, dramatiq's queues are empty, and no job is running."""
    nc = await nats.connect(pipeline.nats.url)
    try:
        info = await nc.jetstream().consumer_info("FECHATTER_EVENTS", "notification_processor")
    finally:
        await nc.close()
    if info.num_pending or info.num_ack_pending:
        return False
    snapshot = await collect_snapshot(client, NS)
    return all(q["ready"] == 0 and q["delayed"] == 0 for q in snapshot.queues.values()) and \
        sum(await asyncio.gather(*(client.hlen(f"{NS}:{q}.msgs") for q in ("realtime", "domain")))) == 0


async def test_top_shows_the_live_system_with_the_figures_published(
        nats_server: NatsServer, redis_server: RedisServer, tmp_path: Path) -> None:
    pipeline = start_pipeline(nats_server, redis_server, tmp_path)
    client = aioredis.Redis.from_url(redis_server.url)
    session = aiohttp.ClientSession()
    reader: asyncio.Task[None] | None = None
    try:
        pipeline.wait_ready()
        # Found without configuration: each process registered itself (the worker once its endpoint is up).
        records = await async_wait_until(lambda: _three(client), timeout=20, message="processes not registered")
        pids = {r.role: r.pid for r in records}
        assert pids == {name: proc.pid for name, proc in pipeline.processes.items()}

        # User 9 streams; a resume id that is not one asks for a resync (counted with its reason).
        frames: list[dict[str, Any]] = []
        resp = await session.get(f"{pipeline.gateway_url}/events", params={"access_token": pipeline.token(9)},
                                 headers={"Last-Event-ID": "not-an-id"})
        assert resp.status == 200
        reader = asyncio.create_task(_collect(resp, frames))
        await async_wait_until(lambda: any(f["type"] == "connection_confirmed" for f in frames), timeout=10)
        bridge_url = next(r.metrics_url for r in records if r.role == "bridge")
        assert bridge_url is not None
        # The gateway announced user 9 online on core NATS: wait until the bridge took it and all is quiet.
        await async_wait_until(lambda: _core_fetched(bridge_url), timeout=20, message="presence not bridged")
        await async_wait_until(lambda: _quiet(client, pipeline), timeout=30, message="not quiet before publishing")
        before = await collect_snapshot(client, NS)

        nc = await nats.connect(pipeline.nats.url)
        try:
            js = nc.jetstream()
            for message_id in range(1000, 1000 + MESSAGES):
                await js.publish("fechatter.message.created", _created(message_id))
        finally:
            await nc.close()
        await async_wait_until(lambda: sum(f["type"] == "new_message" for f in frames) == MESSAGES, timeout=30,
                               message="user 9 did not get every message")
        await async_wait_until(lambda: _quiet(client, pipeline), timeout=30, message="pipeline did not drain")
        after = await collect_snapshot(client, NS, previous=before)
        after_cli = _top_json(pipeline)

        _check_deltas(before.as_dict(), after.as_dict())
        _check_rates(after)
        # The command prints the same figures (nothing moved since: the system is quiet).
        for role, process in _by_role(after_cli).items():
            assert process["totals"] == _by_role(after.as_dict())[role]["totals"], role
        # The CLI's snapshot is a live one: every process answers, lag and queues are empty now.
        roles = _by_role(after_cli)
        assert all(p["up"] for p in roles.values()), after_cli
        assert after_cli["lag"]["notification_processor"]["pending"] == 0
        assert after_cli["queues"]["domain"] == {"ready": 0, "delayed": 0, "dead": 0}
        assert after_cli["open_streams"] == 1 and roles["gateway"]["gauges"]["open_streams"] == 1
        assert roles["bridge"]["circuits"]["circuit_open"] == 0
        assert roles["gateway"]["totals"]["resyncs"] == 1
        gateway = await _scrape(roles["gateway"]["metrics_url"])
        assert gateway["fechatter_notify_gateway_resyncs_total{reason=invalid_id}"] == 1
        _check_view(after, pids)
    finally:
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        await session.close()
        for name in pipeline.processes:  # shown by pytest when the test fails
            print(f"--- {name} log ---\n{pipeline.log_tail(name, 60)}")
        codes = stop_all(pipeline)
    try:
        assert codes == {"bridge": 0, "worker": 0, "gateway": 0}, codes
        # A clean stop removes each record at once (no waiting for the TTL).
        assert await read_registrations(client, NS) == []
    finally:
        await client.aclose()


async def _three(client: aioredis.Redis) -> list[Any]:
    records = await read_registrations(client, NS)
    return records if len(records) == 3 and all(r.metrics_url for r in records) else []


async def _collect(resp: aiohttp.ClientResponse, frames: list[dict[str, Any]]) -> None:
    async for _, frame in read_frames(resp.content):
        frames.append(frame)


async def _core_fetched(bridge_url: str) -> bool:
    return (await _scrape(bridge_url)).get("fechatter_notify_bridge_events_fetched_total{consumer=core}", 0) >= 1


def _check_deltas(before: dict[str, Any], after: dict[str, Any]) -> None:
    """What the test published, as two snapshots (``Snapshot.as_dict``, what ``top`` prints) count it."""
    b, a = _by_role(before), _by_role(after)

    def delta(role: str, figure: str) -> float:
        return float(a[role]["totals"].get(figure, 0) - b[role]["totals"].get(figure, 0))

    recipients = len(MEMBERS) - 1
    assert {f: delta("bridge", f) for f in ("fetched", "enqueued", "acked", "naked", "dead_lettered",
                                             "redelivered")} == {
        "fetched": MESSAGES, "enqueued": MESSAGES, "acked": MESSAGES, "naked": 0, "dead_lettered": 0,
        "redelivered": 0}
    assert delta("worker", "jobs_done") == MESSAGES and delta("worker", "jobs_failed") == 0
    assert delta("worker", "notifications_delivered") == MESSAGES * recipients
    assert delta("gateway", "frames_sent") == MESSAGES  # user 9's one stream


def _check_view(snapshot: Snapshot, pids: dict[str, int]) -> None:
    """The terminal view of the same snapshot: a table per role with each process, lag and queues."""
    console = Console(record=True, width=200)
    console.print(render(snapshot))
    text = console.export_text()
    assert "bridges 1  workers 1  gateways 1" in text
    for role, pid in pids.items():
        assert f"{role}s" in text and f":{pid}" in text
    assert "notification_processor" in text and "domain" in text and "circuit closed" in text


def _check_rates(after: Snapshot) -> None:
    """Rates over the interval times the interval are what happened in it; latency counts its jobs."""
    assert after.interval_s is not None and after.interval_s > 0
    rates = after.rates()
    assert rates["acked"] * after.interval_s == pytest.approx(MESSAGES)
    assert rates["notifications_delivered"] * after.interval_s == pytest.approx(MESSAGES * (len(MEMBERS) - 1))
    assert rates["frames_sent"] * after.interval_s == pytest.approx(MESSAGES)
    worker = next(p for p in after.processes if p.record.role == "worker")
    delivery = worker.latency["delivery"]
    assert delivery["count"] == MESSAGES  # one enqueue-to-delivery time per job
    assert delivery["p99"] is not None and 0 < delivery["p99"] < 10


def test_top_says_which_redis_did_not_answer(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    from fechatter_notify.cli import main

    monkeypatch.chdir(tmp_path)  # no notify.yml of the repository's
    monkeypatch.setenv("REDIS_URL", "redis://:secret@127.0.0.1:1/0")  # nothing listens on port 1
    assert main(["top", "--once", "--format", "json"]) == 2
    err = capsys.readouterr().err
    assert "fechatter-notify top: Redis at redis://" in err and "did not answer" in err
    assert "secret" not in err
