"""``fechatter-notify dev``: the whole system on one machine.

Uses embedded nats-server and redis-server (real binaries on free ports, in a temp dir) unless
told explicitly to use others: ``--nats URL`` / ``--redis URL``, ``$NATS_URL`` / ``$REDIS_URL``
(or ``NOTIFY__NATS__SERVERS`` / ``NOTIFY__REDIS__URL``), or a configuration file named with
``--config`` / ``$NOTIFY_CONFIG``. A notify.yml merely found in the current directory does not
count: the repository's own one must not send ``dev`` to whatever listens on the default ports.
It prints which server it uses and why, runs one bridge, one worker and one gateway as child
processes, waits until they are ready, and stops everything on Ctrl-C. Without a JWT key
configured it makes a throw-away Ed25519 key pair, prints a token for user 1, and writes
:data:`~fechatter_notify.devstate.STATE_FILE` so that ``fechatter-notify publish`` finds it all.
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
import urllib.error
import urllib.request
from pathlib import Path

from fechatter_notify import embedded
from fechatter_notify.devstate import DevState, ServerChoice, choose_server, remove_state, sign_token
from fechatter_notify.embedded import EmbeddedServer, free_port
from runtime import RET_CONFIG, log_event, setup_logging
from settings import Loaded, redact_url

log = logging.getLogger("fechatter_notify.dev")

#: The three processes of the Procfile.
PROCESSES = ("bridge", "worker", "gateway")

#: How long the processes get to report ready before ``dev`` prints its banner anyway.
READY_TIMEOUT_S = 90.0

#: Server variables a child must not see: ``dev``'s choice is passed as NATS_URL / REDIS_URL.
_SERVER_OVERRIDES = ("NOTIFY__NATS__SERVERS", "NOTIFY__REDIS__URL")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``dev``'s own options: servers to use instead of embedded ones."""
    parser.add_argument("--nats", metavar="URL", help="use this NATS server instead of an embedded one "
                        "(also: $NATS_URL, or a --config file naming nats.servers)")
    parser.add_argument("--redis", metavar="URL", help="use this Redis instead of an embedded one "
                        "(also: $REDIS_URL, or a --config file naming redis.url)")


class _Stop:
    """Set by SIGINT / SIGTERM; polled by the readiness wait and the supervision loop."""

    requested = False

    @classmethod
    def install(cls) -> None:
        def request(signum: int, _frame: object) -> None:
            cls.requested = True

        signal.signal(signal.SIGINT, request)
        signal.signal(signal.SIGTERM, request)


def _dev_keys(workdir: Path, loaded: Loaded) -> tuple[str, Path, str]:
    """A throw-away Ed25519 key pair: (public PEM, private key file, a token for user 1)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    key_path = workdir / "dev-signing-key.pem"
    key_path.touch(mode=0o600)
    key_path.write_bytes(private)
    jwt = loaded.settings.gateway.jwt
    token = sign_token(private, 1, audience=jwt.audience, issuer=jwt.issuer)
    (workdir / "dev-token.txt").write_text(token + "\n")
    return public.decode(), key_path, token


def _spawn(name: str, config: str | None, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "fechatter_notify"]
    if config:
        command += ["--config", config]
    command.append(name)
    return subprocess.Popen(command, env=env)


def _server(kind: str, choice: ServerChoice, workdir: Path, servers: list[EmbeddedServer]) -> tuple[str, str]:
    """The URL of the server to use and the line that says which one it is and why."""
    if choice.url is not None:
        log_event(log, "dev_server", kind=kind, url=choice.url, source=choice.reason)
        return choice.url, f"{redact_url(choice.url)} ({choice.reason})"
    start = embedded.start_nats if kind == "nats" else embedded.start_redis
    server, url = start(workdir)
    servers.append(server)
    log_event(log, "embedded_server_started", kind=f"{kind}-server", url=url, pid=server.process.pid, dir=workdir)
    return url, f"embedded {kind}-server at {url}, pid {server.process.pid} ({choice.reason})"


def _endpoint_env(name: str, health: int) -> dict[str, str]:
    """Free health and metrics ports for one child, on loopback: one machine runs all three."""
    from settings import Health

    # The worker supervisor has ports of its own (``*.worker_port``) where the settings have them.
    key = "WORKER_PORT" if name == "worker" and "worker_port" in Health.model_fields else "PORT"
    return {f"NOTIFY__HEALTH__{key}": str(health), f"NOTIFY__METRICS__{key}": str(free_port()),
            "NOTIFY__HEALTH__HOST": "127.0.0.1", "NOTIFY__METRICS__HOST": "127.0.0.1"}


def _local_url(host: str, port: int) -> str:
    # A wildcard bind is reached on loopback; a specific address as it is.
    reachable = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return f"http://{reachable}:{port}"


def run(loaded: Loaded, args: argparse.Namespace) -> int:
    """Run everything until Ctrl-C or until a process dies; returns the exit code."""
    setup_logging()
    workdir = Path(tempfile.mkdtemp(prefix="fechatter-notify-dev-"))
    servers: list[EmbeddedServer] = []
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    here = Path.cwd()
    env = {k: v for k, v in os.environ.items() if k not in _SERVER_OVERRIDES}
    _Stop.install()
    try:
        nats = choose_server(loaded, ("nats", "servers"), "--nats", getattr(args, "nats", None), os.environ, args)
        redis = choose_server(loaded, ("redis", "url"), "--redis", getattr(args, "redis", None), os.environ, args)
        env["NATS_URL"], nats_line = _server("nats", nats, workdir, servers)
        env["REDIS_URL"], redis_line = _server("redis", redis, workdir, servers)
        key_path: Path | None = None
        token = None
        if loaded.settings.gateway.jwt.public_key is None:
            public, key_path, token = _dev_keys(workdir, loaded)
            env["NOTIFY__GATEWAY__JWT__PUBLIC_KEY"] = public
        gateway = loaded.settings.gateway
        gateway_url = _local_url(gateway.host, gateway.port)
        config = loaded.source if Path(loaded.source).is_file() else None
        checks = {"gateway": f"{gateway_url}/readyz"}
        for name in PROCESSES:
            health = free_port()
            children.append((name, _spawn(name, config, {**env, **_endpoint_env(name, health)})))
            if name != "gateway":
                checks[name] = f"http://127.0.0.1:{health}/{'readyz' if name == 'bridge' else 'healthz'}"
        code = _wait_ready(children, checks)
        if code is not None:
            return code
        state = DevState(os.getpid(), env["NATS_URL"], gateway_url, str(key_path) if key_path else None,
                         gateway.jwt.audience, gateway.jwt.issuer, str(workdir))
        _banner(workdir, nats_line, redis_line, gateway_url, token, _write_state(state, here))
        return _supervise(children)
    except embedded.ServerBinaryNotFound as exc:  # the message names the extra to install
        print(f"error: {exc}", file=sys.stderr)
        return RET_CONFIG  # no embedded server binary: like a configuration error, nothing was started
    except embedded.ServerDidNotStart as exc:  # the message says why, with the server's log tail
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        remove_state(here, os.getpid())
        _stop_children(children)
        for server in reversed(servers):
            server.stop()


def _write_state(state: DevState, here: Path) -> Path | None:
    try:
        return state.write(here)
    except OSError as exc:  # a read-only directory: publish then needs its flags
        log_event(log, "dev_state_not_written", logging.WARNING, dir=here, error=exc)
        return None


def _banner(workdir: Path, nats: str, redis: str, gateway_url: str, token: str | None,
            state: Path | None) -> None:
    lines = [f"\nfechatter-notify dev is running (work dir {workdir}).",
             f"  nats:    {nats}",
             f"  redis:   {redis}",
             f"  gateway: {gateway_url}"]
    if token:
        lines += ["  stream user 1's notifications:",
                  f"    curl -N '{gateway_url}/events?access_token={token}'",
                  f"  (token also in {workdir / 'dev-token.txt'})"]
    if state is not None:
        lines += [f"  publish demo events and watch them arrive (it reads {state.name}, from this directory):",
                  "    fechatter-notify publish --chat 42 --members 1,7,9 --watch 1"]
    lines.append("  Ctrl-C stops everything.\n")
    print("\n".join(lines), flush=True)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_ready(children: list[tuple[str, subprocess.Popen[bytes]]], checks: dict[str, str]) -> int | None:
    """Poll each process's readiness URL; an exit code when one dies or Ctrl-C comes first."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = dict(checks)
    while pending and not _Stop.requested:
        code = _exited(children)
        if code is not None:
            return code
        pending = {name: url for name, url in pending.items() if not _ready(url)}
        if pending and time.monotonic() > deadline:
            log_event(log, "dev_not_ready", logging.WARNING, processes=",".join(pending),
                      detail=f"not ready after {READY_TIMEOUT_S:g}s; their logs above say why")
            return None
        if pending:
            time.sleep(0.2)  # poll interval of the readiness wait
    return 0 if _Stop.requested else None


def _exited(children: list[tuple[str, subprocess.Popen[bytes]]]) -> int | None:
    for name, child in children:
        code = child.poll()
        if code is not None and _Stop.requested:
            return 0  # Ctrl-C in a terminal reaches the children too: they stop with dev
        if code is not None:
            log_event(log, "process_exited", logging.ERROR, process=name, code=code)
            return code or 1
    return None


def _supervise(children: list[tuple[str, subprocess.Popen[bytes]]]) -> int:
    while not _Stop.requested:
        code = _exited(children)
        if code is not None:
            return code
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
