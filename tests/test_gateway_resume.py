"""Resuming against a real gateway process: every Last-Event-ID gets a clear answer, the replay
is capped, a loss is always signalled, and a reconnect storm reads each inbox once at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from events.inbox import inbox_key
from gateway.replay import _single_flight, ticket
from gateway.testing import SseReader, new_message, publish_notification
from tests.gateway_proc import GatewayFactory, GatewayProc, gateway_procs  # noqa: F401
from tests.servers import RedisServer

pytestmark = pytest.mark.usefixtures("gateway_procs")

#: A key no other test uses.
NS = "resume"


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def _gateway(gateway_procs: GatewayFactory, **gateway: Any) -> GatewayProc:  # noqa: F811
    gw = gateway_procs(namespace=NS, **gateway)
    await gw.wait_ready()
    return gw


async def _publish(redis: Redis, user_id: int, n: int, **kwargs: Any) -> str:
    return await publish_notification(redis, NS, user_id, new_message(n), **kwargs)


async def _confirmed(gw: GatewayProc, session: aiohttp.ClientSession, user_id: int,
                     last_event_id: str | None) -> tuple[aiohttp.ClientResponse, SseReader]:
    response, reader = await gw.open(session, user_id, last_event_id=last_event_id)
    assert response.status == 200, await response.text()
    assert (await reader.next_json())[1]["type"] == "connection_confirmed"
    return response, reader


@pytest.mark.parametrize("last_event_id", [
    "99999999999999999999-0", "1-99999999999999999999", "abc", "-1-0", "1-", "1-2-3",
    "1" * 1000 + "-0",
])
async def test_an_id_that_is_not_an_entry_id_gets_resync_then_the_live_stream_every_time(
    gateway_procs: GatewayFactory, redis: Redis, session: aiohttp.ClientSession,  # noqa: F811
    last_event_id: str,
) -> None:
    gw = await _gateway(gateway_procs)
    oldest = newest = await _publish(redis, 1, 0)
    for _ in range(2):  # a browser resends the same id on every reconnect
        response, reader = await _confirmed(gw, session, 1, last_event_id)
        # Then: resync_required (not an error, not the end of the response), whose id: moves the
        # browser's Last-Event-ID to the inbox's newest entry
        resync_id, resync = await reader.next_json()
        assert resync == {"type": "resync_required", "reason": "invalid_id", "earliest": oldest}
        assert resync_id == newest
        # and the stream goes on live
        live = await _publish(redis, 1, 1)
        assert await reader.next_json() == (live, new_message(1))
        newest = live
        response.close()
    assert "event=stream_redis_error" not in gw.log_text()


async def test_an_empty_last_event_id_starts_live_without_a_resync(
    gateway_procs: GatewayFactory, redis: Redis, session: aiohttp.ClientSession,  # noqa: F811
) -> None:
    gw = await _gateway(gateway_procs)
    await _publish(redis, 2, 0)
    response, reader = await _confirmed(gw, session, 2, "")
    live = await _publish(redis, 2, 1)
    assert await reader.next_json() == (live, new_message(1))
    response.close()


async def test_the_id_of_a_resync_frame_resumes_cleanly(
    gateway_procs: GatewayFactory, redis: Redis, session: aiohttp.ClientSession,  # noqa: F811
) -> None:
    # Given a client told to resync (an id beyond the inbox's newest: another history)
    gw = await _gateway(gateway_procs)
    await _publish(redis, 3, 0)
    response, reader = await _confirmed(gw, session, 3, "99999999999999-0")
    resync_id, resync = await reader.next_json()
    assert resync["reason"] == "unknown_id"
    response.close()
    # When it reconnects with the id that frame carried (what a browser sends next)
    later = await _publish(redis, 3, 1)
    response, reader = await _confirmed(gw, session, 3, resync_id)
    # Then it gets exactly what followed, no second resync
    assert await reader.next_json() == (later, new_message(1))
    response.close()


async def test_a_trimmed_history_is_signalled_with_the_earliest_kept_id(
    gateway_procs: GatewayFactory, redis: Redis, session: aiohttp.ClientSession,  # noqa: F811
) -> None:
    gw = await _gateway(gateway_procs)
    ids = [await _publish(redis, 4, n) for n in range(10)]
    await redis.xtrim(inbox_key(NS, 4), maxlen=3, approximate=False)
    response, reader = await _confirmed(gw, session, 4, ids[1])
    # Never a partial replay: one frame saying what is lost, the newest id to resume from
    assert await reader.next_json() == (
        ids[-1], {"type": "resync_required", "reason": "trimmed", "earliest": ids[-3]}
    )
    live = await _publish(redis, 4, 10)
    assert await reader.next_json() == (live, new_message(10))
    response.close()


async def test_a_client_further_behind_than_the_replay_cap_gets_resync_instead(
    gateway_procs: GatewayFactory, redis: Redis, session: aiohttp.ClientSession,  # noqa: F811
) -> None:
    gw = await _gateway(gateway_procs, replay_max_entries=5)
    ids = [await _publish(redis, 5, n) for n in range(12)]
    # 6 entries after ids[5]: one more than the cap
    response, reader = await _confirmed(gw, session, 5, ids[5])
    assert await reader.next_json() == (
        ids[-1], {"type": "resync_required", "reason": "too_far_behind", "earliest": ids[0]}
    )
    response.close()
    # 5 entries after ids[6]: exactly the cap, replayed
    response, reader = await _confirmed(gw, session, 5, ids[6])
    assert [await reader.next_json() for _ in range(5)] == [(ids[n], new_message(n)) for n in range(7, 12)]
    response.close()


def _xrange_calls(info: dict[str, Any]) -> int:
    stats = info.get("cmdstat_xrange") or {}
    return int(stats.get("calls", 0))


async def test_a_reconnect_storm_reads_the_inbox_once(
    gateway_procs: GatewayFactory, redis: Redis, session: aiohttp.ClientSession,  # noqa: F811
) -> None:
    gw = await _gateway(gateway_procs)
    ids = [await _publish(redis, 6, n) for n in range(5)]
    before = _xrange_calls(await redis.info("commandstats"))

    # Given Redis slow to answer for a moment (as under a reconnect storm after a gateway
    # restart) while 20 streams of one user reconnect with the same Last-Event-ID
    await redis.execute_command("CLIENT", "PAUSE", "1500")
    opened = await asyncio.gather(*(gw.open(session, 6, last_event_id=ids[0]) for _ in range(20)))
    assert all(response.status == 200 for response, _ in opened)

    # Then every stream gets the same replay
    for response, reader in opened:
        assert (await reader.next_json())[1]["type"] == "connection_confirmed"
        assert [await reader.next_json() for _ in range(4)] == [(ids[n], new_message(n)) for n in range(1, 5)]
        response.close()
    # from one XRANGE
    assert _xrange_calls(await redis.info("commandstats")) - before == 1


async def test_a_read_that_began_before_a_stream_registered_is_never_shared_with_it() -> None:
    # (In process: which in-flight read a stream may join decides whether an entry can fall
    # between the read and the stream's live buffer.)
    reads = 0
    gate = asyncio.Event()

    async def read() -> int:
        nonlocal reads
        reads += 1
        number = reads
        await gate.wait()
        return number

    registered_before = ticket()
    first = asyncio.create_task(_single_flight("k", registered_before, read))
    await asyncio.sleep(0)  # let the first read begin
    registered_after = ticket()
    # A stream registered before that read began shares it; one registered after does not
    shared = asyncio.create_task(_single_flight("k", registered_before, read))
    separate = asyncio.create_task(_single_flight("k", registered_after, read))
    gate.set()
    assert list(await asyncio.gather(first, shared, separate)) == [1, 1, 2]
