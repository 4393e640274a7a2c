"""The whole system as an operator runs it: bridge, worker and gateway as real processes
(``python -m fechatter_notify ...``) against real nats-server and redis-server.

Used by the end-to-end tests and the browser test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from fechatter_notify.embedded import free_port
from gateway.testing import SigningKey
from tests.servers import NatsServer, RedisServer, wait_until

#: Short timings so faults heal within a test's patience, while obeying every config rule; the
#: base of PIPELINE_CONFIG here and of the chaos suite's CHAOS_CONFIG (tests/chaos/harness.py).
SHORT_TIMINGS = """
nats:
  ping_interval: 1s
  max_outstanding_pings: 2
  reconnect_backoff_base: 100ms
  reconnect_backoff_cap: 1s
jetstream:
  consumers:
    - durable: notification_processor
      ack_wait: 5s
      idle_heartbeat: 2s
      batch: 100
redis:
  socket_timeout: 1s
  socket_connect_timeout: 1s
gateway:
  host: 127.0.0.1
  keep_alive: 1s
"""

PIPELINE_CONFIG = SHORT_TIMINGS + """\
realtime:
  typing_ttl: 5s
"""


@dataclass
class Pipeline:
    """Handles on the running system."""

    nats: NatsServer
    redis: RedisServer
    workdir: Path
    gateway_url: str
    key: SigningKey
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    health_urls: dict[str, str] = field(default_factory=dict)
    metrics_urls: dict[str, str] = field(default_factory=dict)

    def token(self, user_id: int) -> str:
        """A Fechatter-shaped access token for ``user_id``."""
        return self.key.token(user_id)

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def start(self, name: str) -> None:
        """Start (or restart) one process: bridge, worker or gateway."""
        env = dict(self.env)
        health, metrics = free_port(), free_port()
        key = "WORKER_PORT" if name == "worker" else "PORT"  # the worker's endpoints have their own ports
        env.update({f"NOTIFY__HEALTH__{key}": str(health), f"NOTIFY__METRICS__{key}": str(metrics),
                    "NOTIFY__HEALTH__HOST": "127.0.0.1", "NOTIFY__METRICS__HOST": "127.0.0.1"})
        args = [sys.executable, "-m", "fechatter_notify", "--config", str(self.workdir / "notify.yml"), name]
        if name == "worker":
            args += ["-p", "1", "-t", "4"]
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.processes[name] = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)
        log.close()
        self.health_urls[name] = f"http://127.0.0.1:{health}"
        self.metrics_urls[name] = f"http://127.0.0.1:{metrics}/metrics"

    def stop(self, name: str, sig: signal.Signals = signal.SIGTERM, timeout: float = 20) -> int:
        """Signal one process group and wait for it; returns its exit code."""
        proc = self.processes[name]
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # Where is it stuck? Its stacks go to its log, which the failing test prints.
                os.killpg(proc.pid, signal.SIGUSR2)  # asyncio tasks (bridge, gateway)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=1)
                os.killpg(proc.pid, signal.SIGUSR1)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=2)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def wait_ready(self, timeout: float = 30) -> None:
        """Poll until the gateway and bridge say they are ready."""
        def ready() -> bool:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            urls = [f"{self.gateway_url}/readyz"]
            if "bridge" in self.processes:
                urls.append(f"{self.health_urls['bridge']}/readyz")
            for url in urls:
                try:
                    with urllib.request.urlopen(url, timeout=1) as resp:
                        if resp.status != 200:
                            return False
                except (urllib.error.URLError, OSError):
                    return False
            return True

        wait_until(ready, timeout=timeout, message="pipeline did not become ready")


def start_pipeline(nats: NatsServer, redis: RedisServer, workdir: Path,
                   processes: tuple[str, ...] = ("bridge", "worker", "gateway")) -> Pipeline:
    """Write a config for these servers and start the processes; call ``shutdown`` after."""
    key = SigningKey.generate()
    port = free_port()
    (workdir / "notify.yml").write_text(PIPELINE_CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY", "NATS_URL", "REDIS_URL"))}
    env.update({"NATS_URL": nats.url, "REDIS_URL": redis.url, "NOTIFY_PORT": str(port),
                "NOTIFY__GATEWAY__JWT__PUBLIC_KEY": key.public_pem, "PYTHONUNBUFFERED": "1"})
    env.pop("DATABASE_URL", None)
    env.pop("SENTRY_DSN", None)
    pipeline = Pipeline(nats, redis, workdir, f"http://127.0.0.1:{port}", key, env)
    for name in processes:
        pipeline.start(name)
    return pipeline


def shutdown(pipeline: Pipeline) -> dict[str, int]:
    """Stop every process; returns their exit codes."""
    return {name: pipeline.stop(name) for name in list(pipeline.processes)}
