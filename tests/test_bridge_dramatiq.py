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
import redis.asyncio as aioredis
import sentry_sdk
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage
from sentry_sdk.envelope import Envelope
from sentry_sdk.integrations.dramatiq import DramatiqIntegration
from sentry_sdk.transport import Transport

from bridge.advisories import stored_ns
from bridge.jsapi import JetStreamApi
from bridge.testing import bridge_settings, queued_messages, running_bridge
from tests.servers import NatsServer, RedisServer, async_wait_until, wait_until
from tests.test_bridge_flow import L_JOINED
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
    stored_at = stored_ns((await JetStreamApi(nc).stream_msg_get("FECHATTER_EVENTS", 1))["message"])
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
    # the bridge's deterministic id: uuid5 of stream + sequence + the time the stream stored it
    from bridge.messages import message_id_for

    assert stored_at is not None
    assert first["message_id"] == message_id_for(f"FECHATTER_EVENTS:1:{stored_at}")


PRODUCER_TRACE_ID = "771a43a4192642f0b136d5159a501700"
PRODUCER_TRACE = f"{PRODUCER_TRACE_ID}-b0e6f15b45c36b12-1"


async def _enqueue_two_traced_events(nats_server: NatsServer, redis_server: RedisServer) -> list[dict[str, Any]]:
    """Publish one event with a producer's Sentry headers, one with a malformed sentry-trace."""
    settings = bridge_settings(nats_server.url, redis_server.url)
    nc = await nats.connect(nats_server.url)
    rds = aioredis.Redis.from_url(redis_server.url)
    async with running_bridge(settings):
        js = nc.jetstream()
        await js.publish("fechatter.message.created", C_CREATED, headers={
            "sentry-trace": PRODUCER_TRACE, "baggage": f"sentry-trace_id={PRODUCER_TRACE_ID},sentry-sampled=true"})
        await js.publish("fechatter.chats.member.joined", L_JOINED, headers={"Sentry-Trace": "not-a-trace"})

        async def both() -> list[dict[str, Any]] | None:
            jobs = await queued_messages(rds, NS, "domain")
            return jobs if len(jobs) == 2 else None

        jobs = await async_wait_until(both, timeout=5)
    await rds.aclose()
    await nc.close()
    return jobs


async def test_a_producers_sentry_trace_from_nats_headers_is_continued_by_the_worker(
    sentry: None, nats_server: NatsServer, redis_server: RedisServer
) -> None:
    # Given events published with Sentry headers (one well-formed, one malformed)
    traced, malformed = await _enqueue_two_traced_events(nats_server, redis_server)
    # Then the first job carries the producer's trace, the second the bridge's own
    assert traced["options"]["_sentry_headers"] == {
        "sentry-trace": PRODUCER_TRACE, "baggage": f"sentry-trace_id={PRODUCER_TRACE_ID},sentry-sampled=true"}
    own = malformed["options"]["_sentry_headers"]["sentry-trace"]
    assert own and not own.startswith(PRODUCER_TRACE_ID)

    # When a dramatiq worker with Sentry runs the first job
    broker = RedisBroker(url=redis_server.url, namespace=NS)
    done = threading.Event()

    @dramatiq.actor(actor_name="new_message", queue_name="domain", broker=broker)
    def new_message(job: dict[str, Any]) -> None:
        done.set()

    @dramatiq.actor(actor_name="member_joined", queue_name="domain", broker=broker)
    def member_joined(job: dict[str, Any]) -> None:
        pass

    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    transport = sentry_sdk.get_client().transport
    assert isinstance(transport, _NoTransport)

    def transaction_trace_ids() -> list[str] | None:
        ids = [item.payload.json["contexts"]["trace"]["trace_id"]
               for envelope in transport.envelopes for item in envelope.items
               if item.type == "transaction" and item.payload.json is not None]
        return ids if len(ids) >= 2 else None

    try:
        wait_until(done.is_set, timeout=10, message="the worker never ran the job")
        ids = wait_until(transaction_trace_ids, timeout=10, message="no transactions reported")
    finally:
        worker.stop()
        broker.close()
    # Then its transaction belongs to the producer's trace
    assert PRODUCER_TRACE_ID in ids
    assert any(trace_id != PRODUCER_TRACE_ID for trace_id in ids)


async def test_a_producers_sentry_trace_is_kept_when_the_bridge_has_no_sentry(
    nats_server: NatsServer, redis_server: RedisServer
) -> None:
    traced, malformed = await _enqueue_two_traced_events(nats_server, redis_server)
    assert traced["options"]["_sentry_headers"]["sentry-trace"] == PRODUCER_TRACE
    assert "_sentry_headers" not in malformed["options"]
