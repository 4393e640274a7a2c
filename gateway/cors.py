"""CORS for the browser: the page (e.g. on Vercel) and the gateway are different origins.

Fechatter's web client uses no credentials (EventSource without ``withCredentials``, Bearer
tokens in headers), so ``*`` is safe and is the default. A comma-separated list of origins is
also accepted; then the request's ``Origin`` is echoed when it is listed, with
``Access-Control-Allow-Credentials: true``: a listed page may then send the token cookie of
``POST /session`` (``withCredentials``/``credentials: "include"``). Browsers never send
credentials to a ``*`` answer, so with ``*`` the cookie cannot be used cross-origin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

#: Request headers browsers may send: Last-Event-ID on reconnect, the client's ngrok header.
ALLOW_HEADERS: Final = (
    "Authorization, Content-Type, Last-Event-ID, Cache-Control, ngrok-skip-browser-warning"
)
ALLOW_METHODS: Final = "GET, POST, DELETE, OPTIONS"
#: How long a browser may cache a preflight answer, in seconds.
MAX_AGE_S: Final = 600


def allowed_origin(setting: str, request_origin: str | None) -> str | None:
    """The ``Access-Control-Allow-Origin`` value for a request, or None for no header."""
    origins = [o.strip() for o in setting.split(",") if o.strip()]
    if "*" in origins:
        return "*"
    if request_origin is not None and request_origin in origins:
        return request_origin
    return None


def on_response_prepare(setting: str) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """A signal handler adding CORS headers to every response, streams and errors included.

    ``on_response_prepare`` runs before the headers are sent, which a middleware cannot do for
    a stream that is already flowing.
    """

    async def add_cors(request: web.Request, response: web.StreamResponse) -> None:
        origin = allowed_origin(setting, request.headers.get("Origin"))
        if origin is None:
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        if origin != "*":
            response.headers["Vary"] = "Origin"
            # Only for an explicitly listed origin: credentials with "*" are refused anyway.
            response.headers["Access-Control-Allow-Credentials"] = "true"

    return add_cors


async def preflight(request: web.Request) -> web.Response:
    """Answer ``OPTIONS`` for the browser's preflight (the origin header is added on prepare)."""
    requested = request.headers.get("Access-Control-Request-Headers")
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            # Echo what was asked for, else the known list (the origin was checked on prepare).
            "Access-Control-Allow-Headers": requested or ALLOW_HEADERS,
            "Access-Control-Max-Age": str(MAX_AGE_S),
        },
    )
