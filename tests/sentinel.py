"""A Sentinel-managed Redis for tests: one primary, its replicas and the sentinels, all on loopback.

Every server is tests.servers' own :class:`RedisServer` (free port, temp dir, process group, reaped
after a SIGKILLed session); a sentinel is the same redis-server binary run with ``--sentinel`` on a
config file of its own (Sentinel rewrites that file, so it lives in the sentinel's temp dir). The
timings are short (``down-after-milliseconds`` 1 s, ``failover-timeout`` 3 s by default) so that a
killed primary is replaced within a few seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.servers import (
    DEFAULT_START_TIMEOUT,
    HOST,
    RedisServer,
    _ServerProcess,
    find_redis_server,
    free_port,
    wait_until,
)

__all__ = ["MASTER_NAME", "SentinelCluster", "SentinelServer"]

#: The name the sentinels monitor the primary under.
MASTER_NAME: Final = "notify-primary"


def _quick_client(port: int, timeout: float = 1.0) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, socket_timeout=timeout, socket_connect_timeout=timeout,
                       retry=Retry(NoBackoff(), 0), decode_responses=True)


class SentinelServer(_ServerProcess):
    """``redis-server sentinel.conf --sentinel`` monitoring ``127.0.0.1:primary_port``."""

    kind = "sentinel"

    def __init__(
        self,
        primary_port: int,
        *,
        master_name: str = MASTER_NAME,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        port: int | None = None,
        binary: Path | None = None,
        workdir: Path | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        super().__init__(binary=binary, workdir=workdir, start_timeout=start_timeout, pinned_ports=port is not None)
        self.port = port if port is not None else free_port()
        self.master_name = master_name
        self.config_path = self.workdir / "sentinel.conf"
        self._monitor = (f"sentinel monitor {master_name} {HOST} {primary_port} {quorum}\n"
                         f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
                         f"sentinel failover-timeout {master_name} {failover_timeout_ms}\n"
                         f"sentinel parallel-syncs {master_name} 2\n")

    def __repr__(self) -> str:
        return f"SentinelServer(port={self.port}, pid={self.pid})"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def _find_binary(self) -> Path:
        return find_redis_server()

    def _new_ports(self) -> None:
        self.port = free_port()

    def _command(self) -> list[str]:
        if self.start_count <= 1:  # a restart keeps what Sentinel wrote into its file
            self.config_path.write_text(
                f"port {self.port}\nbind {HOST}\ndir {self.workdir}\nlogfile {self.log_path}\ndaemonize no\n"
                + self._monitor)
        return [str(self.binary), str(self.config_path), "--sentinel"]

    def _probe_ready(self, remaining: float) -> bool:
        client = _quick_client(self.port, remaining)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def client(self) -> redis.Redis:
        """A sync client for this sentinel (caller closes it); answers are str."""
        return _quick_client(self.port)

    def master(self) -> dict[str, Any]:
        """``SENTINEL MASTER <name>``, parsed by redis-py."""
        client = self.client()
        try:
            return dict(client.sentinel_master(self.master_name))
        finally:
            client.close()


class SentinelCluster:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels; :meth:`start` returns when the
    sentinels see every replica and each other.

    Parameters:
      replicas(int): Replicas of the primary.
      sentinels(int): Sentinels (quorum: a majority of them).
      down_after_ms(int), failover_timeout_ms(int): The sentinels' timings.
      server_args(Sequence[str]): Extra redis-server arguments of the primary and replicas.
    """

    def __init__(self, replicas: int = 2, sentinels: int = 3, *, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 3000, server_args: Sequence[str] = ()) -> None:
        self.server_args = list(server_args)
        self.servers: list[RedisServer] = [RedisServer(extra_args=self.server_args)]
        self._n_replicas = replicas
        self._n_sentinels = sentinels
        self._timings = {"down_after_ms": down_after_ms, "failover_timeout_ms": failover_timeout_ms}
        self.sentinels: list[SentinelServer] = []

    def start(self, timeout: float = 20.0) -> Self:
        try:
            primary = self.servers[0].start()
            for _ in range(self._n_replicas):
                replica = RedisServer(extra_args=[*self.server_args, "--replicaof", HOST, str(primary.port)])
                self.servers.append(replica.start())
            wait_until(lambda: self._linked(primary), timeout=timeout, message="replicas did not sync")
            quorum = self._n_sentinels // 2 + 1
            for _ in range(self._n_sentinels):
                self.sentinels.append(SentinelServer(primary.port, quorum=quorum, **self._timings).start())
            wait_until(self._sentinels_see_everyone, timeout=timeout, message="sentinels did not meet",
                       ignore=(redis.RedisError,))
        except BaseException:
            self.close()
            raise
        return self

    def _linked(self, primary: RedisServer) -> bool:
        client = _quick_client(primary.port)
        try:
            return int(client.info("replication").get("connected_slaves", 0)) == self._n_replicas
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _sentinels_see_everyone(self) -> bool:
        for sentinel in self.sentinels:
            state = sentinel.master()
            others = int(state["num-other-sentinels"])
            if int(state["num-slaves"]) < self._n_replicas or others < len(self.sentinels) - 1:
                return False
        return True

    # ------------------------------------------------------------------ what the settings name

    @property
    def addresses(self) -> list[str]:
        """The sentinels, ``host:port`` each (``redis.sentinels``)."""
        return [s.address for s in self.sentinels]

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL of the primary (``REDIS_URL``)."""
        return f"redis+sentinel://{','.join(self.addresses)}/{MASTER_NAME}/0"

    def redis_settings(self) -> dict[str, Any]:
        """The ``redis`` section's keys that name this cluster."""
        return {"sentinels": self.addresses, "master_name": MASTER_NAME}

    # ------------------------------------------------------------------ the servers

    def primary(self) -> RedisServer:
        """The server the sentinels currently call the primary (a majority of those that answer)."""
        votes: dict[int, int] = {}
        for sentinel in self.sentinels:
            if not sentinel.is_running():
                continue
            client = sentinel.client()
            try:
                _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                votes[int(port)] = votes.get(int(port), 0) + 1
            except (redis.RedisError, TypeError):
                continue
            finally:
                client.close()
        port = max(votes, key=lambda p: votes[p])
        return next(s for s in self.servers if s.port == port)

    def replicas(self) -> list[RedisServer]:
        primary = self.primary()
        return [s for s in self.servers if s is not primary and s.is_running()]

    def kill_primary(self) -> RedisServer:
        """``kill -9`` the current primary; returns it (not running)."""
        old = self.primary()
        old.kill()
        return old

    def wait_failover(self, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Wait until the sentinels name a new primary that says it is one; return it."""

        def promoted() -> RedisServer | None:
            new = self.primary()
            if new is old:
                return None
            client = _quick_client(new.port)
            try:
                return new if client.info("replication").get("role") == "master" else None
            finally:
                client.close()

        return wait_until(promoted, timeout=timeout, interval=0.05, message="no failover",
                          ignore=(redis.RedisError, ValueError, StopIteration))

    def client(self, **kwargs: Any) -> redis.Redis:
        """A sync client of the current primary (caller closes it)."""
        return self.primary().client(**kwargs)

    def close(self) -> None:
        for process in [*self.sentinels, *self.servers]:
            process.close(kill=True)

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(f"--- {p!r} ---\n{p.log_tail(lines)}" for p in [*self.servers, *self.sentinels])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
