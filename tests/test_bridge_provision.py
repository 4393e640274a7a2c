"""Provisioning at start: create/update (auto) or verify-and-refuse (verify), against a real nats-server."""

from __future__ import annotations

from typing import Any

import nats
import pytest
from nats.js.api import ConsumerConfig

from bridge.errors import ProvisionRefused
from bridge.testing import TEST_CONSUMER, bridge_settings, running_bridge
from tests.servers import NatsServer, RedisServer

STREAM = "FECHATTER_EVENTS"
DURABLE = "notification_processor"
SUBJECTS = ["fechatter.messages.>", "fechatter.chats.>", "fechatter.message.>", "fechatter.chat.>",
            "fechatter.user.>", "fechatter.broadcast"]


async def _consumer_config(url: str) -> dict[str, Any]:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().consumer_info(STREAM, DURABLE)
        return info.config.as_dict()
    finally:
        await nc.close()


async def _deploy_durable(url: str, ack_wait: float) -> None:
    """The stream, and the durable as deployed by hand (max_deliver 3, the earlier default)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name=STREAM, subjects=SUBJECTS)
    await js.add_consumer(STREAM, ConsumerConfig(durable_name=DURABLE, ack_wait=ack_wait, max_deliver=3,
                                                 max_ack_pending=1000))
    await nc.close()


async def test_verify_refuses_to_start_when_the_stream_is_missing(nats_server: NatsServer,
                                                                  redis_server: RedisServer) -> None:
    settings = bridge_settings(nats_server.url, redis_server.url, {"jetstream": {"provision": "verify"}})
    with pytest.raises(ProvisionRefused) as refused:
        async with running_bridge(settings):
            pass
    message = str(refused.value)
    assert f"stream {STREAM} does not exist" in message
    assert "provision: verify" in message and "jetstream.provision: auto" in message


async def test_verify_refuses_a_differing_consumer_naming_the_field(nats_server: NatsServer,
                                                                   redis_server: RedisServer) -> None:
    # Given the stream and a durable deployed with ack_wait 30s (the settings want 3s)
    await _deploy_durable(nats_server.url, ack_wait=30)
    settings = bridge_settings(nats_server.url, redis_server.url, {"jetstream": {"provision": "verify"}})
    # Then verify refuses, naming the field and both values
    with pytest.raises(ProvisionRefused) as refused:
        async with running_bridge(settings):
            pass
    assert f"consumer {STREAM}/{DURABLE} differs from the settings: ack_wait: server 30s, settings 3s" in str(
        refused.value)
    # and left the consumer as it was
    assert (await _consumer_config(nats_server.url))["ack_wait"] == 30 * 10**9


async def test_auto_updates_a_differing_consumer_and_never_sets_a_consumer_heartbeat(
    nats_server: NatsServer, redis_server: RedisServer
) -> None:
    await _deploy_durable(nats_server.url, ack_wait=30)
    filters = ["fechatter.message.>", "fechatter.chat.>"]
    settings = bridge_settings(nats_server.url, redis_server.url, {"jetstream": {"consumers": [
        {**TEST_CONSUMER, "filter_subjects": filters}]}})
    async with running_bridge(settings):
        config = await _consumer_config(nats_server.url)
    assert config["ack_wait"] == 3 * 10**9
    assert sorted(config["filter_subjects"]) == sorted(filters)  # kept by nats-server >= 2.10
    assert not config.get("idle_heartbeat") and not config.get("inactive_threshold")


@pytest.mark.parametrize("mode", ["auto", "verify"])
async def test_a_durable_made_with_the_old_default_max_deliver_is_updated_or_named(
    nats_server: NatsServer, redis_server: RedisServer, mode: str
) -> None:
    # Given a durable created when the default max_deliver was 3, and settings that leave it unset
    await _deploy_durable(nats_server.url, ack_wait=3)
    consumer = {key: value for key, value in TEST_CONSUMER.items() if key != "max_deliver"}
    settings = bridge_settings(nats_server.url, redis_server.url,
                               {"jetstream": {"provision": mode, "consumers": [consumer]}})
    if mode == "auto":
        # Then auto mode updates it in place to the default of 10
        async with running_bridge(settings):
            pass
        assert (await _consumer_config(nats_server.url))["max_deliver"] == 10
        return
    # Then verify mode refuses, naming both values, and leaves the durable alone
    with pytest.raises(ProvisionRefused) as refused:
        async with running_bridge(settings):
            pass
    assert "max_deliver: server 3, settings 10" in str(refused.value)
    assert (await _consumer_config(nats_server.url))["max_deliver"] == 3


async def test_verify_starts_when_everything_matches(nats_server: NatsServer, redis_server: RedisServer) -> None:
    # Given streams and consumers an auto-mode bridge provisioned
    async with running_bridge(bridge_settings(nats_server.url, redis_server.url)):
        pass
    # Then a verify-mode bridge starts on them
    settings = bridge_settings(nats_server.url, redis_server.url, {"jetstream": {"provision": "verify"}})
    async with running_bridge(settings) as bridge:
        assert bridge.started.is_set()
