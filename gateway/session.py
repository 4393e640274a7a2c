"""``POST /session`` / ``DELETE /session``: the token as a cookie, so it stays out of URLs.

EventSource cannot set headers, and a token in the query ends up in proxy and browser logs
(RFC 9700, section 4.3.2; Mercure 1.0 dropped query tokens). A page instead posts its token once with
``Authorization: Bearer`` (``fetch(…, {method: "POST", credentials: "include"})``); the gateway
checks it and sets it as an ``HttpOnly`` cookie scoped to ``/events``, which
``new EventSource(url, {withCredentials: true})`` then sends. The cookie lives until the token's
``exp``; after a refresh the page posts the new token. Cross-origin this needs
``gateway.cors_allow_origin`` to list the page's origin (``*`` cannot carry credentials), see
gateway/cors.py and README "Tokens".
"""

from __future__ import annotations

import logging
import time
from typing import Final

from aiohttp import web

from gateway import state
from gateway.auth import COOKIE_NAME, AuthError, bearer_token, unauthorized
from runtime import log_event

log = logging.getLogger(__name__)

#: The cookie is only ever needed by the stream.
COOKIE_PATH: Final = "/events"


async def create_session(request: web.Request) -> web.Response:
    """Verify the Bearer token and set it as the stream cookie (204); 401 like ``/events``."""
    app = request.app
    token = bearer_token(request)
    try:
        if token is None:
            raise AuthError("missing", "no Bearer token")
        principal = app[state.VERIFIER].verify(token)
    except AuthError as exc:
        app[state.METRICS].auth_failures.labels(exc.reason).inc()
        log_event(log, "auth_failed", path=request.path, reason=exc.reason, peer=request.remote or "")
        raise unauthorized(exc) from None
    response = web.Response(status=204, headers={"Cache-Control": "no-store"})
    response.headers.add("Set-Cookie", cookie_header(token, max(0, int(principal.expires_at - time.time()))))
    return response


async def delete_session(request: web.Request) -> web.Response:
    """Clear the stream cookie (logout); 204 whether or not there was one."""
    response = web.Response(status=204)
    # Only a Set-Cookie with the same attributes (Partitioned included) clears the cookie.
    response.headers.add("Set-Cookie", cookie_header("", 0))
    return response


def cookie_header(token: str, max_age: int) -> str:
    """The ``Set-Cookie`` value (written by hand: Python 3.11's http.cookies rejects
    ``Partitioned``). A JWT is base64url and dots, so it needs no quoting."""
    attributes = (
        f"Max-Age={max_age}",
        f"Path={COOKIE_PATH}",
        "Secure",
        "HttpOnly",
        # Sent on cross-site requests too (the page and the gateway are different sites on
        # some deploys); SameSite=None requires Secure.
        "SameSite=None",
        # CHIPS: a browser that blocks third-party cookies still keeps this one, keyed to the
        # page's site (the page sets it and the page's EventSource sends it).
        "Partitioned",
    )
    return "; ".join((f"{COOKIE_NAME}={token}", *attributes))
