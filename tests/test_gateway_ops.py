"""The ops page (``/ops``): off without ``gateway.ops_token``, 401 without the operator, its data's
shape, its files' headers, the token never logged or shown; and a real Chromium that reads live,
non-zero rates while a test publishes through the whole pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import socket
import tomllib
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Final

import aiohttp
import nats
import pytest

from fechatter_notify.embedded import free_port
from gateway.ops_assets import CSP, STATIC, UPLOT_VERSION
from gateway.ops_auth import COOKIE_NAME, SESSION_S, OperatorAuth
from gateway.ops_data import CHARTS
from gateway.testing import RunningGateway, SigningKey, gateway_settings, new_message, running_gateway
from runtime import Registration
from settings import ConfigError, load_settings
from tests.browser.driver import CdpError, Chromium, Page
from tests.pipeline import Pipeline, start_pipeline
from tests.servers import NatsServer, RedisServer, async_wait_until

ROOT = Path(__file__).resolve().parent.parent
TOKEN = secrets.token_hex(32)
ASSET = re.compile(r'(?:src|href)="(ops/static/[^"]+)"')


@pytest.fixture
async def gw(redis_server: RedisServer) -> AsyncIterator[RunningGateway]:
    key = SigningKey.generate()
    settings = gateway_settings(redis_server.url, key.public_pem, ops_token=TOKEN,
                                cors_allow_origin="https://app.example")
    async with running_gateway(settings, key) as gateway:
        yield gateway


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def sign_in(gw: RunningGateway) -> str:
    """The session cookie's value after the browser's ``/ops?token=`` visit."""
    async with gw.session.get(gw.url + "/ops", params={"token": TOKEN}, allow_redirects=False) as response:
        assert response.status == 303
        morsel = response.cookies[COOKIE_NAME]
        return morsel.value


# ---------------------------------------------------------------- off, refused

async def test_without_a_token_configured_every_ops_path_is_404(redis_server: RedisServer) -> None:
    key = SigningKey.generate()
    async with running_gateway(gateway_settings(redis_server.url, key.public_pem), key) as gw:
        for path in ("/ops", "/ops/data", "/ops/static/ops.js", "/ops?token=" + TOKEN):
            async with gw.session.get(gw.url + path, headers=bearer()) as response:
                assert response.status == 404, path


@pytest.mark.parametrize("path", ["/ops", "/ops/data", "/ops/static/ops.js"])
async def test_every_ops_path_is_401_without_the_token_or_with_a_wrong_one(gw: RunningGateway, path: str) -> None:
    wrong = secrets.token_hex(32)
    forged = f"{9_999_999_999}.{'0' * 64}"
    attempts: list[dict[str, str]] = [
        {}, bearer(wrong), bearer(TOKEN[:-1]), {"Cookie": f"{COOKIE_NAME}={forged}"},
        {"Cookie": f"{COOKIE_NAME}={TOKEN}"},  # the token itself is not a session
        # A wrong Bearer is refused even beside a good session
        {**bearer(wrong), "Cookie": f"{COOKIE_NAME}={await sign_in(gw)}"},
    ]
    for headers in attempts:
        async with gw.session.get(gw.url + path, headers={**headers, "Origin": "https://app.example"}) as response:
            assert response.status == 401, headers
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert response.headers["Content-Security-Policy"] == CSP
            assert "Access-Control-Allow-Origin" not in response.headers
            body = await response.json()
            assert body["error"] == "unauthorized" and "sign_in" in body
    async with gw.session.get(gw.url + "/ops", params={"token": wrong}, allow_redirects=False) as response:
        assert response.status == 401
        assert "Set-Cookie" not in response.headers


async def test_the_token_is_never_logged(gw: RunningGateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cookie = await sign_in(gw)
    for headers in (bearer(), bearer("x" + TOKEN), {}):
        async with gw.session.get(gw.url + "/ops/data", headers=headers):
            pass
    async with gw.session.get(gw.url + "/ops", params={"token": TOKEN[::-1]}):
        pass
    lines = [f"{r.getMessage()} {r.__dict__}" for r in caplog.records]
    assert any("ops_session_started" in line for line in lines)
    assert any("ops_auth_failed" in line for line in lines)
    for secret in (TOKEN, TOKEN[::-1], cookie):
        assert not [line for line in lines if secret in line]


# ---------------------------------------------------------------- the browser's way in, the files

async def test_a_token_in_the_query_becomes_a_session_cookie_and_leaves_the_url(gw: RunningGateway) -> None:
    async with gw.session.get(gw.url + "/ops", params={"token": TOKEN}, allow_redirects=False) as response:
        assert response.status == 303
        assert response.headers["Location"] == "ops"  # relative: /ops, without the query
        assert response.headers["Cache-Control"] == "no-store"
        cookie = response.headers["Set-Cookie"]
    value = cookie.split(";")[0].split("=", 1)[1]
    attributes = {part.strip() for part in cookie.split(";")[1:]}
    assert {"HttpOnly", "SameSite=Strict", "Path=/ops", f"Max-Age={SESSION_S}"} <= attributes
    assert "Secure" not in attributes  # plain HTTP: a browser would drop a Secure cookie
    assert TOKEN not in cookie

    # Behind a TLS-terminating proxy the cookie is Secure
    async with gw.session.get(gw.url + "/ops", params={"token": TOKEN}, allow_redirects=False,
                              headers={"X-Forwarded-Proto": "https"}) as response:
        assert "Secure" in {part.strip() for part in response.headers["Set-Cookie"].split(";")}

    # The session opens the page and its data
    session = {"Cookie": f"{COOKIE_NAME}={value}"}
    async with gw.session.get(gw.url + "/ops", headers=session) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Content-Security-Policy"] == CSP
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        page = await response.text()
    assert "<script>" not in page and "style=" not in page  # nothing inline: the CSP allows none
    async with gw.session.get(gw.url + "/ops/data", headers=session) as response:
        assert response.status == 200


def test_an_expired_or_rotated_session_is_refused() -> None:
    now = [1_000_000.0]
    auth = OperatorAuth(TOKEN, clock=lambda: now[0])
    cookie = auth.session_cookie()
    assert auth.session_valid(cookie)
    assert not OperatorAuth(secrets.token_hex(32), clock=lambda: now[0]).session_valid(cookie)
    expires, signature = cookie.split(".")
    assert not auth.session_valid(f"{int(expires) + 3600}.{signature}")  # extended by hand
    now[0] += SESSION_S
    assert not auth.session_valid(cookie)


async def test_the_page_files_have_their_types_hashes_and_cache_headers(gw: RunningGateway) -> None:
    async with gw.session.get(gw.url + "/ops", headers=bearer()) as response:
        refs = ASSET.findall(await response.text())
    types = {"vendor/uPlot.iife.min.js": "text/javascript", "ops.js": "text/javascript",
             "vendor/uPlot.min.css": "text/css", "ops.css": "text/css"}
    assert {ref.split("?")[0].removeprefix("ops/static/") for ref in refs} == set(types)
    for ref in refs:
        name, _, version = ref.removeprefix("ops/static/").partition("?v=")
        async with gw.session.get(f"{gw.url}/{ref}", headers=bearer()) as response:
            assert response.status == 200, ref
            assert response.headers["Content-Type"] == f"{types[name]}; charset=utf-8"
            assert response.headers["Cache-Control"] == "private, max-age=31536000, immutable"
            assert response.headers["ETag"] == f'"{version}"'
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert await response.read() == (STATIC / name).read_bytes()
        # Without its hash (or with an old one): revalidated, 304 while unchanged
        async with gw.session.get(f"{gw.url}/ops/static/{name}", headers=bearer()) as response:
            assert response.headers["Cache-Control"] == "private, no-cache"
        async with gw.session.get(f"{gw.url}/ops/static/{name}",
                                  headers={**bearer(), "If-None-Match": f'"{version}"'}) as response:
            assert response.status == 304
    for missing in ("nope.js", "../ops.py", "%2e%2e/ops.py", "vendor"):
        async with gw.session.get(f"{gw.url}/ops/static/{missing}", headers=bearer()) as response:
            assert response.status == 404, missing


async def ops_data(gw: RunningGateway) -> dict[str, Any]:
    async with gw.session.get(gw.url + "/ops/data", headers=bearer()) as response:
        assert response.status == 200, await response.text()
        data: dict[str, Any] = await response.json()
        return data


async def test_the_data_has_every_chart_in_order_and_is_never_cached(gw: RunningGateway) -> None:
    async with gw.session.get(gw.url + "/ops/data", headers={**bearer(), "Origin": "https://app.example"}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.headers["Cache-Control"] == "no-store"
        assert "Access-Control-Allow-Origin" not in response.headers  # a listed origin may not read it
        data = await response.json()
    assert set(data) >= {"at", "interval_s", "source", "charts", "processes", "snapshot"}
    assert isinstance(data["at"], float)
    assert [chart["id"] for chart in data["charts"]] == [chart[0] for chart in CHARTS]
    assert data["source"] == f"fleet {gw.namespace}"


async def test_the_data_shows_the_registered_processes_and_their_rates(gw: RunningGateway) -> None:
    # Given this gateway registered (as each process registers itself) and a process that is gone
    alive = Registration("gateway", gw.namespace, metrics_url=gw.url + "/metrics", ttl_s=30)
    gone = Registration("bridge", gw.namespace, metrics_url=f"http://127.0.0.1:{free_port()}/metrics", ttl_s=30)
    await alive.start(gw.redis)
    await gone.start(gw.redis)
    try:
        _, reader = await gw.stream(9)
        first = await ops_data(gw)
        # When frames flow and the page polls again (a second apart: the rates need two snapshots)
        await gw.publish(9, new_message(1))
        await reader.next_json()

        async def rated() -> dict[str, Any] | None:
            data = await ops_data(gw)
            return data if data["interval_s"] and chart(data, "rates").get("frames_sent") else None

        data = await async_wait_until(rated, timeout=10, interval=0.2,
                                      message="no frames_sent rate in /ops/data")
    finally:
        await alive.stop()
        await gone.stop()
    assert first["interval_s"] is None  # this test's first snapshot: no rate yet
    name = f"{socket.gethostname()}:{os.getpid()}"
    assert chart(data, "streams")[name] == 1.0
    assert set(chart(data, "rates")) >= {"frames_sent", "connects"}
    assert all(value is None or isinstance(value, float) for c in data["charts"] for value in c["series"].values())
    by_role = {p["role"]: p for p in data["processes"]}
    assert (by_role["gateway"]["name"], by_role["gateway"]["up"], by_role["gateway"]["state"]) == (name, True, "up")
    assert not by_role["bridge"]["up"] and by_role["bridge"]["state"].startswith("down: ")
    assert {p["role"] for p in data["snapshot"]["processes"]} >= {"gateway", "bridge"}  # top's own figures


async def test_redis_down_is_a_503_the_page_can_show_and_the_data_returns_with_it(
    gw: RunningGateway, redis_server: RedisServer,
) -> None:
    redis_server.kill()
    async with gw.session.get(gw.url + "/ops/data", headers=bearer()) as response:
        assert response.status == 503
        assert response.headers["Cache-Control"] == "no-store"
        assert (await response.json())["error"] == "redis_unavailable"
    redis_server.start()
    await async_wait_until(lambda: ops_data(gw), timeout=10, interval=0.2, ignore=(AssertionError,),
                           message="/ops/data did not come back with Redis")


def chart(data: dict[str, Any], chart_id: str) -> dict[str, float | None]:
    (found,) = [c for c in data["charts"] if c["id"] == chart_id]
    series: dict[str, float | None] = found["series"]
    return series


# ---------------------------------------------------------------- the setting, the package

@pytest.mark.parametrize("token", ["short", "a" * 40 + "+/=", "é" * 40, "a" * 31 + " "])
def test_a_weak_or_unsafe_ops_token_is_refused_without_being_shown(token: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(env={"NOTIFY__GATEWAY__OPS_TOKEN": token}, text="")
    (problem,) = [p for p in raised.value.problems if p.level == "error"]
    assert "ops_token" in problem.message
    # Named at its key and its source, the value masked
    assert problem.path == "gateway.ops_token" and problem.origin == "env NOTIFY__GATEWAY__OPS_TOKEN"
    assert token.strip() not in str(raised.value) and problem.value == "***"


def test_an_empty_ops_token_is_off_and_a_set_one_is_redacted() -> None:
    assert load_settings(env={"NOTIFY__GATEWAY__OPS_TOKEN": ""}, text="").settings.gateway.ops_token is None
    settings = load_settings(env={"NOTIFY__GATEWAY__OPS_TOKEN": TOKEN}, text="").settings
    assert settings.gateway.ops_token is not None
    assert settings.gateway.ops_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.gateway)


def test_the_package_ships_every_page_file() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data.get("gateway", []) + data.get("*", [])
    files = [path.relative_to(ROOT / "gateway").as_posix() for path in STATIC.rglob("*") if path.is_file()]
    assert files
    assert not [name for name in files if not any(fnmatch(name, pattern) for pattern in patterns)]


def test_the_vendored_uplot_is_the_stated_version_with_its_license() -> None:
    banner = (STATIC / "vendor" / "uPlot.iife.min.js").read_text()[:80]
    assert f"(v{UPLOT_VERSION})" in banner
    assert (STATIC / "vendor" / "LICENSE").read_text().startswith("The MIT License")


# ---------------------------------------------------------------- a real browser, a real pipeline

def message(n: int) -> dict[str, object]:
    """A new message in chat 42 (members 7, 9, 11), unique per ``n``."""
    return {"version": "V1", "kind": "Created",
            "msg": {"id": 5000 + n, "chat_id": 42, "sender_id": 7, "content": f"ops {n}", "files": [],
                    "created_at": "2025-06-27T02:45:46.782538Z", "idempotency_key": str(uuid.uuid4())},
            "members": [7, 9, 11], "occurred_at": "2025-06-27T02:45:46.790112345Z"}


@pytest.fixture
def ops_pipeline(nats_server: NatsServer, redis_server: RedisServer, tmp_path: Path) -> Iterator[Pipeline]:
    running = start_pipeline(nats_server, redis_server, tmp_path, processes=("bridge", "worker"))
    running.env["NOTIFY__GATEWAY__OPS_TOKEN"] = TOKEN
    try:
        running.start("gateway")
        running.wait_ready()
        yield running
    finally:
        for name in running.processes:
            print(f"--- {name} log ---\n{running.log_tail(name, 40)}")
        # All three at once: one after the other costs the sum of their shutdowns (~4 s here).
        with ThreadPoolExecutor(len(running.processes)) as pool:
            list(pool.map(running.stop, list(running.processes)))


@contextlib.asynccontextmanager
async def publishing(pipeline: Pipeline) -> AsyncIterator[list[int]]:
    """Publish a new message every 50 ms on JetStream until the block ends; yields the count."""
    nc = await nats.connect(pipeline.nats.url)
    sent = [0]

    async def loop() -> None:
        while True:
            await nc.publish("fechatter.message.created", json.dumps(message(sent[0])).encode())
            sent[0] += 1
            await asyncio.sleep(0.05)  # pacing the traffic, not waiting for a condition

    task = asyncio.create_task(loop())
    try:
        yield sent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await nc.close()


def nonzero(chart: str) -> str:
    """A page expression: the labels of the chart's series whose latest value is above zero."""
    return (f"window.ops && window.ops.last ? Object.entries(window.ops.last.charts.find(c => c.id === '{chart}')"
            f".series).filter(([k, v]) => v > 0).map(([k, v]) => k) : []")


#: Rates that are above zero only while events flow through every process: bridge, worker, gateway.
PIPELINE_RATES: Final = ("fetched", "enqueued", "notifications_delivered", "frames_sent")


async def opened(browser: Chromium, url: str) -> Page:
    try:
        return await browser.open(url)
    except CdpError as exc:
        raise AssertionError(f"{exc}\n--- chromium log ---\n{browser.log_tail()}") from exc


@pytest.mark.browser
@pytest.mark.timeout(120)
async def test_chromium_shows_live_nonzero_rates_with_the_token_and_nothing_without(ops_pipeline: Pipeline) -> None:
    base = ops_pipeline.gateway_url
    async with Chromium.launch() as browser, aiohttp.ClientSession() as session:
        # Without the token (or with a wrong one) the browser gets the 401, and no page script runs
        for url in (f"{base}/ops", f"{base}/ops?token={secrets.token_hex(32)}"):
            refused = await opened(browser, url)
            body = await refused.wait_for("document.readyState === 'complete' && document.body.innerText")
            assert '"error": "unauthorized"' in body
            assert await refused.evaluate("typeof window.ops") == "undefined"

        # Bob's stream is open, so the gateway has frames to send while the test publishes
        stream = await session.get(f"{base}/events", params={"access_token": ops_pipeline.token(9)},
                                   timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
        assert stream.status == 200
        async with publishing(ops_pipeline) as sent:
            page = await opened(browser, f"{base}/ops?token={TOKEN}")
            try:
                # The redirect took the token out of the address bar; the page polls on its own
                await page.wait_for("window.ops && window.ops.polls >= 2", within=15.0)
                assert await page.evaluate("location.search") == ""
                rising = await page.wait_for(
                    f"(l => {json.dumps(PIPELINE_RATES)}.every(r => l.includes(r)) && l)({nonzero('rates')})",
                    within=25.0)
            except (TimeoutError, CdpError) as exc:
                seen = await page.evaluate("JSON.stringify(window.ops && [window.ops.status, window.ops.last])")
                raise AssertionError(f"{exc}\n--- page state ---\n{seen}\n--- chromium log ---\n"
                                     f"{browser.log_tail()}") from exc
            assert sent[0] > 0 and rising
            # The charts were drawn (one uPlot canvas each), and the figures are on the page too
            assert await page.evaluate("document.querySelectorAll('.chart .uplot canvas').length") == len(CHARTS)
            # The figures are printed under each chart too: "fetched 12.3"
            shown = dict(item.rsplit(" ", 1) for item in await page.evaluate(
                "[...document.querySelectorAll('[data-chart=rates] .now li')].map(li => li.innerText)"))
            assert all(float(shown[label]) > 0 for label in PIPELINE_RATES), shown
            assert await page.evaluate(nonzero("streams"))  # Bob's stream
            roles = await page.evaluate("[...document.querySelectorAll('#processes tr td:first-child')]"
                                        ".map(td => td.innerText)")
            assert set(roles) >= {"bridge", "worker", "gateway"}
            assert await page.evaluate("window.ops.cspViolations") == []
            assert await page.evaluate("window.ops.failures") == 0
        stream.close()
