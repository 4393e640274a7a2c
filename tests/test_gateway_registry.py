"""The stream registry's keep-alive ticker, and what an open (detached) stream still holds."""

from __future__ import annotations

import asyncio
import gc
import time

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway import state
from gateway.metrics import GatewayMetrics
from gateway.registry import SLOTS, StreamRegistry
from gateway.stream import EventStream, StreamPolicy
from gateway.testing import RunningGateway, new_message
from tests.servers import async_wait_until


class _Transport:
    """Counts what a stream writes; never behind, never closing."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def _live_stream(policy: StreamPolicy, close_at: float = float("inf")) -> EventStream:
    stream = EventStream(1, _Transport(), policy, chunked=False, close_at=close_at)
    stream.holding = False
    return stream


def _pings(stream: EventStream) -> int:
    transport = stream.transport
    assert isinstance(transport, _Transport)
    return transport.writes.count(b": ping\n\n")


async def test_each_stream_gets_one_comment_per_keep_alive_from_one_timer() -> None:
    # Given streams registered at different moments, keep-alive 0.2 s
    policy = StreamPolicy(limit=10, metrics=GatewayMetrics(), keep_alive=0.2)
    registry = StreamRegistry()
    streams = [_live_stream(policy) for _ in range(2 * SLOTS)]
    for stream in streams:
        registry.add(stream)
        await asyncio.sleep(0.01)
    # When 1 s passes
    start = [_pings(stream) for stream in streams]
    await asyncio.sleep(1.0)
    # Then each got about five comments meanwhile (one per interval, give or take a slot and
    # a busy machine's delays), none more
    counts = [_pings(stream) - first for stream, first in zip(streams, start, strict=True)]
    assert all(3 <= count <= 6 for count in counts), counts
    # And once every stream is gone, the timer stops
    for stream in streams:
        registry.discard(stream)
    assert len(registry) == 0 and registry._timer is None
    before = [_pings(stream) for stream in streams]
    await asyncio.sleep(0.3)
    assert [_pings(stream) for stream in streams] == before


async def test_a_stream_closes_at_its_expiry_not_at_the_next_tick() -> None:
    # Given a keep-alive far longer than the time left on the stream's token
    policy = StreamPolicy(limit=10, metrics=GatewayMetrics(), keep_alive=30.0)
    registry = StreamRegistry()
    stream = _live_stream(policy, close_at=time.time() + 0.3)
    registry.add(stream)
    # Then it is closed at expiry
    await async_wait_until(lambda: stream.reason == "token_expired", timeout=2.0)
    stream.cancel_timers()
    registry.discard(stream)


def _alive(kind: type) -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, kind))


async def test_a_live_stream_holds_no_request_handler_or_request(gw: RunningGateway) -> None:
    # Given streams that are live (a notification reached each)
    before_handlers, before_requests = _alive(RequestHandler), _alive(web.BaseRequest)
    opened = [await gw.stream(40 + n) for n in range(3)]
    for n, (_, reader) in enumerate(opened):
        entry_id = await gw.publish(40 + n, new_message(n))
        assert await reader.next_json() == (entry_id, new_message(n))
    # Then aiohttp's per-connection objects are gone: each stream is its connection's protocol
    assert _alive(RequestHandler) == before_handlers
    assert _alive(web.BaseRequest) == before_requests
    assert len(gw.app[state.STREAMS]) == 3
    assert gw.app[state.EDGE].open_connections >= 3
    # And when the clients leave, the bookkeeping is undone
    for response, _ in opened:
        response.close()
    await async_wait_until(lambda: len(gw.app[state.STREAMS]) == 0)
    await async_wait_until(lambda: gw.metric("fechatter_notify_gateway_open_streams") == 0)
    assert gw.app[state.EDGE].user_streams == {}
    await async_wait_until(lambda: gw.app[state.EDGE].open_connections == 0)
