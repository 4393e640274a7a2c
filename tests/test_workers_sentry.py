"""Sentry: a real worker process reports final failures, tagged, to a real local HTTP endpoint.

With and without ``send_default_pii``, and the other processes: tests/test_sentry_processes.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from events import job_to_args
from settings.model import Health, Metrics, Settings
from tests.sentry_ingest import SentryIngest
from tests.servers import HOST, RedisServer, free_port, wait_until
from tests.test_workers_processes import child_env
from tests.test_workers_support import (
    N_MESSAGE,
    R_MESSAGE,
    dead_letters,
    enqueue,
    make_settings,
    parse,
    settings_yaml,
    wait_drained,
    wait_subscribed,
)


@pytest.fixture
def ingest() -> Iterator[SentryIngest]:
    server = SentryIngest()
    yield server
    server.close()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = redis_server.client()
    yield c
    c.close()


def worker_settings(redis_url: str, **sections: dict[str, Any]) -> Settings:
    """``make_settings`` with the supervisor's HTTP endpoints off, whichever port settings exist."""
    def off(section: type[Health | Metrics]) -> dict[str, Any]:
        return {name: 0 for name in ("port", "worker_port") if name in section.model_fields}

    return make_settings(redis_url, metrics=off(Metrics), health=off(Health), **sections)


def start_worker(settings: Settings, tmp_path: Path) -> subprocess.Popen[bytes]:
    config = tmp_path / "notify.yml"
    config.write_text(settings_yaml(settings))
    return subprocess.Popen(
        [sys.executable, "-m", "fechatter_notify", "--config", str(config), "worker", "-p", "1", "-t", "2"],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )


def stop_worker(proc: subprocess.Popen[bytes]) -> str:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.communicate(timeout=30)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()[0].decode(errors="replace")


def undecodable(subject: str, data: bytes, **kwargs: Any) -> tuple[str, str, dict[str, Any]]:
    """A job the bridge could have enqueued from an older contract: it can never decode."""
    args = job_to_args(parse(subject, data, **kwargs))
    del args["files"]
    return ("domain", "new_message", args)


@pytest.mark.slow
def test_only_final_failures_are_reported_tagged_and_without_chat_content(
    redis_server: RedisServer, client: redis.Redis, ingest: SentryIngest, tmp_path: Path
) -> None:
    # Given a worker with Sentry on, one retry allowed, and a database that refuses connections
    dead_db = f"postgresql://nobody@{HOST}:{free_port()}/fechatter?connect_timeout=1"
    settings = worker_settings(redis_server.url, sentry={"dsn": ingest.dsn},
                             database={"url": dead_db, "pool_min": 0},
                             delivery={"max_retries": 1, "min_backoff": 0.05, "max_backoff": 0.1})
    proc = start_worker(settings, tmp_path)
    try:
        wait_subscribed(client, settings, ["realtime", "domain"])
        # When a job fails for good at once (undecodable), and one fails transiently twice
        enqueue(client, settings,
                undecodable("fechatter.realtime.chat.42", R_MESSAGE, stream="FECHATTER_EVENTS", stream_seq=16,
                            headers={"Nats-Msg-Id": "evt-16"}),
                parse("fechatter.message.new", N_MESSAGE, stream="FECHATTER_EVENTS", stream_seq=17,
                      headers={"Nats-Msg-Id": "evt-17"}))
        wait_drained(client, settings, timeout=30)
        wait_until(lambda: len(ingest.events()) >= 2, timeout=10, message="events not received")
    finally:
        output = stop_worker(proc)
    assert proc.returncode == 0, output
    assert dead_letters(client, settings, "domain") == 2
    # Then exactly one event per job: the retried attempt was not reported
    events = {e["tags"]["stream_seq"]: e for e in ingest.events()}
    assert sorted(events) == ["16", "17"], [e.get("tags") for e in ingest.events()]
    permanent, transient = events["16"], events["17"]
    assert permanent["exception"]["values"][-1]["type"] == "InvalidJob"
    assert transient["exception"]["values"][-1]["type"] == "PoolTimeout"
    # Tagged with the job type, chat, event id and stream sequence (and the attempt that failed)
    assert {k: permanent["tags"][k] for k in ("job_type", "chat_id", "event_id", "stream", "attempt")} == {
        "job_type": "NewMessage", "chat_id": "42", "event_id": "evt-16", "stream": "FECHATTER_EVENTS",
        "attempt": "1"}
    assert {k: transient["tags"][k] for k in ("job_type", "chat_id", "event_id", "actor", "attempt")} == {
        "job_type": "NewMessage", "chat_id": "42", "event_id": "evt-17", "actor": "new_message", "attempt": "2"}
    # And no chat content left the process
    assert all(b"Hi team" not in body for body in ingest.bodies)
    assert transient["contexts"]["dramatiq"]["data"]["args"] == "[Filtered]"
