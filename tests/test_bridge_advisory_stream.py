"""Give-ups kept in a stream: one announced while no bridge is connected still becomes a dead letter.

JetStream announces each message it gives up on once, on core NATS. The bridge provisions
``jetstream.advisories.stream`` capturing those subjects and reads it through a shared durable,
acking each advisory once its outcome is stored (bridge/advisories.py, bridge/advisory_assets.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS

from bridge.advisory_assets import advisory_subject
from bridge.errors import ProvisionRefused
from bridge.jsapi import JetStreamApi
from bridge.provision import Provisioner, stream_config
from bridge.testing import TEST_CONSUMER, bridge_settings, queued_messages, running_bridge
from settings.model import Settings
from tests.servers import NatsServer, RedisServer, async_wait_until
from tests.test_bridge_faults import created

NS = "test-notify"
STREAM = "FECHATTER_EVENTS"
DURABLE = "notification_processor"
ADVISORIES = "FECHATTER_NOTIFY_ADVISORIES"


def _settings(nats_server: NatsServer, redis_server: RedisServer, **advisories: Any) -> Settings:
    consumer = {**TEST_CONSUMER, "max_deliver": 2, "ack_wait": "1500ms"}
    return bridge_settings(nats_server.url, redis_server.url, {
        "redis": {"socket_timeout": "200ms"},
        "jetstream": {"consumers": [consumer], **({"advisories": advisories} if advisories else {})}})


async def _give_up_with_no_bridge_connected(nc: NATS, settings: Settings) -> None:
    """Provision as `fechatter-notify provision` does, then make JetStream give up on one event while
    only a crashing consumer (this test) is connected, and wait until the give-up was announced."""
    api = JetStreamApi(nc)
    await Provisioner(api, settings.jetstream).prepare()
    heard: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_advisory(msg: Any) -> None:
        heard.put_nowait(msg.data)

    advisory_sub = await nc.subscribe(advisory_subject(settings.jetstream.consumers[0]), cb=on_advisory)
    js = nc.jetstream()
    await js.publish("fechatter.message.created", created(7), headers={"Nats-Msg-Id": "lonely"})
    sub = await js.pull_subscribe_bind(durable=DURABLE, stream=STREAM)

    async def pull_without_ack() -> bool:
        # Two deliveries reach max_deliver 2; the pull after the second ack_wait makes JetStream give up.
        with contextlib.suppress(TimeoutError):
            await sub.fetch(1, timeout=0.5)
        return not heard.empty()

    await async_wait_until(pull_without_ack, timeout=15, interval=0.05, message="JetStream never gave up")
    await sub.unsubscribe()
    await advisory_sub.unsubscribe()


async def _stored_advisories(api: JetStreamApi) -> int:
    return int((await api.stream_info(ADVISORIES))["state"]["messages"])


async def _no_advisory_left(api: JetStreamApi) -> bool:
    return await _stored_advisories(api) == 0


async def _offered_again(api: JetStreamApi) -> bool:
    return int((await api.consumer_info(ADVISORIES, "fechatter_notify_advisories"))["num_redelivered"]) >= 1


async def test_a_give_up_announced_while_no_bridge_is_connected_is_a_dead_letter_when_one_starts(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS
) -> None:
    settings = _settings(nats_server, redis_server)
    api = JetStreamApi(nc)
    # Given JetStream gave up on an event while no bridge was connected: the stream kept its advisory
    await _give_up_with_no_bridge_connected(nc, settings)
    assert await _stored_advisories(api) == 1
    rds = aioredis.Redis.from_url(redis_server.url)
    # When a bridge starts
    async with running_bridge(settings):
        letters = await async_wait_until(lambda: rds.xrange(f"{NS}:dead-letters"), timeout=15,
                                         message="the kept advisory never became a dead letter")
        # Then the advisory is acked (work-queue retention: gone) once its dead letter is stored
        await async_wait_until(lambda: _no_advisory_left(api), timeout=10, interval=0.1,
                               message="the advisory was not acked")
    (_, fields), = letters
    assert (fields[b"code"], fields[b"data"], fields[b"seq"], fields[b"delivered"]) == (
        b"max_deliveries", created(7), b"1", b"2")
    assert await queued_messages(rds, NS, "domain") == []
    await rds.aclose()


async def test_a_give_up_met_during_a_redis_outage_waits_in_the_stream_and_is_stored_once(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.advisories")
    settings = _settings(nats_server, redis_server)
    api = JetStreamApi(nc)
    await _give_up_with_no_bridge_connected(nc, settings)
    # Given Redis is down when a bridge reads the advisory
    redis_server.stop()
    async with running_bridge(settings):
        # Then it is not acked: JetStream offers it again, and the bridge says why
        await async_wait_until(lambda: _offered_again(api), timeout=15, interval=0.2,
                               message="the advisory was never offered again")
        assert "advisory_deferred" in caplog.text
        assert await _stored_advisories(api) == 1
        # When Redis comes back
        redis_server.start()
        rds = aioredis.Redis.from_url(redis_server.url)
        await async_wait_until(lambda: _no_advisory_left(api), timeout=20, interval=0.2,
                               message="the advisory was not stored after Redis came back")
        # Then exactly one dead letter holds it
        letters = await rds.xrange(f"{NS}:dead-letters")
        assert [f[b"code"] for _, f in letters] == [b"max_deliveries"]
    await rds.aclose()


async def test_an_empty_advisories_stream_listens_on_core_nats_and_provisions_nothing(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS
) -> None:
    settings = _settings(nats_server, redis_server, stream="")
    api = JetStreamApi(nc)
    async with running_bridge(settings):
        names = [s["config"]["name"] for s in (await api.request("STREAM.LIST", {}))["streams"]]
    assert names == [STREAM]


async def test_verify_mode_refuses_to_start_without_the_advisories_stream(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS
) -> None:
    settings = bridge_settings(nats_server.url, redis_server.url, {"jetstream": {"provision": "verify"}})
    await JetStreamApi(nc).stream_create(stream_config(settings.jetstream.streams[0]))
    with pytest.raises(ProvisionRefused) as refused:
        async with running_bridge(settings):
            pass
    assert f"stream {ADVISORIES} does not exist" in str(refused.value)


async def test_a_bridge_with_a_pull_waiting_on_the_give_ups_stops_at_once(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = _settings(nats_server, redis_server)
    api = JetStreamApi(nc)

    async def reader_waiting() -> bool:
        info = await api.consumer_info(ADVISORIES, "fechatter_notify_advisories")
        return int(info.get("num_waiting", 0)) >= 1

    async with running_bridge(settings):
        # Given the bridge's pull for give-ups is waiting on the server
        await async_wait_until(reader_waiting, timeout=10, interval=0.05, message="no pull for give-ups")
        began = time.monotonic()
    # Then the bridge stops without waiting for that pull (its subscription would hold the drain 10 s)
    took = time.monotonic() - began
    assert took < 3, f"the bridge took {took:.1f} s to stop"
    assert "never retrieved" not in caplog.text
