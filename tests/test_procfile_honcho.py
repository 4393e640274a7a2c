"""The repository's own Procfile, run by honcho on one host with default settings.

Only the servers' addresses and the gateway's token key are set; every port is the default
(the gateway's is ``$PORT``, which honcho gives each process). First all three process types
under one ``honcho start`` after the ``release:`` line; then each process type under its own
honcho (as a supervisor per process type would run it), killed with SIGKILL and started again
in turn while events keep coming: every event reaches each recipient exactly once.

Before each process type had its own default ports, the bridge and the worker fought over
8081/9091: the loser among the first two crashed (the bridge, hidden behind "AssertionError:
Client.connect must be called first") or ran without its endpoints (the worker), and a bridge
restarted after a worker had come back while it was down never came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from events.inbox import inbox_key
from gateway import read_frames
from gateway.testing import SigningKey
from settings.model import Health, Metrics
from tests.conftest import IN_CI
from tests.servers import NatsServer, RedisServer, async_wait_until, free_port

ROOT = Path(__file__).resolve().parents[1]
PROCFILE = ROOT / "Procfile"
BIN = Path(sys.executable).parent
NAMESPACE = "fechatter-notify"  # the default redis.namespace
SENDER, RECIPIENTS = 7, (9, 11)
#: The bridge's and the worker's default health and metrics ports (what this test is about).
DEFAULT_PORTS = {"bridge": (Health().port, Metrics().port), "worker": (Health().worker_port, Metrics().worker_port)}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def procfile() -> dict[str, str]:
    lines = (line.partition(":") for line in PROCFILE.read_text().splitlines() if ":" in line)
    return {name.strip(): command.strip() for name, _, command in lines if not name.startswith("#")}


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers bind: connections of an earlier run in TIME_WAIT do not hold the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@dataclass
class Honcho:
    """One ``honcho start`` and its output."""

    proc: subprocess.Popen[bytes]
    log: Path
    names: tuple[str, ...]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def pids(self) -> list[int]:
        """The processes honcho started, as it reports them (``bridge.1 started (pid=N)``)."""
        return [int(pid) for pid in re.findall(r"\| \S+\.\d+ started \(pid=(\d+)\)", self.output())]

    def kill_process_type(self) -> None:
        """kill -9 of what honcho runs: each runs in its own session, so its group (a worker's children too)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_process_type()
                self.proc.kill()
                self.proc.wait(10)
        self.kill_process_type()


@dataclass
class Site:
    """The one host: its servers, environment, and the honchos running on it."""

    nats: NatsServer
    redis: RedisServer
    workdir: Path
    env: dict[str, str]
    key: SigningKey
    web_port: int
    honchos: list[Honcho] = field(default_factory=list)
    #: The honcho now running each process type.
    current: dict[str, Honcho] = field(default_factory=dict)
    runs: int = 0

    def honcho(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.runs += 1
        out = (self.workdir / f"honcho-{self.runs}.log").open("wb")
        proc = subprocess.Popen([str(BIN / "honcho"), *args], cwd=self.workdir, env={**self.env, **(env or {})},
                                stdout=out, stderr=subprocess.STDOUT)
        out.close()
        return proc

    def start(self, *names: str, env: dict[str, str] | None = None) -> Honcho:
        """``honcho start -f Procfile NAME...``; the web process gets ``$PORT`` = :attr:`web_port`."""
        base = self.web_port - 100 * names.index("web") if "web" in names else free_port()
        proc = self.honcho("start", "-f", str(PROCFILE), "-p", str(base), *names, env=env)
        honcho = Honcho(proc, self.workdir / f"honcho-{self.runs}.log", names)
        self.honchos.append(honcho)
        self.current.update(dict.fromkeys(names, honcho))
        return honcho

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def ready(self, names: tuple[str, ...]) -> bool:
        for name in names:
            honcho = self.current[name]
            if honcho.proc.poll() is not None:
                raise AssertionError(f"honcho {honcho.names} exited:\n{honcho.output()[-4000:]}")
        urls = {"bridge": f"http://127.0.0.1:{DEFAULT_PORTS['bridge'][0]}/readyz",
                "worker": f"http://127.0.0.1:{DEFAULT_PORTS['worker'][0]}/healthz",
                "web": f"{self.gateway}/readyz"}
        metrics = {"bridge": DEFAULT_PORTS["bridge"][1], "worker": DEFAULT_PORTS["worker"][1]}
        for name in names:
            if status(urls[name]) != 200:
                return False
            if name in metrics and status(f"http://127.0.0.1:{metrics[name]}/metrics") != 200:
                return False
        return True

    def logs(self) -> str:
        return "\n".join(f"--- honcho {h.names} ---\n{h.output()[-3000:]}" for h in self.honchos)


@pytest.fixture
def site(nats_server: NatsServer, redis_server: RedisServer, tmp_path: Path) -> Iterator[Site]:
    taken = [p for ports in DEFAULT_PORTS.values() for p in ports if not port_free(p)]
    if taken:
        reason = f"default port(s) {taken} are in use on this machine; this test runs with default settings"
        if IN_CI:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    key = SigningKey.generate()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NOTIFY") and k not in {"NATS_URL", "REDIS_URL", "SENTRY_DSN", "DATABASE_URL", "PORT"}}
    env.update({"NATS_URL": nats_server.url, "REDIS_URL": redis_server.url, "PYTHONUNBUFFERED": "1",
                "NOTIFY__GATEWAY__JWT__PUBLIC_KEY": key.public_pem, "PATH": f"{BIN}{os.pathsep}{env['PATH']}"})
    running = Site(nats_server, redis_server, tmp_path, env, key, free_port())
    try:
        yield running
    finally:
        print(running.logs())
        for honcho in running.honchos:
            honcho.stop()


class Client:
    """A browser tab of one user: an SSE stream that reconnects with ``Last-Event-ID``."""

    def __init__(self, site: Site, user_id: int) -> None:
        self.site, self.user_id = site, user_id
        self.frames: list[dict[str, Any]] = []
        self.last_id: str | None = None
        self.connections = 0

    def messages(self) -> list[int]:
        return [f["id"] for f in self.frames if f.get("type") == "new_message"]

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            try:
                async with session.get(f"{self.site.gateway}/events", headers=headers,
                                       params={"access_token": self.site.key.token(self.user_id)}) as resp:
                    if resp.status == 200:
                        self.connections += 1
                        await self._read(resp)
            except (aiohttp.ClientError, ConnectionError):
                pass
            await asyncio.sleep(0.2)  # a browser's EventSource retry delay, not a wait for a condition

    async def _read(self, resp: aiohttp.ClientResponse) -> None:
        async for event_id, frame in read_frames(resp.content):
            self.frames.append(frame)
            self.last_id = event_id or self.last_id


@pytest.fixture
async def clients(site: Site) -> AsyncIterator[dict[int, Client]]:
    session = aiohttp.ClientSession()
    tabs = {user: Client(site, user) for user in RECIPIENTS}
    tasks = [asyncio.create_task(tab.run(session)) for tab in tabs.values()]
    try:
        yield tabs
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()


def created(message_id: int) -> bytes:
    return json.dumps({
        "version": "V1", "kind": "Created",
        "msg": {"id": message_id, "chat_id": 42, "sender_id": SENDER, "content": f"m{message_id}", "files": [],
                "created_at": "2025-06-27T02:45:46.782538Z", "idempotency_key": None},
        "members": [SENDER, *RECIPIENTS], "occurred_at": "2025-06-27T02:45:46.790112345Z"}).encode()


async def publish(site: Site, ids: range) -> None:
    nc = await nats.connect(site.nats.url)
    try:
        js = nc.jetstream()
        for message_id in ids:
            await js.publish("fechatter.message.created", created(message_id))
    finally:
        await nc.close()


def inbox_messages(site: Site, user_id: int) -> list[int]:
    client = site.redis.client()
    try:
        entries = client.xrange(inbox_key(NAMESPACE, user_id))
    finally:
        client.close()
    notifications = (json.loads(fields[b"n"]) for _, fields in entries)
    return [n["id"] for n in notifications if n.get("type") == "new_message"]


async def delivered(site: Site, tabs: dict[int, Client], ids: range) -> bool:
    want = set(ids)
    return all(want <= set(inbox_messages(site, u)) and want <= set(tabs[u].messages()) for u in RECIPIENTS)


def assert_exactly_once(site: Site, tabs: dict[int, Client], published: int) -> None:
    everything = Counter(range(1, published + 1))
    for user in RECIPIENTS:
        assert Counter(inbox_messages(site, user)) == everything, f"user {user}'s inbox"
        assert Counter(tabs[user].messages()) == everything, f"user {user}'s stream"


async def wait_ready(site: Site, *names: str) -> None:
    await async_wait_until(lambda: site.ready(names), timeout=60, message=lambda: f"{names} not ready\n{site.logs()}")


async def wait_exited(honcho: Honcho) -> None:
    await async_wait_until(lambda: honcho.proc.poll() is not None, timeout=30,
                           message=lambda: f"honcho {honcho.names} still running\n{honcho.output()[-3000:]}")


def run_release(site: Site) -> None:
    """The ``release:`` line, as Heroku-style platforms run it before a deploy."""
    release = site.honcho("run", *shlex.split(procfile()["release"]))
    assert release.wait(90) == 0, (site.workdir / f"honcho-{site.runs}.log").read_text()


async def test_the_procfile_on_one_host_delivers_exactly_once_through_kill_9_of_each_process_type(
        site: Site, clients: dict[int, Client]) -> None:
    assert {"release", "bridge", "worker", "web"} <= set(procfile())
    run_release(site)

    # Phase 1: the three long-running lines under one honcho, default ports side by side.
    # (honcho, like foreman, would stop everything when release: exits: name the others.)
    together = site.start("bridge", "worker", "web")
    await wait_ready(site, "bridge", "worker", "web")
    await publish(site, range(1, 11))
    await async_wait_until(lambda: delivered(site, clients, range(1, 11)), timeout=60, message=site.logs)
    together.stop()
    out = together.output()
    for name in ("bridge", "worker", "web"):  # a stop request is a clean stop for every process type
        assert f"{name}.1 stopped (rc=0)" in out, out[-4000:]
    assert "ParseResult" not in out and "Traceback" not in out, out[-4000:]

    # Phase 2: one honcho per process type; bridges verify what release: provisioned.
    verify = {"NOTIFY__JETSTREAM__PROVISION": "verify"}
    bridge, worker, web = site.start("bridge", env=verify), site.start("worker"), site.start("web")
    await wait_ready(site, "bridge", "worker", "web")
    await publish(site, range(11, 21))
    await async_wait_until(lambda: delivered(site, clients, range(11, 21)), timeout=60, message=site.logs)

    # kill -9 of the bridge; while it is down, events keep coming and the worker is
    # killed and restarted too (it takes its own ports, not the bridge's); then the bridge comes back.
    bridge.kill_process_type()
    await wait_exited(bridge)
    await publish(site, range(21, 31))
    worker.kill_process_type()
    await wait_exited(worker)
    worker = site.start("worker")
    await wait_ready(site, "worker")
    await publish(site, range(31, 36))
    bridge = site.start("bridge", env=verify)
    await wait_ready(site, "bridge")
    await async_wait_until(lambda: delivered(site, clients, range(21, 36)), timeout=90, message=site.logs)

    # kill -9 of the worker while the bridge keeps enqueueing.
    worker.kill_process_type()
    await wait_exited(worker)
    await publish(site, range(36, 46))
    worker = site.start("worker")
    await wait_ready(site, "worker")
    await async_wait_until(lambda: delivered(site, clients, range(36, 46)), timeout=90, message=site.logs)

    # kill -9 of the web process: the tabs reconnect with Last-Event-ID to the restarted one.
    connections = {u: tab.connections for u, tab in clients.items()}
    web.kill_process_type()
    await wait_exited(web)
    await publish(site, range(46, 56))
    # (the workers deliver them meanwhile, in any order: 2 processes x 8 threads)
    await async_wait_until(lambda: all(set(range(46, 56)) <= set(inbox_messages(site, u)) for u in RECIPIENTS),
                           timeout=60, message=site.logs)
    web = site.start("web")
    await wait_ready(site, "web")
    await async_wait_until(lambda: delivered(site, clients, range(46, 56)), timeout=60, message=site.logs)
    assert all(tab.connections > connections[u] for u, tab in clients.items())

    assert_exactly_once(site, clients, 55)
    for honcho in (bridge, worker, web):
        honcho.stop()
        assert "stopped (rc=0)" in honcho.output(), honcho.output()[-3000:]
