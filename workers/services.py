"""Everything an actor needs, built once per worker process from the settings.

One Redis connection pool and (when ``database.url`` is set) one PostgreSQL pool per process,
shared by its worker threads. Nothing here is a module global: tests build several in one
process.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from settings import Settings
from workers.broker import redis_client
from workers.connections import ThreadConnections
from workers.delivery import Delivery
from workers.metrics import WorkerMetrics
from workers.postgres import ChatMembersTable
from workers.presence import PresenceStore
from workers.recipients import Membership

__all__ = ["Services"]


@dataclass
class Services:
    """The collaborators of the actors."""

    settings: Settings
    redis: redis.Redis
    conns: ThreadConnections
    delivery: Delivery
    membership: Membership
    presence: PresenceStore
    metrics: WorkerMetrics
    table: ChatMembersTable | None

    @classmethod
    def open(cls, settings: Settings, metrics: WorkerMetrics | None = None) -> Services:
        """Connect (lazily) to Redis and, if configured, PostgreSQL."""
        metrics = metrics if metrics is not None else WorkerMetrics()
        client = redis_client(settings)
        conns = ThreadConnections(client)
        ns = settings.redis.namespace
        table = ChatMembersTable(settings.database) if settings.database.url is not None else None
        return cls(
            settings=settings,
            redis=client,
            conns=conns,
            delivery=Delivery(conns, ns, settings.delivery, metrics,
                              min_replicas_acked=settings.redis.min_replicas_acked,
                              replica_ack_timeout=settings.redis.replica_ack_timeout),
            membership=Membership(client, conns, ns, ttl_s=settings.delivery.membership_ttl, table=table,
                                  metrics=metrics),
            presence=PresenceStore(client, ns, ttl_s=settings.gateway.presence_ttl),
            metrics=metrics,
            table=table,
        )

    def close(self) -> None:
        """Release both pools."""
        if self.table is not None:
            self.table.close()
        self.conns.close()
        self.redis.close()
        self.redis.connection_pool.disconnect()
