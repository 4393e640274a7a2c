"""HTTP endpoints: ``/healthz`` (alive), ``/readyz`` (ready, with reasons) and ``/metrics`` (Prometheus text).

Health and metrics listen on ``health.port`` and ``metrics.port``; when both name the same
host and port, one server serves all three paths. Port 0 binds a free port (tests);
:attr:`HttpEndpoints.health_port` / :attr:`metrics_port` say which. A port held by another
process is :class:`~runtime.ports.PortInUse`, naming the setting that chose it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from runtime import PortInUse, address_in_use
from settings import Path

__all__ = ["HttpEndpoints", "Readiness"]

#: Returns ``{"check name": "problem" | None}``; ready when every value is None.
Readiness = Callable[[], Awaitable[dict[str, str | None]]]

HEALTH_SETTING: Path = ("health", "port")
METRICS_SETTING: Path = ("metrics", "port")


class HttpEndpoints:
    """The bridge's HTTP servers.

    Parameters:
      readiness(Readiness): The checks behind ``/readyz``.
      registry(CollectorRegistry): What ``/metrics`` exposes.
      health(tuple[str, int]), metrics(tuple[str, int]): (host, port) of each listener.
    """

    def __init__(self, readiness: Readiness, registry: CollectorRegistry, *, health: tuple[str, int],
                 metrics: tuple[str, int]) -> None:
        self._readiness = readiness
        self._registry = registry
        self._health = health
        self._metrics = metrics
        self._started = time.monotonic()
        self._runners: list[web.AppRunner] = []
        self.health_port = 0
        self.metrics_port = 0

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "uptime_s": round(time.monotonic() - self._started, 3)})

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = await self._readiness()
        problems = {name: problem for name, problem in checks.items() if problem}
        body: dict[str, Any] = {"ready": not problems, "checks": {n: p or "ok" for n, p in checks.items()}}
        if problems:
            body["reasons"] = [f"{name}: {problem}" for name, problem in problems.items()]
        return web.json_response(body, status=200 if not problems else 503)

    async def _metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _serve(self, host: str, port: int, routes: list[web.RouteDef], setting: Path) -> int:
        app = web.Application()
        app.add_routes(routes)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, handler_cancellation=True)
        await runner.setup()
        self._runners.append(runner)  # cleaned up by stop() even when the bind fails
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            if address_in_use(exc):
                raise PortInUse(setting, host, port, exc) from exc
            raise
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def start(self) -> None:
        """Bind and serve."""
        health = [web.get("/healthz", self._healthz), web.get("/readyz", self._readyz)]
        metrics = [web.get("/metrics", self._metrics_text)]
        if self._health == self._metrics and self._health[1] != 0:
            self.health_port = self.metrics_port = await self._serve(*self._health, health + metrics,
                                                                     HEALTH_SETTING)
            return
        self.health_port = await self._serve(*self._health, health, HEALTH_SETTING)
        self.metrics_port = await self._serve(*self._metrics, metrics, METRICS_SETTING)

    async def stop(self) -> None:
        """Stop serving."""
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
