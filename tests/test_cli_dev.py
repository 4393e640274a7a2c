"""``fechatter-notify dev`` runs the whole system with embedded servers, and stops it cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from fechatter_notify.embedded import free_port
from tests.servers import wait_until

pytestmark = pytest.mark.timeout(120)


def test_dev_starts_embedded_servers_and_serves_a_stream(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY", "NATS_URL", "REDIS_URL"))}
    env.update({"NOTIFY_PORT": str(port), "PYTHONUNBUFFERED": "1"})
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fechatter_notify", "dev"], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Given the dev command printed its token once everything was started
        token = wait_until(lambda: re.search(r"access_token=([\w.-]+)", log.read_text()), timeout=60,
                           message="dev printed no token").group(1)
        assert "embedded_server_started kind=nats-server" in log.read_text()
        assert "embedded_server_started kind=redis-server" in log.read_text()
        # Then the gateway answers that token with an event stream
        url = f"http://127.0.0.1:{port}/events?access_token={token}"

        def first_frame() -> bytes | None:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    assert resp.headers["Content-Type"].startswith("text/event-stream")
                    for line in resp:
                        if line.startswith(b"data:"):
                            return bytes(line)
            except OSError:
                return None
            return None

        frame = wait_until(first_frame, timeout=30, message="no SSE frame from the dev gateway")
        assert b'"connection_confirmed"' in frame
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
    assert code == 0, log.read_text()[-3000:]
