"""The gateway application: routes and the lifecycle of every resource, in one place.

One ``cleanup_ctx`` entry per resource, set up in order and torn down in reverse: the Redis
pool, the batched inbox-head reader, the hub (the pub/sub connection and its listener task), the NATS link, the presence
tracker (last, so its final offline updates still have Redis and NATS). Streams are ended
``on_shutdown``, before aiohttp waits for handlers, so shutdown never waits on an idle stream.
"""

from __future__ import annotations

import resource
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from gateway import state
from gateway.admission import Edge
from gateway.auth import TokenVerifier
from gateway.cors import on_response_prepare, preflight
from gateway.edgeserver import EdgeRunner, handler_args
from gateway.events_handler import events
from gateway.heads import InboxHeads
from gateway.health import healthz, metrics, readyz
from gateway.hub import Hub
from gateway.metrics import GatewayMetrics
from gateway.natslink import NatsLink
from gateway.ops import add_ops
from gateway.presence import PresenceTracker
from gateway.presence_api import online_users, presence_info, presence_update
from gateway.registry import StreamRegistry
from gateway.session import create_session, delete_session
from runtime import Registration, advertised_url, async_pool
from settings import Settings

#: aiohttp cancels a handler when its client disconnects. Set explicitly, the same for tests
#: and production (aiohttp's defaults differ: run_app False, TestServer True): a closed
#: stream then unsubscribes and updates presence at once, not at the next keep-alive write.
HANDLER_CANCELLATION: Final = True
#: Seconds aiohttp waits for handlers at shutdown (streams were already asked to end).
SHUTDOWN_TIMEOUT_S: Final = 5.0
#: Pending connections the kernel queues; a reconnect storm is thousands at once.
BACKLOG: Final = 4096
#: Pooled Redis connections for inbox reads and presence (pub/sub has its own connection).
REDIS_POOL_SIZE: Final = 64
#: Retries of a Redis command on a connection error.
REDIS_RETRIES: Final = 2


def build_app(settings: Settings, *, verifier: TokenVerifier | None = None) -> web.Application:
    """The gateway application for ``settings``.

    Raises:
      ValueError: when ``gateway.jwt.public_key`` is set but is not an Ed25519 PEM key.
    """
    app = web.Application()
    app[state.SETTINGS] = settings
    app[state.VERIFIER] = verifier or TokenVerifier(settings.gateway.jwt)
    app[state.METRICS] = GatewayMetrics()
    app[state.EDGE] = Edge(settings.gateway.limits, app[state.METRICS])
    app[state.STREAMS] = StreamRegistry()

    app.cleanup_ctx.append(_redis_pool)
    app.cleanup_ctx.append(_inbox_heads)
    app.cleanup_ctx.append(_hub)
    app.cleanup_ctx.append(_nats)
    app.cleanup_ctx.append(_presence)
    app.cleanup_ctx.append(_fleet)  # `fechatter-notify top` finds this gateway (runtime.fleet)
    app.on_shutdown.append(_end_streams)
    app.on_response_prepare.append(on_response_prepare(settings.gateway.cors_allow_origin))

    router = app.router
    # add_route, not add_get: a HEAD must not open a stream.
    router.add_route("GET", "/events", events)
    router.add_route("GET", "/online-users", online_users)
    router.add_route("GET", "/presence", presence_info)
    router.add_route("POST", "/presence/update", presence_update)
    router.add_route("POST", "/session", create_session)
    router.add_route("DELETE", "/session", delete_session)
    for path in ("/events", "/online-users", "/presence", "/presence/update", "/session"):
        router.add_route("OPTIONS", path, preflight)
    router.add_route("GET", "/healthz", healthz)
    router.add_route("GET", "/readyz", readyz)
    router.add_route("GET", "/metrics", metrics)
    add_ops(app)  # /ops, /ops/data, /ops/static/: the operator's page (404 unless gateway.ops_token)
    return app


async def start_server(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0: any free port); returns the runner and the bound port.

    Tests and ``gateway.main`` both start the server here, so both get the same
    ``handler_cancellation`` and the same edge limits (:mod:`gateway.edgeserver`); the
    connection cap is derived from the open-files limit in effect now.
    """
    edge = app[state.EDGE]
    edge.cap_connections(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    runner = EdgeRunner(
        app,
        edge,
        handler_cancellation=HANDLER_CANCELLATION,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log=None,
        **handler_args(edge),
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=BACKLOG)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    app[FLEET].set_metrics_url(advertised_url(host, int(bound)))
    return runner, int(bound)


async def _redis_pool(app: web.Application) -> AsyncIterator[None]:
    config = app[state.SETTINGS].redis
    pool = async_pool(
        config,  # one server, or the primary Sentinel names (runtime.redis_client)
        blocking=True,
        max_connections=REDIS_POOL_SIZE,
        timeout=config.pool_timeout,
        socket_timeout=config.socket_timeout,
        socket_connect_timeout=config.socket_connect_timeout,
        # A pooled connection may be dead after a Redis restart: retry once or twice on a
        # fresh one instead of failing the stream. Every command we send is idempotent.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), REDIS_RETRIES),
    )
    app[state.REDIS] = Redis(connection_pool=pool)
    yield
    await app[state.REDIS].aclose(close_connection_pool=True)


async def _inbox_heads(app: web.Application) -> AsyncIterator[None]:
    app[state.HEADS] = InboxHeads(app[state.REDIS])
    yield
    await app[state.HEADS].close()


async def _hub(app: web.Application) -> AsyncIterator[None]:
    settings = app[state.SETTINGS]
    metrics = app[state.METRICS]
    hub = Hub(
        settings.redis,
        settings.redis.namespace,
        connect_timeout=settings.redis.socket_connect_timeout,
        on_reconnect=metrics.pubsub_reconnects.inc,
    )
    app[state.HUB] = hub
    await hub.start()
    yield
    await hub.stop()


async def _nats(app: web.Application) -> AsyncIterator[None]:
    link = NatsLink(app[state.SETTINGS].nats, app[state.METRICS])
    app[state.NATS] = link
    await link.start()
    yield
    await link.stop()


async def _presence(app: web.Application) -> AsyncIterator[None]:
    settings = app[state.SETTINGS]
    tracker = PresenceTracker(
        app[state.REDIS],
        settings.redis.namespace,
        ttl_s=settings.gateway.presence_ttl,
        announce=app[state.NATS].publish_presence,
    )
    app[state.PRESENCE] = tracker
    await tracker.start()
    yield
    await tracker.stop()


async def _end_streams(app: web.Application) -> None:
    app[state.STREAMS].close_all("server_shutdown")


#: This gateway's record in the fleet (its metrics URL is set once the port is bound).
FLEET: Final = web.AppKey("fleet", Registration)


async def _fleet(app: web.Application) -> AsyncIterator[None]:
    gw = app[state.SETTINGS].gateway
    app[FLEET] = Registration("gateway", app[state.SETTINGS].redis.namespace,
                              metrics_url=advertised_url(gw.host, gw.port) if gw.port else None)
    await app[FLEET].start(app[state.REDIS])
    yield
    await app[FLEET].stop()
