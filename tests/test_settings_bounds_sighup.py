"""A hostile notify.yml appended to a running process's file, then SIGHUP: refused, and nothing changes.

For each kind of process (bridge, gateway, worker supervisor), against real nats-server and
redis-server: every attack of :data:`tests.test_settings_bounds.ATTACKS` is appended to the
running file and SIGHUP sent. The process must log ``config_reload_refused`` with the
problem's code, keep answering ``/healthz`` promptly, not grow, and still stop cleanly
(exit 0) on a SIGTERM sent right after one more bad reload. Before the bounds, the alias bomb
made a gateway stop answering, grow past 1 GB and ignore SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bridge.testing import settings_yaml as bridge_yaml
from gateway.testing import UNREACHABLE_NATS
from tests.servers import NatsServer, RedisServer, free_port, wait_until
from tests.test_settings_bounds import alias_bomb, many_keys
from tests.test_workers_support import make_settings
from tests.test_workers_support import settings_yaml as worker_yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: A healthy process answers /healthz well within this, reload or not.
PROMPT_S = 1.0
#: (name, appended to the running file, the problem code logged). Every file below has a redis section.
ATTACKS: list[tuple[str, bytes, str]] = [
    ("alias bomb", alias_bomb().encode(), "alias_expansion"),
    ("1.5 million keys", many_keys(1_500_000).encode(), "file_too_large"),
    ("20,000 keys", many_keys(20_000).encode(), "too_many_nodes"),
    ("non-UTF-8 bytes", b"sentry:\n  environment: caf\xe9\n", "not_utf8"),
    ("duplicate keys", b"redis:\n  namespace: other\n", "duplicate_key"),
]
#: Growth of the resident set over all the attacks that counts as "blew up".
MAX_GROWTH_BYTES = 64 * 1024 * 1024


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def healthz_ms(url: str) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
    return time.monotonic() - started


def answers(url: str) -> bool:
    try:
        healthz_ms(url)
    except OSError:
        return False
    return True


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NOTIFY") and k not in ("REDIS_URL", "NATS_URL", "DATABASE_URL", "SENTRY_DSN", "PORT")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def start(command: str, config: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "fechatter_notify", "--config", str(config), command, *extra],
                                cwd=ROOT, env=child_env(), stdout=out, stderr=subprocess.STDOUT)


def attack_and_stop(proc: subprocess.Popen[bytes], config: Path, log: Path, healthz: str) -> None:
    """Every attack, SIGHUP after each; then a bomb, SIGHUP and SIGTERM at once: exit 0."""
    text: Callable[[], str] = lambda: log.read_text(errors="replace")  # noqa: E731
    original = config.read_bytes()
    wait_until(lambda: answers(healthz), timeout=30, message=lambda: f"never healthy:\n{text()}")
    before = rss(proc.pid)
    for refused, (name, attack, code) in enumerate(ATTACKS, start=1):
        config.write_bytes(original + attack)
        os.kill(proc.pid, signal.SIGHUP)
        # /healthz answers promptly while the file is being refused
        assert healthz_ms(healthz) < PROMPT_S, name
        wait_until(lambda n=refused: text().count("event=config_reload_refused") >= n, timeout=15,
                   message=lambda what=name: f"{what}: no refusal logged:\n{text()[-3000:]}")
        assert f"code={code}" in text(), name
        assert healthz_ms(healthz) < PROMPT_S, name
        assert proc.poll() is None, text()
    assert "Traceback" not in text()
    assert rss(proc.pid) - before < MAX_GROWTH_BYTES
    # Nothing of a refused file was applied
    assert "event=config_reloaded" not in text()
    # SIGTERM right after one more bad reload still stops the process cleanly
    config.write_bytes(original + alias_bomb().encode())
    os.kill(proc.pid, signal.SIGHUP)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, text()[-3000:]


def test_a_running_bridge_refuses_every_hostile_reload(
    tmp_path: Path, nats_server: NatsServer, redis_server: RedisServer
) -> None:
    port = free_port()
    config = tmp_path / "notify.yml"
    config.write_text(bridge_yaml(nats_server.url, redis_server.url,
                                  {"health": {"port": port}, "metrics": {"port": 0}}))
    proc = start("bridge", config, tmp_path / "bridge.log")
    try:
        wait_until(lambda: "event=bridge_started" in (tmp_path / "bridge.log").read_text(), timeout=30)
        attack_and_stop(proc, config, tmp_path / "bridge.log", f"http://127.0.0.1:{port}/healthz")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_running_gateway_refuses_every_hostile_reload(tmp_path: Path, redis_server: RedisServer) -> None:
    port = free_port()
    config = tmp_path / "notify.yml"
    config.write_text(yaml.safe_dump({"redis": {"url": redis_server.url, "namespace": "bounds"},
                                      "nats": {"servers": [UNREACHABLE_NATS]},
                                      "gateway": {"host": "127.0.0.1", "port": port}}))
    proc = start("gateway", config, tmp_path / "gateway.log")
    try:
        attack_and_stop(proc, config, tmp_path / "gateway.log", f"http://127.0.0.1:{port}/healthz")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_running_worker_supervisor_refuses_every_hostile_reload(tmp_path: Path, redis_server: RedisServer) -> None:
    port = free_port()
    settings = make_settings(redis_server.url, namespace="bounds", health={"host": "127.0.0.1", "worker_port": port})
    config = tmp_path / "notify.yml"
    config.write_text(yaml.safe_dump(json.loads(worker_yaml(settings)), sort_keys=False))  # block YAML, to append to
    proc = start("worker", config, tmp_path / "worker.log", "-p", "1", "-t", "1")
    try:
        attack_and_stop(proc, config, tmp_path / "worker.log", f"http://127.0.0.1:{port}/healthz")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
