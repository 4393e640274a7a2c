"""Real ``fechatter-notify gateway`` processes for tests (what a deploy runs, signals included)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.testing import UNREACHABLE_NATS, SigningKey, SseReader
from tests.servers import RedisServer, async_wait_until, free_port

ROOT = Path(__file__).parent.parent


@dataclass
class GatewayProc:
    """One gateway process: its URL, signing key, log file and Redis namespace."""

    proc: subprocess.Popen[bytes]
    url: str
    key: SigningKey
    log: Path
    namespace: str

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def ready(self, session: aiohttp.ClientSession) -> bool:
        assert self.proc.poll() is None, self.log_text()
        try:
            async with session.get(self.url + "/readyz") as response:
                return response.status == 200
        except aiohttp.ClientConnectionError:
            return False

    async def wait_ready(self, within: float = 20.0) -> None:
        async with aiohttp.ClientSession() as session:
            await async_wait_until(lambda: self.ready(session), timeout=within)

    async def open(
        self, session: aiohttp.ClientSession, user_id: int, *, last_event_id: str | None = None,
        token: str | None = None,
    ) -> tuple[aiohttp.ClientResponse, SseReader]:
        """``GET /events`` with ``?access_token=`` (as the web client does)."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
        response = await session.get(
            self.url + "/events", params={"access_token": token or self.key.token(user_id)},
            headers=headers, timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        )
        return response, SseReader(response)


GatewayFactory = Callable[..., GatewayProc]


@pytest.fixture
def gateway_procs(redis_server: RedisServer, tmp_path: Path) -> Iterator[GatewayFactory]:
    """``factory(key=None, namespace="proc", env=None, **gateway_keys) -> GatewayProc``, started
    (not yet ready: call ``wait_ready``); every process is killed at the end of the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def factory(*, key: SigningKey | None = None, namespace: str = "proc",
                env: dict[str, str] | None = None, **gateway: Any) -> GatewayProc:
        key = key or SigningKey.generate()
        port, index = free_port(), len(procs)
        jwt_section = {"public_key": key.public_pem, **gateway.pop("jwt", {})}
        config = tmp_path / f"notify-{index}.json"
        # JSON is YAML: the configuration file takes it as is.
        config.write_text(json.dumps({
            "redis": {"url": redis_server.url, "namespace": namespace},
            "nats": {"servers": [UNREACHABLE_NATS]},
            "gateway": {"host": "127.0.0.1", "port": port, "presence_ttl": "1s", "jwt": jwt_section,
                        **gateway},
        }))
        environ = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY")}
        environ.update(env or {})
        log = tmp_path / f"gateway-{index}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fechatter_notify", "--config", str(config), "gateway"],
                stdout=out, stderr=subprocess.STDOUT, env=environ, cwd=ROOT,
            )
        procs.append(proc)
        return GatewayProc(proc, f"http://127.0.0.1:{port}", key, log, namespace)

    try:
        yield factory
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
