"""Each long-running process registers itself in Redis, so ``fechatter-notify top`` (and the gateway's
``/ops`` page) find every bridge, worker supervisor and gateway without being told where they run.

Two keys under the namespace (``redis.namespace``):

=====================================  ======  ======================================================
key                                    type    content
=====================================  ======  ======================================================
``{ns}:fleet:processes``               zset    process id -> when its record expires (unix seconds)
``{ns}:fleet:process:{id}``            string  the process's record (JSON, :class:`ProcessRecord`)
=====================================  ======  ======================================================

The record has a TTL (:data:`DEFAULT_TTL_S`) and is rewritten every :data:`DEFAULT_REFRESH_S`, so a
process killed with SIGKILL disappears within the TTL; a clean stop deletes it at once. The index is
only a list of candidates: a reader takes the records that still exist (their TTL is the truth, so
clocks of different hosts do not matter) and each refresh prunes members an hour past their expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from typing import Any, Final

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from runtime.log import LogfmtFormatter, log_event
from runtime.tasks import stop_task

__all__ = [
    "ADVERTISE_HOST_ENV",
    "DEFAULT_REFRESH_S",
    "DEFAULT_TTL_S",
    "ProcessRecord",
    "Registration",
    "advertised_url",
    "index_key",
    "record_key",
    "read_registrations",
]

log = logging.getLogger("runtime.fleet")

#: A record lives this long unless refreshed, in seconds: a SIGKILLed process is gone from ``top`` by then.
DEFAULT_TTL_S: Final = 15.0
#: How often a live process rewrites its record, in seconds (a third of the TTL: two refreshes may fail).
DEFAULT_REFRESH_S: Final = 5.0
#: Index members this long past their expiry are pruned, in seconds (generous: clocks of hosts differ).
PRUNE_AFTER_S: Final = 3600.0
#: The last warning is cut to this many characters (a record is read every second by ``top``).
MAX_WARNING_CHARS: Final = 300
#: Overrides the host name a process advertises in its metrics URL (when it binds a wildcard address).
ADVERTISE_HOST_ENV: Final = "NOTIFY_ADVERTISE_HOST"

_WILDCARDS: Final = frozenset({"", "0.0.0.0", "::", "[::]"})


def index_key(namespace: str) -> str:
    """The sorted set of registered process ids."""
    return f"{namespace}:fleet:processes"


def record_key(namespace: str, process_id: str) -> str:
    """The key of one process's record."""
    return f"{namespace}:fleet:process:{process_id}"


def advertised_url(bind_host: str, port: int, path: str = "/metrics") -> str:
    """The URL others reach an endpoint bound to ``bind_host:port`` at.

    A wildcard bind (``0.0.0.0``) is advertised as ``$NOTIFY_ADVERTISE_HOST`` or else the host name,
    which is what another host (or a container's neighbour) can resolve.
    """
    host = bind_host
    if host in _WILDCARDS:
        host = os.environ.get(ADVERTISE_HOST_ENV) or socket.gethostname()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{port}{path}"


def _version() -> str:
    try:
        return metadata.version("fechatter-notify")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class ProcessRecord:
    """What one process says about itself (the JSON stored in Redis).

    Attributes:
      id: Unique per process start (host, pid and a random suffix: pids are reused).
      role: ``bridge``, ``worker`` or ``gateway``.
      host, pid: Where it runs.
      metrics_url: Its Prometheus ``/metrics``; None until known (a gateway binds after start-up).
      started_at: Unix seconds.
      version: The installed fechatter-notify version.
      last_warning: The newest WARNING-or-worse log line of this process (``at``, ``event``, ``line``).
      details: Role-specific facts a reader needs (the bridge's durables, the queues).
    """

    id: str
    role: str
    host: str
    pid: int
    metrics_url: str | None
    started_at: float
    version: str
    last_warning: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The stored form."""
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> ProcessRecord | None:
        """Parse a stored record; None for one this version cannot read (never an exception)."""
        try:
            data = json.loads(raw)
            return cls(
                id=str(data["id"]), role=str(data["role"]), host=str(data["host"]), pid=int(data["pid"]),
                metrics_url=data.get("metrics_url"), started_at=float(data["started_at"]),
                version=str(data.get("version", "unknown")), last_warning=data.get("last_warning"),
                details=dict(data.get("details") or {}),
            )
        except (ValueError, KeyError, TypeError):
            return None


class _LastWarning(logging.Handler):
    """Keeps the newest WARNING-or-worse line of the process (formatted, URLs redacted, cut short).

    The record is kept and formatted only when read (each heartbeat of the registration): a burst
    of warnings would otherwise pay for a second formatting of every line, of which one is kept.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(LogfmtFormatter())
        self._record: logging.LogRecord | None = None
        self._formatted: dict[str, Any] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self._record = record

    @property
    def last(self) -> dict[str, Any] | None:
        record = self._record
        if record is None:
            return self._formatted
        self._record = None
        try:
            line = self.format(record)
        except Exception:  # a handler must never raise into the code that logged; keep the previous line
            return self._formatted
        self._formatted = {"at": record.created, "level": record.levelname.lower(), "logger": record.name,
                           "event": record.getMessage()[:80], "line": line[:MAX_WARNING_CHARS]}
        return self._formatted


async def read_registrations(client: aioredis.Redis, namespace: str) -> list[ProcessRecord]:
    """Every process registered now (records that have not expired), oldest start first."""
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in await client.zrange(index_key(namespace), 0, -1)]
    if not ids:
        return []
    raws = await client.mget([record_key(namespace, i) for i in ids])
    records = [ProcessRecord.from_json(raw) for raw in raws if raw is not None]
    return sorted((r for r in records if r is not None), key=lambda r: (r.role, r.started_at, r.id))


class Registration:
    """This process's record in Redis, kept alive while the process runs.

    Asyncio processes (bridge, gateway) call :meth:`start` / :meth:`stop` with their
    ``redis.asyncio`` client; the worker supervisor, which runs no event loop, calls
    :meth:`start_thread` / :meth:`stop_thread` with its ``redis.Redis`` client. Redis being down is
    logged once (``registration_failed``) and retried at every refresh; it never stops the process.

    Parameters:
      role(str): ``bridge``, ``worker`` or ``gateway``.
      namespace(str): ``redis.namespace``.
      metrics_url(str | None): Where the process serves ``/metrics`` (see :func:`advertised_url`);
        may be set later with :meth:`set_metrics_url`.
      details(Mapping[str, Any] | None): Role-specific facts (JSON-able) stored with the record.
      ttl_s(float), refresh_s(float): The record's lifetime and refresh period, in seconds.
    """

    def __init__(self, role: str, namespace: str, *, metrics_url: str | None = None,
                 details: Mapping[str, Any] | None = None, ttl_s: float = DEFAULT_TTL_S,
                 refresh_s: float = DEFAULT_REFRESH_S) -> None:
        host, pid = socket.gethostname(), os.getpid()
        self._record = ProcessRecord(
            id=f"{host}:{pid}:{uuid.uuid4().hex[:6]}", role=role, host=host, pid=pid, metrics_url=metrics_url,
            started_at=time.time(), version=_version(), details=dict(details or {}),
        )
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.refresh_s = refresh_s
        self._warnings = _LastWarning()
        self._state = "new"  # "new", "ok" or "failing": one log line per change
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._thread_stop = threading.Event()
        self._client: aioredis.Redis | None = None
        self._sync_client: redis.Redis | None = None

    @property
    def id(self) -> str:
        """This process's id in the fleet."""
        return self._record.id

    def record(self) -> ProcessRecord:
        """The record as it would be written now (with the newest warning)."""
        return replace(self._record, last_warning=self._warnings.last)

    def set_metrics_url(self, url: str) -> None:
        """Set the metrics URL (once the port is bound) and write the record at the next chance."""
        self._record = replace(self._record, metrics_url=url)
        if self._wake is not None:
            self._wake.set()

    # -- asyncio processes -------------------------------------------------------------------------

    async def start(self, client: aioredis.Redis) -> None:
        """Write the record and keep it alive, in a task: a Redis that does not answer delays nothing
        (failures are logged, never raised)."""
        logging.getLogger().addHandler(self._warnings)
        self._client = client
        self._wake = asyncio.Event()
        self._wake.set()  # the first write at once
        self._task = asyncio.get_running_loop().create_task(self._keep_alive(client), name="fleet-registration")

    async def stop(self, *, close_client: bool = False) -> None:
        """Stop refreshing and delete the record (a clean stop leaves no trace); ``close_client``
        closes the client given to :meth:`start` (one made for the registration alone)."""
        await stop_task(self._task)
        self._task = None
        logging.getLogger().removeHandler(self._warnings)
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await self._delete(client).execute()
            log_event(log, "registration_removed", id=self.id, role=self._record.role)
        except (RedisError, OSError) as exc:
            log_event(log, "registration_not_removed", logging.WARNING, id=self.id, reason=_reason(exc))
        if close_client:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    async def _keep_alive(self, client: aioredis.Redis) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.refresh_s)
            self._wake.clear()
            await self._write_async(client)

    async def _write_async(self, client: aioredis.Redis) -> None:
        try:
            await self._write(client.pipeline(transaction=True)).execute()
        except (RedisError, OSError) as exc:
            self._failed(exc)
        else:
            self._written()

    # -- the worker supervisor (threads, no event loop) --------------------------------------------

    def start_thread(self, client: redis.Redis) -> None:
        """Write the record and keep it alive from a daemon thread (never blocks the caller)."""
        logging.getLogger().addHandler(self._warnings)
        self._thread_stop.clear()
        self._sync_client = client
        self._thread = threading.Thread(target=self._keep_alive_sync, args=(client,), name="fleet-registration",
                                        daemon=True)
        self._thread.start()

    def stop_thread(self, *, close_client: bool = False) -> None:
        """Stop the thread and delete the record (``close_client`` as for :meth:`stop`)."""
        self._thread_stop.set()
        if self._thread is not None:
            self._thread.join(self.refresh_s + 5)
            self._thread = None
        logging.getLogger().removeHandler(self._warnings)
        client, self._sync_client = self._sync_client, None
        if client is None:
            return
        try:
            self._delete(client).execute()
            log_event(log, "registration_removed", id=self.id, role=self._record.role)
        except (RedisError, OSError) as exc:
            log_event(log, "registration_not_removed", logging.WARNING, id=self.id, reason=_reason(exc))
        if close_client:
            with contextlib.suppress(RedisError, OSError):
                client.close()

    def _keep_alive_sync(self, client: redis.Redis) -> None:
        self._write_sync(client)
        while not self._thread_stop.wait(self.refresh_s):
            self._write_sync(client)

    def _write_sync(self, client: redis.Redis) -> None:
        try:
            self._write(client.pipeline(transaction=True)).execute()
        except (RedisError, OSError) as exc:
            self._failed(exc)
        else:
            self._written()

    # -- shared ------------------------------------------------------------------------------------

    def _write(self, pipe: Any) -> Any:
        """Queue the record's write on a (sync or async) pipeline: record, index entry, pruning."""
        now = time.time()
        record = self.record()
        pipe.set(record_key(self.namespace, record.id), record.to_json(), px=int(self.ttl_s * 1000))
        pipe.zadd(index_key(self.namespace), {record.id: now + self.ttl_s})
        pipe.zremrangebyscore(index_key(self.namespace), "-inf", now - PRUNE_AFTER_S)
        return pipe

    def _delete(self, client: Any) -> Any:
        pipe = client.pipeline(transaction=True)
        pipe.delete(record_key(self.namespace, self.id))
        pipe.zrem(index_key(self.namespace), self.id)
        return pipe

    def _failed(self, exc: BaseException) -> None:
        if self._state != "failing":
            self._state = "failing"
            log_event(log, "registration_failed", logging.WARNING, id=self.id, reason=_reason(exc))

    def _written(self) -> None:
        if self._state != "ok":
            self._state = "ok"
            log_event(log, "registered", id=self.id, role=self._record.role, metrics_url=self._record.metrics_url,
                      ttl_s=self.ttl_s)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
