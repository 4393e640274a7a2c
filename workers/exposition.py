"""The supervisor's HTTP endpoints: ``/metrics`` (summed over worker processes) and ``/healthz``.

Each endpoint has its own port from the settings (``metrics.port``, ``health.port``); port 0
turns it off. A port that cannot be bound is logged and skipped: metrics must never keep
workers from running.
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

from fechatter_notify.log import log_event
from settings.model import Settings

__all__ = ["Exposition"]

log = logging.getLogger(__name__)


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
        """Bind and serve both endpoints (each one only if its port is non-zero)."""
        routes = {
            "metrics": (self._settings.metrics.host, self._settings.metrics.port, self._metrics),
            "health": (self._settings.health.host, self._settings.health.port, self._health),
        }
        for name, (host, port, handler) in routes.items():
            if port == 0:
                continue
            try:
                server = ThreadingHTTPServer((host, port), _handler_class(handler))
            except OSError as exc:
                log_event(log, "endpoint_not_served", logging.WARNING, endpoint=name, port=port, error=exc)
                continue
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, name=f"worker-{name}-http", daemon=True).start()
            self._servers.append(server)
            log_event(log, "endpoint_listening", endpoint=name, host=host, port=server.server_address[1])

    def stop(self) -> None:
        """Stop serving."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    def _metrics(self, path: str) -> tuple[int, str, bytes]:
        if path != "/metrics":
            return 404, "text/plain", b"not found\n"
        return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)

    def _health(self, path: str) -> tuple[int, str, bytes]:
        if path not in ("/healthz", "/health"):
            return 404, "text/plain", b"not found\n"
        ok = self._alive()
        return (200 if ok else 503), "application/json", json.dumps({"ok": ok}).encode()


def _handler_class(route: Callable[[str], tuple[int, str, bytes]]) -> type[BaseHTTPRequestHandler]:
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
