"""The supervisor's HTTP endpoints: ``/metrics`` (summed over worker processes) and ``/healthz``.

Each endpoint has its own port from the settings (``metrics.worker_port``,
``health.worker_port``, distinct from the bridge's so both run on one host); port 0 turns it
off, and equal ports share one server. A port that cannot be bound is
:class:`~runtime.ports.PortInUse`: the supervisor does not run on without the
endpoints it was told to serve (nothing would notice its workers dying).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from runtime import PortInUse, address_in_use, log_event
from settings import Path, Settings

__all__ = ["Exposition"]

log = logging.getLogger(__name__)

Route = Callable[[str], "tuple[int, str, bytes] | None"]


class Exposition:
    """Serves ``/metrics`` and ``/healthz`` from daemon threads.

    Parameters:
      settings(Settings): ``metrics`` and ``health`` give host and port.
      metrics_dir(str): The ``PROMETHEUS_MULTIPROC_DIR`` the workers write to.
      alive(Callable[[], bool]): Whether every worker process is alive.
    """

    def __init__(self, settings: Settings, metrics_dir: str, alive: Callable[[], bool]) -> None:
        self._settings = settings
        self._registry = CollectorRegistry()
        MultiProcessCollector(self._registry, path=metrics_dir)  # type: ignore[no-untyped-call]
        self._alive = alive
        self._servers: list[ThreadingHTTPServer] = []

    def start(self) -> None:
        """Bind and serve both endpoints (each one only if its port is non-zero).

        Raises:
          PortInUse: a port is held by another process (nothing is left listening then).
        """
        listeners: dict[tuple[str, int], tuple[Path, list[Route]]] = {}
        wanted: list[tuple[Path, str, int, Route]] = [
            (("metrics", "worker_port"), self._settings.metrics.host, self._settings.metrics.worker_port,
             self._metrics),
            (("health", "worker_port"), self._settings.health.host, self._settings.health.worker_port,
             self._health),
        ]
        for setting, host, port, route in wanted:
            if port != 0:
                listeners.setdefault((host, port), (setting, []))[1].append(route)
        try:
            for (host, port), (setting, routes) in listeners.items():
                self._listen(setting, host, port, routes)
        except PortInUse:
            self.stop()
            raise

    def _listen(self, setting: Path, host: str, port: int, routes: list[Route]) -> None:
        name = ".".join(str(p) for p in setting)
        try:
            server = ThreadingHTTPServer((host, port), _handler_class(routes))
        except OSError as exc:
            if address_in_use(exc):
                raise PortInUse(setting, host, port, exc) from exc
            raise
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name=f"worker-{name}-http", daemon=True).start()
        self._servers.append(server)
        log_event(log, "endpoint_listening", setting=name, host=host, port=server.server_address[1])

    def stop(self) -> None:
        """Stop serving."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    def _metrics(self, path: str) -> tuple[int, str, bytes] | None:
        if path != "/metrics":
            return None
        return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)

    def _health(self, path: str) -> tuple[int, str, bytes] | None:
        if path not in ("/healthz", "/health"):
            return None
        ok = self._alive()
        return (200 if ok else 503), "application/json", json.dumps({"ok": ok}).encode()


NOT_FOUND = (404, "text/plain", b"not found\n")


def _handler_class(routes: list[Route]) -> type[BaseHTTPRequestHandler]:
    def route(path: str) -> tuple[int, str, bytes]:
        for candidate in routes:
            answer = candidate(path)
            if answer is not None:
                return answer
        return NOT_FOUND

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, content_type, body = route(self.path.split("?", 1)[0])
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # scrapes every 15 s are not worth a log line

    return Handler
