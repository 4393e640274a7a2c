"""Gateway authentication: every bad token is a 401 with a short JSON body and nothing streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest

from gateway.testing import RunningGateway, SigningKey, gateway_settings, running_gateway
from tests.servers import RedisServer


@pytest.fixture
async def gw(redis_server: RedisServer) -> AsyncIterator[RunningGateway]:
    key = SigningKey.generate()
    settings = gateway_settings(redis_server.url, key.public_pem, jwt={"leeway": 0})
    async with running_gateway(settings, key) as gateway:
        yield gateway


def _tokens(key: SigningKey) -> dict[str, str | None]:
    other = SigningKey.generate()
    return {
        "missing": None,
        "expired": key.token(7, lifetime=-120),
        "bad_signature": other.token(7),
        "wrong_audience": key.token(7, audience="somebody-else"),
        "wrong_issuer": key.token(7, issuer="not-fechatter"),
        "malformed": "not.a.jwt",
        "no_user_id": key.token(None),
        "missing_claim": key.token(7, drop=("sub",)),
        "wrong_algorithm": jwt.encode({"sub": "7", "user": {"id": 7}}, "s" * 32, algorithm="HS256"),
    }


REASONS = list(_tokens(SigningKey.generate()))


@pytest.mark.parametrize("reason", REASONS)
async def test_a_bad_token_is_refused_with_401_and_nothing_is_streamed(
    gw: RunningGateway, reason: str
) -> None:
    # Given a token that is wrong in exactly one way
    token = _tokens(gw.key)[reason]
    params = {} if token is None else {"access_token": token}

    # When the client opens the stream
    async with gw.session.get(gw.url + "/events", params=params) as response:
        body: Any = await response.json()

    # Then it gets a 401 with a JSON reason, not an event stream
    assert response.status == 401
    assert response.content_type == "application/json"
    assert body == {"error": "unauthorized", "reason": reason}
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert gw.metric("fechatter_notify_gateway_auth_failures_total", {"reason": reason}) == 1
    assert gw.metric("fechatter_notify_gateway_connects_total") == 0


async def test_a_token_in_the_authorization_header_is_accepted(gw: RunningGateway) -> None:
    response, reader = await gw.connect(11, bearer=True)
    assert response.status == 200
    _, first = await reader.next_json()
    assert first["type"] == "connection_confirmed"
    assert first["user_id"] == 11
    response.close()


async def test_the_user_is_the_tokens_user_id_not_its_subject(gw: RunningGateway) -> None:
    token = gw.key.token(12, sub="999")
    response, reader = await gw.connect(token=token)
    _, first = await reader.next_json()
    assert first["user_id"] == 12
    response.close()


async def test_a_token_inside_the_leeway_is_accepted(redis_server: RedisServer) -> None:
    # Given the default 60 s leeway and a token that expired 20 s ago
    key = SigningKey.generate()
    settings = gateway_settings(redis_server.url, key.public_pem)
    async with running_gateway(settings, key) as gateway:
        response, reader = await gateway.connect(token=key.token(13, lifetime=-20))
        # Then the stream opens
        assert response.status == 200
        _, first = await reader.next_json()
        assert first["user_id"] == 13
        response.close()


async def test_without_a_public_key_every_stream_is_refused(redis_server: RedisServer) -> None:
    key = SigningKey.generate()
    settings = gateway_settings(redis_server.url, "")
    async with running_gateway(settings, key) as gateway:
        async with gateway.session.get(gateway.url + "/events",
                                       params={"access_token": key.token(1)}) as response:
            assert response.status == 401
            assert (await response.json())["reason"] == "not_configured"
        async with gateway.session.get(gateway.url + "/readyz") as response:
            assert response.status == 503
