"""Sentry: a real worker process reports final failures, tagged, to a real local HTTP endpoint."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from events import job_to_args
from settings.model import Settings
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


class SentryIngest:
    """A local stand-in for Sentry's ingest: records every envelope POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        ingest = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ingest.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def dsn(self) -> str:
        return f"http://public@{HOST}:{self.server.server_address[1]}/1"

    def events(self) -> list[dict[str, Any]]:
        """Every error event received (envelope items of type ``event``)."""
        found = []
        for body in list(self.bodies):
            lines = body.split(b"\n")
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                if json.loads(header).get("type") == "event":
                    found.append(json.loads(payload))
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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
    settings = make_settings(redis_server.url, sentry={"dsn": ingest.dsn},
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


@pytest.mark.slow
def test_message_bodies_are_sent_when_send_default_pii_is_on(
    redis_server: RedisServer, client: redis.Redis, ingest: SentryIngest, tmp_path: Path
) -> None:
    settings = make_settings(redis_server.url, sentry={"dsn": ingest.dsn, "send_default_pii": True})
    proc = start_worker(settings, tmp_path)
    try:
        wait_subscribed(client, settings, ["domain"])
        enqueue(client, settings, undecodable("fechatter.realtime.chat.42", R_MESSAGE))
        wait_drained(client, settings)
        wait_until(lambda: ingest.events(), timeout=10, message="event not received")
    finally:
        output = stop_worker(proc)
    assert proc.returncode == 0, output
    (event,) = ingest.events()
    assert event["contexts"]["dramatiq"]["data"]["args"][0]["content"] == "Hi team"
