"""Presence from open streams (Redis + NATS UserPresence) and the presence HTTP endpoints."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from events.inbox import members_key, online_key, presence_key
from gateway import state
from gateway.testing import RunningGateway, SigningKey, gateway_settings, running_gateway
from tests.servers import NatsServer, RedisServer, async_wait_until


@pytest.fixture
async def gw(redis_server: RedisServer, nats_server: NatsServer) -> AsyncIterator[RunningGateway]:
    key = SigningKey.generate()
    settings = gateway_settings(redis_server.url, key.public_pem, nats_servers=[nats_server.url],
                                presence_ttl=0.6)
    async with running_gateway(settings, key) as gateway:
        await async_wait_until(lambda: gateway.app[state.NATS].connected, timeout=10.0)
        yield gateway


@pytest.fixture
async def presence_events(nats_server: NatsServer) -> AsyncIterator[list[tuple[str, Any]]]:
    """Every UserPresence event published on core NATS, as (subject, payload)."""
    received: list[tuple[str, Any]] = []

    async def collect(msg: Msg) -> None:
        received.append((msg.subject, json.loads(msg.data)))

    client = await nats.connect(nats_server.url)
    await client.subscribe("fechatter.realtime.user.*.presence", cb=collect)
    await client.flush()
    yield received
    await client.close()


async def _presence(gw: RunningGateway, user_id: int) -> dict[str, str]:
    raw = await gw.redis.hgetall(presence_key(gw.namespace, user_id))
    return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _statuses(events: list[tuple[str, Any]], user_id: int) -> list[str]:
    return [payload["UserPresence"]["status"] for subject, payload in events
            if subject == f"fechatter.realtime.user.{user_id}.presence"]


async def test_the_first_stream_marks_online_and_the_last_one_marks_offline(
    gw: RunningGateway, presence_events: list[tuple[str, Any]]
) -> None:
    # When a user opens two streams
    first, _ = await gw.stream(30)
    second, _ = await gw.stream(30)
    await async_wait_until(lambda: _statuses(presence_events, 30) == ["online"])
    presence = await _presence(gw, 30)
    assert presence["status"] == "online"
    assert await gw.redis.zcard(online_key(gw.namespace, 30)) == 2
    # ... with an expiry, so a crashed gateway leaves no ghost
    assert 0 < await gw.redis.pttl(presence_key(gw.namespace, 30)) <= 600
    assert 0 < await gw.redis.pttl(online_key(gw.namespace, 30)) <= 600

    # Then closing one stream changes nothing
    first.close()
    await async_wait_until(lambda: gw.metric("fechatter_notify_gateway_open_streams") == 1)

    async def one_stream_left() -> bool:
        return await gw.redis.zcard(online_key(gw.namespace, 30)) == 1

    await async_wait_until(one_stream_left)
    assert (await _presence(gw, 30))["status"] == "online"

    # And the refresher keeps the entry alive well past its 0.6 s TTL
    await asyncio.sleep(1.5)
    assert (await _presence(gw, 30))["status"] == "online"

    # When the last one closes, the user is offline and that is announced
    second.close()

    async def offline() -> bool:
        return (await _presence(gw, 30)).get("status") == "offline"

    await async_wait_until(offline)
    await async_wait_until(lambda: _statuses(presence_events, 30) == ["online", "offline"])
    assert await gw.redis.exists(online_key(gw.namespace, 30)) == 0
    subject, payload = presence_events[-1]
    assert subject == "fechatter.realtime.user.30.presence"
    assert set(payload) == {"UserPresence"}
    assert payload["UserPresence"]["user_id"] == 30
    assert payload["UserPresence"]["last_seen"].endswith("+00:00")


async def test_streaming_works_when_nats_is_unreachable(redis_server: RedisServer) -> None:
    key = SigningKey.generate()
    # gateway_settings points NATS at a port nothing listens on.
    async with running_gateway(gateway_settings(redis_server.url, key.public_pem), key) as gw:
        response, reader = await gw.stream(31)
        entry_id = await gw.publish(31, {"type": "new_message", "id": 1})
        assert await reader.next_json() == (entry_id, {"type": "new_message", "id": 1})

        async def online() -> bool:
            return (await _presence(gw, 31)).get("status") == "online"

        await async_wait_until(online)
        await async_wait_until(
            lambda: gw.metric("fechatter_notify_gateway_presence_publish_failures_total") >= 1
        )
        response.close()


async def test_get_presence_answers_ok_for_the_clients_server_mode(gw: RunningGateway) -> None:
    async with gw.session.get(gw.url + "/presence",
                              headers={"ngrok-skip-browser-warning": "true"}) as response:
        text = await response.text()
        assert response.status == 200
        assert json.loads(text)["ok"] is True
        assert "nginx-http" not in text


async def test_post_presence_update_sets_and_announces_the_status(
    gw: RunningGateway, presence_events: list[tuple[str, Any]]
) -> None:
    token = gw.key.token(32)
    async with gw.session.post(gw.url + "/presence/update",
                               json={"status": "busy", "timestamp": "2025-06-27T02:47:00Z"},
                               headers={"Authorization": f"Bearer {token}"}) as response:
        body = await response.json()
    assert response.status == 200
    assert body["ok"] is True and body["status"] == "busy" and body["user_id"] == 32
    assert (await _presence(gw, 32))["status"] == "busy"
    await async_wait_until(lambda: _statuses(presence_events, 32) == ["busy"])


@pytest.mark.parametrize("body", [{"status": "sleeping"}, {}, ["online"], "not json"])
async def test_post_presence_update_rejects_an_invalid_status_naming_the_field(
    gw: RunningGateway, body: Any
) -> None:
    headers = {"Authorization": f"Bearer {gw.key.token(33)}"}
    data = body if isinstance(body, str) else json.dumps(body)
    async with gw.session.post(gw.url + "/presence/update", data=data,
                               headers={**headers, "Content-Type": "application/json"}) as response:
        answer = await response.json()
    assert response.status == 400
    assert answer["field"] == "status"


async def test_post_presence_update_needs_a_token(gw: RunningGateway) -> None:
    async with gw.session.post(gw.url + "/presence/update", json={"status": "away"}) as response:
        assert response.status == 401
        assert (await response.json())["reason"] == "missing"


async def test_online_users_lists_present_members_for_a_member_only(gw: RunningGateway) -> None:
    # Given chat 77 with members 40 (streaming), 41 (away), 42 (never connected)
    await gw.redis.sadd(members_key(gw.namespace, 77), "40", "41", "42")
    stream, _ = await gw.stream(40)

    async def online() -> bool:
        return (await _presence(gw, 40)).get("status") == "online"

    await async_wait_until(online)
    async with gw.session.post(gw.url + "/presence/update", json={"status": "away"},
                               headers={"Authorization": f"Bearer {gw.key.token(41)}"}) as r:
        assert r.status == 200

    # When a member asks, they get the present members with status and last_seen
    async with gw.session.get(gw.url + "/online-users", params={"chat_id": "77"},
                              headers={"Authorization": f"Bearer {gw.key.token(42)}"}) as r:
        body = await r.json()
    assert r.status == 200
    assert [(u["user_id"], u["status"]) for u in body["online_users"]] == [(40, "online"),
                                                                          (41, "away")]
    assert all(u["last_seen"] for u in body["online_users"])

    # And a non-member is refused, as is a caller without a token or a chat id
    async with gw.session.get(gw.url + "/online-users", params={"chat_id": "77"},
                              headers={"Authorization": f"Bearer {gw.key.token(43)}"}) as r:
        assert r.status == 403
    async with gw.session.get(gw.url + "/online-users", params={"chat_id": "77"}) as r:
        assert r.status == 401
    async with gw.session.get(gw.url + "/online-users",
                              headers={"Authorization": f"Bearer {gw.key.token(40)}"}) as r:
        assert r.status == 400
        assert (await r.json())["field"] == "chat_id"
    stream.close()
