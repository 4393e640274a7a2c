"""``fechatter-notify gateway`` as a real process: start, serve, stop on SIGTERM, crash cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from events.inbox import online_key, presence_key
from gateway.testing import UNREACHABLE_NATS, SigningKey, SseReader, new_message, publish_notification
from tests.servers import RedisServer, async_wait_until, free_port


class GatewayProcess:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, key: SigningKey, log: Path) -> None:
        self.proc, self.url, self.key, self.log = proc, url, key, log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def gateway_process(redis_server: RedisServer, tmp_path: Path) -> Iterator[GatewayProcess]:
    key = SigningKey.generate()
    port = free_port()
    config = tmp_path / "notify.yml"
    # The PEM on one line with \n escapes, as operators put it into env vars and YAML.
    escaped = key.public_pem.strip().replace("\n", "\\n")
    config.write_text(
        f"redis:\n  url: {redis_server.url}\n  namespace: proc\n"
        f"nats:\n  servers: [{UNREACHABLE_NATS}]\n"
        f"gateway:\n  host: 127.0.0.1\n  port: {port}\n  presence_ttl: 1s\n"
        f'  jwt:\n    public_key: "{escaped}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY")}
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fechatter_notify", "--config", str(config), "gateway"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).parent.parent,
        )
    try:
        yield GatewayProcess(proc, f"http://127.0.0.1:{port}", key, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def _ready(session: aiohttp.ClientSession, gw: GatewayProcess) -> bool:
    assert gw.proc.poll() is None, gw.log_text()
    try:
        async with session.get(gw.url + "/readyz") as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def test_the_gateway_process_serves_and_stops_on_sigterm(
    gateway_process: GatewayProcess, redis_server: RedisServer
) -> None:
    async with aiohttp.ClientSession() as session:
        await async_wait_until(lambda: _ready(session, gateway_process), timeout=20.0)
        # Given an open stream
        response = await session.get(gateway_process.url + "/events",
                                     params={"access_token": gateway_process.key.token(60)})
        reader = SseReader(response)
        assert (await reader.next_json())[1]["type"] == "connection_confirmed"

        # When the process gets SIGTERM
        gateway_process.proc.send_signal(signal.SIGTERM)

        # Then the stream ends, the process exits 0 promptly, and the user is offline
        await reader.wait_closed(within=10.0)
        assert gateway_process.proc.wait(10) == 0
        response.close()
    client = redis_server.client()
    assert client.hget(presence_key("proc", 60), "status") == b"offline"
    client.close()
    log = gateway_process.log_text()
    assert "event=fd_limit" in log and "event=gateway_stopped" in log


async def test_a_crashed_gateway_leaves_no_online_ghost(
    gateway_process: GatewayProcess, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    async with aiohttp.ClientSession() as session:
        await async_wait_until(lambda: _ready(session, gateway_process), timeout=20.0)
        response = await session.get(gateway_process.url + "/events",
                                     params={"access_token": gateway_process.key.token(61)})
        assert (await SseReader(response).next_json())[1]["type"] == "connection_confirmed"
        await async_wait_until(lambda: client.hget(presence_key("proc", 61), "status") == b"online")

        # When the process is killed without any chance to clean up
        gateway_process.proc.kill()
        gateway_process.proc.wait(10)
        response.close()

    # Then its presence entries expire within the 1 s presence TTL (plus margin)
    await async_wait_until(
        lambda: not client.exists(presence_key("proc", 61), online_key("proc", 61)), timeout=5.0
    )
    client.close()


def test_an_invalid_public_key_is_a_configuration_error(tmp_path: Path) -> None:
    config = tmp_path / "notify.yml"
    config.write_text(json.dumps({"gateway": {"jwt": {"public_key": "not a pem"}}}))
    result = subprocess.run(
        [sys.executable, "-m", "fechatter_notify", "--config", str(config), "gateway"],
        capture_output=True, text=True, timeout=30, cwd=Path(__file__).parent.parent,
        env={k: v for k, v in os.environ.items() if not k.startswith("NOTIFY")},
    )
    assert result.returncode == 2, result.stderr
    assert "public_key" in result.stderr


async def test_sighup_rotates_the_token_key_and_keeps_open_streams(
    gateway_process: GatewayProcess, redis_server: RedisServer, tmp_path: Path
) -> None:
    gw, config = gateway_process, tmp_path / "notify.yml"
    async with aiohttp.ClientSession() as session:
        await async_wait_until(lambda: _ready(session, gw), timeout=20.0)
        # Given a stream opened with a token signed by the old key
        response = await session.get(gw.url + "/events", params={"access_token": gw.key.token(60)})
        reader = SseReader(response)
        assert (await reader.next_json())[1]["type"] == "connection_confirmed"
        # When the file gets a new key (and a new keep-alive, which needs a restart) and SIGHUP arrives
        new_key = SigningKey.generate()
        old_pem = gw.key.public_pem.strip().replace("\n", "\\n")
        new_pem = new_key.public_pem.strip().replace("\n", "\\n")
        config.write_text(config.read_text().replace(old_pem, new_pem) + "  keep_alive: 5s\n")
        gw.proc.send_signal(signal.SIGHUP)
        await async_wait_until(lambda: "event=config_reloaded" in gw.log_text(), timeout=10)
        assert "applied=gateway.jwt.public_key" in gw.log_text()
        assert "event=config_needs_restart" in gw.log_text() and "fields=gateway.keep_alive" in gw.log_text()

        # Then new tokens verify against the new key only, and the open stream goes on
        async def status(key: SigningKey) -> int:
            async with session.get(gw.url + "/events", params={"access_token": key.token(61)}) as resp:
                return resp.status

        assert await status(new_key) == 200
        assert await status(gw.key) == 401
        assert gw.proc.poll() is None
        # (a stream the server ended may not look closed yet: prove it still delivers)
        rds = Redis.from_url(redis_server.url)
        try:
            entry_id = await publish_notification(rds, "proc", 60, new_message(6001))
        finally:
            await rds.aclose()
        assert await reader.next_json() == (entry_id, new_message(6001))
        # And an invalid file is refused: the process keeps the key it has
        config.write_text(config.read_text().replace("port:", "port: notaport #"))
        gw.proc.send_signal(signal.SIGHUP)
        await async_wait_until(lambda: "event=config_reload_refused" in gw.log_text(), timeout=10)
        assert await status(new_key) == 200
        response.close()
