"""``fechatter-notify dev``: the whole system on one machine.

Starts an embedded nats-server and redis-server where the configuration names none (that is,
where ``nats.servers`` / ``redis.url`` still hold their defaults), then runs one bridge, one
worker and one gateway as child processes, and stops everything on Ctrl-C. Without a JWT key
configured it makes a throw-away Ed25519 key pair and prints a token to try the stream with.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fechatter_notify import embedded
from fechatter_notify.embedded import EmbeddedServer, free_port
from fechatter_notify.log import log_event, setup_logging
from settings import Loaded

log = logging.getLogger("fechatter_notify.dev")

#: The three processes of the Procfile.
PROCESSES = ("bridge", "worker", "gateway")


def _configured(loaded: Loaded, *path: str) -> bool:
    # A value counts as configured when a file or the environment supplied it.
    return loaded.origins.get(tuple(path), "default") != "default"


def _dev_keys(workdir: Path) -> tuple[str, str]:
    """A throw-away Ed25519 key pair: (public PEM, a token for user 1 valid 30 minutes)."""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    now = datetime.now(UTC)
    user = {"id": 1, "workspace_id": 1, "fullname": "Dev User", "email": "dev@example.invalid", "status": "Active"}
    claims = {"sub": "1", "iss": "fechatter-server", "aud": "fechatter-web", "iat": now,
              "exp": now + timedelta(minutes=30), "user": user}
    token = jwt.encode(claims, key, algorithm="EdDSA")
    (workdir / "dev-token.txt").write_text(token + "\n")
    return public.decode(), token


def _spawn(name: str, config: str | None, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "fechatter_notify"]
    if config:
        command += ["--config", config]
    command.append(name)
    return subprocess.Popen(command, env=env)


def run(loaded: Loaded, args: argparse.Namespace) -> int:
    """Run everything until Ctrl-C or until a process dies; returns the exit code."""
    setup_logging()
    workdir = Path(tempfile.mkdtemp(prefix="fechatter-notify-dev-"))
    servers: list[EmbeddedServer] = []
    env = dict(os.environ)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        if not _configured(loaded, "nats", "servers"):
            server, url = embedded.start_nats(workdir)
            servers.append(server)
            env["NATS_URL"] = url
            log_event(log, "embedded_server_started", kind="nats-server", url=url, store=workdir)
        if not _configured(loaded, "redis", "url"):
            server, url = embedded.start_redis(workdir)
            servers.append(server)
            env["REDIS_URL"] = url
            log_event(log, "embedded_server_started", kind="redis-server", url=url, dir=workdir)
        token = None
        if loaded.settings.gateway.jwt.public_key is None:
            public, token = _dev_keys(workdir)
            env["NOTIFY__GATEWAY__JWT__PUBLIC_KEY"] = public
        gateway_port = loaded.settings.gateway.port
        config = loaded.source if Path(loaded.source).is_file() else None
        for name in PROCESSES:
            child_env = dict(env)
            # One machine, three processes: each needs its own health and metrics port.
            child_env["NOTIFY__HEALTH__PORT"] = str(free_port())
            child_env["NOTIFY__METRICS__PORT"] = str(free_port())
            child_env["NOTIFY__HEALTH__HOST"] = child_env["NOTIFY__METRICS__HOST"] = "127.0.0.1"
            children.append((name, _spawn(name, config, child_env)))
        print(f"\nfechatter-notify dev is running (work dir {workdir}).", flush=True)
        print(f"  publish Fechatter events to {env.get('NATS_URL', loaded.settings.nats.servers[0])}", flush=True)
        if token:
            print(f"  stream user 1's notifications:\n    curl -N 'http://127.0.0.1:{gateway_port}/events?"
                  f"access_token={token}'\n  (token also in {workdir / 'dev-token.txt'})", flush=True)
        print("  Ctrl-C stops everything.\n", flush=True)
        return _supervise(children)
    finally:
        _stop_children(children)
        for server in reversed(servers):
            server.stop()


def _supervise(children: list[tuple[str, subprocess.Popen[bytes]]]) -> int:
    stop = {"requested": False}

    def request_stop(signum: int, _frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    while not stop["requested"]:
        for name, child in children:
            code = child.poll()
            if code is not None:
                log_event(log, "process_exited", logging.ERROR, process=name, code=code)
                return code or 1
        time.sleep(0.2)  # supervision tick, not a wait for a condition
    return 0


def _stop_children(children: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    for _, child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for name, child in children:
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            log_event(log, "process_killed", logging.WARNING, process=name, reason="no exit 15s after SIGTERM")
            child.kill()
            child.wait()
