"""A 3-node nats-server cluster on loopback for the tests: routes, JetStream, kill -9 and restart.

Each node is a :class:`tests.servers.NatsServer` (so process groups, temp dirs, orphan reaping and
log tails are the harness's own) with a cluster listener and routes to the other two, one
``server_name`` each and one cluster name. JetStream is on with its own store dir per node.

Leaders are looked up from the monitoring endpoint (``/jsz``) of a live node: that needs no NATS
connection, so a look-up works while the JetStream API has no leader to answer it.
"""

from __future__ import annotations

import contextlib
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import pytest

from fechatter_notify.embedded import free_port
from tests.servers import (
    DEFAULT_START_TIMEOUT,
    HOST,
    NatsServer,
    ServerBinaryNotFound,
    wait_until,
)

__all__ = ["CLUSTER_NAME", "ClusterNode", "ClusterSnapshot", "NatsCluster", "nats_cluster"]

#: The cluster's name (every node must agree on it).
CLUSTER_NAME: Final = "notify-test-cluster"
#: Seconds a whole cluster may take to elect its JetStream meta leader (a loaded 2-core box).
FORM_TIMEOUT_S: Final = 30.0
#: Each node's config: small JetStream limits (three stores share one temp disk) and the cluster block.
#: nats-server's raft election timeout is not configurable: a leader killed -9 is replaced in 4-9 s.
_NODE_CONFIG: Final = """
jetstream {{
  max_memory_store: 64MB
  max_file_store: 1GB
}}
cluster {{
  name: {cluster}
  listen: {host}:{cluster_port}
  routes: [
    {routes}
  ]
}}
"""


@dataclass
class ClusterSnapshot:
    """What :meth:`NatsCluster.snapshot` saw at ``at`` (``time.time()``)."""

    at: float
    #: ``/jsz`` ``api.total`` of each live node (a restarted node counts from 0 again).
    api_totals: dict[str, int] = field(default_factory=dict)
    stream_leader: str | None = None
    consumer_leader: str | None = None


class ClusterNode(NatsServer):
    """One node: a NatsServer whose config holds the cluster block (routes to the others).

    The name is fixed (``n1``...): JetStream identifies a peer by its server name, so a restart on
    the same store must keep it, and so must a retry on new client ports.
    """

    def __init__(self, name: str, cluster_port: int, peer_ports: list[int], **kwargs: Any) -> None:
        routes = "\n    ".join(f"nats-route://{HOST}:{port}" for port in peer_ports)
        config = _NODE_CONFIG.format(cluster=CLUSTER_NAME, host=HOST, cluster_port=cluster_port, routes=routes)
        super().__init__(config=config, **kwargs)
        self.name = name
        self.cluster_port = cluster_port
        self.server_name = name

    def __repr__(self) -> str:
        return f"ClusterNode({self.name}, url={self.url!r}, pid={self.pid})"

    def _new_ports(self) -> None:
        super()._new_ports()
        self.server_name = self.name  # the base names a server after its port

    def jsz(self) -> dict[str, Any]:
        """``/jsz`` with every stream and consumer in detail (cluster info included)."""
        answer: dict[str, Any] = self.monitor("/jsz?accounts=true&streams=true&consumers=true&config=true")
        return answer


class NatsCluster:
    """Three (``size``) clustered nats-server nodes with JetStream, on free loopback ports."""

    def __init__(self, size: int = 3, *, start_timeout: float = DEFAULT_START_TIMEOUT) -> None:
        cluster_ports: list[int] = []
        for _ in range(size):
            cluster_ports.append(free_port(exclude=set(cluster_ports)))
        self.nodes: list[ClusterNode] = [
            ClusterNode(f"n{i + 1}", port, [p for p in cluster_ports if p != port], start_timeout=start_timeout)
            for i, port in enumerate(cluster_ports)
        ]
        #: Nodes removed for good (killed and never restarted).
        self.removed: set[str] = set()

    def __repr__(self) -> str:
        return f"NatsCluster({self.nodes!r})"

    # ------------------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = FORM_TIMEOUT_S) -> NatsCluster:
        """Start every node and wait until JetStream has a meta leader and every node is current."""
        for node in self.nodes:
            node.start()
        self.wait_formed(timeout)
        return self

    def wait_formed(self, timeout: float = FORM_TIMEOUT_S) -> str:
        """Block until every live node reports the same meta leader and /healthz is ok; return its name."""
        def formed() -> str | None:
            leaders = {self._meta_leader(node) for node in self.live()}
            if len(leaders) != 1 or None in leaders:
                return None
            if not all(self._healthy(node) for node in self.live()):
                return None
            return leaders.pop()

        return wait_until(formed, timeout=timeout, interval=0.1,
                          message=lambda: f"cluster not formed: {self.describe()}")

    def close(self) -> None:
        """Kill every node and remove their dirs (their data is thrown away: no graceful stop)."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.close(kill=True)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------- faults
    def node(self, name: str) -> ClusterNode:
        return next(n for n in self.nodes if n.name == name)

    def live(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.is_running()]

    def kill(self, name: str) -> ClusterNode:
        """kill -9 one node (its store stays for :meth:`restart`)."""
        node = self.node(name)
        node.kill()
        return node

    def restart(self, name: str) -> ClusterNode:
        """Start a killed (or stopped) node again on its ports and store dir."""
        if name in self.removed:
            raise RuntimeError(f"{name} was removed for good")
        node = self.node(name)
        if node.is_running():
            node.stop()
        return node.start()

    def heal(self, timeout: float = FORM_TIMEOUT_S) -> None:
        """Restart every node that is down (removed ones stay gone) and wait until the cluster is formed."""
        for node in self.nodes:
            if not node.is_running() and node.name not in self.removed:
                node.start()
        self.wait_formed(timeout)

    def remove(self, name: str) -> None:
        """kill -9 one node for good: it never comes back (the R3 assets keep 2 of 3 peers)."""
        self.kill(name)
        self.removed.add(name)

    # ------------------------------------------------------------------------------ look-ups
    @property
    def urls(self) -> list[str]:
        """Client URLs of every node that is not removed (what nats.servers lists)."""
        return [n.url for n in self.nodes if n.name not in self.removed]

    def stream_leader(self, stream: str) -> str | None:
        """Server name of ``stream``'s leader (None: leaderless, or no live node knows it yet).

        Only a node that names itself counts: after a kill -9 the followers keep naming the dead
        leader until they elect another, which would read as "has a leader" while nothing answers.
        """
        for node, detail in self.stream_views(stream):
            if (detail.get("cluster") or {}).get("leader") == node.name:
                return node.name
        return None

    def consumer_leader(self, stream: str, durable: str) -> str | None:
        """Server name of the durable's leader (None: leaderless or unknown; self-named, as above)."""
        for node, detail in self.stream_views(stream):
            for consumer in detail.get("consumer_detail") or []:
                if consumer.get("name") == durable and (consumer.get("cluster") or {}).get("leader") == node.name:
                    return node.name
        return None

    def wait_stream_leader(self, stream: str, timeout: float = 15.0, *, not_on: str | None = None) -> str:
        """Poll until ``stream`` has a leader (other than ``not_on``); return its name."""
        def leader() -> str | None:
            name = self.stream_leader(stream)
            return name if name and name != not_on else None

        return wait_until(leader, timeout=timeout, interval=0.05, message=f"stream {stream} has no leader")

    def wait_consumer_leader(self, stream: str, durable: str, timeout: float = 15.0, *,
                             not_on: str | None = None) -> str:
        """Poll until the durable has a leader (other than ``not_on``); return its name."""
        def leader() -> str | None:
            name = self.consumer_leader(stream, durable)
            return name if name and name != not_on else None

        return wait_until(leader, timeout=timeout, interval=0.05, message=f"consumer {stream}/{durable} has no leader")

    def least_leading(self, stream: str, durable: str) -> ClusterNode:
        """A live node that leads neither ``stream`` nor its durable (there is one among three), and the meta
        layer neither if it can. Left alone, it cannot answer for them: a leader left without a majority
        keeps answering as leader until it notices (seconds), a follower forwards to the dead leader."""
        assets = [self.stream_leader(stream), self.consumer_leader(stream, durable)]
        meta = {self._meta_leader(node) for node in self.live()}
        return min(self.live(), key=lambda node: (assets.count(node.name), node.name in meta))

    def snapshot(self, stream: str, durable: str) -> ClusterSnapshot:
        """One pass over the live nodes' ``/jsz``: API totals per node, the stream's and durable's leaders."""
        snap = ClusterSnapshot(time.time())
        for node in self.live():
            try:
                jsz = node.jsz()
            except (urllib.error.URLError, OSError, ValueError):
                continue
            snap.api_totals[node.name] = int((jsz.get("api") or {}).get("total", 0))
            for account in jsz.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail.get("name") != stream:
                        continue
                    if (detail.get("cluster") or {}).get("leader") == node.name:
                        snap.stream_leader = node.name
                    for consumer in detail.get("consumer_detail") or []:
                        leader = (consumer.get("cluster") or {}).get("leader")
                        if consumer.get("name") == durable and leader == node.name:
                            snap.consumer_leader = node.name
        return snap

    def jsz_api_total(self) -> int:
        """JetStream API requests served, summed over the live nodes (``/jsz`` ``api.total``)."""
        total = 0
        for node in self.live():
            with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
                total += int((node.monitor("/jsz").get("api") or {}).get("total", 0))
        return total

    def describe(self) -> str:
        """One line per node: running, meta leader seen, for failure messages."""
        parts = []
        for node in self.nodes:
            state = "running" if node.is_running() else ("removed" if node.name in self.removed else "down")
            parts.append(f"{node.name}({state}, meta leader {self._meta_leader(node) if node.is_running() else '-'})")
        return "; ".join(parts)

    def stream_views(self, stream: str) -> Iterator[tuple[ClusterNode, dict[str, Any]]]:
        """Each live node's own view of ``stream`` (nodes that do not answer are skipped)."""
        for node in self.live():
            try:
                jsz = node.jsz()
            except (urllib.error.URLError, OSError, ValueError):
                continue
            for account in jsz.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail.get("name") == stream:
                        yield node, detail

    @staticmethod
    def _meta_leader(node: ClusterNode) -> str | None:
        try:
            meta = node.monitor("/jsz").get("meta_cluster") or {}
        except (urllib.error.URLError, OSError, ValueError):
            return None
        leader: str | None = meta.get("leader") or None
        return leader

    @staticmethod
    def _healthy(node: ClusterNode) -> bool:
        try:
            node.monitor("/healthz")
        except (urllib.error.URLError, OSError, ValueError):
            return False  # 503 raises HTTPError, a URLError
        return True


@pytest.fixture(scope="module")
def nats_cluster() -> Iterator[NatsCluster]:
    """A started 3-node cluster with JetStream, shared by one test module (a cluster takes seconds to
    start): a test that kills nodes calls :meth:`NatsCluster.heal` before it ends. Killed after the module."""
    try:
        cluster = NatsCluster()
    except ServerBinaryNotFound as exc:
        pytest.skip(str(exc))  # tests/conftest.py turns a skip into a failure in CI
    try:
        yield cluster.start()
    finally:
        cluster.close()
