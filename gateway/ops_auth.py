"""Who may see the ops page: the holder of ``gateway.ops_token`` (README "Ops page").

Two ways to present it, for the two kinds of callers an operator has:

* a browser opens ``/ops?token=<token>`` once: the gateway checks the token, answers with a
  ``303`` to ``/ops`` (so the token leaves the address bar, the history and any ``Referer``) and
  sets an ``HttpOnly`` session cookie scoped to ``/ops``; the page's polls then carry the cookie.
  The same flow as Jupyter's ``?token=`` links, and the only place a query token is accepted;
* a script sends ``Authorization: Bearer <token>`` (``curl -H ... /ops/data``).

The cookie is not the token: it is ``<expiry>.<HMAC(token, expiry)>``, so it stops working after
:data:`SESSION_S` or as soon as the token is rotated (restart), and leaking it never leaks the
token itself. Every comparison is constant-time, over digests of equal length. The token is
never logged (tests/test_gateway_ops.py greps the log for it).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Final

from aiohttp import web

from gateway.auth import bearer_token

#: The session cookie the ``?token=`` visit sets.
COOKIE_NAME: Final = "fechatter_notify_ops"
#: The cookie is only ever needed by the page's own paths.
COOKIE_PATH: Final = "/ops"
#: How long a browser session lasts, in seconds (a working day of on-call, then the link again).
SESSION_S: Final = 12 * 3600
#: The query parameter of the one-time browser visit (Sentry scrubs ``token=`` values).
QUERY_PARAM: Final = "token"


class OpsAuthError(Exception):
    """The request may not see the ops page; ``reason`` is a stable code for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _digest(value: str) -> bytes:
    # Compared as digests: hmac.compare_digest on strings of different lengths returns early.
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


class OperatorAuth:
    """Checks the operator token and the session cookies derived from it."""

    def __init__(self, token: str, clock: Callable[[], float] = time.time) -> None:
        self._token_digest = _digest(token)
        # A key of its own for the cookies, derived so that rotating the token ends every session.
        self._cookie_key = hmac.new(token.encode(), b"fechatter-notify ops session", hashlib.sha256).digest()
        self._clock = clock

    def token_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(_digest(candidate), self._token_digest)

    def session_cookie(self) -> str:
        """A fresh cookie value, valid for :data:`SESSION_S`."""
        expires = int(self._clock()) + SESSION_S
        return f"{expires}.{self._sign(expires)}"

    def session_valid(self, value: str) -> bool:
        expires, _, signature = value.partition(".")
        if not expires.isdigit() or len(expires) > 12:
            return False
        good = hmac.compare_digest(signature.encode(), self._sign(int(expires)).encode())
        return good and int(expires) > self._clock()

    def check(self, request: web.Request) -> None:
        """Let the request through, or raise :class:`OpsAuthError`.

        A Bearer header wins over the cookie (a script's explicit credential is never silently
        replaced by a browser session); a wrong one is refused even when a cookie is valid.
        """
        bearer = bearer_token(request)
        if bearer is not None:
            if not self.token_matches(bearer):
                raise OpsAuthError("wrong_token")
            return
        cookie = request.cookies.get(COOKIE_NAME)
        if cookie is None:
            raise OpsAuthError("missing")
        if not self.session_valid(cookie):
            raise OpsAuthError("bad_session")

    def _sign(self, expires: int) -> str:
        return hmac.new(self._cookie_key, str(expires).encode(), hashlib.sha256).hexdigest()


def session_cookie_header(value: str, max_age: int, *, secure: bool) -> str:
    """The ``Set-Cookie`` value of a session (``max_age`` 0 clears it)."""
    attributes = [f"Max-Age={max_age}", f"Path={COOKIE_PATH}", "HttpOnly",
                  # Only the page itself sends it: no other site's request carries the session.
                  "SameSite=Strict"]
    if secure:
        attributes.append("Secure")
    return "; ".join([f"{COOKIE_NAME}={value}", *attributes])


def served_over_https(request: web.Request) -> bool:
    """Whether the browser reached us over HTTPS (directly, or through a TLS-terminating proxy).

    Decides the cookie's ``Secure``: a browser drops a ``Secure`` cookie set over plain HTTP to
    any host but localhost, so an operator on ``http://10.0.0.5:6687/ops`` would get a page that
    cannot poll. A forged ``X-Forwarded-Proto`` can only add ``Secure`` to the forger's own
    cookie, so it is believed without a trusted-proxy check.
    """
    if request.secure:
        return True
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return forwarded == "https"
