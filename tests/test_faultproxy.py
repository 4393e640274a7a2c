"""tests/faultproxy.py itself: forwarding, a silent cut that holds (never drops) bytes, resets, latency,
and what a NATS client sees through it."""

from __future__ import annotations

import asyncio
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import nats
import pytest

from tests.faultproxy import FaultProxy
from tests.servers import HOST, NatsServer, async_wait_until, wait_until

#: How long a test waits to be sure that nothing arrives (an absence cannot be polled for).
QUIET_S = 0.3


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socketserver.ThreadingTCPServer((HOST, 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield HOST, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[FaultProxy]:
    with FaultProxy(*echo) as running:
        yield running


def client(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection((proxy.host, proxy.port), timeout=5)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_it_forwards_both_ways(proxy: FaultProxy) -> None:
    with client(proxy) as sock:
        sock.sendall(b"hello")
        assert recv_exactly(sock, 5) == b"hello"
    assert proxy.accepted == 1


def test_a_silent_cut_forwards_nothing_closes_nothing_and_restore_delivers_what_was_held_in_order(
    proxy: FaultProxy,
) -> None:
    with client(proxy) as sock:
        sock.sendall(b"a")
        assert recv_exactly(sock, 1) == b"a"
        proxy.cut_silently()
        sock.sendall(b"bc")  # accepted by the kernel, as on a dead path
        sock.settimeout(QUIET_S)
        with pytest.raises(TimeoutError):
            sock.recv(10)  # no echo, and no EOF or reset either
        assert proxy.connections == 1
        proxy.restore()
        sock.settimeout(5)
        sock.sendall(b"d")
        assert recv_exactly(sock, 3) == b"bcd"


def test_a_connection_made_during_a_cut_is_held_and_completed_on_restore(proxy: FaultProxy) -> None:
    proxy.cut_silently()
    with client(proxy) as sock:  # the handshake succeeds (loopback), nothing beyond it
        sock.sendall(b"x")
        sock.settimeout(QUIET_S)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        proxy.restore()
        sock.settimeout(5)
        assert recv_exactly(sock, 1) == b"x"


def test_close_all_resets_the_client(proxy: FaultProxy) -> None:
    with client(proxy) as sock:
        sock.sendall(b"a")
        assert recv_exactly(sock, 1) == b"a"
        proxy.close_all()
        wait_until(lambda: proxy.connections == 0, timeout=5)
        with pytest.raises(ConnectionResetError):
            sock.sendall(b"b")
            sock.recv(1)
    with client(proxy) as sock:  # the listener stays up
        sock.sendall(b"c")
        assert recv_exactly(sock, 1) == b"c"


def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    proxy.set_latency(0.2)
    with client(proxy) as sock:
        began = time.monotonic()
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
        assert time.monotonic() - began >= 0.4


async def test_a_nats_client_behind_a_silent_cut_sees_a_stale_connection_and_comes_back_after_restore(
    nats_server: NatsServer,
) -> None:
    events: list[str] = []

    async def disconnected() -> None:
        events.append("disconnected")

    async def reconnected() -> None:
        events.append("reconnected")

    with FaultProxy(HOST, nats_server.port) as proxy:
        nc = await nats.connect(proxy.url(), ping_interval=0.2, max_outstanding_pings=2, reconnect_time_wait=0.1,
                                max_reconnect_attempts=-1, connect_timeout=1,
                                disconnected_cb=disconnected, reconnected_cb=reconnected)
        try:
            await nc.flush(timeout=2)
            proxy.cut_silently()
            # nats-py pings every 0.2 s and gives up after 2 unanswered: stale within 3 x 0.2 s (+ scheduling)
            cut_at = time.monotonic()
            await async_wait_until(lambda: "disconnected" in events, timeout=5)
            assert time.monotonic() - cut_at < 3 * 0.2 + 0.5
            proxy.restore()
            await async_wait_until(lambda: "reconnected" in events, timeout=10)
            await nc.flush(timeout=2)
        finally:
            await nc.close()
            await asyncio.sleep(0)
