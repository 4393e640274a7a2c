"""Worker processes: a worker killed -9 mid-job, and ``fechatter-notify worker`` itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from settings.model import Settings
from tests.servers import RedisServer, free_port, wait_until
from tests.test_workers_support import (
    R_MESSAGE,
    counter,
    enqueue,
    inbox,
    make_settings,
    parse,
    running_worker,
    settings_yaml,
    wait_drained,
    wait_subscribed,
)
from workers.metrics import WorkerMetrics

#: A real worker process that stalls its job at one stage, after telling the test it got there.
STALLING_WORKER = """
import sys, threading, time
import redis
from dramatiq.middleware import Middleware
from settings import load_settings
from workers.process import WorkerRuntime

settings = load_settings(sys.argv[1], env={}).settings
stage = sys.argv[2]
flag = redis.Redis.from_url(settings.redis.url.get_secret_value())

class Stall(Middleware):
    def before_process_message(self, broker, message):
        if stage == "before_delivery":
            flag.set("stalled", message.message_id)
            time.sleep(3600)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        # Runs first of all after-hooks: the inbox is written, the job not yet acked.
        if stage == "after_delivery":
            flag.set("stalled", message.message_id)
            time.sleep(3600)

WorkerRuntime(settings, queues=["domain"], threads=1, extra_middleware=[Stall()]).start()
threading.Event().wait()
"""


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NOTIFY") and k not in ("REDIS_URL", "NATS_URL", "DATABASE_URL", "SENTRY_DSN")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return env


def spawn_worker(tmp_path: Path, redis_url: str) -> tuple[Path, Path, subprocess.Popen[bytes]]:
    """``fechatter-notify --config FILE worker -p 1 -t 1`` on namespace ``t``: (config, log, process).

    It runs in its own session, so that ``os.killpg`` stops its worker processes with it.
    """
    config = tmp_path / "notify.yml"
    config.write_text(settings_yaml(make_settings(redis_url, namespace="t")))
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fechatter_notify", "--config", str(config), "worker", "-p", "1", "-t", "1"],
            env=child_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return config, log_path, proc


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = redis_server.client()
    yield c
    c.close()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["before_delivery", "after_delivery"])
def test_a_worker_killed_mid_job_has_its_job_redone_without_a_duplicate(
    redis_server: RedisServer, client: redis.Redis, tmp_path: Path, stage: str
) -> None:
    settings = make_settings(redis_server.url)
    config = tmp_path / "notify.yml"
    config.write_text(settings_yaml(settings))
    # Given a worker process holding a new message for 9 and 11, stalled at `stage`
    proc = subprocess.Popen([sys.executable, "-c", STALLING_WORKER, str(config), stage], env=child_env())
    try:
        wait_subscribed(client, settings, ["domain"])
        (message_id,) = enqueue(client, settings, parse("fechatter.realtime.chat.42", R_MESSAGE))
        wait_until(lambda: client.get("stalled") == message_id.encode(), timeout=10, message="never stalled")
        delivered_before_kill = {u: len(inbox(client, settings, u)) for u in (9, 11)}
        # When it is killed -9
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert delivered_before_kill == ({9: 1, 11: 1} if stage == "after_delivery" else {9: 0, 11: 0})
    assert client.hlen("t:domain.msgs") == 1  # fetched, never acked
    # Then a surviving worker finds the dead one's job and redoes it
    metrics = WorkerMetrics()
    with running_worker(settings, ["domain"], metrics=metrics, heartbeat_timeout_ms=1500, recovery_interval_s=0.2):
        wait_drained(client, settings, timeout=20)
    # And each recipient has the message exactly once
    assert [len(inbox(client, settings, u)) for u in (7, 9, 11)] == [0, 1, 1]
    assert counter(metrics.jobs, "new_message", "ok") == 1
    if stage == "after_delivery":
        assert counter(metrics.duplicates, "new_message") == 2
    else:
        assert counter(metrics.notifications, "new_message") == 2


@pytest.mark.slow
def test_the_worker_command_consumes_only_the_queues_it_is_given(
    redis_server: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    metrics_port, health_port = free_port(), free_port(exclude={free_port()})
    settings: Settings = make_settings(redis_server.url, metrics={"host": "127.0.0.1", "worker_port": metrics_port},
                                       health={"host": "127.0.0.1", "worker_port": health_port})
    config = tmp_path / "notify.yml"
    config.write_text(settings_yaml(settings))
    client.sadd("t:members:42", 7, 9, 11)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fechatter_notify", "--config", str(config), "worker", "-p", "2", "-t", "2",
         "-Q", "realtime"],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        # Given two processes subscribed to the realtime queue's wake channel, none to domain's
        wait_subscribed(client, settings, ["realtime"], subscribers=2)
        assert dict(client.pubsub_numsub("t:wake:domain"))[b"t:wake:domain"] == 0
        # When a realtime and a domain job arrive
        enqueue(client, settings, parse("fechatter.realtime.chat.42", R_MESSAGE),
                parse("fechatter.realtime.chat.42.unread",
                      {"MessageUnread": {"message_id": 1234, "chat_id": 42, "user_id": 11}}))
        # Then only the realtime one is processed
        wait_until(lambda: inbox(client, settings, 11), timeout=10, message="unread not delivered")
        assert [n["type"] for n in inbox(client, settings, 11)] == ["message_unread"]
        assert client.llen("t:domain") == 1
        # And the supervisor serves health and the children's summed metrics
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=5) as resp:
            assert resp.status == 200

        def metric_line() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
                body = resp.read().decode()
            return 'fechatter_notify_worker_jobs_total{actor="message_unread",outcome="ok"} 1.0' in body

        wait_until(metric_line, timeout=5, message="metric not exposed")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            output = proc.communicate(timeout=30)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output = proc.communicate()[0].decode(errors="replace")
    # A graceful stop: exit code 0, and the domain job still waits for a domain worker
    assert proc.returncode == 0, output
    assert client.llen("t:domain") == 1


def test_an_unknown_queue_is_a_configuration_error(redis_server: RedisServer, tmp_path: Path) -> None:
    config = tmp_path / "notify.yml"
    config.write_text(settings_yaml(make_settings(redis_server.url)))
    result = subprocess.run(
        [sys.executable, "-m", "fechatter_notify", "--config", str(config), "worker", "-Q", "nope"],
        env=child_env(), capture_output=True, timeout=60,
    )
    assert result.returncode == 2
    assert b"unknown queue" in result.stderr


@pytest.mark.slow
def test_sighup_replaces_the_worker_processes_with_the_new_configuration(
    redis_server: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    config, log_path, proc = spawn_worker(tmp_path, redis_server.url)
    subscribers = lambda channel: dict(client.pubsub_numsub(channel))[channel.encode()]  # noqa: E731
    try:
        wait_until(lambda: subscribers("t:wake:realtime") == 1, timeout=20, message="worker never subscribed")
        # When the namespace changes in the file and SIGHUP arrives
        renamed = make_settings(redis_server.url, namespace="t2")
        config.write_text(settings_yaml(renamed))
        os.kill(proc.pid, signal.SIGHUP)
        # Then a new process consumes the new namespace, the old one is gone, and jobs there are done
        wait_until(lambda: subscribers("t2:wake:realtime") == 1 and subscribers("t:wake:realtime") == 0,
                   timeout=30, message="workers not replaced")
        client.sadd("t2:members:42", 7, 9)
        enqueue(client, renamed, parse("fechatter.realtime.chat.42.read", {"MessageRead": {
            "message_id": 1234, "chat_id": 42, "reader_id": 7, "read_at": "2025-06-27T02:46:01Z"}}))
        wait_until(lambda: inbox(client, renamed, 9), timeout=10, message="the new worker did not deliver")
        # When the file turns invalid, SIGHUP is refused and the running process stays
        config.write_text('{"redis": {"url": "http://nowhere:6379"}}')
        os.kill(proc.pid, signal.SIGHUP)
        # The refusal and each problem are separate lines: wait for the problem's, not just the first.
        wait_until(lambda: "event=config_reload_refused" in log_path.read_text(), timeout=10)
        wait_until(lambda: "code=bad_redis_url path=redis.url" in log_path.read_text(), timeout=10)
        assert subscribers("t2:wake:realtime") == 1 and proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, log_path.read_text()


@pytest.mark.slow
def test_sighup_stops_the_old_worker_process_only_once_the_new_one_consumes(
    redis_server: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    # A spawned process takes seconds to import and connect on a busy machine (chaos scenario
    # reload_under_load saw queues without a consumer for 13 s when the old one was stopped at once).
    _, log_path, proc = spawn_worker(tmp_path, redis_server.url)
    events = lambda: [line.split(" event=", 1)[1].split(" ", 1)[0]  # noqa: E731
                      for line in log_path.read_text().splitlines() if " event=" in line]
    try:
        wait_until(lambda: "worker_started" in events(), timeout=30, message="the worker never started")
        # When SIGHUP arrives
        os.kill(proc.pid, signal.SIGHUP)
        wait_until(lambda: "config_reloaded" in events(), timeout=60, message="the reload never finished")
        # Then the new process started consuming before the old one was told to stop
        seen = events()
        restarting = seen.index("worker_processes_restarting")
        after = seen[restarting:]
        assert "worker_started" in after and "worker_signal" in after, seen
        assert after.index("worker_started") < after.index("worker_signal"), seen
        assert dict(client.pubsub_numsub("t:wake:realtime"))[b"t:wake:realtime"] == 1
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, log_path.read_text()
