"""The gateway's edge limits (``gateway.limits``), each tried from outside against a real process.

Every test starts ``fechatter-notify gateway`` as a subprocess with small limits set through
``NOTIFY__GATEWAY__LIMITS__*`` and talks to it over real sockets: per-user stream cap, connect
rate, connection cap (probes still answered), memory threshold, request sizes, the header-read
deadline (slowloris) and the slow-client byte bound.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.limits import LOG_BURST, LOG_WINDOW_S, ClientAddress, QuietLog, TokenBuckets
from gateway.testing import UNREACHABLE_NATS, SigningKey, SseReader, new_message, publish_notification
from settings import ConfigError, load_settings, parse_size, parse_size_or_percent, percent_of
from tests.servers import RedisServer, async_wait_until, free_port

ROOT = Path(__file__).parent.parent


class Gateway:
    """One gateway process and what a test needs to talk to it."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, key: SigningKey, log: Path) -> None:
        self.proc, self.port, self.key, self.log = proc, port, key, log
        self.url = f"http://127.0.0.1:{port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def events_url(self, user_id: int) -> str:
        return f"{self.url}/events?access_token={self.key.token(user_id)}"

    async def metric(self, session: aiohttp.ClientSession, name: str, reason: str | None = None) -> float:
        async with session.get(self.url + "/metrics") as response:
            text = await response.text()
        label = f'{{reason="{reason}"}}' if reason else ""
        match = re.search(rf"^fechatter_notify_gateway_{name}_total{re.escape(label)} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    async def gauge(self, session: aiohttp.ClientSession, name: str) -> float:
        """A gauge's value now (0 when absent)."""
        async with session.get(self.url + "/metrics") as response:
            text = await response.text()
        match = re.search(rf"^fechatter_notify_gateway_{name} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0


Start = Callable[..., Awaitable[Gateway]]


@pytest.fixture
def start_gateway(redis_server: RedisServer, tmp_path: Path) -> Iterator[Start]:
    """``await start_gateway(LIMIT=value, ...)``: a ready gateway with ``gateway.limits.<limit>`` set."""
    procs: list[subprocess.Popen[bytes]] = []

    async def start(**limits: Any) -> Gateway:
        key = SigningKey.generate()
        port = free_port()
        directory = tmp_path / f"gw{len(procs)}"
        directory.mkdir()
        config = directory / "notify.yml"
        escaped = key.public_pem.strip().replace("\n", "\\n")
        config.write_text(
            f"redis:\n  url: {redis_server.url}\n  namespace: lim\n"
            f"nats:\n  servers: [{UNREACHABLE_NATS}]\n"
            f"gateway:\n  host: 127.0.0.1\n  port: {port}\n"
            f'  jwt:\n    public_key: "{escaped}"\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY")}
        env.update({f"NOTIFY__GATEWAY__LIMITS__{name.upper()}": str(value) for name, value in limits.items()})
        log = directory / "gateway.log"
        proc = _spawn(config, env, log)
        procs.append(proc)
        gateway = Gateway(proc, port, key, log)
        await async_wait_until(lambda: _ready(gateway), timeout=20.0, message=gateway.log_text)
        return gateway

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _spawn(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``fechatter-notify gateway``, exactly as the Procfile starts it, logging to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "fechatter_notify", "--config", str(config), "gateway"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )


async def _ready(gateway: Gateway) -> bool:
    assert gateway.proc.poll() is None, gateway.log_text()
    try:
        status, _, _ = await raw_request(gateway.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    except OSError:
        return False
    return status == 200


def fresh_session() -> aiohttp.ClientSession:
    """No pooled connections: every request is its own connection, so counts are exact."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def raw_request(port: int, request: bytes, within: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` on a new connection; the status, headers and body of the answer."""
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            return await read_response(reader)
        finally:
            writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers["content-length"])) if "content-length" in headers else b""
    return status, headers, body


@asynccontextmanager
async def open_stream(session: aiohttp.ClientSession, url: str) -> AsyncIterator[SseReader]:
    """A confirmed stream (its ``connection_confirmed`` frame read)."""
    response = await session.get(url)
    try:
        assert response.status == 200, await response.text()
        reader = SseReader(response)
        assert (await reader.next_json())[1]["type"] == "connection_confirmed"
        yield reader
    finally:
        response.close()


def assert_refusal(status: int, body: bytes | str, expected_status: int, code: str) -> dict[str, Any]:
    assert status == expected_status, body
    payload: dict[str, Any] = json.loads(body)
    assert payload["error"] == code and payload["reason"], payload
    return payload


# ------------------------------------------------------------------------- admission


async def test_a_user_gets_at_most_max_streams_per_user(start_gateway: Start, redis_server: RedisServer) -> None:
    gw = await start_gateway(max_streams_per_user=2)
    async with fresh_session() as session, AsyncExitStack() as streams:
        first = await streams.enter_async_context(open_stream(session, gw.events_url(5)))
        await streams.enter_async_context(open_stream(session, gw.events_url(5)))

        # The third of the same user is refused, the open ones are kept
        async with session.get(gw.events_url(5)) as response:
            assert_refusal(response.status, await response.read(), 429, "user_streams")
            assert int(response.headers["Retry-After"]) >= 1
        # Another user is not affected
        async with open_stream(session, gw.events_url(6)):
            pass
        rds = Redis.from_url(redis_server.url)
        try:
            entry_id = await publish_notification(rds, "lim", 5, new_message(1))
        finally:
            await rds.aclose()
        assert (await first.next_json())[0] == entry_id

        # When one closes, a new one is admitted (once the gateway has seen the close)
        await streams.aclose()
        refused = 1
        async def admitted() -> bool:
            nonlocal refused
            async with session.get(gw.events_url(5)) as response:
                refused += response.status == 429
                return response.status == 200
        await async_wait_until(admitted, timeout=10.0)
        assert await gw.metric(session, "refusals", "user_streams") == refused
    log = gw.log_text()
    assert "event=request_refused" in log and "error=user_streams" in log and "user=5" in log
    assert gw.key.token(5).split(".")[0] not in log  # no token (not even its header) in the log


async def test_the_connect_rate_per_address_is_limited_and_x_forwarded_for_is_not_believed(
    start_gateway: Start,
) -> None:
    gw = await start_gateway(connect_rate=0.5, connect_burst=3)
    async with fresh_session() as session:
        for user in (1, 2, 3):
            async with session.get(gw.events_url(user)) as response:
                assert response.status == 200
        # A spoofed X-Forwarded-For does not buy a new bucket: the peer is not a trusted proxy
        headers = {"X-Forwarded-For": "203.0.113.9"}
        async with session.get(gw.events_url(4), headers=headers) as response:
            assert_refusal(response.status, await response.read(), 429, "connect_rate")
            assert 1 <= int(response.headers["Retry-After"]) <= 2
        # Probes are never rate limited
        for _ in range(5):
            async with session.get(gw.url + "/healthz") as response:
                assert response.status == 200
        assert await gw.metric(session, "refusals", "connect_rate") == 1.0
    assert "error=connect_rate" in gw.log_text()


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket(start_gateway: Start) -> None:
    gw = await start_gateway(connect_rate=0.5, connect_burst=1, trusted_proxies="[127.0.0.0/8]")
    async with fresh_session() as session:
        async def status(client: str) -> int:
            # The proxy appends the address it saw; what the client wrote (left) is ignored.
            headers = {"X-Forwarded-For": f"1.2.3.4, {client}"}
            async with session.get(gw.events_url(1), headers=headers) as response:
                return response.status

        assert await status("198.51.100.1") == 200
        assert await status("198.51.100.1") == 429
        assert await status("198.51.100.2") == 200
    assert "peer=198.51.100.1" in gw.log_text()


async def test_the_connection_cap_refuses_streams_with_503_but_probes_are_answered(
    start_gateway: Start,
) -> None:
    gw = await start_gateway(max_connections=2)
    assert "event=connection_cap" in gw.log_text() and "max_connections=2" in gw.log_text()
    async with fresh_session() as session, AsyncExitStack() as streams:
        for user in (1, 2):
            await streams.enter_async_context(open_stream(session, gw.events_url(user)))
        async with session.get(gw.events_url(3)) as response:
            assert_refusal(response.status, await response.read(), 503, "connections")
            assert response.headers["Retry-After"] == "5"
        for path in ("/healthz", "/readyz", "/metrics"):
            async with session.get(gw.url + path) as response:
                assert response.status == 200, path
        assert await gw.metric(session, "refusals", "connections") == 1.0


async def test_beyond_the_probe_reserve_a_connection_is_answered_503_at_once(start_gateway: Start) -> None:
    gw = await start_gateway(max_connections=2)
    hard = 2 + 64  # gateway.limits.PROBE_RESERVE
    idle: list[socket.socket] = []
    try:
        for _ in range(hard):
            idle.append(socket.create_connection(("127.0.0.1", gw.port)))
        # Counted once the gateway's loop accepted them all: until then a probe may still pass
        async def refused() -> bool:
            status, _, body = await raw_request(gw.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            return status == 503 and json.loads(body)["error"] == "connections"
        await async_wait_until(refused, timeout=10.0)
    finally:
        for sock in idle:
            sock.close()
    # Once they are gone, probes are answered again
    async def healthy() -> bool:
        status, _, _ = await raw_request(gw.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        return status == 200
    await async_wait_until(healthy, timeout=10.0)
    assert "event=connection_refused" in gw.log_text()


async def test_above_the_memory_threshold_new_streams_get_503(start_gateway: Start) -> None:
    gw = await start_gateway(max_memory="1MiB")  # any Python process is above that
    async with fresh_session() as session:
        async with session.get(gw.events_url(1)) as response:
            payload = assert_refusal(response.status, await response.read(), 503, "memory")
            assert "memory" in payload["reason"] and response.headers["Retry-After"] == "5"
        async with session.get(gw.url + "/healthz") as response:
            assert response.status == 200
    assert "error=memory" in gw.log_text() and "rss=" in gw.log_text()


# ------------------------------------------------------------------------- request limits


async def test_request_size_limits_answer_json_414_431_and_400(start_gateway: Start) -> None:
    gw = await start_gateway(max_query_bytes=1024, max_header_bytes=2048, max_token_bytes=600)
    port, token = gw.port, gw.key.token(1)

    async def get(target: str, headers: str = "") -> tuple[int, bytes]:
        status, _, body = await raw_request(port, f"GET {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        return status, body

    # The query over the limit (checked after parsing), and far over it (refused by the parser)
    assert_refusal(*await get(f"/events?access_token={token}&pad={'a' * 1100}"), 414, "query_too_large")
    assert_refusal(*await get(f"/events?pad={'a' * 5000}"), 414, "query_too_large")
    # Headers over the limit together, and one header alone over it
    two = f"X-A: {'a' * 1100}\r\nX-B: {'b' * 1100}\r\n"
    assert_refusal(*await get("/events", two), 431, "headers_too_large")
    assert_refusal(*await get("/events", f"X-A: {'a' * 3000}\r\n"), 431, "headers_too_large")
    # A token over the limit, in the query or in a header, is never parsed
    big = "e" * 700
    assert_refusal(*await get(f"/events?access_token={big}"), 400, "token_too_large")
    assert_refusal(*await get("/events", f"Authorization: Bearer {big}\r\n"), 400, "token_too_large")
    # Malformed requests get JSON too
    status, _, body = await raw_request(port, b"BLAH\x00 / HTTP/1.1\r\n\r\n")
    assert_refusal(status, body, 400, "bad_request")
    # Within every limit, a stream opens
    status, body = await get(f"/events?access_token={token}")
    assert status == 200
    async with fresh_session() as session:
        assert await gw.metric(session, "refusals", "query_too_large") == 2.0
        assert await gw.metric(session, "refusals", "headers_too_large") == 2.0
        assert await gw.metric(session, "refusals", "token_too_large") == 2.0
    log = gw.log_text()
    assert "Traceback" not in log and big not in log and token not in log


@pytest.mark.slow
async def test_slowloris_sockets_are_closed_at_the_header_deadline_while_others_are_served(
    start_gateway: Start,
) -> None:
    timeout, sockets = 2.0, 200
    gw = await start_gateway(header_read_timeout=f"{timeout}s", connect_burst=1000)
    request = f"GET /events?access_token={gw.key.token(1)} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    held: list[float] = []

    async def trickle() -> None:
        # Timed from before the connect: the gateway's deadline starts at its accept, which cannot
        # come earlier, whereas this loop may resume after open_connection long after (200 sockets).
        opened = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        answer = b""
        try:
            for byte in request[:-1]:  # never the final byte: the headers never complete
                writer.write(bytes([byte]))
                try:
                    async with asyncio.timeout(0.5):
                        answer += await reader.read(4096)
                except TimeoutError:
                    continue
                break
            answer += await reader.read()  # until the gateway closes
        finally:
            held.append(time.monotonic() - opened)
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "header_timeout"

    attack = [asyncio.create_task(trickle()) for _ in range(sockets)]
    # Meanwhile a normal client is served: probes, and a stream that opens and delivers
    async with fresh_session() as session:
        async with session.get(gw.url + "/healthz") as response:
            assert response.status == 200
        async with open_stream(session, gw.events_url(2)):
            pass
        await asyncio.gather(*attack)
        assert await gw.metric(session, "refusals", "header_timeout") == sockets
    assert len(held) == sockets
    assert max(held) < timeout + 2.0, sorted(held)[-5:]
    assert min(held) >= timeout - 0.1
    log = gw.log_text()
    assert "error=header_timeout" in log
    # An attack is not logged line by line (the quiet log's burst, then counts)
    assert log.count("error=header_timeout") <= 30


# ------------------------------------------------------------------------- slow clients


async def test_a_client_that_stops_reading_is_dropped_at_the_byte_bound_and_others_keep_up(
    start_gateway: Start, redis_server: RedisServer
) -> None:
    gw = await start_gateway(stream_buffer_bytes="256KiB")
    # A client with a tiny receive window that never reads past the headers
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", gw.port))
    stuck.sendall(f"GET /events?access_token={gw.key.token(7)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    rds = Redis.from_url(redis_server.url)
    try:
        async with fresh_session() as session, open_stream(session, gw.events_url(8)) as healthy:
            async def both_open() -> bool:
                return await gw.gauge(session, "open_streams") == 2
            await async_wait_until(both_open, timeout=10.0, message="the stuck client's stream did not open")
            # A stream of 8 KiB notifications for both: far more than the bound and every socket buffer
            text = "x" * 8192
            started = time.monotonic()
            dropped = False
            for n in range(1, 1000):
                await publish_notification(rds, "lim", 7, new_message(n, text=text), max_len=100)
                if n % 50 == 0:
                    entry_id = await publish_notification(rds, "lim", 8, new_message(n), max_len=100)
                    # The other user's frame arrives promptly however stuck user 7 is
                    while (await healthy.next_json(within=5.0))[0] != entry_id:
                        pass
                    if "event=stream_dropped" in gw.log_text():
                        dropped = True
                        break
            assert dropped, "the stuck stream was never dropped"
            assert time.monotonic() - started < 60
            assert await gw.metric(session, "slow_clients_dropped") == 1.0
    finally:
        await rds.aclose()
        stuck.close()
    line = next(line for line in gw.log_text().splitlines() if "event=stream_dropped" in line)
    assert "reason=slow_client" in line and "user=7" in line
    buffered = int(re.search(r"buffered_bytes=(\d+)", line).group(1))
    frames = int(re.search(r"buffered_frames=(\d+)", line).group(1))
    # Dropped for its bytes (256 KiB), long before the 256-frame bound
    assert 256 * 1024 < buffered < 2 * 1024 * 1024 and frames < 256, line


# ------------------------------------------------------------------------- the building blocks


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_bucket_grants_the_burst_then_the_rate_and_says_when() -> None:
    clock = _Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # the next token is due in 1/rate
    assert buckets.take("b") == 0.0  # other addresses have their own bucket
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    clock.now += 100  # refills up to the burst, not beyond
    assert [buckets.take("a") for _ in range(4)][-1] > 0
    assert TokenBuckets(rate=0, burst=1).take("a") == 0.0  # 0: no limit


def _request_from(peer: str, forwarded: str | None = None) -> Any:
    from unittest.mock import Mock

    from aiohttp.test_utils import make_mocked_request

    transport = Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (peer, 5555) if name == "peername" else default
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    return make_mocked_request("GET", "/events", headers=headers, transport=transport)


def test_x_forwarded_for_is_read_only_from_trusted_proxies_and_from_the_right() -> None:
    assert ClientAddress([]).of(_request_from("10.0.0.5", "1.1.1.1")) == "10.0.0.5"
    trusted = ClientAddress(["10.0.0.0/8", "192.168.1.1"])
    assert trusted.of(_request_from("203.0.113.7", "1.1.1.1")) == "203.0.113.7"  # not a proxy
    # client-written entries on the left, proxies' on the right: the first untrusted from the right
    assert trusted.of(_request_from("10.0.0.5", "6.6.6.6, 198.51.100.4, 192.168.1.1")) == "198.51.100.4"
    assert trusted.of(_request_from("10.0.0.5", "10.1.1.1")) == "10.0.0.5"  # only proxies: the peer
    assert trusted.of(_request_from("10.0.0.5")) == "10.0.0.5"


def test_the_quiet_log_writes_a_burst_then_counts(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    quiet = QuietLog(logging.getLogger("test.quiet"), clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.quiet"):
        for _ in range(LOG_BURST + 5):
            quiet.event("request_refused", error="x")
        assert len(caplog.records) == LOG_BURST
        clock.now += LOG_WINDOW_S
        quiet.event("request_refused", error="x")
    assert len(caplog.records) == LOG_BURST + 1
    assert caplog.records[-1].__dict__["suppressed"] == 5


def test_sizes_and_shares_parse_and_bad_ones_are_named() -> None:
    assert parse_size(65536) == parse_size("64KiB") == parse_size("64 kib") == 65536
    assert parse_size("1.5GiB") == 3 * 1024**3 // 2 and parse_size("2MB") == 2_000_000
    assert parse_size_or_percent("80%") == "80%" and percent_of("50%", 1000) == 500
    for bad in ("lots", "12XB", True, "-1KiB"):
        with pytest.raises(ValueError, match="byte size"):
            parse_size(bad)
    with pytest.raises(ValueError, match="percentage"):
        parse_size_or_percent("0%")


def test_limit_settings_are_validated_with_their_place() -> None:
    env = {"NOTIFY__GATEWAY__LIMITS__MAX_MEMORY": "150%",
           "NOTIFY__GATEWAY__LIMITS__TRUSTED_PROXIES": "[10.0.0.0/8, proxy.local]",
           "NOTIFY__GATEWAY__LIMITS__HEADER_READ_TIMEOUT": "-1s",
           "NOTIFY__GATEWAY__LIMITS__STREAM_BUFFER_BYTES": "1MiB"}
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env=env)
    text = str(caught.value)
    for name, path in (("MAX_MEMORY", "max_memory"), ("TRUSTED_PROXIES", "trusted_proxies"),
                       ("HEADER_READ_TIMEOUT", "header_read_timeout")):
        assert f"env NOTIFY__GATEWAY__LIMITS__{name}" in text and f"gateway.limits.{path}" in text, text
    assert "proxy.local" in text and "stream_buffer_bytes" not in text
    limits = load_settings(None, env={"NOTIFY__GATEWAY__LIMITS__STREAM_BUFFER_BYTES": "64KiB"}).settings.gateway.limits
    assert limits.stream_buffer_bytes == 65536 and limits.max_streams_per_user == 64
