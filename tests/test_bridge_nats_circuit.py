"""The NATS circuit of a durable (bridge/nats_circuit.py): its state machine, and an in-process bridge
whose stream disappears under it (verify mode, so the bridge may not re-create it) against a real
nats-server and redis-server.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bridge.jsapi import JetStreamApi
from bridge.nats_circuit import PROBE_BASE_S, PROBE_CAP_S, CircuitState, NatsCircuit, probe_cap
from bridge.provision import Provisioner, stream_config
from bridge.testing import bridge_settings, queued_messages, running_bridge
from settings import Settings
from tests.bridge_proc import created
from tests.faultproxy import FaultProxy
from tests.servers import HOST, NatsServer, RedisServer, async_wait_until

NS = "test-notify"
STREAM = "FECHATTER_EVENTS"
DURABLE = "notification_processor"


class Clock:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def circuit(threshold: int = 3, cap: float = 2.0, clock: Clock | None = None) -> NatsCircuit:
    return NatsCircuit(threshold, cap, 1.0, jitter=0.0, clock=clock or Clock())


# -- the state machine ---------------------------------------------------------------------


def test_it_opens_after_threshold_failures_in_a_row_and_a_healthy_pull_resets_the_count() -> None:
    c = circuit(threshold=3)
    assert c.failure("missed_heartbeat") is None
    assert c.failure("missed_heartbeat") is None
    assert c.success() is None  # closed: nothing to announce, the count starts again
    assert c.failures_in_a_row == 0
    assert c.failure("no_responders") is None
    assert c.failure("no_responders") is None
    change = c.failure("api_timeout", "no answer in 5s")
    assert change is not None and (change.old, change.new, change.reason) == (
        CircuitState.CLOSED, CircuitState.OPEN, "api_timeout")
    assert c.is_open and c.reason == "api_timeout"


def test_while_open_failures_change_nothing_a_probe_turns_it_half_open_and_a_healthy_pull_closes_it() -> None:
    clock = Clock()
    c = circuit(threshold=1, clock=clock)
    assert c.failure("stream_missing") is not None
    assert c.failure("stream_missing") is None  # no second "opened"
    c.probe_started()
    c.probe_started()
    assert c.probes == 2
    half = c.checked()
    assert half is not None and half.new is CircuitState.HALF_OPEN and not c.is_open  # the trial pull may go
    clock.now += 7.5
    closed = c.success()
    assert closed is not None and (closed.old, closed.new) == (CircuitState.HALF_OPEN, CircuitState.CLOSED)
    assert c.failures_in_a_row == 0 and c.reason == "stream_missing"  # kept for the closing log line
    assert c.checked() is None  # a check while closed is no state change


def test_a_failed_trial_pull_reopens_it_and_the_next_probe_waits_longer() -> None:
    c = circuit(threshold=1, cap=10.0)
    c.failure("no_responders")
    first = c.delay()
    c.checked()
    reopened = c.failure("missed_heartbeat")
    assert reopened is not None and (reopened.old, reopened.new) == (CircuitState.HALF_OPEN, CircuitState.OPEN)
    assert c.reason == "no_responders"  # what opened it is not overwritten by the probe's failure
    assert c.delay() == 2 * first


def test_probe_delays_double_from_the_base_up_to_the_cap() -> None:
    c = circuit(threshold=2, cap=2.0)
    delays = []
    for _ in range(7):
        c.failure("no_responders")
        delays.append(c.delay())
    assert delays == [PROBE_BASE_S, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0]


def test_with_jitter_every_delay_stays_within_20_percent_of_the_schedule() -> None:
    c = NatsCircuit(1, 2.0, 1.0)
    for attempt in range(12):
        c.failure("no_responders")
        expected = min(PROBE_BASE_S * 2 ** attempt, 2.0)
        assert 0.8 * expected <= c.delay() <= 1.2 * expected


def test_the_readiness_reason_names_state_cause_and_next_probe() -> None:
    clock = Clock()
    c = circuit(threshold=2, clock=clock)
    assert c.problem() is None
    c.failure("consumer_deleted", "409 Consumer Deleted")
    c.failure("stream_missing", "stream FECHATTER_EVENTS does not exist")
    clock.now += 3.0
    c.delay()
    text = c.problem() or ""
    assert text.startswith("NATS circuit open for 3.0s after 2 failures in a row")
    assert "opened by stream_missing" in text and "does not exist" in text and "next probe in 0.5s" in text
    c.checked()
    assert (c.problem() or "").startswith("NATS circuit half-open")


def test_bounds_come_from_the_consumer_and_a_reload_keeps_the_state() -> None:
    assert probe_cap(2.0) == 2.0  # a short expiry probes as often as an idle bridge pulls
    assert probe_cap(90.0) == PROBE_CAP_S  # the default 45 s heartbeat: at most 5 s between probes
    assert probe_cap(0.01) == PROBE_BASE_S
    c = circuit(threshold=1)
    assert not c.slow(1.0) and c.slow(1.01)
    c.failure("no_responders")
    c.configure(4, 3.0, 0.5)
    assert c.is_open and (c.threshold, c.probe_cap, c.rtt_bound) == (4, 3.0, 0.5)


# -- a real bridge whose stream disappears ------------------------------------------------------


async def enqueued(rds: aioredis.Redis) -> list[int]:
    return sorted(m["args"][0]["message_id"] for m in await queued_messages(rds, NS, "domain"))


class ApiCounter:
    """Every ``$JS.API.>`` request any client sends, as the server routes it (a monitoring subscriber)."""

    def __init__(self) -> None:
        self.subjects: list[tuple[float, str]] = []

    async def seen(self, msg: Msg) -> None:  # nats-py wants a coroutine function, not a callable object
        self.subjects.append((time.monotonic(), msg.subject))

    def between(self, start: float, end: float) -> list[str]:
        return [subject for at, subject in self.subjects if start <= at <= end]


def max_probes(elapsed: float, threshold: int, cap: float) -> int:
    """The most probes the schedule allows in ``elapsed`` seconds after opening (every delay at its
    jittered minimum, 0.8 x), plus the one a failure may start at once."""
    delays, total, failures = 0, 0.0, threshold
    while True:
        total += 0.8 * min(PROBE_BASE_S * 2 ** (failures - 1), cap)
        if total > elapsed:
            return delays + 1
        delays, failures = delays + 1, failures + 1


async def provisioned_verify_mode(nats_server: NatsServer, redis_server: RedisServer, nc: NATS, *,
                                  missed_heartbeats: int) -> tuple[JetStreamApi, Settings]:
    """Provision the default stream and durable, then settings for a bridge in verify mode (it may
    re-create a durable, never a stream) whose circuit opens after ``missed_heartbeats`` in a row."""
    api = JetStreamApi(nc)
    await Provisioner(api, bridge_settings(nats_server.url, redis_server.url).jetstream).prepare()
    return api, bridge_settings(nats_server.url, redis_server.url,
                                {"jetstream": {"provision": "verify", "max_missed_heartbeats": missed_heartbeats}})


async def test_a_vanished_stream_opens_the_circuit_probes_sparingly_and_the_first_event_after_it_returns_arrives(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    # Given a stream and durable provisioned, and a verify-mode bridge (it may re-create a durable,
    # never a stream) that opens its circuit after 2 failures in a row
    api, settings = await provisioned_verify_mode(nats_server, redis_server, nc, missed_heartbeats=2)
    consumer = settings.jetstream.consumers[0]
    cap = probe_cap(consumer.pull_expiry)
    counter = ApiCounter()
    await nc.subscribe("$JS.API.>", cb=counter.seen)
    rds = aioredis.Redis.from_url(redis_server.url)
    js = nc.jetstream()
    async with running_bridge(settings) as bridge:
        puller = bridge.pull_consumers[0]
        # (Nats-Msg-Id: each event names itself; tests/test_bridge_identity.py covers events without
        # one across a re-created stream)
        await js.publish("fechatter.message.created", created(1), headers={"Nats-Msg-Id": "m1"})
        await async_wait_until(lambda: enqueued(rds), timeout=10)
        # When the stream is deleted under it
        await api.request(f"STREAM.DELETE.{STREAM}")
        # Then the circuit opens, and the bridge is not ready, saying why
        await async_wait_until(lambda: puller.circuit.state is not CircuitState.CLOSED, timeout=10,
                               message="the circuit did not open")
        opened = time.monotonic()
        assert bridge.metrics.registry.get_sample_value(
            "fechatter_notify_bridge_nats_circuit_state", {"consumer": DURABLE}) in (1.0, 2.0)
        checks = await bridge.readiness()
        reason = checks[f"consumer {STREAM}/{DURABLE}"] or ""
        assert "NATS circuit open" in reason and f"stream {STREAM}" in reason and "does not exist" in reason, reason
        # and it probes at growing intervals: no tight loop of checks and pulls
        await async_wait_until(lambda: puller.circuit.probes >= 3, timeout=15)
        probed, probes = time.monotonic(), puller.circuit.probes
        await nc.flush()
        elapsed = probed - opened
        requests = counter.between(opened, probed)
        lag_polls = int(elapsed / 5.0) + 1  # bridge/lag.py reads CONSUMER.INFO every 5 s, circuit or not
        assert probes <= max_probes(elapsed, 2, cap), (elapsed, probes)
        assert len(requests) <= probes + lag_polls + 1, requests
        assert not any(".MSG.NEXT." in subject for subject in requests), "pulled while the circuit was open"
        # When the stream is back and an event is published at once
        await api.stream_create(stream_config(settings.jetstream.streams[0]))
        restored = time.monotonic()
        await js.publish("fechatter.message.created", created(2), headers={"Nats-Msg-Id": "m2"})
        # Then it is enqueued within one probe interval (+20 % jitter) plus the check, the
        # durable's re-creation and the pull (1 s of margin on this loaded machine)
        await async_wait_until(lambda: _has(rds, 2), timeout=15, message="no delivery after the stream returned")
        recovered = time.monotonic() - restored
        print(f"stream gone: circuit open {elapsed:.1f}s, {probes} probes, {len(requests)} API "
              f"requests; first event {recovered:.2f}s after the stream returned (probe cap {cap}s)")
        assert recovered <= 1.2 * cap + 1.0, recovered
        await async_wait_until(lambda: puller.circuit.state is CircuitState.CLOSED, timeout=5)
        assert bridge.metrics.registry.get_sample_value(
            "fechatter_notify_bridge_nats_circuit_state", {"consumer": DURABLE}) == 0.0
        assert (await bridge.readiness())[f"consumer {STREAM}/{DURABLE}"] is None
    await rds.aclose()
    opened_reasons = [r.__dict__.get("reason") for r in caplog.records if r.getMessage() == "nats_circuit_opened"]
    assert len(opened_reasons) == 1 and opened_reasons[0] in {"consumer_deleted", "stream_missing"}, opened_reasons
    assert bridge.metrics.registry.get_sample_value(
        "fechatter_notify_bridge_nats_circuit_opened_total", {"consumer": DURABLE, "reason": opened_reasons[0]}) == 1
    assert [r.getMessage() for r in caplog.records].count("nats_circuit_closed") == 1
    # Every probe failed the same way: logged once, with the opening, not once per probe
    assert [r.getMessage() for r in caplog.records].count("nats_circuit_probe_failed") <= 1


async def _has(rds: aioredis.Redis, message_id: int) -> bool:
    return message_id in await enqueued(rds)


async def test_a_reconnect_while_open_probes_at_once(nats_server: NatsServer, redis_server: RedisServer,
                                                     nc: NATS, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    # Given a bridge whose circuit is open because its stream is gone (verify mode)
    api, settings = await provisioned_verify_mode(nats_server, redis_server, nc, missed_heartbeats=1)
    async with running_bridge(settings) as bridge:
        puller = bridge.pull_consumers[0]
        await api.request(f"STREAM.DELETE.{STREAM}")
        await async_wait_until(lambda: puller.circuit.probes >= 3, timeout=10)
        # When the stream comes back and the connection is re-established (the server restarts)
        await api.stream_create(stream_config(settings.jetstream.streams[0]))
        await asyncio.to_thread(nats_server.restart)
        await async_wait_until(lambda: bridge.connection.connected, timeout=10)
        reconnected = time.monotonic()
        # Then the bridge probes without waiting for its schedule and closes the circuit on the
        # trial pull's first heartbeat
        await async_wait_until(lambda: puller.circuit.state is CircuitState.CLOSED, timeout=10)
        assert time.monotonic() - reconnected < 1.0 + 2 * puller.state.heartbeat
    probing = [r for r in caplog.records if r.getMessage() == "nats_circuit_probing"]
    assert [r.__dict__.get("reason") for r in probing] == ["reconnected"]


async def test_a_silent_cut_is_a_stale_connection_not_a_circuit_fault(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    # Given a bridge that reaches nats-server through a proxy (pings every 0.5 s, 2 may go unanswered)
    with FaultProxy(HOST, nats_server.port) as proxy:
        settings = bridge_settings(proxy.url(), redis_server.url)
        rds = aioredis.Redis.from_url(redis_server.url)
        js = nc.jetstream()
        async with running_bridge(settings) as bridge:
            puller = bridge.pull_consumers[0]
            await js.publish("fechatter.message.created", created(1))
            await async_wait_until(lambda: _has(rds, 1), timeout=10)
            # When the path goes silent, and heals once the bridge has noticed
            await asyncio.to_thread(proxy.cut_silently)
            await async_wait_until(lambda: not bridge.connection.connected, timeout=5)
            await js.publish("fechatter.message.created", created(2))
            await asyncio.to_thread(proxy.restore)
            # Then the bridge reconnects and pulls again: the event published meanwhile arrives
            await async_wait_until(lambda: _has(rds, 2), timeout=10, message="no delivery after the path healed")
            assert puller.circuit.state is CircuitState.CLOSED
        await rds.aclose()
    events = [r.getMessage() for r in caplog.records]
    disconnects = [r.__dict__["reason"] for r in caplog.records if r.getMessage() == "nats_disconnected"]
    # The disconnect names the cause (the last one is the bridge's own shutdown); the durable's
    # circuit never opened: the connection handled the fault
    assert len(disconnects) == 2 and "stale connection: 2 PINGs unanswered" in disconnects[0], disconnects
    assert "nats_circuit_opened" not in events
