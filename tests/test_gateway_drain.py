"""SIGTERM drains a real gateway process: not ready, no new streams, open streams closed spread
over ``gateway.drain_window`` with a jittered ``retry:``; clients resume on the survivor."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.resume import DRAIN_RETRY_MS
from gateway.testing import SigningKey, SseReader, new_message, publish_notification
from tests.gateway_proc import GatewayFactory, GatewayProc, gateway_procs  # noqa: F401
from tests.servers import RedisServer, async_wait_until

pytestmark = pytest.mark.usefixtures("gateway_procs")

NS = "drain"
WINDOW_S = 2.0


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@dataclass
class Client:
    """An SSE client with a browser's reconnect rules (server ``retry:``, ``Last-Event-ID``),
    trying the gateways in order as a load balancer would."""

    user_id: int
    token: str
    received: list[str] = field(default_factory=list)
    last_id: str | None = None
    gateways_used: list[str] = field(default_factory=list)
    #: (monotonic time, retry ms) of each stream the server ended with a reconnect frame.
    drained: list[tuple[float, int]] = field(default_factory=list)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, session: aiohttp.ClientSession, gateways: list[GatewayProc]) -> None:
        retry_ms = 0
        while True:
            response = await self._connect(session, gateways)
            if response is None:  # no gateway answered: the browser retries after its delay
                await asyncio.sleep(0.1)
                continue
            reader = SseReader(response)
            try:
                await self._read(reader)
            except EOFError:
                retry_ms = reader.retry or 3000
            finally:
                response.close()
            await asyncio.sleep(retry_ms / 1000)  # EventSource's reconnection time, set by the server

    async def _connect(
        self, session: aiohttp.ClientSession, gateways: list[GatewayProc]
    ) -> aiohttp.ClientResponse | None:
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        for gw in gateways:
            try:
                response = await session.get(
                    gw.url + "/events", params={"access_token": self.token}, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
                )
            except aiohttp.ClientConnectionError:
                continue
            if response.status == 200:
                self.gateways_used.append(gw.url)
                return response
            response.release()
        return None

    async def _read(self, reader: SseReader) -> None:
        while True:
            event_id, data = await reader.next_json(within=60.0)
            if data["type"] == "connection_confirmed":
                self.confirmed.set()
            elif data["type"] == "new_message":
                assert event_id is not None
                self.received.append(event_id)
                self.last_id = event_id
            elif data["type"] == "reconnect":
                self.drained.append((time.monotonic(), data["retry_ms"]))
            else:
                raise AssertionError(f"unexpected frame {data}")


async def test_sigterm_moves_every_client_to_the_survivor_without_loss_or_duplicates(
    gateway_procs: GatewayFactory, redis: Redis,  # noqa: F811
) -> None:
    key = SigningKey.generate()
    first = gateway_procs(key=key, namespace=NS, drain_window=f"{WINDOW_S}s")
    survivor = gateway_procs(key=key, namespace=NS)
    await first.wait_ready()
    await survivor.wait_ready()
    users = (1, 2, 3)
    clients = [Client(user, key.token(user)) for user in users for _ in range(3)]
    published: dict[int, list[str]] = {user: [] for user in users}

    async with aiohttp.ClientSession() as session:
        # Given 9 clients on the first gateway
        tasks = [asyncio.create_task(client.run(session, [first, survivor])) for client in clients]
        await asyncio.gather(*(client.confirmed.wait() for client in clients))
        assert all(client.gateways_used == [first.url] for client in clients)

        async def publish(n: int) -> None:
            user = users[n % len(users)]
            published[user].append(await publish_notification(redis, NS, user, new_message(n)))

        # When it gets SIGTERM while notifications keep coming
        counter = itertools.count()
        for _ in range(6):
            await publish(next(counter))
        sigterm_at = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        while first.proc.poll() is None:
            await publish(next(counter))
            await asyncio.sleep(0.02)  # a steady trickle of notifications, not a flood
        for _ in range(3):
            await publish(next(counter))

        # Then every client ends on the survivor with every notification of its user, once each
        def complete() -> bool:
            return all(client.received == published[client.user_id] for client in clients)

        try:
            await async_wait_until(complete, timeout=20.0)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    assert first.proc.returncode == 0, first.log_text()
    for client in clients:
        assert client.gateways_used == [first.url, survivor.url]
        assert len(client.drained) == 1
    # closed spread over the window (not all at once), each with its own jittered retry
    closed_at = sorted(at for client in clients for at, _ in client.drained)
    assert closed_at[-1] - closed_at[0] >= WINDOW_S / 2
    assert closed_at[-1] - sigterm_at <= WINDOW_S + 2.0
    retries = [retry for client in clients for _, retry in client.drained]
    assert all(DRAIN_RETRY_MS[0] <= retry <= DRAIN_RETRY_MS[1] for retry in retries)
    assert len(set(retries)) > 1
    log = first.log_text()
    assert "event=gateway_drained" in log and "left=0" in log


async def test_a_draining_gateway_is_unready_and_refuses_new_streams(
    gateway_procs: GatewayFactory,  # noqa: F811
) -> None:
    gw = gateway_procs(namespace=NS, drain_window="5s")
    await gw.wait_ready()
    # One connection kept alive (as a load balancer's health checker keeps one)
    kept = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
    others = aiohttp.ClientSession()
    try:
        async with kept.get(gw.url + "/readyz") as response:
            assert response.status == 200
        # Two open streams: the second closes half way through the window, so the drain lasts
        streams = [await others.get(gw.url + "/events", params={"access_token": gw.key.token(n)},
                                    timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
                   for n in (1, 2)]
        for stream in streams:
            assert (await SseReader(stream).next_json())[1]["type"] == "connection_confirmed"

        gw.proc.send_signal(signal.SIGTERM)

        # Then readiness says draining, on the connection that stays open
        async def draining() -> bool:
            async with kept.get(gw.url + "/readyz") as response:
                return response.status == 503 and "draining" in " ".join((await response.json())["reasons"])

        await async_wait_until(draining, timeout=5.0)
        # a new stream is refused there, and a new connection is not accepted at all
        async with kept.get(gw.url + "/events", params={"access_token": gw.key.token(3)}) as response:
            assert response.status == 503
            assert (await response.json())["reason"] == "draining"
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as fresh:
                await fresh.get(gw.url + "/healthz")
        for stream in streams:
            stream.close()
        assert await asyncio.to_thread(gw.proc.wait, 20) == 0
    finally:
        await kept.close()
        await others.close()
