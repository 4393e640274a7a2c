"""Tokens against a real gateway process: where they may come from, the cookie, expiry, and
that no log line at any level ever carries one."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.auth import COOKIE_NAME
from gateway.testing import SigningKey, SseReader, new_message, publish_notification
from tests.gateway_proc import GatewayFactory, GatewayProc, gateway_procs  # noqa: F401
from tests.servers import RedisServer, async_wait_until

pytestmark = pytest.mark.usefixtures("gateway_procs")

NS = "tokens"
ORIGIN = "https://app.example.com"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # No cookie jar: every test sets the Cookie header itself, as a browser would send it.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        yield client


async def _gateway(gateway_procs: GatewayFactory, **gateway: Any) -> GatewayProc:  # noqa: F811
    gw = gateway_procs(namespace=NS, cors_allow_origin=ORIGIN, **gateway)
    await gw.wait_ready()
    return gw


async def _events(session: aiohttp.ClientSession, gw: GatewayProc, *, query: str | None = None,
                  bearer: str | None = None, cookie: str | None = None) -> aiohttp.ClientResponse:
    headers = {}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    if cookie is not None:
        headers["Cookie"] = f"{COOKIE_NAME}={cookie}"
    params = {"access_token": query} if query is not None else {}
    return await session.get(gw.url + "/events", params=params, headers=headers,
                             timeout=aiohttp.ClientTimeout(total=None, sock_read=None))


async def _user_of(response: aiohttp.ClientResponse) -> int:
    assert response.status == 200, await response.text()
    _, first = await SseReader(response).next_json()
    response.close()
    return int(first["user_id"])


async def test_header_then_cookie_then_query_and_two_different_tokens_are_refused(
    gateway_procs: GatewayFactory, session: aiohttp.ClientSession,  # noqa: F811
) -> None:
    gw = await _gateway(gateway_procs)
    a, b = gw.key.token(1), gw.key.token(2)
    # Each way alone works
    assert await _user_of(await _events(session, gw, bearer=a)) == 1
    assert await _user_of(await _events(session, gw, cookie=a)) == 1
    assert await _user_of(await _events(session, gw, query=a)) == 1
    # The same token twice is one token
    assert await _user_of(await _events(session, gw, bearer=a, cookie=a, query=a)) == 1
    # Two different tokens: 401, never a silent pick
    for kwargs in ({"bearer": a, "cookie": b}, {"cookie": a, "query": b}, {"bearer": a, "query": b}):
        async with await _events(session, gw, **kwargs) as response:
            assert response.status == 401
            assert (await response.json())["reason"] == "conflicting_tokens"


async def test_post_session_sets_an_httponly_cross_site_cookie_the_stream_accepts(
    gateway_procs: GatewayFactory, session: aiohttp.ClientSession,  # noqa: F811
) -> None:
    gw = await _gateway(gateway_procs)
    token = gw.key.token(3, lifetime=600)
    headers = {"Authorization": f"Bearer {token}", "Origin": ORIGIN}
    async with session.post(gw.url + "/session", headers=headers) as response:
        assert response.status == 204
        # Credentials are allowed for the explicitly listed origin (never with "*")
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        set_cookie = response.headers["Set-Cookie"]
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in set_cookie.split(";")}
    assert set_cookie.startswith(f"{COOKIE_NAME}={token};")
    assert {"httponly", "secure", "partitioned"} <= attributes.keys()
    assert attributes["samesite"].lower() == "samesite=none"
    assert attributes["path"] == "Path=/events"
    assert 590 <= int(attributes["max-age"].split("=")[1]) <= 600
    # The cookie opens a stream
    assert await _user_of(await _events(session, gw, cookie=token)) == 3
    # A token in the query is not taken for a session (it would be in URLs again), nor none
    for params in ({"access_token": token}, {}):
        async with session.post(gw.url + "/session", params=params) as response:
            assert response.status == 401
    # DELETE /session expires the cookie
    async with session.delete(gw.url + "/session") as response:
        assert response.status == 204
        assert re.search(rf"{COOKIE_NAME}=(\"\")?;.*Max-Age=0", response.headers["Set-Cookie"])


async def test_preflight_allows_credentials_only_for_a_listed_origin(
    gateway_procs: GatewayFactory, session: aiohttp.ClientSession,  # noqa: F811
) -> None:
    gw = await _gateway(gateway_procs)
    for origin, allowed in ((ORIGIN, True), ("https://evil.example", False)):
        headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
        async with session.options(gw.url + "/session", headers=headers) as response:
            assert response.status == 204
            assert ("Access-Control-Allow-Credentials" in response.headers) is allowed
            assert response.headers.get("Access-Control-Allow-Origin") == (origin if allowed else None)


async def test_expiry_ends_the_stream_with_a_token_expired_frame(
    gateway_procs: GatewayFactory, session: aiohttp.ClientSession,  # noqa: F811
) -> None:
    gw = await _gateway(gateway_procs, jwt={"leeway": 0})
    token = gw.key.token(4, lifetime=2)
    response = await _events(session, gw, query=token)
    reader = SseReader(response)
    assert (await reader.next_json())[1]["type"] == "connection_confirmed"
    # Then the last frame says "re-authenticate", and the response ends
    assert await reader.next_json(within=6.0) == (None, {"type": "token_expired"})
    with pytest.raises(EOFError):
        await reader.next_json()
    response.close()
    # and the same token is refused from then on (a client must not loop with it)
    async with await _events(session, gw, query=token) as again:
        assert again.status == 401
        assert (await again.json())["reason"] == "expired"


def _fragments(token: str) -> set[str]:
    """What of a token must never be in a log: its ends, and each base64url segment."""
    segments = {segment for segment in token.split(".") if len(segment) >= 8}
    return {token[:8], token[-8:], token[:16], token[-16:], *segments}


async def test_no_log_line_at_any_level_carries_a_token(
    gateway_procs: GatewayFactory, session: aiohttp.ClientSession,  # noqa: F811
    redis_server: RedisServer,
) -> None:
    gw = gateway_procs(namespace=NS, env={"NOTIFY_LOG_LEVEL": "DEBUG"}, jwt={"leeway": 0})
    await gw.wait_ready()
    other = SigningKey.generate()
    tokens = {
        "query": gw.key.token(5),
        "bearer": gw.key.token(6),
        "cookie": gw.key.token(7),
        "session": gw.key.token(8),
        "expiring": gw.key.token(9, lifetime=1),
        "bad_signature": other.token(10),
        "expired": gw.key.token(11, lifetime=-120),
        "wrong_audience": gw.key.token(12, audience="someone-else"),
        "conflict": gw.key.token(13),
    }
    # Streams that open, receive and close, through every way in
    redis = Redis.from_url(redis_server.url)
    for kwargs, user in (({"query": tokens["query"]}, 5), ({"bearer": tokens["bearer"]}, 6),
                         ({"cookie": tokens["cookie"]}, 7)):
        response = await _events(session, gw, **kwargs)
        reader = SseReader(response)
        assert (await reader.next_json())[1]["type"] == "connection_confirmed"
        entry = await publish_notification(redis, NS, user, new_message(user))
        assert (await reader.next_json())[0] == entry
        response.close()
    await redis.aclose()
    async with session.post(gw.url + "/session",
                            headers={"Authorization": f"Bearer {tokens['session']}"}) as response:
        assert response.status == 204
    # Refusals of every kind (each logs an auth_failed line)
    for name in ("bad_signature", "expired", "wrong_audience"):
        async with await _events(session, gw, query=tokens[name]) as response:
            assert response.status == 401
    async with await _events(session, gw, bearer=tokens["conflict"], query=tokens["query"]) as response:
        assert response.status == 401
    async with session.get(gw.url + "/events", params={"access_token": tokens["query"] + "x" * 20_000}) as response:
        assert response.status >= 400
    # A stream ended by its token's expiry
    response = await _events(session, gw, query=tokens["expiring"])
    await SseReader(response).wait_closed(within=6.0)
    response.close()

    # When the process stops, every line is written
    gw.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(gw.proc.wait, 20) == 0
    log = gw.log_text()
    # (DEBUG was on, and the requests were logged about)
    assert "level=debug" in log and "event=auth_failed" in log and "event=stream_closed" in log
    for name, token in tokens.items():
        for fragment in _fragments(token):
            assert fragment not in log, f"a fragment of the {name} token is in the log"
    await async_wait_until(lambda: gw.proc.poll() is not None)
