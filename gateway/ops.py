"""The ops page: ``GET /ops`` (the page), ``GET /ops/data`` (its JSON), ``GET /ops/static/{name}``.

The same figures as ``fechatter-notify top``, as small live charts for people who would rather
look than read (README "Ops page"). Off (404, like any unknown path) unless ``gateway.ops_token``
is set; then every ``/ops`` path needs the operator (gateway/ops_auth.py: ``?token=`` once in a
browser, which becomes a session cookie, or ``Authorization: Bearer`` for scripts), else 401.

``/ops/data`` collects a snapshot at most once per :data:`MIN_INTERVAL_S`, whoever asks: ten open
tabs cost what one does, and the rates always span about a second. CORS headers are taken off
every ``/ops`` answer: only the page itself, on this origin, may read the data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from redis.exceptions import RedisError

from gateway import state
from gateway.limits import QuietLog
from gateway.ops_assets import NO_STORE, SECURITY_HEADERS, Assets
from gateway.ops_auth import (
    QUERY_PARAM,
    SESSION_S,
    OperatorAuth,
    OpsAuthError,
    served_over_https,
    session_cookie_header,
)
from gateway.ops_data import FleetSource
from runtime import log_event

log = logging.getLogger(__name__)

#: The operator's view, its state under one key (None when ``gateway.ops_token`` is unset).
OPS: web.AppKey[Ops | None] = web.AppKey("ops")
#: A poll within this many seconds of the last collection gets that one again.
MIN_INTERVAL_S: Final = 0.9
#: Seconds one collection may take before the poll is answered 503 (the page retries).
COLLECT_TIMEOUT_S: Final = 5.0
PREFIX: Final = "/ops"
#: What a refused caller is told to do (README "Ops page").
SIGN_IN: Final = (f"open /ops?{QUERY_PARAM}=<gateway.ops_token> in a browser, "
                  "or send Authorization: Bearer <gateway.ops_token>")


@dataclass
class Ops:
    """The page's files, the token check and the latest snapshot (shared by every poll)."""

    auth: OperatorAuth
    source: FleetSource
    assets: Assets = field(default_factory=Assets)
    quiet: QuietLog = field(default_factory=lambda: QuietLog(log))
    latest: dict[str, Any] | None = None
    latest_at: float = float("-inf")
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def snapshot(self) -> dict[str, Any]:
        """The latest snapshot, collected again when older than :data:`MIN_INTERVAL_S`."""
        async with self.lock:  # one collection at a time; the others wait and reuse it
            if self.latest is None or time.monotonic() - self.latest_at >= MIN_INTERVAL_S:
                async with asyncio.timeout(COLLECT_TIMEOUT_S):
                    self.latest = await self.source.collect()
                self.latest_at = time.monotonic()
            return self.latest


def add_ops(app: web.Application) -> None:
    """Register the ops routes on ``app`` (gateway/app.py); the page is on when a token is set."""
    settings = app[state.SETTINGS]
    token = settings.gateway.ops_token
    app[OPS] = None if token is None else Ops(OperatorAuth(token.get_secret_value()), FleetSource(app))
    app.router.add_route("GET", PREFIX, ops_page)
    app.router.add_route("GET", f"{PREFIX}/data", ops_data)
    app.router.add_route("GET", PREFIX + "/static/{name:.+}", ops_asset)
    app.on_response_prepare.append(_no_cors)
    app.on_cleanup.append(_close)


async def ops_page(request: web.Request) -> web.StreamResponse:
    """``GET /ops``: the page; ``?token=`` signs a browser in (303 back to ``/ops``)."""
    ops = _enabled(request)
    candidate = request.query.get(QUERY_PARAM)
    if candidate is not None:
        return _sign_in(request, ops, candidate)
    _authorize(request, ops)
    return ops.assets.page_response()


async def ops_data(request: web.Request) -> web.Response:
    """``GET /ops/data``: the latest snapshot as JSON (the page's charts, or a script's)."""
    ops = _enabled(request)
    _authorize(request, ops)
    try:
        snapshot = await ops.snapshot()
    except TimeoutError:
        ops.quiet.event("ops_snapshot_failed", error="timeout", seconds=COLLECT_TIMEOUT_S)
        return _json({"error": "snapshot_timeout", "reason": "collecting the snapshot took too long"}, 503)
    except (RedisError, OSError) as exc:
        # Where the processes are registered is unreachable; the page says so and keeps polling.
        ops.quiet.event("ops_snapshot_failed", error=type(exc).__name__)
        return _json({"error": "redis_unavailable", "reason": f"{type(exc).__name__}: the fleet's Redis "
                      "did not answer"}, 503)
    return _json(snapshot, 200)


async def ops_asset(request: web.Request) -> web.Response:
    """``GET /ops/static/{name}``: one of the page's files (behind the token like the rest)."""
    ops = _enabled(request)
    _authorize(request, ops)
    return ops.assets.asset_response(request, request.match_info["name"])


def _enabled(request: web.Request) -> Ops:
    ops = request.app[OPS]
    if ops is None:
        raise web.HTTPNotFound()  # off: the same answer as a path that does not exist
    return ops


def _authorize(request: web.Request, ops: Ops) -> None:
    try:
        ops.auth.check(request)
    except OpsAuthError as exc:
        raise _refused(request, ops, exc.reason) from None


def _sign_in(request: web.Request, ops: Ops, candidate: str) -> web.Response:
    if not ops.auth.token_matches(candidate):
        raise _refused(request, ops, "wrong_token")
    secure = served_over_https(request)
    log_event(log, "ops_session_started", peer=request.remote or "", secure=secure)
    response = web.Response(status=303, headers={
        **SECURITY_HEADERS,
        # Relative ("ops", not "/ops"): back to this path without the query, behind any proxy prefix.
        "Location": "ops",
        "Cache-Control": NO_STORE,
    })
    response.headers.add("Set-Cookie", session_cookie_header(ops.auth.session_cookie(), SESSION_S, secure=secure))
    return response


def _refused(request: web.Request, ops: Ops, reason: str) -> web.HTTPUnauthorized:
    # The token is never logged; a flood of guesses writes a few lines and a count (QuietLog).
    ops.quiet.event("ops_auth_failed", reason=reason, path=request.path, peer=request.remote or "")
    body = {"error": "unauthorized", "reason": reason, "sign_in": SIGN_IN}
    return web.HTTPUnauthorized(
        text=json.dumps(body),
        content_type="application/json",
        headers={**SECURITY_HEADERS, "Cache-Control": NO_STORE,
                 "WWW-Authenticate": 'Bearer realm="fechatter-notify ops"'},
    )


def _json(body: dict[str, Any], status: int) -> web.Response:
    response = web.json_response(body, status=status)
    response.headers.update({**SECURITY_HEADERS, "Cache-Control": NO_STORE})
    return response


async def _close(app: web.Application) -> None:
    ops = app[OPS]
    if ops is not None:
        await ops.source.close()


async def _no_cors(request: web.Request, response: web.StreamResponse) -> None:
    # Runs after gateway/cors.py's hook (appended later): the ops data is for this origin only.
    if request.path == PREFIX or request.path.startswith(PREFIX + "/"):
        for name in ("Access-Control-Allow-Origin", "Access-Control-Allow-Credentials", "Vary"):
            response.headers.popall(name, None)
