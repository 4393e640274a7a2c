"""SIGHUP: a running bridge takes new pull parameters from notify.yml without a restart.

The planner is pure logic; the rest runs against a real nats-server, watching the MSG.NEXT
requests the bridge sends (a plain subscriber on the request subject sees each one).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.reload import apply_live, plan_reload
from bridge.testing import TEST_CONSUMER, bridge_settings, running_bridge, settings_yaml
from settings.model import Settings
from tests.bridge_proc import BridgeProcess
from tests.servers import NatsServer, RedisServer, async_wait_until

NEXT = "$JS.API.CONSUMER.MSG.NEXT.FECHATTER_EVENTS.notification_processor"


def settings(overrides: dict[str, Any] | None = None) -> Settings:
    return bridge_settings("nats://127.0.0.1:4222", "redis://127.0.0.1:6379/0", overrides)


def with_consumer(**fields: Any) -> dict[str, Any]:
    return {"jetstream": {"consumers": [{**TEST_CONSUMER, **fields}]}}


def test_pull_parameters_are_live_and_server_side_fields_need_a_restart() -> None:
    old = settings()
    new = settings({**with_consumer(idle_heartbeat="1500ms", expires="4s", batch=7, ack_wait="5s"),
                    "realtime": {"batch_size": 50}, "redis": {"namespace": "other"}})
    plan = plan_reload(old, new)
    assert plan.live == ("jetstream.consumers[0].batch", "jetstream.consumers[0].expires",
                         "jetstream.consumers[0].idle_heartbeat", "realtime.batch_size")
    assert plan.restart == ("jetstream.consumers[0].ack_wait", "redis.namespace")
    running = apply_live(old, new)
    consumer = running.jetstream.consumers[0]
    assert (consumer.batch, consumer.expires, consumer.idle_heartbeat, consumer.ack_wait) == (7, 4.0, 1.5, 3.0)
    assert (running.realtime.batch_size, running.redis.namespace) == (50, "test-notify")
    # Compared with what is in effect, the same file again changes only what still needs a restart
    assert plan_reload(running, new).live == ()


def test_a_renamed_durable_is_a_restart_not_a_retune() -> None:
    plan = plan_reload(settings(), settings(with_consumer(durable="other", batch=7)))
    assert plan.live == () and "jetstream.consumers[0].batch" in plan.restart


def test_what_only_the_workers_and_the_gateway_read_is_not_the_bridges_to_report() -> None:
    new = settings({"delivery": {"inbox_max_age": "1d"}, "gateway": {"keep_alive": "10s"},
                    "health": {"worker_port": 18082}, "metrics": {"worker_port": 19092, "port": 19091}})
    plan = plan_reload(settings(), new)
    # the bridge's own metrics port still needs its restart; the rest is nothing to it
    assert (plan.live, plan.restart) == ((), ("metrics.port",))


def test_an_unchanged_file_changes_nothing() -> None:
    assert not plan_reload(settings(), settings()).changed


@pytest.fixture
async def spy(nats_server: NatsServer) -> AsyncIterator[list[dict[str, Any]]]:
    """Every pull request's JSON body, as the server receives it."""
    requests: list[dict[str, Any]] = []
    nc: NATS = await nats.connect(nats_server.url)

    async def seen(msg: Msg) -> None:
        requests.append(json.loads(msg.data))

    await nc.subscribe(NEXT, cb=seen)
    await nc.flush()
    yield requests
    await nc.close()


def pulled_with(requests: list[dict[str, Any]], batch: int, heartbeat_s: float) -> bool:
    return any(r["batch"] == batch and r["idle_heartbeat"] == int(heartbeat_s * 1e9) for r in requests)


async def test_a_reload_changes_the_next_pull_requests_and_nothing_else(
    nats_server: NatsServer, redis_server: RedisServer, spy: list[dict[str, Any]]
) -> None:
    started = bridge_settings(nats_server.url, redis_server.url)
    async with running_bridge(started) as bridge:
        await async_wait_until(lambda: pulled_with(spy, 100, 1.0), timeout=5)
        # When the heartbeat and batch change (and ack_wait, which the server holds)
        plan = bridge.reload(bridge_settings(nats_server.url, redis_server.url,
                                             with_consumer(idle_heartbeat="700ms", batch=7, ack_wait="4s")))
        # Then the next requests carry them, and ack_wait is left for a restart
        await async_wait_until(lambda: pulled_with(spy, 7, 0.7), timeout=10)
        assert plan.restart == ("jetstream.consumers[0].ack_wait",)
        assert bridge.pull_consumers[0].state.batch == 7
        assert bridge.settings.jetstream.consumers[0].ack_wait == 3.0


async def test_sighup_reloads_the_file_and_refuses_an_invalid_one(
    tmp_path: Path, nats_server: NatsServer, redis_server: RedisServer, spy: list[dict[str, Any]]
) -> None:
    config = tmp_path / "notify.yml"
    config.write_text(settings_yaml(nats_server.url, redis_server.url))
    bridge = BridgeProcess(config, tmp_path / "bridge.log")
    try:
        await async_wait_until(lambda: "event=bridge_started" in bridge.log(), timeout=20)
        await async_wait_until(lambda: pulled_with(spy, 100, 1.0), timeout=5)
        # When the file gets a longer heartbeat and SIGHUP arrives
        config.write_text(settings_yaml(nats_server.url, redis_server.url,
                                        with_consumer(idle_heartbeat="1200ms", expires="3s", batch=9)))
        os.kill(bridge.proc.pid, signal.SIGHUP)
        # Then the bridge pulls with it, and says so
        await async_wait_until(lambda: pulled_with(spy, 9, 1.2), timeout=10)
        assert "event=config_reloaded applied=jetstream.consumers[0].batch,jetstream.consumers[0].expires," \
               "jetstream.consumers[0].idle_heartbeat" in bridge.log()
        # When the file breaks the seed's rule (heartbeat not above the 500ms ping)
        config.write_text(settings_yaml(nats_server.url, redis_server.url, with_consumer(idle_heartbeat="400ms")))
        os.kill(bridge.proc.pid, signal.SIGHUP)
        # Then the reload is refused with the problem's place, and the bridge goes on as before
        await async_wait_until(lambda: "event=config_reload_refused" in bridge.log(), timeout=10)
        assert "code=heartbeat_not_above_ping path=jetstream.consumers[0].idle_heartbeat" in bridge.log()
        spy.clear()
        await async_wait_until(lambda: len(spy) >= 1, timeout=10)
        assert all(r["idle_heartbeat"] == int(1.2e9) for r in spy)
        assert bridge.proc.poll() is None
    finally:
        assert bridge.stop() == 0
