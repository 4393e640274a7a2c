"""A local stand-in for Sentry's ingest: an HTTP server on a free loopback port that records every
envelope POSTed to it. Its :attr:`SentryIngest.dsn` is what a process under test gets as ``sentry.dsn``."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.servers import HOST


class SentryIngest:
    """Records envelopes; :meth:`raw` is every byte received (to search for what must not leave)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        ingest = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ingest.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def dsn(self) -> str:
        return f"http://public@{HOST}:{self.server.server_address[1]}/1"

    def raw(self) -> bytes:
        """Every envelope received so far, as sent (decompressed)."""
        return b"\n".join(list(self.bodies))

    def items(self, kind: str) -> list[dict[str, Any]]:
        """Every envelope item of type ``kind`` (``event``, ``transaction``, ...), parsed."""
        found = []
        for body in list(self.bodies):
            lines = body.split(b"\n")
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                if json.loads(header).get("type") == kind:
                    found.append(json.loads(payload))
        return found

    def events(self) -> list[dict[str, Any]]:
        """Every error event received (envelope items of type ``event``)."""
        return self.items("event")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
