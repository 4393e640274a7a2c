"""aiohttp's server with the connection-level protections it lacks: a header-read deadline, a
connection cap, and JSON answers (414/431, not a plain 400 and a traceback in the log) for
requests its parser refuses.

aiohttp has no header-read timeout: a connection may take as long as it likes to send its
request headers (slowloris). Its ``keepalive_timeout`` does close a connection whose *next*
request is incomplete by then (it counts from the connection's start, then from each response)
but silently, and its default is an hour. So:

* every connection gets ``header_read_timeout`` to complete its first request's headers, or
  is answered 408 and closed (:meth:`EdgeHandler._header_deadline`), logged and counted;
* ``keepalive_timeout`` is set just above it, which bounds the later requests of a kept-alive
  connection (and its idle time) the same way, silently;
* every request passes :func:`gateway.admission.screen` before the application routes it;
* above the hard cap (``max_connections`` + a reserve for probes) a new connection is answered
  503 at once, before anything is read, and closed.

The hooks used are aiohttp's public ``Server`` (``connection_made``/``connection_lost``,
``request_factory``) plus ``RequestHandler.handle_error`` and ``AppRunner._make_server``;
tests/test_gateway_limits.py exercises each against a real process.

A live SSE stream leaves aiohttp altogether (:meth:`EdgeHandler.detach`): it becomes its
connection's protocol and the handler returns, so that an idle stream keeps none of aiohttp's
per-request objects. That takes ``RequestHandler``'s ``_manager`` and ``_keepalive_handle``
besides its public ``transport`` and ``force_close()``; tests/test_gateway_registry.py checks
that no handler or request outlives the detach.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final, cast

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from gateway.admission import Edge, answer, screen
from gateway.limits import raw_refusal, refusal

if TYPE_CHECKING:
    from gateway.stream import EventStream

log = logging.getLogger(__name__)

#: aiohttp's own silent close of an incomplete request comes this long after ours (which answers).
KEEPALIVE_GRACE_S: Final = 1.0
#: Room for the method, path and ``HTTP/1.1`` on the request line besides the query.
REQUEST_LINE_ROOM: Final = 2048
#: aiohttp's parser limits when ours are off (0): its defaults.
PARSER_DEFAULT: Final = 8190


def handler_args(edge: Edge) -> dict[str, Any]:
    """``RequestHandler`` keyword arguments that enforce ``edge``'s request limits in the parser.

    One header line may be as long as all of them together; the request line as long as the
    query plus :data:`REQUEST_LINE_ROOM`. The two differ, so a :class:`LineTooLong` tells which
    was too long (414 or 431). Totals are checked after parsing, in :mod:`gateway.admission`.
    """
    limits = edge.limits
    field = limits.max_header_bytes or PARSER_DEFAULT
    line = limits.max_query_bytes + REQUEST_LINE_ROOM if limits.max_query_bytes else PARSER_DEFAULT
    if line == field:
        line += 1
    args: dict[str, Any] = {"max_field_size": field, "max_line_size": line}
    if limits.header_read_timeout:
        args["keepalive_timeout"] = limits.header_read_timeout + KEEPALIVE_GRACE_S
    return args


class EdgeHandler(RequestHandler):
    """One connection: the header-read deadline and JSON answers to unparsable requests."""

    # aiohttp's handler has slots; without ours every connection would carry a __dict__ too.
    __slots__ = ("deadline", "edge", "max_line_size")

    def __init__(self, manager: EdgeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.edge = manager.edge
        #: The parser's request-line limit: a LineTooLong at this limit is the request line.
        self.max_line_size = int(kwargs.get("max_line_size", PARSER_DEFAULT))
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        edge = self.edge
        edge.open_connections += 1
        hard = edge.hard_connection_cap
        if hard and edge.open_connections > hard:
            edge.metrics.refusals.labels("connections_hard").inc()
            edge.quiet.event("connection_refused", error="connections_hard",
                             open=edge.open_connections, hard_cap=hard)
            self._answer(raw_refusal(503, "Service Unavailable", "connections",
                                     "this gateway is at its connection limit", 5))
            return
        timeout = edge.limits.header_read_timeout
        if timeout:
            self.deadline = asyncio.get_running_loop().call_later(timeout, self._header_deadline)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.headers_received()
        self.edge.open_connections -= 1
        super().connection_lost(exc)

    def detach(self, stream: EventStream) -> bool:
        """Hand this connection over to ``stream`` (its request handler then returns, and
        aiohttp's objects for it go away); False when the connection is already closing.

        aiohttp is told the connection is no longer its own: ``transport`` None (so nothing it
        still does writes to or closes the socket), ``force_close()`` (no next request on it),
        its keep-alive timer cancelled, and the server's record of it dropped. The connection
        still counts in ``open_connections`` until the stream ends.
        """
        transport = self.transport
        manager = self._manager
        if transport is None or transport.is_closing() or manager is None:
            return False
        self.headers_received()
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
        manager.connection_lost(self, None)  # forgotten once the handler task ends
        self.transport = None
        self.force_close()
        stream.detach()
        return True

    def headers_received(self) -> None:
        """A request's headers are complete: its deadline is met."""
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _header_deadline(self) -> None:
        self.deadline = None
        edge = self.edge
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        edge.metrics.refusals.labels("header_timeout").inc()
        edge.quiet.event("request_refused", error="header_timeout", status=408,
                         peer=peer[0] if isinstance(peer, tuple) else "",
                         seconds=edge.limits.header_read_timeout)
        self._answer(raw_refusal(408, "Request Timeout", "header_timeout",
                                 f"request headers not complete within {edge.limits.header_read_timeout:g}s"))

    def _answer(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request the parser refused (or a handler's crash): JSON, logged quietly, no traceback."""
        if not isinstance(exc, BadHttpMessage):
            return super().handle_error(request, status, exc, message)
        code, status, reason = _parse_refusal(exc, self.max_line_size)
        self.edge.metrics.refusals.labels(code).inc()
        self.edge.quiet.event("request_refused", error=code, status=status, peer=request.remote or "")
        return refusal(status, code, reason)


def _parse_refusal(exc: BadHttpMessage, max_line: int) -> tuple[str, int, str]:
    if isinstance(exc, LineTooLong):
        if str(exc.args[1]) == str(max_line):
            return "query_too_large", HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long"
        return "headers_too_large", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "a request header is too long"
    if "headers" in str(exc).lower():
        return "headers_too_large", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many request headers"
    return "bad_request", HTTPStatus.BAD_REQUEST, "malformed HTTP request"


class EdgeServer(Server):
    """aiohttp's ``Server`` whose connections are :class:`EdgeHandler` s.

    Built from the ``Server`` aiohttp made for the application, with its request handler,
    request factory and ``RequestHandler`` arguments (aiohttp keeps those in ``_kwargs``).
    """

    def __init__(self, edge: Edge, server: Server) -> None:
        inner = server.request_factory

        def request_factory(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> Any:
            # Called once a request's headers are parsed (also for one the parser refused).
            if isinstance(protocol, EdgeHandler):
                protocol.headers_received()
            return inner(message, payload, protocol, writer, task)

        handle = server.request_handler

        def request_handler(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
            # Not a coroutine: no frame of ours stays suspended while a stream is open.
            refused = screen(edge, cast(web.Request, request))
            return handle(request) if refused is None else answer(refused)

        self._handler_kwargs: dict[str, Any] = dict(server._kwargs)
        super().__init__(request_handler, request_factory=request_factory,
                         handler_cancellation=server.handler_cancellation, **self._handler_kwargs)
        self.edge = edge

    def __call__(self) -> RequestHandler:
        return EdgeHandler(self, loop=asyncio.get_running_loop(), **self._handler_kwargs)


class EdgeRunner(web.AppRunner):
    """``web.AppRunner`` serving through :class:`EdgeServer`."""

    def __init__(self, app: web.Application, edge: Edge, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.edge = edge

    async def _make_server(self) -> Server:
        return EdgeServer(self.edge, await super()._make_server())
