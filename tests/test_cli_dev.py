"""``fechatter-notify dev`` runs the whole system with embedded servers, and stops it cleanly.

It uses other servers only when told explicitly (flags, environment, a --config file); a
notify.yml it merely finds in the current directory does not count.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fechatter_notify.devstate import STATE_FILE, choose_server
from fechatter_notify.embedded import free_port
from settings import load_settings
from tests.servers import NatsServer, RedisServer, wait_until

pytestmark = pytest.mark.timeout(120)

#: What the repository's notify.yml used to say: the machine's default ports.
FOREIGN_SERVERS = """
nats:
  servers: ["nats://127.0.0.1:4222"]
redis:
  url: redis://127.0.0.1:6379/0
"""


def _env(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY", "NATS_URL", "REDIS_URL"))}
    env.update({"NOTIFY_PORT": str(port), "PYTHONUNBUFFERED": "1"})
    return env


def _first_frame(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            for line in resp:
                if line.startswith(b"data:"):
                    return bytes(line)
    except OSError:
        return None
    return None


class Dev:
    """One ``fechatter-notify dev`` process, its output in a file."""

    def __init__(self, cwd: Path, port: int, *args: str) -> None:
        self.log = cwd / "dev.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "fechatter_notify", "dev", *args], cwd=cwd,
                                         env=_env(port), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text()

    def wait_token(self) -> str:
        found = wait_until(lambda: re.search(r"access_token=([\w.-]+)", self.text()), timeout=90,
                           message=lambda: f"dev printed no token:\n{self.text()[-3000:]}")
        return found.group(1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout=60)


@pytest.fixture
def dev_factory() -> Iterator[list[Dev]]:
    started: list[Dev] = []
    yield started
    for dev in started:
        if dev.proc.poll() is None:
            os.killpg(dev.proc.pid, signal.SIGKILL)
            dev.proc.wait()


def test_dev_starts_embedded_servers_and_serves_a_stream(tmp_path: Path, dev_factory: list[Dev]) -> None:
    # Given a notify.yml in the current directory that names the default ports (foreign servers here)
    (tmp_path / "notify.yml").write_text(FOREIGN_SERVERS)
    port = free_port()
    dev = Dev(tmp_path, port)
    dev_factory.append(dev)
    # When dev has printed its token once everything was ready
    token = dev.wait_token()
    text = dev.text()
    # Then it runs on embedded servers, and says which and why
    assert "embedded_server_started kind=nats-server" in text
    assert "embedded_server_started kind=redis-server" in text
    assert re.search(r"nats: +embedded nats-server at nats://127\.0\.0\.1:\d+, pid \d+ \(notify\.yml:\d+:\d+ "
                     r"names 'nats://127\.0\.0\.1:4222' but was not named with --config", text), text
    assert re.search(r"redis: +embedded redis-server at redis://127\.0\.0\.1:\d+/0", text), text
    assert ":4222 " not in text.replace("'nats://127.0.0.1:4222'", "")
    # And it tells publish where everything is
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["gateway_url"] == f"http://127.0.0.1:{port}" and state["pid"] == dev.proc.pid
    assert re.fullmatch(r"nats://127\.0\.0\.1:\d+", state["nats_url"]) and ":4222" not in state["nats_url"]
    # And the gateway answers that token with an event stream
    url = f"http://127.0.0.1:{port}/events?access_token={token}"
    frame = wait_until(lambda: _first_frame(url), timeout=30, message="no SSE frame from the dev gateway")
    assert b'"connection_confirmed"' in frame
    # And Ctrl-C stops everything cleanly, taking the state file with it
    code = dev.stop()
    assert code == 0, dev.text()[-3000:]
    assert not (tmp_path / STATE_FILE).exists()


def test_dev_uses_the_servers_it_is_given(tmp_path: Path, nats_server: NatsServer, redis_server: RedisServer,
                                          dev_factory: list[Dev]) -> None:
    port = free_port()
    dev = Dev(tmp_path, port, "--nats", nats_server.url, "--redis", redis_server.url)
    dev_factory.append(dev)
    dev.wait_token()
    text = dev.text()
    assert "embedded_server_started" not in text
    assert f"nats:    {nats_server.url} (from --nats)" in text
    assert f"redis:   {redis_server.url} (from --redis)" in text
    # The bridge provisioned its streams (the events', and the give-ups' of bridge/advisory_assets.py) on the
    # server it was given
    assert nats_server.monitor("/jsz")["streams"] == 2
    assert dev.stop() == 0, dev.text()[-3000:]


def _args(**kwargs: str | None) -> argparse.Namespace:
    return argparse.Namespace(config=None, sub_config=kwargs.pop("config", None), **kwargs)


def test_server_choice_explicit_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notify.yml").write_text(FOREIGN_SERVERS)
    found = load_settings(env={})
    # A file found in the current directory: embedded, with the reason
    choice = choose_server(found, ("nats", "servers"), "--nats", None, {}, _args())
    assert choice.url is None and "notify.yml:3:3 names 'nats://127.0.0.1:4222'" in choice.reason
    # No file at all
    (tmp_path / "notify.yml").unlink()
    choice = choose_server(load_settings(env={}), ("redis", "url"), "--redis", None, {}, _args())
    assert choice.url is None and "no --redis, $REDIS_URL or --config" in choice.reason
    # The environment
    env = {"NATS_URL": "nats://nats.example:4222"}
    choice = choose_server(load_settings(env=env), ("nats", "servers"), "--nats", None, env, _args())
    assert (choice.url, choice.reason) == ("nats://nats.example:4222", "from $NATS_URL")
    # A file named with --config
    named = tmp_path / "mine.yml"
    named.write_text(FOREIGN_SERVERS)
    loaded = load_settings(str(named), env={})
    choice = choose_server(loaded, ("redis", "url"), "--redis", None, {}, _args(config=str(named)))
    assert choice.url == "redis://127.0.0.1:6379/0" and choice.reason == f"from {named}:5:3"
    # The flag beats everything
    choice = choose_server(load_settings(env=env), ("nats", "servers"), "--nats", "nats://flag:1", env, _args())
    assert (choice.url, choice.reason) == ("nats://flag:1", "from --nats")


def test_dev_where_loopback_is_down_says_so_without_a_traceback(tmp_path: Path) -> None:
    # Given a fresh network namespace, whose loopback interface starts down (unshare -n as root)
    if os.geteuid() != 0 or subprocess.run(["unshare", "-n", "--", "true"], capture_output=True,
                                           check=False).returncode != 0:
        pytest.skip("needs root and a working unshare -n")
    # When dev starts there with nothing configured (its embedded nats-server binds, but nothing connects)
    out = subprocess.run(["unshare", "-n", "--", sys.executable, "-m", "fechatter_notify", "dev"], cwd=tmp_path,
                         env=_env(free_port()), capture_output=True, text=True, timeout=60, check=False)
    # Then it exits 1 with one error naming the server, the address, the cause and the fix
    assert out.returncode == 1, out.stderr[-3000:]
    error = next(line for line in out.stderr.splitlines() if line.startswith("error: "))
    assert re.search(r"embedded nats-server \(pid \d+\) is running but 127\.0\.0\.1:\d+ did not accept", error), error
    assert "Network is unreachable" in error and "ip link set lo up" in error, error
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
