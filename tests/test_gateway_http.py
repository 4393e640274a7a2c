"""CORS, health, readiness and metrics of the gateway."""

from __future__ import annotations

import asyncio

import pytest

from gateway import state
from gateway.app import REDIS_POOL_SIZE
from gateway.testing import RunningGateway, SigningKey, gateway_settings, running_gateway
from tests.servers import RedisServer, async_wait_until


@pytest.mark.parametrize("path", ["/events", "/presence/update", "/online-users"])
async def test_a_cors_preflight_is_answered(gw: RunningGateway, path: str) -> None:
    headers = {
        "Origin": "https://fechatter.vercel.app",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with gw.session.options(gw.url + path, headers=headers) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "GET" in response.headers["Access-Control-Allow-Methods"]
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        assert response.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
        assert "Access-Control-Allow-Credentials" not in response.headers


async def test_a_configured_origin_list_is_echoed_only_for_listed_origins(
    redis_server: RedisServer,
) -> None:
    key = SigningKey.generate()
    settings = gateway_settings(redis_server.url, key.public_pem,
                                cors_allow_origin="https://a.example, https://b.example")
    async with running_gateway(settings, key) as gw:
        async with gw.session.get(gw.url + "/presence",
                                  headers={"Origin": "https://b.example"}) as response:
            assert response.headers["Access-Control-Allow-Origin"] == "https://b.example"
            assert response.headers["Vary"] == "Origin"
        async with gw.session.get(gw.url + "/presence",
                                  headers={"Origin": "https://evil.example"}) as response:
            assert "Access-Control-Allow-Origin" not in response.headers


async def test_healthz_and_readyz_answer_with_json(gw: RunningGateway) -> None:
    async with gw.session.get(gw.url + "/healthz") as response:
        assert response.status == 200
        assert (await response.json())["ok"] is True

    async def ready() -> bool:
        async with gw.session.get(gw.url + "/readyz") as r:
            return r.status == 200

    await async_wait_until(ready)
    async with gw.session.get(gw.url + "/readyz") as response:
        body = await response.json()
    assert body["ready"] is True and body["reasons"] == []
    assert body["checks"]["redis"] == "ok" and body["checks"]["pubsub"] == "ok"
    assert body["checks"]["nats"].startswith("down")  # best effort: not a readiness reason


async def test_readyz_is_503_with_reasons_when_redis_is_down(
    gw: RunningGateway, redis_server: RedisServer
) -> None:
    redis_server.stop()
    async with gw.session.get(gw.url + "/readyz") as response:
        body = await response.json()
    assert response.status == 503
    assert body["ready"] is False
    assert any(reason.startswith("redis unreachable") for reason in body["reasons"])


async def test_metrics_are_exposed_in_prometheus_text(gw: RunningGateway) -> None:
    response, _ = await gw.stream(50)
    async with gw.session.get(gw.url + "/events") as refused:
        assert refused.status == 401
    async with gw.session.get(gw.url + "/metrics") as metrics:
        text = await metrics.text()
    assert metrics.status == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    for name in (
        "fechatter_notify_gateway_open_streams 1.0",
        "fechatter_notify_gateway_connects_total 1.0",
        'fechatter_notify_gateway_auth_failures_total{reason="missing"} 1.0',
        "fechatter_notify_gateway_frames_sent_total",
        "fechatter_notify_gateway_frames_replayed_total",
        "fechatter_notify_gateway_slow_clients_dropped_total",
        "fechatter_notify_gateway_disconnects_total",
    ):
        assert name in text, name
    response.close()


async def test_a_request_waits_for_a_pooled_redis_connection_longer_than_one_command_may_take(
    redis_server: RedisServer,
) -> None:
    # Given a gateway whose Redis commands time out after 300 ms and whose pool waits 30 s (the default)
    key = SigningKey.generate()
    settings = gateway_settings(redis_server.url, key.public_pem)
    settings = settings.model_copy(update={"redis": settings.redis.model_copy(update={"socket_timeout": 0.3})})
    async with running_gateway(settings, key) as gw:
        pool = gw.app[state.REDIS].connection_pool
        # When every pooled connection is taken (a reconnect storm) and one comes back after 1 s
        taken = [await pool.get_connection() for _ in range(REDIS_POOL_SIZE)]
        waiting = asyncio.ensure_future(pool.get_connection())
        await asyncio.sleep(1.0)  # the storm's length: the point is a wait longer than socket_timeout
        assert not waiting.done()
        await pool.release(taken.pop())
        # Then the waiting request gets it, where a wait bounded by socket_timeout had failed it
        connection = await asyncio.wait_for(waiting, 5)
        for held in [*taken, connection]:
            await pool.release(held)
