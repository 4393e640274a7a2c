"""The /events stream against a real redis-server: fan-out, replay, keep-alive, closing."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from events.inbox import inbox_key
from gateway.frames import parse_stream_id
from gateway.hub import Announcement
from gateway.metrics import GatewayMetrics
from gateway.stream import EventStream, StreamPolicy
from gateway.testing import (
    RunningGateway,
    SigningKey,
    SseReader,
    gateway_settings,
    new_message,
    running_gateway,
    typing_started,
)
from tests.servers import RedisServer, async_wait_until


async def _messages(reader: SseReader, count: int, within: float = 10.0) -> list[tuple[str, int]]:
    """The next ``count`` notification frames as (id, message id); gateway frames are skipped."""
    got: list[tuple[str, int]] = []
    while len(got) < count:
        entry_id, data = await reader.next_json(within)
        if data["type"] == "new_message":
            assert entry_id is not None
            got.append((entry_id, data["id"]))
    return got


def _ordered(ids: list[str]) -> bool:
    pairs = [tuple(int(part) for part in entry_id.split("-")) for entry_id in ids]
    return all(a < b for a, b in itertools.pairwise(pairs))


async def test_a_stream_opens_with_sse_headers_and_a_connection_confirmed_frame(
    gw: RunningGateway,
) -> None:
    response, reader = await gw.connect(3)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    entry_id, first = await reader.next_json()
    assert entry_id is None  # the gateway's own frames never move Last-Event-ID
    assert first["type"] == "connection_confirmed" and first["user_id"] == 3
    assert reader.retry == 3000
    response.close()


async def test_a_notification_reaches_its_user_as_an_unnamed_frame_with_the_inbox_id(
    gw: RunningGateway,
) -> None:
    response, reader = await gw.stream(4)
    entry_id = await gw.publish(4, new_message(1001, sender_id=9))
    got_id, data = await reader.next_json()
    assert got_id == entry_id
    assert data == new_message(1001, sender_id=9)
    assert gw.metric("fechatter_notify_gateway_frames_sent_total") == 1
    response.close()


async def test_a_user_never_receives_another_users_notifications(gw: RunningGateway) -> None:
    # Given streams for A and B
    a_response, a = await gw.stream(21)
    b_response, b = await gw.stream(22)
    # When B gets a notification, then A gets one
    await gw.publish(22, new_message(2201))
    await gw.publish(21, new_message(2101))
    # Then each sees only their own: B's came first, so A's first frame would have been it
    assert [m for _, m in await _messages(b, 1)] == [2201]
    assert [m for _, m in await _messages(a, 1)] == [2101]
    # and nothing of B's follows either: the next frame A gets is the next one of A's
    await gw.publish(22, new_message(2202))
    marker = await gw.publish(21, new_message(2102))
    assert await a.next_json() == (marker, new_message(2102))
    a_response.close()
    b_response.close()


async def test_every_stream_of_a_user_gets_every_notification_and_none_is_evicted(
    gw: RunningGateway,
) -> None:
    # Given five streams of one user, opened one after the other (a chat switch each)
    streams = [await gw.stream(5) for _ in range(5)]
    # When three notifications are published
    for n in range(3):
        await gw.publish(5, new_message(500 + n))
    # Then every stream, the oldest included, gets all three in order
    for _, reader in streams:
        assert [m for _, m in await _messages(reader, 3)] == [500, 501, 502]
    assert gw.metric("fechatter_notify_gateway_open_streams") == 5
    assert gw.metric("fechatter_notify_gateway_connected_users") == 1
    for response, _ in streams:
        response.close()
    await async_wait_until(lambda: gw.metric("fechatter_notify_gateway_open_streams") == 0)
    await async_wait_until(lambda: gw.metric("fechatter_notify_gateway_connected_users") == 0)


async def test_resume_with_last_event_id_while_publishing_has_no_gap_and_no_duplicate(
    gw: RunningGateway,
) -> None:
    # Given a client that saw the first 10 of 20 notifications and then lost its stream
    first_response, first = await gw.stream(6)
    for n in range(20):
        await gw.publish(6, new_message(n))
    seen = await _messages(first, 10)
    first_response.close()
    last_id = seen[-1][0]

    # When it reconnects with Last-Event-ID while 300 more notifications are being published
    async def publisher() -> None:
        for n in range(20, 320):
            await gw.publish(6, new_message(n))
            if n % 7 == 0:
                await asyncio.sleep(0)

    task = asyncio.create_task(publisher())
    await asyncio.sleep(0)
    response, reader = await gw.stream(6, last_event_id=last_id)
    resumed = await _messages(reader, 310, within=20.0)
    await task

    # Then it gets exactly 10..319, in order, each once, with increasing ids
    assert [m for _, m in resumed] == list(range(10, 320))
    assert _ordered([entry_id for entry_id, _ in resumed])
    # and no duplicate trails them: the next frame is the next notification
    marker = await gw.publish(6, new_message(999))
    assert await reader.next_json() == (marker, new_message(999))
    assert gw.metric("fechatter_notify_gateway_frames_replayed_total") >= 10
    response.close()


async def test_an_announcement_of_an_already_replayed_entry_is_not_sent_twice(
    gw: RunningGateway,
) -> None:
    # Given an entry written to the inbox whose announcement is still in flight (a worker
    # between XADD and PUBLISH)
    first_id = await gw.publish(8, new_message(1))
    body = '{"type":"new_message","id":2}'
    late_id = await gw.write_inbox(8, body)

    # When the client resumes (the replay includes the entry) and the announcement then arrives
    response, reader = await gw.stream(8, last_event_id=first_id)
    assert await reader.next_json() == (late_id, {"type": "new_message", "id": 2})
    await gw.announce(8, late_id, body)
    third_id = await gw.publish(8, new_message(3))

    # Then the next frame is the new notification, not the entry again
    assert await reader.next_json() == (third_id, new_message(3))
    response.close()


async def test_last_event_id_as_query_parameter_replays_too(gw: RunningGateway) -> None:
    ids = [await gw.publish(9, new_message(n)) for n in range(3)]
    response, reader = await gw.stream(9, query={"lastEventId": ids[0]})
    assert await _messages(reader, 2) == [(ids[1], 1), (ids[2], 2)]
    response.close()


def _resync(reason: str, ids: list[str]) -> Any:
    """Matches the resync frame for ``reason`` whose ``earliest`` is one of ``ids`` (a kept entry)."""

    class Match:
        def __eq__(self, other: object) -> bool:
            return (isinstance(other, dict) and other.get("type") == "resync_required"
                    and other.get("reason") == reason and other.get("earliest") in ids)

        def __repr__(self) -> str:
            return f"resync_required({reason}, earliest in {ids})"

    return Match()


async def test_an_id_older_than_the_capped_inbox_asks_the_client_to_resync(
    gw: RunningGateway,
) -> None:
    # Given an inbox capped at 5 entries after 20 notifications
    ids = [await gw.publish(10, new_message(n), max_len=5) for n in range(20)]
    await gw.redis.xtrim(inbox_key(gw.namespace, 10), maxlen=5, approximate=False)

    # When a client resumes from the second one
    response, reader = await gw.stream(10, last_event_id=ids[1])

    # Then it is told to resync, and the live stream continues after that
    assert (await reader.next_json())[1] == _resync("trimmed", ids)
    assert gw.metric("fechatter_notify_gateway_resync_required_total") == 1
    new_id = await gw.publish(10, new_message(99))
    assert await reader.next_json() == (new_id, new_message(99))
    response.close()


@pytest.fixture(params=["redis_server", "redis7_server"], ids=["redis6.2", "redis7"])
async def gw_each_redis(request: pytest.FixtureRequest) -> AsyncIterator[RunningGateway]:
    """A gateway on the oldest Redis we support (6.2) and on Redis 7, one per test run."""
    server: RedisServer = request.getfixturevalue(request.param)
    key = SigningKey.generate()
    async with running_gateway(gateway_settings(server.url, key.public_pem), key) as gateway:
        yield gateway


async def test_an_id_with_later_entries_trimmed_asks_to_resync_on_every_redis(
    gw_each_redis: RunningGateway,
) -> None:
    gw = gw_each_redis
    ids = [await gw.publish(11, new_message(n)) for n in range(20)]
    await gw.redis.xtrim(inbox_key(gw.namespace, 11), maxlen=5, approximate=False)
    response, reader = await gw.stream(11, last_event_id=ids[1])
    assert (await reader.next_json())[1] == _resync("trimmed", ids)
    response.close()


async def test_an_id_from_an_inbox_that_expired_and_was_recreated_asks_to_resync_on_every_redis(
    gw_each_redis: RunningGateway,
) -> None:
    # Given a client that saw the second of three notifications, then an inbox that expired
    # (as after inbox_max_age without writes) and was written again
    gw = gw_each_redis
    ids = [await gw.publish(12, new_message(n)) for n in range(3)]
    await gw.redis.delete(inbox_key(gw.namespace, 12))
    # (An inbox expires days after its last entry, so the new one's ids are later: wait for the
    # clock to pass the old ids, or the new first id could equal one the client holds.)
    last_ms = int(ids[-1].split("-")[0])
    await async_wait_until(lambda: time.time() * 1000 > last_ms + 1, timeout=2, interval=0.001)
    new_id = await gw.publish(12, new_message(3))
    # When it resumes from the id it has
    response, reader = await gw.stream(12, last_event_id=ids[1])
    # Then it is told to resync: what followed its id is gone, even though nothing was trimmed
    # from the new inbox (Redis 7's entries-added equals its length there)
    assert (await reader.next_json())[1] == _resync("trimmed", [new_id])
    response.close()


@pytest.mark.parametrize("last_event_id", ["garbage", "99999999999999-0"])
async def test_an_id_we_never_sent_asks_the_client_to_resync(
    gw: RunningGateway, last_event_id: str
) -> None:
    await gw.publish(14, new_message(1))
    response, reader = await gw.stream(14, last_event_id=last_event_id)
    assert (await reader.next_json())[1]["type"] == "resync_required"
    response.close()


async def test_a_current_last_event_id_replays_nothing(gw: RunningGateway) -> None:
    # Given a client that saw all three notifications
    last = [await gw.publish(15, new_message(n)) for n in range(3)][-1]
    # When it resumes from the last one and a fourth is published
    response, reader = await gw.stream(15, last_event_id=last)
    fourth = await gw.publish(15, new_message(3))
    # Then the fourth is the first frame it gets: nothing was replayed (or sent) before it
    assert await reader.next_json() == (fourth, new_message(3))
    assert gw.metric("fechatter_notify_gateway_frames_replayed_total") == 0
    response.close()


async def test_keep_alive_comments_are_sent_every_keep_alive_seconds(
    redis_server: RedisServer,
) -> None:
    key = SigningKey.generate()
    settings = gateway_settings(redis_server.url, key.public_pem, keep_alive=0.1)
    async with running_gateway(settings, key) as gw:
        response, reader = await gw.stream(16)
        # No data frame is ever sent for a keep-alive: only comments arrive.
        with pytest.raises(TimeoutError):
            await reader.next_event(within=0.65)
        assert reader.comments.count("ping") >= 3
        response.close()


async def test_the_stream_closes_when_its_token_expires(redis_server: RedisServer) -> None:
    key = SigningKey.generate()
    settings = gateway_settings(redis_server.url, key.public_pem, jwt={"leeway": 0})
    async with running_gateway(settings, key) as gw:
        # Given a stream whose token expires in 2 s
        response, reader = await gw.stream(17, token=key.token(17, lifetime=2))
        started = time.monotonic()
        # Then the server ends it at expiry (and not before)
        await reader.wait_closed(within=6.0)
        assert 0.5 < time.monotonic() - started < 5.0
        await async_wait_until(
            lambda: gw.metric("fechatter_notify_gateway_disconnects_total",
                              {"reason": "token_expired"}) == 1
        )
        response.close()


async def test_a_client_that_does_not_read_is_disconnected_when_its_buffer_overflows(
    redis_server: RedisServer,
) -> None:
    key = SigningKey.generate()
    settings = gateway_settings(redis_server.url, key.public_pem, stream_buffer=4)
    async with running_gateway(settings, key) as gw:
        # Given a client with a tiny receive buffer that never reads
        host, port = gw.url.removeprefix("http://").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        request = (f"GET /events?access_token={key.token(18)} HTTP/1.1\r\n"
                   f"Host: {host}\r\n\r\n").encode()
        await asyncio.get_running_loop().sock_sendall(sock, request)
        await async_wait_until(lambda: gw.metric("fechatter_notify_gateway_connected_users") == 1)

        # And a healthy client of the same user
        healthy_response, healthy = await gw.stream(18)

        # When large notifications keep coming
        payload: dict[str, Any] = {"type": "new_message", "content": "x" * 65536}
        published = 0

        async def overflowed() -> bool:
            nonlocal published
            await gw.publish(18, {**payload, "id": published})
            published += 1
            return gw.metric("fechatter_notify_gateway_slow_clients_dropped_total") == 1

        await async_wait_until(overflowed, timeout=30.0, interval=0.0)

        # Then the slow stream is closed, and the healthy one still gets everything
        await async_wait_until(
            lambda: gw.metric("fechatter_notify_gateway_disconnects_total",
                              {"reason": "slow_client"}) == 1
        )
        got = await _messages(healthy, published, within=20.0)
        assert [m for _, m in got] == list(range(published))
        assert gw.metric("fechatter_notify_gateway_open_streams") == 1
        sock.close()
        healthy_response.close()


async def test_headers_are_flushed_at_once_even_when_redis_is_down(
    redis_server: RedisServer,
) -> None:
    key = SigningKey.generate()
    settings = gateway_settings(redis_server.url, key.public_pem)
    async with running_gateway(settings, key) as gw:
        redis_server.stop()
        started = time.monotonic()
        response, _ = await gw.connect(19)
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert time.monotonic() - started < 2.0
        response.close()


async def test_announcements_lost_while_redis_was_away_are_read_from_the_inbox(
    redis_server_aof: RedisServer,
) -> None:
    key = SigningKey.generate()
    settings = gateway_settings(redis_server_aof.url, key.public_pem)
    async with running_gateway(settings, key) as gw:
        # Given a live stream, and an entry whose announcement never went out
        response, reader = await gw.stream(20)
        body = '{"type":"new_message","id":1}'
        lost_id = await gw.write_inbox(20, body)

        # When Redis crashes and comes back
        redis_server_aof.kill()
        redis_server_aof.start()
        await async_wait_until(
            lambda: gw.metric("fechatter_notify_gateway_pubsub_reconnects_total") == 1,
            timeout=15.0,
        )

        # Then the stream catches up from the inbox, and live delivery resumes
        assert await reader.next_json(within=10.0) == (lost_id, {"type": "new_message", "id": 1})
        next_id = await gw.publish(20, new_message(2))
        assert await reader.next_json() == (next_id, new_message(2))
        response.close()


async def test_shutdown_ends_open_streams(redis_server: RedisServer) -> None:
    key = SigningKey.generate()
    settings = gateway_settings(redis_server.url, key.public_pem)
    async with running_gateway(settings, key) as gw:
        response, reader = await gw.stream(23)
        started = time.monotonic()
        await gw.runner.cleanup()
        assert time.monotonic() - started < 3.0
        await reader.wait_closed(within=2.0)
        assert gw.metric("fechatter_notify_gateway_disconnects_total",
                         {"reason": "server_shutdown"}) == 1
        response.close()


async def test_a_head_request_does_not_open_a_stream(gw: RunningGateway) -> None:
    async with gw.session.head(gw.url + "/events",
                               params={"access_token": gw.key.token(1)}) as response:
        assert response.status == 405
    assert isinstance(gw.session, aiohttp.ClientSession)


async def test_a_burst_larger_than_the_buffer_does_not_drop_a_client_that_reads(
    redis_server: RedisServer,
) -> None:
    key = SigningKey.generate()
    settings = gateway_settings(redis_server.url, key.public_pem, stream_buffer=4)
    async with running_gateway(settings, key) as gw:
        response, reader = await gw.stream(24)
        # When 60 notifications for the user arrive in one pipeline (one socket read)
        async with gw.redis.pipeline(transaction=False) as pipe:
            for n in range(60):
                pipe.xadd(inbox_key(gw.namespace, 24), {"n": f'{{"type":"new_message","id":{n}}}'})
            ids = [i.decode() for i in await pipe.execute()]
            for n, entry_id in enumerate(ids):
                body = f'{{"type":"new_message","id":{n}}}'
                pipe.publish(f"{gw.namespace}:live:24", f"{entry_id}\n{body}")
            await pipe.execute()
        # Then the reading client gets all of them and stays connected
        assert [m for _, m in await _messages(reader, 60)] == list(range(60))
        assert gw.metric("fechatter_notify_gateway_slow_clients_dropped_total") == 0
        response.close()


async def test_an_http_1_0_client_gets_an_unchunked_stream(gw: RunningGateway) -> None:
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /events?access_token={gw.key.token(25)} HTTP/1.0\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower()
    body = await asyncio.wait_for(reader.readuntil(b"}\n\n"), 5)  # retry + confirmed frames
    assert body.startswith(b"retry: 3000\n\ndata: {\"type\":\"connection_confirmed\"")
    entry_id = await gw.publish(25, new_message(1))
    frame = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
    assert frame.startswith(f"id: {entry_id}\ndata: ".encode())
    writer.close()


async def test_a_client_that_stays_behind_for_three_keep_alives_is_dropped(
    redis_server: RedisServer,
) -> None:
    key = SigningKey.generate()
    settings = gateway_settings(redis_server.url, key.public_pem, keep_alive=0.1)
    async with running_gateway(settings, key) as gw:
        # Given a client that stopped reading (a peer that vanished without a FIN looks alike)
        host, port = gw.url.removeprefix("http://").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (host, int(port)))
        await loop.sock_sendall(sock, f"GET /events?access_token={key.token(26)} HTTP/1.1\r\n"
                                      f"Host: {host}\r\n\r\n".encode())
        await async_wait_until(lambda: gw.metric("fechatter_notify_gateway_connected_users") == 1)

        # When enough is published to fill its socket buffers, but far less than
        # stream_buffer (256) frames
        big = {"type": "new_message", "content": "x" * 200_000}
        for n in range(100):
            await gw.publish(26, {**big, "id": n})
            if gw.metric("fechatter_notify_gateway_slow_clients_dropped_total"):
                break

        # Then the keep-alive timer finds it still behind and drops it
        await async_wait_until(
            lambda: gw.metric("fechatter_notify_gateway_disconnects_total",
                              {"reason": "slow_client"}) == 1, timeout=5.0)
        sock.close()


# -- live-only notifications (typing, presence) ---------------------------------------------------


async def test_a_live_only_frame_reaches_an_open_stream_without_an_id_between_inbox_entries(
    gw: RunningGateway,
) -> None:
    # Given an open stream
    response, reader = await gw.stream(12)
    # When an inbox entry, a live-only typing frame and another entry are published
    first = await gw.publish(12, new_message(1))
    await gw.publish_live(12, typing_started(9))
    second = await gw.publish(12, new_message(2))
    # Then all three arrive in order, the typing frame without id: (the browser keeps `first`)
    assert await reader.next_json() == (first, new_message(1))
    assert await reader.next_json() == (None, typing_started(9))
    assert await reader.next_json() == (second, new_message(2))
    assert await gw.redis.xlen(inbox_key(gw.namespace, 12)) == 2
    response.close()


async def test_a_resume_after_a_live_only_frame_replays_the_entries_after_the_last_id_only(
    gw: RunningGateway,
) -> None:
    # Given a client whose last frames were an entry and then a live-only frame (no id)
    response, reader = await gw.stream(13)
    first = await gw.publish(13, new_message(1))
    await gw.publish_live(13, typing_started(9))
    assert [await reader.next_json() for _ in range(2)] == [(first, new_message(1)), (None, typing_started(9))]
    response.close()
    second = await gw.publish(13, new_message(2))
    # When it resumes from the last id it got (the entry's: the typing frame set none)
    response, reader = await gw.stream(13, last_event_id=first)
    # Then exactly the later entry is replayed: nothing skipped, typing not replayed
    assert await reader.next_json() == (second, new_message(2))
    marker = await gw.publish(13, new_message(3))
    assert await reader.next_json() == (marker, new_message(3))
    response.close()


class _Transport:
    """Records what an EventStream writes (the socket side, without a socket)."""

    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        raise AssertionError("aborted")


def _sent(transport: _Transport) -> list[tuple[str | None, str]]:
    """(id or None, data) of each frame written."""
    frames = []
    for block in transport.written.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            frames.append((fields.get("id"), fields["data"]))
    return frames


async def test_a_live_only_frame_buffered_during_the_replay_keeps_its_place_between_entries(
    gw: RunningGateway,
) -> None:
    # Given an inbox with e0 (the client's Last-Event-ID) and e1, written before the stream
    # subscribed, and then, announced to the subscribed stream while it replays: e2, typing, e3
    key = inbox_key(gw.namespace, 14)
    bodies = [f'{{"type":"new_message","id":{n}}}' for n in range(4)]
    ids = [await gw.write_inbox(14, body) for body in bodies[:2]]
    stream = EventStream(14, _Transport(), StreamPolicy(limit=100, metrics=GatewayMetrics()), chunked=False)
    typing = '{"type":"typing_started","chat_id":42,"user_id":9,"user_name":null}'
    for n in (2, 3):
        ids.append(await gw.write_inbox(14, bodies[n]))
        stream.deliver(Announcement(ids[n].encode(), bodies[n].encode()))
        if n == 2:
            stream.deliver(Announcement(b"", typing.encode()))
    # When the replay from e0 runs and the stream goes live
    await stream.catch_up(gw.redis, key, parse_stream_id(ids[0]), trusted=False)
    stream.release()
    # Then the client gets e1, e2, typing, e3: publication order, typing still without an id
    assert _sent(stream.transport) == [
        (ids[1], bodies[1]), (ids[2], bodies[2]), (None, typing), (ids[3], bodies[3])]
