"""A stock dramatiq worker consumes the bridge's jobs, with the middleware options workers rely on.

The bridge writes dramatiq's Redis layout itself (one script per batch); this proves a plain
``RedisBroker(url=..., namespace=...)`` + ``dramatiq.Worker`` reads those messages, retries
them (Retries middleware), and sees Sentry's trace headers when Sentry is initialised before
the bridge builds its broker object.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import dramatiq
import nats
import pytest
import sentry_sdk
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage
from sentry_sdk.envelope import Envelope
from sentry_sdk.integrations.dramatiq import DramatiqIntegration
from sentry_sdk.transport import Transport

from bridge.testing import bridge_settings, running_bridge
from tests.servers import NatsServer, RedisServer, async_wait_until, wait_until
from tests.test_events_parse import C_CREATED

NS = "test-notify"


class _NoTransport(Transport):
    """Keeps every envelope in memory: nothing leaves the machine."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)


@pytest.fixture
def sentry() -> Iterator[None]:
    sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=_NoTransport, traces_sample_rate=1.0,
                    integrations=[DramatiqIntegration()], default_integrations=False)
    try:
        yield
    finally:
        # Later brokers must not get Sentry's middleware: drop the client.
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)


async def test_a_stock_dramatiq_worker_runs_and_retries_the_bridges_jobs_with_sentry_headers(
    sentry: None, nats_server: NatsServer, redis_server: RedisServer
) -> None:
    # Given a bridge (Sentry initialised first) that enqueued one event
    settings = bridge_settings(nats_server.url, redis_server.url)
    nc = await nats.connect(nats_server.url)
    async with running_bridge(settings):
        await nc.jetstream().publish("fechatter.message.created", C_CREATED)
        await async_wait_until(lambda: redis_server.client().llen(f"{NS}:domain") == 1, timeout=5)
    await nc.close()

    # When a stock dramatiq worker with an actor of the same name and queue runs, failing once
    broker = RedisBroker(url=redis_server.url, namespace=NS)
    broker.add_middleware(CurrentMessage())
    attempts: list[dict[str, Any]] = []
    done = threading.Event()

    @dramatiq.actor(actor_name="new_message", queue_name="domain", broker=broker, max_retries=2,
                    min_backoff=10, max_backoff=20)
    def new_message(job: dict[str, Any]) -> None:
        message = CurrentMessage.get_current_message()
        assert message is not None
        attempts.append({"job": job, "options": dict(message.options), "message_id": message.message_id})
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails on purpose")
        done.set()

    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        wait_until(done.is_set, timeout=10, message="the worker never ran the retried job")
    finally:
        worker.stop()
        broker.close()

    # Then it ran the bridge's job, retried it, and saw the Sentry trace headers and retries
    first, second = attempts
    assert first["job"]["kind"] == "NewMessage" and first["job"]["message_id"] == 1234
    assert first["job"]["origin"]["stream_seq"] == 1
    headers = first["options"]["_sentry_headers"]
    assert headers["sentry-trace"] and "sentry-trace_id" in headers["baggage"]
    assert "retries" not in first["options"]
    assert second["options"]["retries"] == 1
    assert second["message_id"] == first["message_id"]
    # the bridge's deterministic id: uuid5 of stream + sequence
    from bridge.messages import message_id_for

    assert first["message_id"] == message_id_for("FECHATTER_EVENTS:1")
