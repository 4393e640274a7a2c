"""Shared by the bridge tests: a core-dialect event to publish, and the bridge as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def created(i: int, content: str = "") -> bytes:
    """A core-dialect message-created event with message id ``i`` (content ``m<i>`` unless given)."""
    return json.dumps({
        "version": "V1", "kind": "Created",
        "msg": {"id": i, "chat_id": 42, "sender_id": 7, "content": content or f"m{i}", "files": [],
                "created_at": "2025-06-27T02:45:46.782538Z", "idempotency_key": None},
        "members": [7, 9], "occurred_at": "2025-06-27T02:45:46.790112345Z"}).encode()


class BridgeProcess:
    """``fechatter-notify bridge --config FILE`` in a subprocess, its output in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        # Only the config file configures it: the test runner's own environment must not leak in.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("NOTIFY") and k not in {"NATS_URL", "REDIS_URL", "SENTRY_DSN"}}
        self._log = log.open("ab")
        self.log_path = log
        self.proc = subprocess.Popen([sys.executable, "-m", "fechatter_notify", "bridge", "--config", str(config)],
                                     cwd=ROOT, env=env, stdout=self._log, stderr=self._log)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
