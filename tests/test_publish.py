"""``fechatter-notify publish``: a chat's events through the real system, against real servers.

The pipeline (bridge, worker, gateway as processes on a fresh nats-server and redis-server) is
the one the end-to-end tests use; ``publish`` runs as its own process, the way a user runs it.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
import redis

from events.inbox import inbox_key
from events.parse import parse_event
from fechatter_notify.devstate import STATE_FILE, DevState
from fechatter_notify.publish import ChatScript
from tests.pipeline import Pipeline, shutdown, start_pipeline
from tests.servers import NatsServer, RedisServer

pytestmark = pytest.mark.timeout(180)

#: One full cycle of the chat script: every kind of event once.
ONE_CYCLE = 14


@pytest.fixture
def pipeline(nats_server: NatsServer, redis_server: RedisServer, tmp_path: Path) -> Iterator[Pipeline]:
    workdir = tmp_path / "pipeline"
    workdir.mkdir()
    running = start_pipeline(nats_server, redis_server, workdir)
    try:
        running.wait_ready()
        yield running
    finally:
        for name in running.processes:  # shown by pytest when the test fails
            print(f"--- {name} log ---\n{running.log_tail(name, 80)}")
        codes = shutdown(running)
        assert codes == {"bridge": 0, "worker": 0, "gateway": 0}, {n: running.log_tail(n) for n in codes}


def _clean_env() -> dict[str, str]:
    # No server named by the environment: only flags or a dev state may say where to publish.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY", "NATS_URL", "REDIS_URL"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def publish(cwd: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fechatter_notify", "publish", *args], cwd=cwd, env=_clean_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


def _stream_messages(url: str) -> int:
    async def count() -> int:
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().stream_info("FECHATTER_EVENTS")
            return int(info.state.messages)
        finally:
            await nc.close()

    return asyncio.run(count())


def test_every_payload_of_the_script_is_accepted_by_the_event_contract() -> None:
    script = ChatScript(42, [1, 7, 9]).actions()
    dialects: set[str] = set()
    kinds: set[str] = set()
    for _ in range(2 * ONE_CYCLE):
        for pub in next(script):
            parse_event(pub.subject, pub.data())  # raises EventRejected for a shape the bridge refuses
            dialects.add(pub.dialect)
            kinds.add(pub.kind)
    assert dialects == set("RTNCULB")
    assert {"new_message", "typing_started", "typing_stopped", "message_read", "messages_read", "user_presence",
            "message_edited", "message_deleted", "member_joined", "member_left", "message_unread",
            "duplicate_message", "broadcast"} <= kinds


def test_publish_with_flags_reaches_jetstream_core_nats_and_the_watched_user(
        pipeline: Pipeline, tmp_path: Path) -> None:
    # When three cycles of chat 42 are published with explicit flags, watching user 9 (three: 9 types
    # in the second itself, and the first's typing may race the first message, whose member list is
    # what tells the workers who is in the chat)
    result = publish(tmp_path, "--chat", "42", "--members", "1,7,9", "--rate", "50", "--count", str(3 * ONE_CYCLE),
                     "--nats", pipeline.nats.url, "--gateway", pipeline.gateway_url, "--token", pipeline.token(9),
                     "--watch", "9")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    # Then it says where it published and why, and that nothing failed
    assert f"to {pipeline.nats.url} (from --nats)" in out
    summary = re.search(r"published (\d+) events as (\d+) payloads .* \((\d+) JetStream-acked, (\d+) core\)"
                        r".*; (\d+) failed", out)
    assert summary, out
    events, payloads, acked, core, failed = map(int, summary.groups())
    assert (events, failed) == (3 * ONE_CYCLE, 0)
    assert payloads == acked + core and core > 0
    # And every JetStream publish was acked by the stream (the count is the stream's own)
    assert _stream_messages(pipeline.nats.url) == acked
    # And the watched user saw the others' messages and typing, as frames on the gateway
    assert re.search(r"user 9 <- new_message chat=42 id=\d+", out), out
    assert re.search(r"user 9 <- typing_started chat=42 user_id=(1|7)\n", out), out
    watched = re.search(r"watch: user 9 received (\d+) frames", out)
    assert watched and int(watched.group(1)) > 0, out
    # And the workers delivered to the other members too (their inboxes, read from Redis)
    client = redis.Redis.from_url(pipeline.redis.url)
    try:
        assert client.xlen(inbox_key("fechatter-notify", 7)) > 0
    finally:
        client.close()


def test_publish_finds_the_running_dev_from_a_subdirectory(pipeline: Pipeline, tmp_path: Path) -> None:
    # Given a dev state file (as `dev` writes it) naming this pipeline and a signing key
    key_file = tmp_path / "key.pem"
    key_file.write_text(pipeline.key.private_pem())
    state = DevState(os.getpid(), pipeline.nats.url, pipeline.gateway_url, str(key_file), "fechatter-web",
                     "fechatter-server", str(tmp_path))
    state.write(tmp_path)
    below = tmp_path / "some" / "subdir"
    below.mkdir(parents=True)
    # When publish runs with no flags from below that directory
    result = publish(below, "--rate", "50", "--count", str(ONE_CYCLE), "--watch", "1", "--linger", "2s")
    # Then it uses the dev's NATS and gateway, and signs a token the gateway accepts
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"to {pipeline.nats.url} (from the running dev, pid {os.getpid()})" in result.stdout
    assert "watching user 1's stream (connection_confirmed)" in result.stdout
    assert re.search(r"user 1 <- new_message chat=42", result.stdout), result.stdout


def test_publish_without_a_server_fails_with_what_to_do(tmp_path: Path) -> None:
    result = publish(tmp_path, "--count", "1", timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert STATE_FILE in result.stderr and "--nats URL" in result.stderr
    assert "published" not in result.stdout


def test_publish_reports_a_stale_dev_state(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid names no process
    DevState(gone.pid, "nats://127.0.0.1:1", "http://127.0.0.1:1", None, "a", "i", str(tmp_path)).write(tmp_path)
    result = publish(tmp_path, "--count", "1", timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"(pid {gone.pid}), which is no longer running" in result.stderr


def test_watch_needs_a_token_when_dev_has_none(tmp_path: Path) -> None:
    DevState(os.getpid(), "nats://127.0.0.1:1", "http://127.0.0.1:1", None, "a", "i", str(tmp_path)).write(tmp_path)
    result = publish(tmp_path, "--count", "1", "--watch", "1", timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--token" in result.stderr
