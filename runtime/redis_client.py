"""The one place ``settings.redis`` becomes redis-py pools and clients, sync and asyncio, URL or Sentinel.

With ``redis.url`` naming one server, a pool is redis-py's ``from_url`` with the caller's options
(timeouts, retries, health checks, RESP version), exactly as the processes built them before.

With Sentinel (``redis.sentinels`` + ``redis.master_name``, or a ``redis+sentinel://`` URL:
settings.redis_target), a pool is redis-py's ``SentinelConnectionPool``: every new connection
asks the sentinels for the current primary before it connects, so after a failover the next
connection goes to the new primary without a restart. A connection still open to the old
primary fails (the primary died: the socket closes; it was demoted: redis-py turns the
replica's ``READONLY`` into a ``ConnectionError``) and its owner reconnects as it would after a
Redis restart: pooled clients on their next checkout, the per-thread connections of the workers
(workers.connections) on their next call, the pub/sub connections of the gateway's hub and the
workers' wake listener in their reconnect loops, which then subscribe again.

The sentinels themselves are asked with no retries (redis-py's default would retry a dead
sentinel ten times with backoff before asking the next one) and the same timeouts as the
primary; closing a pool closes its sentinel clients too.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from settings import Redis as RedisSettings
from settings import SentinelTarget, redact_url, sentinel_target

__all__ = [
    "async_client",
    "async_pool",
    "async_sentinels",
    "describe_redis",
    "sync_client",
    "sync_pool",
]


def describe_redis(config: RedisSettings) -> str:
    """Where ``config`` points, without credentials: a redacted URL or ``master 'x' via sentinels ...``."""
    target = sentinel_target(config)
    return target.describe() if target is not None else redact_url(config.url.get_secret_value())


def _timeouts(config: RedisSettings, options: dict[str, Any]) -> dict[str, Any]:
    return {"socket_timeout": config.socket_timeout, "socket_connect_timeout": config.socket_connect_timeout,
            **options}


def _primary_options(target: SentinelTarget) -> dict[str, Any]:
    """Connection options of the primary in Sentinel mode (``ssl`` picks the TLS connection class)."""
    options: dict[str, Any] = {"db": target.db, "username": target.username, "password": target.password}
    if target.tls:
        options.update(ssl=True, ssl_ca_certs=target.ca_file, ssl_certfile=target.cert_file,
                       ssl_keyfile=target.key_file)
    return options


def _sentinel_options(target: SentinelTarget, options: dict[str, Any], retry: Any) -> dict[str, Any]:
    """Options of the connections to the sentinels: the caller's timeouts, no retries, their own auth."""
    kwargs: dict[str, Any] = {k: v for k, v in options.items() if k.startswith("socket_")}
    kwargs.update(retry=retry, username=target.sentinel_username, password=target.sentinel_password)
    if target.tls:
        kwargs.update(ssl=True, ssl_ca_certs=target.ca_file, ssl_certfile=target.cert_file,
                      ssl_keyfile=target.key_file)
    return kwargs


# ------------------------------------------------------------------------------------------- sync


class _OwnedSentinelPool(SentinelConnectionPool):
    """A Sentinel pool that also closes its sentinel clients when it is closed."""

    def disconnect(self, inuse_connections: bool = True) -> None:
        super().disconnect(inuse_connections)
        # The master-changed path disconnects idle connections only; keep the sentinels then.
        if inuse_connections:
            with contextlib.suppress(redis.RedisError, OSError):
                self.sentinel_manager.close()


def sync_pool(config: RedisSettings, **options: Any) -> redis.ConnectionPool:
    """A pool for ``config``; ``options`` are redis-py connection options (the socket timeouts
    default to ``redis.socket_timeout``/``socket_connect_timeout``)."""
    options = _timeouts(config, options)
    target = sentinel_target(config)
    if target is None:
        return redis.ConnectionPool.from_url(config.url.get_secret_value(), **options)
    manager = Sentinel(list(target.sentinels),  # type: ignore[no-untyped-call]
                       sentinel_kwargs=_sentinel_options(target, options, Retry(NoBackoff(), 0)))
    return _OwnedSentinelPool(target.master_name, manager, is_master=True,  # type: ignore[no-untyped-call]
                              **{**_primary_options(target), **options})


def sync_client(config: RedisSettings, **options: Any) -> redis.Redis:
    """A client on its own :func:`sync_pool`; ``client.close()`` plus
    ``client.connection_pool.disconnect()`` release everything."""
    return redis.Redis(connection_pool=sync_pool(config, **options))


# ---------------------------------------------------------------------------------------- asyncio


class _OwnedAsyncSentinelPool(AsyncSentinelPool):
    """An asyncio Sentinel pool that also closes its sentinel clients when it is closed."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:
            manager: AsyncSentinel = self.sentinel_manager
            await asyncio.gather(*(s.aclose() for s in manager.sentinels), return_exceptions=True)


class _OwnedBlockingSentinelPool(_OwnedAsyncSentinelPool, aioredis.BlockingConnectionPool):
    """The same, waiting for a free connection (``max_connections``, ``timeout``) instead of failing."""


def _async_manager(target: SentinelTarget, options: dict[str, Any]) -> AsyncSentinel:
    return AsyncSentinel(list(target.sentinels),  # type: ignore[no-untyped-call]
                         sentinel_kwargs=_sentinel_options(target, options, AsyncRetry(NoBackoff(), 0)))


def async_pool(config: RedisSettings, *, blocking: bool = False, **options: Any) -> aioredis.ConnectionPool:
    """An asyncio pool for ``config``.

    Parameters:
      blocking(bool): A ``BlockingConnectionPool`` (then ``max_connections`` and ``timeout``
        are among ``options``).
      **options: redis-py connection and pool options; the socket timeouts default to the settings'.
    """
    options = _timeouts(config, options)
    target = sentinel_target(config)
    if target is None:
        cls = aioredis.BlockingConnectionPool if blocking else aioredis.ConnectionPool
        return cls.from_url(config.url.get_secret_value(), **options)
    pool_class = _OwnedBlockingSentinelPool if blocking else _OwnedAsyncSentinelPool
    return pool_class(target.master_name, _async_manager(target, options), is_master=True,  # type: ignore[no-untyped-call]
                      **{**_primary_options(target), **options})


def async_client(config: RedisSettings, **options: Any) -> aioredis.Redis:
    """An asyncio client on its own :func:`async_pool`; ``await client.aclose()`` releases everything."""
    return aioredis.Redis.from_pool(async_pool(config, **options))


def async_sentinels(config: RedisSettings, **options: Any) -> list[tuple[str, aioredis.Redis]]:
    """One asyncio client per configured sentinel, ``("host:port", client)`` (``doctor`` asks each one
    what it thinks); empty without Sentinel. The caller closes them."""
    target = sentinel_target(config)
    if target is None:
        return []
    kwargs = _sentinel_options(target, _timeouts(config, options), AsyncRetry(NoBackoff(), 0))
    return [(f"{host}:{port}", aioredis.Redis(host=host, port=port, **kwargs)) for host, port in target.sentinels]
