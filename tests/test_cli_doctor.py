"""``fechatter-notify doctor`` against real nats-server and redis-server in the states it diagnoses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from bridge.jsapi import JetStreamApi
from bridge.provision import consumer_config, stream_config
from bridge.testing import bridge_settings, running_bridge
from fechatter_notify.doctor import diagnose
from settings import Problem
from settings.model import DEFAULT_DOMAIN_SUBJECTS, Settings
from tests.servers import NatsServer, RedisServer, async_wait_until, free_port

NS = "test-notify"
STREAM = "FECHATTER_EVENTS"
DURABLE = "notification_processor"


def codes(findings: list[Problem], level: str | None = None) -> list[str]:
    return [f.code for f in findings if level is None or f.level == level]


def one(findings: list[Problem], code: str, path: str | None = None) -> Problem:
    matches = [f for f in findings if f.code == code and (path is None or f.path == path)]
    assert len(matches) == 1, [f.format() for f in findings]
    return matches[0]


async def test_fresh_servers_have_nothing_wrong_the_bridge_would_not_create(
    nats_server: NatsServer, redis_server: RedisServer
) -> None:
    findings = await diagnose(bridge_settings(nats_server.url, redis_server.url))
    # The harness runs redis-server without AOF or RDB (--save ""): the one thing doctor warns of.
    assert codes(findings, "error") == [] and codes(findings, "warning") == ["redis_not_persistent"]
    assert "stream FECHATTER_EVENTS does not exist: the bridge creates it" in one(
        findings, "stream_missing", "jetstream.streams[0]").message
    # and the give-ups' stream and durable (bridge/advisory_assets.py), which the bridge creates too
    assert "stream FECHATTER_NOTIFY_ADVISORIES does not exist: the bridge creates it" in one(
        findings, "stream_missing", "jetstream.advisories").message
    assert "consumer FECHATTER_NOTIFY_ADVISORIES/fechatter_notify_advisories does not exist" in one(
        findings, "consumer_missing", "jetstream.advisories").message
    assert one(findings, "nats_server").origin == nats_server.url
    assert one(findings, "redis_server").message.startswith("redis-server 6.")


async def test_events_waiting_with_no_bridge_and_jobs_waiting_with_no_worker_are_named(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS
) -> None:
    # Given a bridge that provisioned JetStream and enqueued 3 jobs, then stopped; no worker runs
    settings = bridge_settings(nats_server.url, redis_server.url)
    js = nc.jetstream()
    async with running_bridge(settings):
        for i in range(3):
            await js.publish("fechatter.broadcast", json.dumps({"target_users": [1], "event_data": {"n": i}}).encode())
        await async_wait_until(lambda: redis_server.client().llen(f"{NS}:domain") == 3, timeout=10)
    # When 2 more events are published
    for _ in range(2):
        await js.publish("fechatter.broadcast", b'{"target_users":[1],"event_data":{}}')
    findings = await diagnose(settings)
    # Then the durable's waiting messages and the queue without workers are reported
    assert codes(findings, "error") == []
    assert "has 2 message(s) waiting and nobody pulling" in one(findings, "consumer_not_pulled").message
    assert "3 job(s) waiting and no worker heartbeating" in one(findings, "no_live_workers").message
    assert "stream FECHATTER_EVENTS: 5 message(s)" in one(findings, "stream", "jetstream.streams[0]").message
    assert "stream FECHATTER_NOTIFY_ADVISORIES: 0 message(s)" in one(findings, "stream", "jetstream.advisories").message


async def test_verify_mode_names_each_field_that_differs_on_the_server(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS
) -> None:
    settings = bridge_settings(nats_server.url, redis_server.url, {"jetstream": {"provision": "verify"}})
    api = JetStreamApi(nc)
    await api.stream_create({**stream_config(settings.jetstream.streams[0]), "max_age": 3600 * 10**9})
    await api.consumer_create(STREAM, {**consumer_config(settings.jetstream.consumers[0]), "max_deliver": 9})
    findings = await diagnose(settings)
    assert "max_age: server 1h, settings 1d" in one(findings, "stream_differs").message
    assert "max_deliver: server 9, settings 3" in one(findings, "consumer_differs").message
    assert one(findings, "stream_differs").level == "error"
    # In auto mode the same differences are what the bridge will update: warnings
    auto = await diagnose(bridge_settings(nats_server.url, redis_server.url))
    assert one(auto, "stream_differs").level == "warning"
    assert "the bridge updates it when it starts" in one(auto, "stream_differs").message


async def test_a_foreign_stream_holding_our_subjects_and_one_storing_realtime_subjects(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS
) -> None:
    # Given someone else's stream on fechatter.messages.> and one that stores the realtime subjects
    api = JetStreamApi(nc)
    await api.stream_create({"name": "OTHER", "subjects": ["fechatter.messages.>"], "storage": "memory"})
    await api.stream_create({"name": "SNOOP", "subjects": ["fechatter.realtime.>"], "storage": "memory"})
    findings = await diagnose(bridge_settings(nats_server.url, redis_server.url))
    taken = one(findings, "subjects_taken")
    assert taken.level == "error" and taken.path == "jetstream.streams[0].subjects"
    assert "stream(s) OTHER already store fechatter.messages.>" in taken.message
    assert "stream(s) SNOOP store realtime subject fechatter.realtime.>" in one(findings, "realtime_stored").message


async def test_a_domain_subject_none_of_the_bridges_streams_stores_is_named(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS
) -> None:
    # Given settings whose stream lacks fechatter.broadcast, which another stream stores
    await JetStreamApi(nc).stream_create({"name": "AUDIT", "subjects": ["fechatter.broadcast"], "storage": "memory"})
    subjects = [s for s in DEFAULT_DOMAIN_SUBJECTS if s != "fechatter.broadcast"]
    settings = bridge_settings(nats_server.url, redis_server.url, {"jetstream": {
        "streams": [{"name": STREAM, "subjects": subjects}]}})
    unread = one(await diagnose(settings), "domain_subject_unread")
    assert unread.message == ("Fechatter publishes on fechatter.broadcast, and none of the bridge's streams stores "
                              "it: those events reach nobody (stream(s) AUDIT store it, but the bridge does not "
                              "read them)")


async def test_an_account_without_jetstream_is_the_no_responders_error(
    nats_server_factory: Any, redis_server: RedisServer
) -> None:
    server: NatsServer = nats_server_factory(config="accounts { NOJS: { users: [{user: nojs, password: secret}] } }\n")
    settings = bridge_settings(server.url, redis_server.url, {"nats": {"user": "nojs", "password": "secret"}})
    findings = await diagnose(settings)
    problem = one(findings, "jetstream_unavailable")
    assert problem.level == "error" and "no responders" in problem.message
    assert "secret" not in problem.format()


async def test_unreachable_servers_are_errors_with_the_place(tmp_path: Path) -> None:
    nats_port, redis_port = free_port(), free_port()
    settings: Settings = bridge_settings(f"nats://127.0.0.1:{nats_port}",
                                         f"redis://:hunter2@127.0.0.1:{redis_port}/0")
    findings = await diagnose(settings)
    assert codes(findings, "error") == ["nats_unreachable", "redis_unreachable"]
    assert one(findings, "nats_unreachable").origin == f"nats://127.0.0.1:{nats_port}"
    assert "hunter2" not in one(findings, "redis_unreachable").format()


async def test_dead_letters_are_counted_with_the_newest_reason(
    nats_server: NatsServer, redis_server: RedisServer, nc: NATS
) -> None:
    settings = bridge_settings(nats_server.url, redis_server.url)
    async with running_bridge(settings):
        await nc.jetstream().publish("fechatter.message.created", b"\xff not json")
        await async_wait_until(lambda: redis_server.client().xlen(f"{NS}:dead-letters") == 1, timeout=10)
    letters = one(await diagnose(settings), "dead_letters")
    assert letters.message.startswith("1 event(s) the bridge could not turn into jobs; newest: "
                                      "fechatter.message.created: ")
    assert "fechatter-notify dlq list --source bridge" in (letters.fix or "")


def test_the_command_prints_every_finding_and_exits_2_on_errors(tmp_path: Path, redis_server: RedisServer) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "NATS_URL": f"nats://127.0.0.1:{free_port()}", "REDIS_URL": redis_server.url}
    result = subprocess.run([sys.executable, "-m", "fechatter_notify", "doctor"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error [nats_unreachable] nats.servers: cannot connect" in result.stdout
    assert "info [redis_server] redis.url: redis-server" in result.stdout
    assert "1 error(s)" in result.stdout
    quiet = subprocess.run([sys.executable, "-m", "fechatter_notify", "doctor", "--quiet"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert "info [" not in quiet.stdout and "error [nats_unreachable]" in quiet.stdout
    as_json = subprocess.run([sys.executable, "-m", "fechatter_notify", "doctor", "--format", "json"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=60)
    findings = json.loads(as_json.stdout)
    assert as_json.returncode == 2
    unreachable = next(f for f in findings if f["code"] == "nats_unreachable")
    assert (unreachable["level"], unreachable["path"]) == ("error", "nats.servers")
    assert any(f["code"] == "redis_server" and f["level"] == "info" for f in findings)


async def test_users_connected_to_gateways_are_counted_from_their_live_channels(
    nats_server: NatsServer, redis_server: RedisServer
) -> None:
    pubsub = redis_server.client().pubsub()
    pubsub.subscribe(f"{NS}:live:1", f"{NS}:live:2", "other-namespace:live:3")  # as gateways do
    try:
        await async_wait_until(lambda: len(redis_server.client().pubsub_channels("*")) == 3, timeout=5)
        findings = await diagnose(bridge_settings(nats_server.url, redis_server.url))
        assert one(findings, "gateways").message == "2 user(s) with an open stream on a gateway"
    finally:
        pubsub.close()
