"""``fechatter-notify dlq`` against real nats-server and redis-server, on dead letters made the real way.

The bridge's dead letters come from an in-process bridge fed bad payloads over NATS; dramatiq's from a
real worker failing jobs (an undecodable job; a membership lookup whose database is down). The
command runs in-process through ``fechatter_notify.cli.main`` with a notify.yml naming the servers
(in a thread: it runs its own event loop), and once as a subprocess.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
import redis
from nats.aio.client import Client as NATS

from bridge import DeadLetterStore, ReplayOutcome
from bridge.dead_letters import MAX_DELIVERIES, dead_letter_fields
from bridge.enqueue import Enqueuer, connect_redis
from bridge.jsapi import JetStreamApi
from bridge.messages import message_id_for
from bridge.provision import consumer_config, stream_config
from bridge.testing import TEST_CONSUMER, bridge_settings, running_bridge, settings_yaml
from events import job_to_args
from events.inbox import chats_key, members_key
from fechatter_notify.cli import main as cli_main
from settings.model import Settings
from tests.servers import NatsServer, RedisServer, async_wait_until, free_port, wait_until
from tests.test_workers_support import N_MESSAGE, R_MESSAGE, enqueue, inbox, parse, running_worker, wait_drained
from workers import DeadLetterQueues, RequeueOutcome

NS = "test-notify"
DL_KEY = f"{NS}:dead-letters"
SECRET = "Bearer s3cr3t-t0ken"
#: Low enough that a long chat message is refused, high enough for ordinary events.
LOW_LIMIT = 1024
#: Workers in this process: no supervisor ports, quick retries.
WORKER = {"health": {"worker_port": 0}, "metrics": {"worker_port": 0},
          "delivery": {"min_backoff": "50ms", "max_backoff": "200ms", "max_retries": 0}}


def long_message(message_id: int, content_bytes: int) -> bytes:
    """Fechatter's core dialect (members 7 = sender, 9, 11) with ``content_bytes`` of chat text."""
    return json.dumps({
        "version": "V1", "kind": "Created",
        "msg": {"id": message_id, "chat_id": 42, "sender_id": 7, "content": "Hi team " + "x" * content_bytes,
                "files": [], "created_at": "2025-06-27T02:45:46.782538Z",
                "idempotency_key": "0190b5e2-7c3a-7d82-9206-54b2f6b4f7c4"},
        "members": [7, 9, 11], "occurred_at": "2025-06-27T02:45:46.790112345Z",
    }).encode()


@pytest.fixture(autouse=True)
def _no_environment_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command reads the environment like every process: only the test's notify.yml may name servers."""
    for name in list(os.environ):
        if name.startswith("NOTIFY") or name in {"NATS_URL", "REDIS_URL", "DATABASE_URL", "PORT", "SENTRY_DSN"}:
            monkeypatch.delenv(name)


class Cli:
    """``fechatter-notify --config <notify.yml> dlq ...`` in this process; the file can be rewritten."""

    def __init__(self, path: Path, nats_url: str, redis_url: str) -> None:
        self.path, self.nats_url, self.redis_url = path, nats_url, redis_url

    def configure(self, overrides: dict[str, Any]) -> Settings:
        self.path.write_text(settings_yaml(self.nats_url, self.redis_url, overrides))
        return bridge_settings(self.nats_url, self.redis_url, overrides)

    def __call__(self, capsys: pytest.CaptureFixture[str], *argv: str, stdin: str = "") -> tuple[int, str, str]:
        capsys.readouterr()
        old_stdin = sys.stdin
        sys.stdin = io.StringIO(stdin)
        try:
            code = cli_main(["--config", str(self.path), "dlq", *argv])
        finally:
            sys.stdin = old_stdin
        out, err = capsys.readouterr()
        return code, out, err

    async def run(self, capsys: pytest.CaptureFixture[str], *argv: str, stdin: str = "") -> tuple[int, str, str]:
        """From an async test: in a thread, since the command runs its own event loop."""
        return await asyncio.to_thread(self, capsys, *argv, stdin=stdin)


@pytest.fixture
def cli(tmp_path: Path, nats_server: NatsServer, redis_server: RedisServer) -> Cli:
    return Cli(tmp_path / "notify.yml", nats_server.url, redis_server.url)


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


async def bad_payloads_through_the_bridge(settings: Settings, nc: NATS, rds: redis.Redis) -> None:
    """Four dead letters made by a real bridge with ``events.max_payload_bytes`` = :data:`LOW_LIMIT`."""
    async with running_bridge(settings):
        js = nc.jetstream()
        # A long message over the limit, kept whole (under the 4 KiB prefix): fixable by raising the limit
        await js.publish("fechatter.message.created", long_message(1234, 2000), headers={"Authorization": SECRET})
        # A longer one, kept as a prefix only: cannot be replayed
        await js.publish("fechatter.message.created", long_message(1235, 6000))
        # Not JSON, on JetStream and on core NATS: no setting fixes these
        await js.publish("fechatter.message.new", b"\xff not json", headers={"Nats-Msg-Id": "bad-1"})
        await nc.publish("fechatter.realtime.chat.42.typing", b"nope")
        await nc.flush()
        await async_wait_until(lambda: rds.xlen(DL_KEY) == 4, timeout=10, message="dead letters missing")


async def unreadable_max_deliveries_letter(settings: Settings, seq: int = 78) -> None:
    """A max-deliveries dead letter whose message JetStream no longer held, written as bridge/advisories.py does."""
    enqueuer = Enqueuer(connect_redis(settings.redis.url.get_secret_value(), socket_timeout=2, connect_timeout=2),
                        namespace=NS, dedupe_window=3600, dead_letter_stream="dead-letters", dead_letter_max_len=1000)
    batch = enqueuer.new_batch()
    batch.add_dead_letter("", dead_letter_fields(
        "", b"", {}, consumer="notification_processor", code=MAX_DELIVERIES, at=datetime.now(UTC),
        reason="delivered 3 times without an ack (max_deliver reached); the original could not be read: gone",
        stream="FECHATTER_EVENTS", stream_seq=seq, delivered=3))
    await enqueuer.run(batch)
    await enqueuer.close()


def undecodable_job(settings: Settings, rds: redis.Redis) -> str:
    """A job no worker can ever run (its ``content`` is missing): dramatiq dead-letters it at once."""
    args = job_to_args(parse("fechatter.realtime.chat.42", R_MESSAGE))
    del args["content"]
    with running_worker(settings):
        (message_id,) = enqueue(rds, settings, ("domain", "new_message", args))
        wait_drained(rds, settings)
    assert rds.zcard(f"{NS}:domain.XQ") == 1
    return message_id


# ------------------------------------------------------------------------------------------ list


async def test_list_shows_both_sources_newest_first_and_the_filters_select(
    cli: Cli, nc: NATS, rds: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the bridge's dead letters (bad payloads, a max-deliveries one) and a dead dramatiq job
    settings = cli.configure({"events": {"max_payload_bytes": LOW_LIMIT}, **WORKER})
    await bad_payloads_through_the_bridge(settings, nc, rds)
    await unreadable_max_deliveries_letter(settings)
    job_id = await asyncio.to_thread(undecodable_job, settings, rds)

    # When everything is listed as JSON
    code, out, _ = await cli.run(capsys, "list", "--format", "json")
    rows = json_lines(out)

    # Then both sources are there, newest first, each with its identity, subject or job, code and reason
    assert code == 0
    assert [r["source"] for r in rows] == ["dramatiq"] + ["bridge"] * 5
    assert [r["at"] for r in rows] == sorted((r["at"] for r in rows), reverse=True)
    assert all({"source", "id", "at", "subject", "job", "code", "reason", "size"} <= set(r) for r in rows)
    dead_job = rows[0]
    assert (dead_job["id"], dead_job["job"], dead_job["subject"], dead_job["code"]) == (
        job_id, "NewMessage", "fechatter.realtime.chat.42", "InvalidJob")
    assert "content" in dead_job["reason"] and dead_job["where"] == "dramatiq domain"
    by_code: dict[str, list[dict[str, Any]]] = {}
    for row in rows[1:]:
        by_code.setdefault(row["code"], []).append(row)
    assert sorted(by_code) == ["max_deliveries", "not_json", "payload_too_large"]
    assert {(r["subject"], r["where"]) for r in by_code["not_json"]} == {
        ("fechatter.message.new", "bridge FECHATTER_EVENTS#3"),
        ("fechatter.realtime.chat.42.typing", "bridge core")}
    assert sorted(r["replayable"] for r in by_code["payload_too_large"]) == [False, True]
    assert by_code["max_deliveries"][0]["replayable"] is False

    # The text listing: one line each, same order, with when, where from, what, code, reason and size
    code, out, _ = await cli.run(capsys, "list")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 6
    assert lines[0].split("  ")[1:5] == [job_id, "dramatiq domain", "fechatter.realtime.chat.42 (NewMessage)",
                                         "InvalidJob"]
    assert any(" bridge core  fechatter.realtime.chat.42.typing  not_json  " in line and line.endswith("4 B")
               for line in lines)

    # Filters: source, reason code, subject pattern, job type, age
    async def ids(*argv: str) -> list[str]:
        code, out, err = await cli.run(capsys, "list", "--format", "json", *argv)
        assert code == 0, err
        return [r["id"] for r in json_lines(out)]

    assert len(await ids("--source", "bridge")) == 5
    assert await ids("--reason", "InvalidJob") == [job_id]
    assert len(await ids("--reason", "payload_too_large")) == 2
    core = next(r["id"] for r in by_code["not_json"] if r["where"] == "bridge core")
    assert await ids("--subject", "fechatter.realtime.>") == [job_id, core]
    assert len(await ids("--subject", "fechatter.message.*")) == 3
    assert await ids("--job-type", "new_message") == await ids("--job-type", "NewMessage") == [job_id]
    # Aged by two hours (dramatiq's score is when it was dead-lettered): --since 1h leaves it out
    rds.zadd(f"{NS}:domain.XQ", {job_id: (time.time() - 7200) * 1000}, xx=True)
    assert job_id not in await ids("--since", "1h") and len(await ids("--since", "1h")) == 5
    assert (await ids())[-1] == job_id


async def test_a_filter_that_does_not_parse_is_refused_before_anything_is_read(
    cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    cli.configure({})
    code, out, err = await cli.run(capsys, "list", "--since", "1 fortnight")
    assert (code, out) == (2, "") and "--since" in err and "is not a duration" in err
    code, _, err = await cli.run(capsys, "list", "--subject", "fechatter.>.created")
    assert code == 2 and "--subject: " in err and "'>' must be the last token" in err


def test_redis_unreachable_is_one_line_without_the_password(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            nats_server: NatsServer) -> None:
    cli = Cli(tmp_path / "notify.yml", nats_server.url, f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    cli.configure({})
    code, out, err = cli(capsys, "list")
    assert code == 2 and out == ""
    assert "fechatter-notify dlq: Redis at redis://***@127.0.0.1:" in err and "hunter2" not in err


# ------------------------------------------------------------------------------------------ show


async def test_show_prints_the_whole_record_with_chat_text_hidden_unless_asked_and_never_a_token(
    cli: Cli, nc: NATS, rds: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = cli.configure({"events": {"max_payload_bytes": LOW_LIMIT}, **WORKER})
    await bad_payloads_through_the_bridge(settings, nc, rds)
    job_id = await asyncio.to_thread(undecodable_job, settings, rds)
    _, out, _ = await cli.run(capsys, "list", "--format", "json", "--reason", "payload_too_large")
    whole, prefix = sorted(json_lines(out), key=lambda r: r["size"])

    # The bridge's record: every field, the payload as indented JSON with its text hidden
    code, out, _ = await cli.run(capsys, "show", whole["id"])
    assert code == 0
    assert f"id: {whole['id']}" in out and "code: payload_too_large" in out
    assert "where: bridge FECHATTER_EVENTS#1" in out
    # with when the stream stored it (part of the event's identity), to the nanosecond
    assert re.search(r"seq: 1  stored: 20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z  delivered: 1", out), out
    assert '    "chat_id": 42,' in out and '"kind": "Created"' in out and '"members": [\n    7,' in out
    assert "Hi team" not in out and '"content": "<hidden: 2008 chars; --show-payload shows it>"' in out
    assert SECRET not in out and '"Authorization": "***"' in out
    # Asked: the text is shown, the token still is not
    code, out, _ = await cli.run(capsys, "show", whole["id"], "--show-payload")
    assert "Hi team xxx" in out and SECRET not in out
    # A prefix says so, and why it cannot be replayed
    _, out, _ = await cli.run(capsys, "show", prefix["id"])
    assert "replayable: no" in out and "only the first 4096 of its" in out and "not JSON (the first 4096 bytes" in out

    # dramatiq's record: the message with its job, text hidden, the trace baggage never shown
    code, out, _ = await cli.run(capsys, "show", job_id)
    assert code == 0 and "source: dramatiq" in out and "code: InvalidJob" in out and "queue: domain" in out
    assert '"actor_name": "new_message"' in out and '"chat_id": 42' in out and '"baggage": "***"' in out
    assert '"subject": "fechatter.realtime.chat.42"' in out

    # An unknown id
    code, out, err = await cli.run(capsys, "show", "0-1")
    assert (code, out) == (1, "") and "no dead letter with id '0-1'" in err


# ------------------------------------------------------------------------------------------ replay


async def test_bridge_replay_after_the_limit_was_raised_delivers_exactly_once(
    cli: Cli, nc: NATS, rds: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given dead letters of a bridge whose payload limit was too low
    low = cli.configure({"events": {"max_payload_bytes": LOW_LIMIT}, **WORKER})
    await bad_payloads_through_the_bridge(low, nc, rds)
    before = {r["code"] + ("" if r["replayable"] else "-prefix"): r["id"]
              for r in json_lines((await cli.run(capsys, "list", "--format", "json"))[1])
              if r["subject"] != "fechatter.realtime.chat.42.typing"}

    # A dry run with the limit still low: rejected again, nothing changed
    code, out, _ = await cli.run(capsys, "replay", "--dry-run")
    assert code == 1
    assert out.splitlines()[0] == "would replay 0, rejected again 3, already delivered 0, not replayable 1"
    assert "payload_too_large: payload of 2" in out and rds.xlen(DL_KEY) == 4

    # When the limit is raised in the settings and everything is replayed
    fixed = cli.configure({**WORKER})
    code, out, _ = await cli.run(capsys, "replay", "--dry-run", "--reason", "payload_too_large")
    assert out.splitlines()[0] == "would replay 1, rejected again 0, already delivered 0, not replayable 1"
    assert rds.llen(f"{NS}:domain") == 0
    code, out, _ = await cli.run(capsys, "replay")

    # Then the fixed one is enqueued and leaves the dead letters; the still-bad ones stay, with their reasons
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "replayed 1, rejected again 2, already delivered 0, not replayable 1"
    assert any("fechatter.message.new: not_json:" in line for line in lines[1:])
    assert any(f"not replayable: {before['payload_too_large-prefix']} " in line for line in lines[1:])
    left = {f[b"code"].decode() for _, f in rds.xrange(DL_KEY)}
    assert rds.xlen(DL_KEY) == 3 and left == {"not_json", "payload_too_large"}
    assert rds.xrange(DL_KEY, min=before["not_json"], max=before["not_json"])  # the same record, untouched
    assert rds.llen(f"{NS}:domain") == 1

    # And replaying again delivers nothing twice: nothing more is enqueued
    code, out, _ = await cli.run(capsys, "replay")
    assert out.splitlines()[0] == "replayed 0, rejected again 2, already delivered 0, not replayable 1"
    assert rds.llen(f"{NS}:domain") == 1

    # The worker delivers it once to each member but the sender
    await asyncio.to_thread(deliver_all, fixed, rds)
    for user in (9, 11):
        assert [(n["type"], n["id"]) for n in inbox(rds, fixed, user)] == [("new_message", 1234)]
    assert inbox(rds, fixed, 7) == []


def deliver_all(settings: Settings, rds: redis.Redis) -> None:
    with running_worker(settings):
        wait_drained(rds, settings)


async def test_a_stale_record_replayed_twice_is_deduplicated_by_the_events_identity(
    cli: Cli, nc: NATS, rds: redis.Redis
) -> None:
    # Given a dead letter whose cause is fixed, read by two operators at once
    low = cli.configure({"events": {"max_payload_bytes": LOW_LIMIT}})
    await bad_payloads_through_the_bridge(low, nc, rds)
    store = DeadLetterStore(cli.configure({}))
    try:
        (letter,) = [d for d in await store.read() if d.code == "payload_too_large" and d.not_replayable is None]
        core = next(d for d in await store.read() if d.stream is None)
        # When both replay it
        first, second = await store.replay(letter), await store.replay(letter)
        # Then the second finds its job already enqueued (same Nats stream + sequence)
        assert (first.outcome, first.job) == (ReplayOutcome.REPLAYED, "NewMessage")
        assert second.outcome is ReplayOutcome.ALREADY_DELIVERED
        assert rds.llen(f"{NS}:domain") == 1
        # A core NATS event has no identity; its replay uses the dead letter's (here: still rejected)
        assert (await store.replay(core)).outcome is ReplayOutcome.REJECTED
    finally:
        await store.close()


async def test_a_replayed_typing_event_keeps_its_arrival_time_so_a_late_replay_expires(
    cli: Cli, nc: NATS, rds: redis.Redis
) -> None:
    # Given a typing event dead-lettered on core NATS (a user name over a too-low limit)
    settings = cli.configure({"events": {"max_payload_bytes": LOW_LIMIT}})
    typing = {"TypingStarted": {"chat_id": 42, "user_id": 9, "user_name": "B" * LOW_LIMIT}}
    async with running_bridge(settings):
        await nc.publish("fechatter.realtime.chat.42.typing", json.dumps(typing).encode())
        await nc.flush()
        await async_wait_until(lambda: rds.xlen(DL_KEY) == 1, timeout=10)
    # When it is replayed once the limit is raised
    store = DeadLetterStore(cli.configure({}))
    try:
        (letter,) = await store.read()
        assert (await store.replay(letter)).outcome is ReplayOutcome.REPLAYED
    finally:
        await store.close()
    # Then its job was received when the bridge first got it, and expires 5 s after that, not after the replay
    (job,) = [json.loads(m)["args"][0] for m in rds.hvals(f"{NS}:realtime.msgs")]
    received = datetime.fromisoformat(job["origin"]["received_at"])
    assert abs((received - letter.at).total_seconds()) < 0.001
    assert (datetime.fromisoformat(job["expires_at"]) - received).total_seconds() == 5.0


async def test_max_deliveries_dead_letters_replay_from_what_the_advisory_stored_exactly_once(
    cli: Cli, nc: NATS, rds: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a message a crashing consumer received twice without an ack (max_deliver 2)
    consumer = {**TEST_CONSUMER, "max_deliver": 2, "ack_wait": "1500ms"}
    settings = cli.configure({**WORKER, "jetstream": {"consumers": [consumer]}, "redis": {"socket_timeout": "200ms"}})
    api = JetStreamApi(nc)
    await api.stream_create(stream_config(settings.jetstream.streams[0]))
    await api.consumer_create("FECHATTER_EVENTS", consumer_config(settings.jetstream.consumers[0]))
    js = nc.jetstream()
    await js.publish("fechatter.message.created", long_message(1400, 10), headers={"Nats-Msg-Id": "poison-1"})
    sub = await js.pull_subscribe("", durable="notification_processor", stream="FECHATTER_EVENTS")
    for _ in range(2):
        await async_wait_until(lambda: _fetched(sub, 1), timeout=5, interval=0.1)
    await sub.unsubscribe()
    # When the bridge hears the advisory
    async with running_bridge(settings):
        await async_wait_until(lambda: rds.xlen(DL_KEY) == 1, timeout=15, message="no dead letter from the advisory")
    # (and two the advisory handler could not read the message of, written as it writes them: one still in the
    # stream, one gone; nats-server sends no advisory for a deleted message, so no real one can be made)
    await js.publish("fechatter.message.created", long_message(1401, 10), headers={"Nats-Msg-Id": "poison-2"})
    await unreadable_max_deliveries_letter(settings, seq=2)
    await unreadable_max_deliveries_letter(settings)
    code, out, _ = await cli.run(capsys, "list", "--format", "json")
    assert sorted((r["code"], r["where"], r["replayable"]) for r in json_lines(out)) == [
        ("max_deliveries", "bridge FECHATTER_EVENTS#1", True), ("max_deliveries", "bridge FECHATTER_EVENTS#2", False),
        ("max_deliveries", "bridge FECHATTER_EVENTS#78", False)]

    # Then a replay enqueues the stored one and the one JetStream still holds, each under its own identity; the
    # gone one cannot be replayed, and says why
    code, out, _ = await cli.run(capsys, "replay", "--reason", "max_deliveries")
    assert code == 1
    assert out.splitlines()[0] == "replayed 2, rejected again 0, already delivered 0, not replayable 1"
    assert "could not be read from JetStream when it was dead-lettered, nor now: JetStreamRefused" in out
    jobs = sorted((json.loads(m) for m in rds.hvals(f"{NS}:domain.msgs")), key=lambda m: m["args"][0]["message_id"])
    assert [(j["args"][0]["origin"]["event_id"], j["message_id"]) for j in jobs] == [
        ("poison-1", message_id_for("FECHATTER_EVENTS:id:poison-1")),
        ("poison-2", message_id_for("FECHATTER_EVENTS:id:poison-2"))]
    # And again: nothing more is enqueued; the worker delivers it once to each member but the sender
    code, out, _ = await cli.run(capsys, "replay")
    assert out.splitlines()[0] == "replayed 0, rejected again 0, already delivered 0, not replayable 1"
    assert rds.llen(f"{NS}:domain") == 2
    await asyncio.to_thread(deliver_all, settings, rds)
    for user in (9, 11):
        assert sorted(n["id"] for n in inbox(rds, settings, user)) == [1400, 1401]


async def _fetched(sub: Any, n: int) -> bool:
    try:
        return len(await sub.fetch(n, timeout=0.5)) == n
    except nats.errors.TimeoutError:
        return False


def test_dramatiq_replay_after_the_membership_was_learnt_delivers_exactly_once(
    cli: Cli, rds: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a worker whose membership fallback database is down, and no retries left
    settings = cli.configure({**WORKER, "database": {"url": f"postgresql://notify@127.0.0.1:{free_port()}/fechatter"}})
    with running_worker(settings):
        # When a message without a member list arrives for a chat the cache does not know
        (job_id,) = enqueue(rds, settings, parse("fechatter.message.new", N_MESSAGE))
        wait_drained(rds, settings, timeout=20)
    # Then it is in dramatiq's dead letters with the reason the worker met
    code, out, _ = cli(capsys, "list", "--format", "json")
    (row,) = json_lines(out)
    assert (row["source"], row["id"], row["job"], row["code"]) == ("dramatiq", job_id, "NewMessage", "PoolTimeout")

    # When the cause is fixed (an event carrying the member list taught the cache) and it is replayed
    rds.sadd(members_key(NS, 42), 7, 9, 11)
    for user in (7, 9, 11):
        rds.sadd(chats_key(NS, user), 42)
    code, out, _ = cli(capsys, "replay", "--dry-run")
    assert (code, out.splitlines()[0]) == (0, "would replay 1, rejected again 0, already delivered 0, "
                                                "not replayable 0")
    assert rds.zcard(f"{NS}:domain.XQ") == 1
    code, out, _ = cli(capsys, "replay", "--source", "dramatiq")
    assert (code, out.splitlines()[0]) == (0, "replayed 1, rejected again 0, already delivered 0, not replayable 0")
    assert rds.zcard(f"{NS}:domain.XQ") == 0 and rds.hlen(f"{NS}:domain.XQ.reasons") == 0

    # Replaying again finds nothing; the job, replayed once, is delivered once to 9 and 11
    assert cli(capsys, "replay")[1] == "no dead letters selected\n"
    deliver_all(settings, rds)
    for user in (9, 11):
        assert [(n["type"], n["id"]) for n in inbox(rds, settings, user)] == [("new_message", 1234)]


def test_a_stale_dramatiq_record_requeued_twice_is_enqueued_once(cli: Cli, rds: redis.Redis) -> None:
    settings = cli.configure({**WORKER})
    undecodable_job(settings, rds)
    queues = DeadLetterQueues(settings)
    try:
        (job,) = queues.read()
        assert job.retries == 0 and job.code == "InvalidJob"
        assert [r.outcome for r in queues.requeue([job, job])] == [RequeueOutcome.REQUEUED, RequeueOutcome.GONE]
        assert rds.llen(f"{NS}:domain") == 1
        # The job is as it was enqueued (same ids), on its queue again: the worker fails it again, with a reason
        (again,) = [json.loads(m) for m in rds.hvals(f"{NS}:domain.msgs")]
        assert again["message_id"] == job.message["message_id"] and again["options"]["redis_message_id"] == job.id
        with running_worker(settings):
            wait_until(lambda: rds.zcard(f"{NS}:domain.XQ") == 1, timeout=10)
        assert queues.read()[0].code == "InvalidJob"
    finally:
        queues.close()


# ------------------------------------------------------------------------------------------ purge


async def test_purge_asks_first_and_deletes_only_the_selection(
    cli: Cli, nc: NATS, rds: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = cli.configure({"events": {"max_payload_bytes": LOW_LIMIT}, **WORKER})
    await bad_payloads_through_the_bridge(settings, nc, rds)
    await asyncio.to_thread(undecodable_job, settings, rds)
    # Declined (or no answer): nothing goes
    code, out, _ = await cli.run(capsys, "purge", "--reason", "not_json", stdin="n\n")
    assert code == 1 and "purge 2 dead letter(s) (2 bridge, 0 dramatiq)? [y/N] nothing purged" in out
    code, out, _ = await cli.run(capsys, "purge", stdin="")
    assert code == 1 and rds.xlen(DL_KEY) == 4 and rds.zcard(f"{NS}:domain.XQ") == 1
    # Confirmed: exactly the selection goes
    code, out, _ = await cli.run(capsys, "purge", "--reason", "not_json", stdin="y\n")
    assert code == 0 and out.endswith("purged 2\n")
    assert {f[b"code"] for _, f in rds.xrange(DL_KEY)} == {b"payload_too_large"}
    code, out, _ = await cli.run(capsys, "purge", "--source", "dramatiq", "--yes")
    assert (code, out) == (0, "purged 1\n")
    assert rds.zcard(f"{NS}:domain.XQ") == 0 and not rds.exists(f"{NS}:domain.XQ.msgs", f"{NS}:domain.XQ.reasons")
    assert rds.xlen(DL_KEY) == 2


# ------------------------------------------------------------------------------------------ entry point


def test_the_command_runs_as_a_process_with_a_plain_summary_off_a_terminal(
    tmp_path: Path, cli: Cli, rds: redis.Redis
) -> None:
    settings = cli.configure({**WORKER})
    undecodable_job(settings, rds)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "fechatter_notify", "--config", str(cli.path), "dlq", "replay"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "replayed 1, rejected again 0, already delivered 0, not replayable 0\n"


def test_on_a_terminal_replay_draws_a_progress_bar_and_still_prints_the_summary(
    tmp_path: Path, cli: Cli, rds: redis.Redis
) -> None:
    settings = cli.configure({**WORKER})
    undecodable_job(settings, rds)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "TERM": "xterm", "COLUMNS": "100"}
    master, slave = pty.openpty()
    drawn = bytearray()
    reader = threading.Thread(target=_drain, args=(master, drawn), daemon=True)
    reader.start()
    try:
        result = subprocess.run([sys.executable, "-m", "fechatter_notify", "--config", str(cli.path), "dlq",
                                 "replay"], env=env, stdout=subprocess.PIPE, stderr=slave, text=True, timeout=60)
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    assert result.returncode == 0
    assert result.stdout == "replayed 1, rejected again 0, already delivered 0, not replayable 0\n"
    assert b"replaying" in drawn


def _drain(fd: int, into: bytearray) -> None:
    """Read a pty's output until its last writer is gone (a full pty buffer would block the writer)."""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: every slave end is closed
            return
        if not chunk:
            return
        into.extend(chunk)
