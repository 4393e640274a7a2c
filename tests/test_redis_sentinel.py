"""Redis Sentinel: the settings that name it, every process type through it, doctor's view of it, WAIT.

The live tests run a real primary, two replicas and three sentinels on loopback (tests/sentinel.py);
the failover under load is the chaos scenario tests/chaos/test_redis_failover.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import redis
import yaml
from redis.asyncio import BlockingConnectionPool

from bridge.enqueue import Enqueuer
from bridge.errors import RedisUnavailable
from events import messages_key, queue_key
from events.inbox import inbox_key
from fechatter_notify.doctor import diagnose
from fechatter_notify.embedded import free_port
from gateway import read_frames
from gateway.hub import Announcement, Hub
from gateway.testing import SigningKey
from runtime import async_client, async_pool, describe_redis, sync_client, sync_pool
from settings import ConfigError, Settings, load_settings, redacted, sentinel_target
from tests.pipeline import PIPELINE_CONFIG, Pipeline, shutdown
from tests.sentinel import MASTER_NAME, SentinelCluster
from tests.servers import NatsServer, RedisServer, async_wait_until, wait_until
from workers import Services, WorkerMetrics, build_broker
from workers.connections import ThreadConnections

pytestmark = pytest.mark.timeout(120)


def load(text: str, env: dict[str, str] | None = None) -> Settings:
    return load_settings(text=text, env=env or {}).settings


def problems(text: str, env: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(level, code, path) of every problem; errors raise inside load_settings, so both are collected."""
    try:
        loaded = load_settings(text=text, env=env or {})
    except ConfigError as exc:
        found = exc.problems
    else:
        found = loaded.problems
    return [(p.level, p.code, p.path) for p in found]


# ------------------------------------------------------------------------------------------ settings


def test_url_and_sentinels_together_is_an_error_naming_both_keys() -> None:
    text = "redis:\n  url: redis://10.0.0.1:6379/0\n  sentinels: [10.0.0.2:26379]\n  master_name: m\n"
    with pytest.raises(ConfigError) as caught:
        load(text)
    (problem,) = [p for p in caught.value.problems if p.code == "redis_url_and_sentinels"]
    assert "redis.url" in problem.message and "redis.sentinels" in problem.message
    assert problem.origin == "<text>:3:3"
    # REDIS_URL counts as setting redis.url, and is named as the place it came from.
    with pytest.raises(ConfigError) as caught:
        load("redis:\n  sentinels: [a:1, b:2, c:3]\n  master_name: m\n", {"REDIS_URL": "redis://x:6379/0"})
    assert "env REDIS_URL" in caught.value.problems[0].message


def test_sentinels_and_master_name_need_each_other() -> None:
    assert ("error", "sentinels_without_master_name", "redis.sentinels") in problems(
        "redis:\n  sentinels: [a:1, b:2, c:3]\n")
    assert ("error", "master_name_without_sentinels", "redis.master_name") in problems("redis:\n  master_name: m\n")
    found = problems("redis:\n  sentinels: ['a:0', 'b:x', '::1']\n  master_name: m\n")
    assert [path for _, code, path in found if code == "bad_sentinel_address"] == [
        "redis.sentinels[0]", "redis.sentinels[1]", "redis.sentinels[2]"]
    assert ("warning", "few_sentinels", "redis.sentinels") in problems("redis:\n  sentinels: [a]\n  master_name: m\n")


def test_sentinel_only_keys_with_a_plain_url_are_errors() -> None:
    found = problems("redis:\n  password: secret\n  tls:\n    enabled: true\n")
    assert ("error", "sentinel_key_without_sentinels", "redis.password") in found
    assert ("error", "sentinel_key_without_sentinels", "redis.tls") in found


def test_a_file_naming_every_key_at_its_default_is_not_an_error() -> None:
    # What `config show --format json` prints, loaded back: every redis key is written, at its default.
    dumped = Settings().model_dump(mode="json")
    dumped["redis"]["url"] = "redis://127.0.0.1:6379/0"
    assert [p for p in problems(yaml.safe_dump({"redis": dumped["redis"]})) if p[0] == "error"] == []
    dumped["redis"].update(sentinels=["a:1", "b:2", "c:3"], master_name="m")
    assert [p for p in problems(yaml.safe_dump({"redis": dumped["redis"]})) if p[0] == "error"] == []


def test_replica_ack_timeout_must_end_before_the_socket_timeout() -> None:
    text = "redis:\n  min_replicas_acked: 1\n  replica_ack_timeout: 2s\n  socket_timeout: 2s\n"
    assert ("error", "replica_ack_timeout_too_long", "redis.replica_ack_timeout") in problems(text)
    assert problems(text.replace("replica_ack_timeout: 2s", "replica_ack_timeout: 500ms")) == []
    assert ("error", "greater_than_equal", "redis.min_replicas_acked") in problems(
        "redis:\n  min_replicas_acked: -1\n")


def test_the_sentinel_url_and_the_keys_name_the_same_target_and_hide_their_secrets() -> None:
    env = {"REDIS_URL": "redis+sentinel://app:pw1@10.0.0.1:26379,10.0.0.2,[fd00::3]:26380/notify/2"
                        "?sentinel_password=pw2"}
    by_url = load("", env)
    by_keys = load(yaml.safe_dump({"redis": {
        "sentinels": ["10.0.0.1:26379", "10.0.0.2", "[fd00::3]:26380"], "master_name": "notify", "db": 2,
        "username": "app", "password": "pw1", "sentinel_password": "pw2"}}))
    assert sentinel_target(by_url.redis) == sentinel_target(by_keys.redis)
    target = sentinel_target(by_url.redis)
    assert target is not None and target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("fd00::3", 26380))
    for settings in (by_url, by_keys):
        shown = json.dumps(redacted(settings.model_dump()))
        assert "pw1" not in shown and "pw2" not in shown
        assert "pw" not in describe_redis(settings.redis)
    assert describe_redis(by_keys.redis) == \
        "master 'notify' via sentinels 10.0.0.1:26379,10.0.0.2:26379,[fd00::3]:26380"
    assert ("error", "bad_redis_url", "redis.url") in problems("", {"REDIS_URL": "redis+sentinel://h:26379/"})
    assert sentinel_target(load("").redis) is None  # the default: one server by URL


def test_the_clients_carry_the_primarys_and_the_sentinels_credentials_and_tls() -> None:
    settings = load(yaml.safe_dump({"redis": {
        "sentinels": ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"], "master_name": "notify", "db": 3,
        "username": "app", "password": "pw1", "sentinel_username": "watch", "sentinel_password": "pw2",
        "tls": {"enabled": True, "ca_file": "/ca.pem"}, "socket_timeout": "2s"}}))
    pool = sync_pool(settings.redis, health_check_interval=10)
    primary = pool.connection_kwargs
    assert (primary["db"], primary["username"], primary["password"], primary["ssl_ca_certs"]) == (3, "app", "pw1",
                                                                                                  "/ca.pem")
    assert pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    assert (primary["socket_timeout"], primary["health_check_interval"]) == (2.0, 10)
    sentinel = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs  # type: ignore[attr-defined]
    assert (sentinel["username"], sentinel["password"], sentinel["socket_timeout"]) == ("watch", "pw2", 2.0)
    assert sentinel["retry"].get_retries() == 0  # a dead sentinel costs one refused connect, not ten
    aio = async_pool(settings.redis, blocking=True, max_connections=7)
    assert isinstance(aio, BlockingConnectionPool) and aio.max_connections == 7
    assert aio.connection_kwargs["password"] == "pw1"


# ------------------------------------------------------------------------------------------ live


@pytest.fixture(scope="module")
def cluster() -> Iterator[SentinelCluster]:
    with SentinelCluster(replicas=2, sentinels=3) as running:
        yield running


def sentinel_settings(nats_url: str, cluster: SentinelCluster, **redis: Any) -> Settings:
    """Test settings naming the cluster by its keys (the bridge test settings name it by URL)."""
    text = yaml.safe_dump({"nats": {"servers": [nats_url]},
                           "redis": {**cluster.redis_settings(), "namespace": "sentinel-test",
                                     "socket_timeout": "1s", "socket_connect_timeout": "1s", **redis}})
    return load(text)


async def test_doctor_reports_primary_replicas_sentinels_persistence_and_eviction(
        cluster: SentinelCluster, nats_server: NatsServer) -> None:
    findings = {f.code: f for f in await diagnose(sentinel_settings(nats_server.url, cluster))}
    assert "2 replica(s) online" in findings["redis_replicas"].message
    primary = cluster.primary()
    assert findings["sentinels_agree"].message.startswith(f"3 of 3 sentinel(s) name 127.0.0.1:{primary.port} ")
    assert findings["redis_not_persistent"].level == "warning"  # the harness runs without AOF or RDB
    assert findings["redis_server"].origin.startswith(f"master {MASTER_NAME!r} via sentinels ")
    assert not [f for f in findings.values() if f.level == "error"], findings
    # More replicas asked for than are online, and an eviction policy that could drop jobs: errors.
    client = cluster.client()
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        again = {f.code: f for f in await diagnose(sentinel_settings(nats_server.url, cluster, min_replicas_acked=3,
                                                                     replica_ack_timeout="200ms"))}
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.close()
    assert again["too_few_replicas"].level == "error" and "2 replica(s) are online" in again["too_few_replicas"].message
    assert again["redis_evicts"].level == "error" and "allkeys-lru" in again["redis_evicts"].message


async def test_enqueue_and_inbox_writes_wait_for_replicas(cluster: SentinelCluster, nats_server: NatsServer) -> None:
    enough = sentinel_settings(nats_server.url, cluster, min_replicas_acked=2, replica_ack_timeout="300ms")
    too_many = sentinel_settings(nats_server.url, cluster, min_replicas_acked=3, replica_ack_timeout="300ms")
    for settings, ok in ((enough, True), (too_many, False)):
        enqueuer = Enqueuer.for_settings(settings)
        batch = enqueuer.new_batch()
        batch.add_job(f"{enqueuer.namespace}:bridge:dedupe:S:{int(ok)}", batch.queue_index("domain"), f"m{int(ok)}",
                      b'{"x": 1}')
        try:
            if ok:
                primary = cluster.primary().client()
                try:
                    primary.script_flush()  # as after a restart or failover: the pipeline meets NOSCRIPT
                finally:
                    primary.close()
                assert await enqueuer.run(batch) == b"1"
                await enqueuer.ping()
            else:
                with pytest.raises(RedisUnavailable, match="WAIT: 2 of 3 replica"):
                    await enqueuer.run(batch)
                with pytest.raises(RedisUnavailable, match="WAIT: 2 of 3 replica"):
                    await enqueuer.ping()
        finally:
            await enqueuer.close()
        services = Services.open(settings)
        try:
            def deliver(services: Services = services, ok: bool = ok) -> Any:
                return services.delivery.deliver({"type": "new_message", "id": 1}, key=f"k{int(ok)}", ttl_s=60,
                                                 users=[5])
            if ok:
                assert list(deliver().entries) == [5]
            else:
                with pytest.raises(redis.ConnectionError, match="WAIT: 2 of 3 replica"):
                    deliver()
        finally:
            services.close()
    # Every write above reached both replicas (WAIT said so): read them there.
    for replica in cluster.replicas():
        client = replica.client()
        try:
            assert client.xlen(inbox_key("sentinel-test", 5)) == 2
        finally:
            client.close()


class _Busy(threading.Thread):
    """One thread calling Redis on its own connection every 20 ms, as a busy worker thread does."""

    def __init__(self, conns: ThreadConnections) -> None:
        super().__init__(daemon=True)
        self.conns = conns
        self.stop = threading.Event()
        self.ok_at = 0.0
        self.error: Exception | None = None

    def run(self) -> None:
        while not self.stop.wait(0.02):
            try:
                self.conns.call("SET", "busy", 1)
                self.ok_at = time.monotonic()
            except redis.RedisError as exc:
                self.error = exc


class _Listener:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.resyncs = 0

    def deliver(self, announcement: Announcement) -> bool:
        self.data.append(announcement.data)
        return False

    def flush(self) -> None:
        pass

    def resync(self) -> None:
        self.resyncs += 1


async def test_clients_and_pubsub_follow_a_failover_without_a_restart(nats_server: NatsServer) -> None:
    with SentinelCluster(replicas=2, sentinels=3) as own:
        settings = sentinel_settings(nats_server.url, own)
        sync = sync_client(settings.redis, socket_timeout=0.5)
        aio = async_client(settings.redis, socket_timeout=0.5)
        conns = ThreadConnections(sync)  # the workers' per-thread connections, kept busy below
        hub = Hub(settings.redis, "sentinel-test", connect_timeout=0.5, ping_interval=0.5)
        listener = _Listener()
        await hub.start()
        try:
            await hub.attach(7, listener, confirm_within=5)
            assert sync.set("before", 1) and await aio.get("before") == b"1"
            busy = _Busy(conns)
            busy.start()
            await async_wait_until(lambda: busy.ok_at, timeout=5)
            old = own.kill_primary()
            new = await asyncio.to_thread(own.wait_failover, old)
            promoted_at = time.monotonic()
            # A connection in steady use (no idle pause) reconnects to the new primary, not to the old
            # address redis-py's send would reconnect to.
            await async_wait_until(lambda: busy.ok_at > promoted_at, timeout=15,
                                   message=lambda: f"the busy thread's connection: {busy.error!r}")
            # Each client reconnects to the primary the sentinels now name: no restart, no new client.
            await async_wait_until(lambda: asyncio.to_thread(sync.set, "after", 2), timeout=15,
                                   ignore=(redis.RedisError,))
            assert await aio.get("after") == b"2"
            # The hub resubscribed there: the stream resyncs, and an announcement on the new primary arrives.
            await async_wait_until(lambda: listener.resyncs >= 1 and hub.connected, timeout=15)
            publisher = new.client()
            try:
                await async_wait_until(lambda: publisher.publish(hub.channel(7).decode(), b"1-0\n{}") and
                                       listener.data, timeout=10, interval=0.2)
            finally:
                publisher.close()
        finally:
            busy.stop.set()
            await hub.stop()
            conns.close()
            await aio.aclose()
            sync.close()
            sync.connection_pool.disconnect()


# ------------------------------------------------------------------------------------------ processes


C_MESSAGE = {"version": "V1", "kind": "Created",
             "msg": {"id": 77, "chat_id": 42, "sender_id": 7, "content": "via sentinel", "files": [],
                     "created_at": "2025-06-27T02:45:46.782538Z"},
             "members": [7, 9], "occurred_at": "2025-06-27T02:45:46.790112345Z"}


@pytest.fixture
def sentinel_pipeline(nats_server: NatsServer, cluster: SentinelCluster, tmp_path: Path) -> Iterator[Pipeline]:
    """bridge, worker and gateway as processes, with ``REDIS_URL`` the cluster's redis+sentinel:// URL."""
    key, port = SigningKey.generate(), free_port()
    (tmp_path / "notify.yml").write_text(PIPELINE_CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY", "NATS_URL", "REDIS_URL"))}
    env.update({"NATS_URL": nats_server.url, "REDIS_URL": cluster.url, "NOTIFY_PORT": str(port),
                "NOTIFY__REDIS__NAMESPACE": "sentinel-e2e", "NOTIFY__REDIS__MIN_REPLICAS_ACKED": "1",
                "NOTIFY__REDIS__REPLICA_ACK_TIMEOUT": "500ms",
                "NOTIFY__GATEWAY__JWT__PUBLIC_KEY": key.public_pem, "PYTHONUNBUFFERED": "1"})
    env.pop("DATABASE_URL", None)
    env.pop("SENTRY_DSN", None)
    pipeline = Pipeline(nats_server, cluster.primary(), tmp_path, f"http://127.0.0.1:{port}", key, env)
    try:
        for name in ("bridge", "worker", "gateway"):
            pipeline.start(name)
        pipeline.wait_ready()
        yield pipeline
    finally:
        for name in pipeline.processes:
            print(f"--- {name} log ---\n{pipeline.log_tail(name, 60)}")
        codes = shutdown(pipeline)
        assert codes == {"bridge": 0, "worker": 0, "gateway": 0}, codes


async def _first_message(session: aiohttp.ClientSession, pipeline: Pipeline, user: int,
                         seen: list[dict[str, Any]]) -> None:
    async with session.get(f"{pipeline.gateway_url}/events", params={"access_token": pipeline.token(user)}) as resp:
        assert resp.status == 200, await resp.text()
        async for _, frame in read_frames(resp.content):
            seen.append(frame)


async def test_bridge_worker_and_gateway_processes_through_sentinel(sentinel_pipeline: Pipeline) -> None:
    pipeline = sentinel_pipeline
    seen: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session:
        reader = asyncio.create_task(_first_message(session, pipeline, 9, seen))
        try:
            await async_wait_until(lambda: any(f.get("type") == "connection_confirmed" for f in seen), timeout=10)
            nc = await nats.connect(pipeline.nats.url)
            try:
                await nc.publish("fechatter.message.created", json.dumps(C_MESSAGE).encode())
                await nc.flush()
            finally:
                await nc.close()
            # The bridge enqueued (and WAITed), the worker delivered (woken through the wake channel), the
            # gateway announced: all through the primary the sentinels name.
            await async_wait_until(lambda: any(f.get("type") == "new_message" for f in seen), timeout=20)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    (frame,) = [f for f in seen if f.get("type") == "new_message"]
    assert (frame["id"], frame["content"]) == (77, "via sentinel")
    primary = pipeline.redis.client()
    try:
        assert primary.xlen(inbox_key("sentinel-e2e", 9)) == 1
    finally:
        primary.close()


def test_after_a_lost_connection_the_jobs_left_under_the_old_broker_id_come_back(redis_server: RedisServer) -> None:
    # A failover to a replica that never got this process's acks leaves the jobs it had fetched in its
    # ack set; the broker continues under a new id, so maintenance requeues them once the old one's
    # heartbeat is older than the timeout.
    settings = load(yaml.safe_dump({"redis": {"url": redis_server.url, "namespace": "rotate"}}))
    broker = build_broker(settings, WorkerMetrics(), wake=False, heartbeat_timeout_ms=300)
    client = redis_server.client()
    try:
        old = broker.broker_id
        broker.maintain("domain")  # a heartbeat under the old id
        client.hset(messages_key("rotate", "domain"), "job-1", "{}")
        client.sadd(f"rotate:__acks__.{old}.domain", "job-1")  # fetched, its ack lost with the old primary
        broker._id_since = 0.0  # the first loss may come at once in this test
        broker.connection_lost()
        assert broker.broker_id != old
        broker.connection_lost()  # the other consumers' report of the same loss: one new id is enough
        new = broker.broker_id
        assert new != old
        def requeued() -> list[bytes]:
            broker.maintain("domain")  # what Recovery runs every few seconds
            return list(client.lrange(queue_key("rotate", "domain"), 0, -1))

        wait_until(requeued, timeout=5, interval=0.1, message="the old id's job was not requeued")
        assert client.lrange(queue_key("rotate", "domain"), 0, -1) == [b"job-1"]
        assert broker.broker_id == new
    finally:
        client.close()
        broker.close()
