"""Every process type as a real process against a port another process holds, and the
``provision`` command (Procfile ``release:``).

A taken port ends the start with exit code 4 and one message naming the host, the port, the
setting that chose it and where that value came from; never a second error from the shutdown.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from runtime.ports import RET_PORT_IN_USE
from settings.model import Health, Metrics
from tests.servers import NatsServer, RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
#: Nothing listens there: a process that got past its ports would hang on it, not exit.
NOWHERE = "nats://127.0.0.1:1"


@pytest.fixture
def taken() -> Iterator[int]:
    """A port held by a listening socket of this test (the "other process")."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("NOTIFY") and k not in {"NATS_URL", "REDIS_URL", "SENTRY_DSN", "PORT"}}
    return subprocess.run([sys.executable, "-m", "fechatter_notify", *args], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=timeout)


def ports_env(**ports: int) -> dict[str, str]:
    """Every endpoint on a free port on 127.0.0.1, but for the ones given (env var name -> port)."""
    env = {"NOTIFY__HEALTH__HOST": "127.0.0.1", "NOTIFY__METRICS__HOST": "127.0.0.1",
           "NOTIFY__GATEWAY__HOST": "127.0.0.1"}
    for name in ("NOTIFY__HEALTH__PORT", "NOTIFY__METRICS__PORT", "NOTIFY__HEALTH__WORKER_PORT",
                 "NOTIFY__METRICS__WORKER_PORT", "NOTIFY__GATEWAY__PORT"):
        env[name] = str(ports.get(name, free_port()))
    return env


def test_each_process_type_has_its_own_default_ports() -> None:
    bridge = {Health().port, Metrics().port}
    worker = {Health().worker_port, Metrics().worker_port}
    assert not bridge & worker


@pytest.mark.parametrize("variable", ["NOTIFY__HEALTH__PORT", "NOTIFY__METRICS__PORT"])
def test_a_bridge_whose_port_is_taken_says_so_and_exits_4(taken: int, variable: str) -> None:
    env = {**ports_env(**{variable: taken}), "NATS_URL": NOWHERE, "REDIS_URL": "redis://127.0.0.1:1"}
    done = run(["bridge"], env)
    setting = variable.removeprefix("NOTIFY__").lower().replace("__", ".")
    assert done.returncode == RET_PORT_IN_USE, done.stderr
    assert f"cannot listen on 127.0.0.1:{taken}" in done.stderr
    assert f"chosen by {setting} (env {variable})" in done.stderr
    # The start's own cause, and nothing from the shutdown of what never started.
    assert "AssertionError" not in done.stderr and "crashed" not in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("variable", ["NOTIFY__HEALTH__WORKER_PORT", "NOTIFY__METRICS__WORKER_PORT"])
def test_a_worker_whose_port_is_taken_exits_4_before_starting_workers(taken: int, variable: str,
                                                                     redis_server: RedisServer) -> None:
    env = {**ports_env(**{variable: taken}), "REDIS_URL": redis_server.url}
    done = run(["worker", "-p", "1", "-t", "1"], env)
    setting = variable.removeprefix("NOTIFY__").lower().replace("__", ".")
    assert done.returncode == RET_PORT_IN_USE, done.stderr
    assert f"cannot listen on 127.0.0.1:{taken}" in done.stderr
    assert f"chosen by {setting} (env {variable})" in done.stderr
    assert "worker_supervisor_started" not in done.stderr  # it did not run on without its endpoints


def test_a_worker_serves_health_and_metrics_on_one_port_when_they_are_equal(redis_server: RedisServer,
                                                                            tmp_path: Path) -> None:
    port = free_port()
    env = {**ports_env(NOTIFY__HEALTH__WORKER_PORT=port, NOTIFY__METRICS__WORKER_PORT=port),
           "REDIS_URL": redis_server.url}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY") and k != "REDIS_URL"}
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "fechatter_notify", "worker", "-p", "1", "-t", "1"],
                            cwd=ROOT, env={**clean, **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        from tests.servers import wait_until

        def both() -> bool:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()
            return _get(port, "/healthz") == 200 and _get(port, "/metrics") == 200

        wait_until(both, timeout=30, message="the worker's one port did not serve both paths")
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _get(port: int, path: str) -> int | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_a_gateway_on_a_taken_dollar_port_names_port_and_exits_4(taken: int) -> None:
    env = {k: v for k, v in ports_env().items() if k != "NOTIFY__GATEWAY__PORT"}
    env.update({"PORT": str(taken), "REDIS_URL": "redis://127.0.0.1:1", "NATS_URL": NOWHERE})
    done = run(["gateway"], env)
    assert done.returncode == RET_PORT_IN_USE, done.stderr
    assert f"cannot listen on 127.0.0.1:{taken}" in done.stderr
    assert "chosen by gateway.port (env PORT)" in done.stderr


def test_notify_port_wins_over_dollar_port() -> None:
    from settings import load_settings

    loaded = load_settings(text="{}", env={"PORT": "5200", "NOTIFY_PORT": "7000"})
    assert loaded.settings.gateway.port == 7000
    assert load_settings(text="{}", env={"PORT": "5200"}).settings.gateway.port == 5200


def test_provision_creates_the_stream_and_consumer_then_a_verify_bridge_check_passes(
        nats_server: NatsServer) -> None:
    done = run(["provision"], {"NATS_URL": nats_server.url})
    assert done.returncode == 0, done.stderr
    assert "event=provisioned" in done.stderr

    async def check() -> tuple[list[str], int]:
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            info = await js.consumer_info("FECHATTER_EVENTS", "notification_processor")
            stream = await js.stream_info("FECHATTER_EVENTS")
            return list(stream.config.subjects or []), int(info.config.max_deliver or 0)
        finally:
            await nc.close()

    subjects, max_deliver = asyncio.run(check())
    assert "fechatter.message.>" in subjects and max_deliver > 0
    # Run again: nothing to change, still 0 (a release step runs before every deploy).
    again = run(["provision"], {"NATS_URL": nats_server.url})
    assert again.returncode == 0, again.stderr
    assert "stream_created" not in again.stderr


def test_provision_without_nats_exits_3_with_the_reason() -> None:
    done = run(["provision", "--timeout", "1.5"], {"NATS_URL": NOWHERE})
    assert done.returncode == 3, done.stderr
    assert "fechatter-notify provision:" in done.stderr and "Traceback" not in done.stderr


def test_provision_refused_by_the_server_exits_3_at_once(nats_server: NatsServer) -> None:
    # A stream's storage cannot be changed in place: the server refuses, waiting would not help.
    first = run(["provision"], {"NATS_URL": nats_server.url, "NOTIFY__JETSTREAM__STREAMS__0__STORAGE": "memory"})
    assert first.returncode == 0, first.stderr
    done = run(["provision", "--timeout", "30"], {"NATS_URL": nats_server.url,
                                                  "NOTIFY__JETSTREAM__STREAMS__0__STORAGE": "file"})
    assert done.returncode == 3, done.stderr
    assert "storage" in done.stderr and "provision_retry" not in done.stderr


def test_config_check_warns_where_two_process_types_would_share_a_port() -> None:
    from settings import load_settings

    loaded = load_settings(text="metrics:\n  port: 9092\n", env={})
    (problem,) = [p for p in loaded.problems if p.code == "port_shared_between_processes"]
    assert problem.level == "warning" and problem.path == "metrics.port" and problem.origin == "<text>:2:3"
    assert "metrics.worker_port (worker)" in problem.message
    # One process may serve health and metrics on one port; port 0 is never a conflict.
    same = load_settings(text="health: {port: 9000, worker_port: 0}\nmetrics: {port: 9000, worker_port: 0}\n", env={})
    assert not [p for p in same.problems if p.code == "port_shared_between_processes"]
