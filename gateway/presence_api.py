"""Presence over HTTP: what keeps the web client's presence service in server mode.

``GET /presence`` is probed once without auth and must answer ``ok`` (and never mention
``nginx-http``, which the client takes for a proxy error page). ``POST /presence/update``
sets a status; ``GET /online-users`` lists the present members of a chat the caller is in.
"""

from __future__ import annotations

import json
import logging
from typing import Any, NoReturn

from aiohttp import web
from redis.exceptions import RedisError

from gateway import state
from gateway.auth import AuthError, Principal, authenticate, unauthorized
from gateway.presence import STATUSES
from runtime import log_event

log = logging.getLogger(__name__)


def _json_error(kind: type[web.HTTPError], **body: Any) -> NoReturn:
    raise kind(text=json.dumps({"ok": False, **body}), content_type="application/json")


def _caller(request: web.Request) -> Principal:
    try:
        return authenticate(request, request.app[state.VERIFIER])
    except AuthError as exc:
        request.app[state.METRICS].auth_failures.labels(exc.reason).inc()
        log_event(log, "auth_failed", path=request.path, reason=exc.reason, peer=request.remote or "")
        raise unauthorized(exc) from None


async def presence_info(request: web.Request) -> web.Response:
    """``GET /presence``: the presence service is available (no auth, by the client's design)."""
    return web.json_response({"ok": True, "mode": "server", "statuses": list(STATUSES)})


async def presence_update(request: web.Request) -> web.Response:
    """``POST /presence/update`` ``{"status": ...}``: set and announce the caller's status."""
    principal = _caller(request)
    try:
        body = await request.json()
    except ValueError:
        _json_error(web.HTTPBadRequest, error="body must be a JSON object with a status",
                    field="status")
    status = body.get("status") if isinstance(body, dict) else None
    if status not in STATUSES:
        _json_error(web.HTTPBadRequest, error=f"status must be one of {', '.join(STATUSES)}",
                    field="status")
    try:
        last_seen = await request.app[state.PRESENCE].set_status(principal.user_id, status)
    except RedisError as exc:
        log_event(log, "presence_update_failed", logging.WARNING, user_id=principal.user_id, error=exc)
        _json_error(web.HTTPServiceUnavailable, error="presence store unavailable")
    return web.json_response(
        {"ok": True, "user_id": principal.user_id, "status": status, "last_seen": last_seen}
    )


async def online_users(request: web.Request) -> web.Response:
    """``GET /online-users?chat_id=``: present members of a chat the caller belongs to."""
    principal = _caller(request)
    raw = request.query.get("chat_id", "")
    if not raw.isdigit() or int(raw) <= 0:
        _json_error(web.HTTPBadRequest, error="chat_id must be a positive integer", field="chat_id")
    chat_id = int(raw)
    presence = request.app[state.PRESENCE]
    try:
        if not await presence.is_member(chat_id, principal.user_id):
            _json_error(web.HTTPForbidden, error="not a member of this chat", field="chat_id")
        users = await presence.online_members(chat_id)
    except RedisError as exc:
        log_event(log, "online_users_failed", logging.WARNING, chat_id=chat_id, error=exc)
        _json_error(web.HTTPServiceUnavailable, error="presence store unavailable")
    return web.json_response({"ok": True, "chat_id": chat_id, "online_users": users})
