"""Helpers for tests and benchmarks of the gateway (like ``aiohttp.test_utils``).

Sign tokens the way Fechatter does, publish notifications the way workers do, and read an
SSE stream frame by frame. Nothing here is used by the running gateway.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from events import INBOX_FIELD, encode_announcement, inbox_key, live_channel
from gateway import state
from gateway.app import build_app, start_server
from gateway.metrics import GatewayMetrics
from settings import Settings

AUDIENCE: Final = "fechatter-web"
ISSUER: Final = "fechatter-server"
#: Fechatter issues 30-minute tokens; the client refreshes any with less than 2 minutes left.
TOKEN_LIFETIME_S: Final = 1800.0
#: A NATS URL nothing listens on (port 1 is privileged): presence is then "NATS down".
UNREACHABLE_NATS: Final = "nats://127.0.0.1:1"


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 key pair; ``public_pem`` goes into ``gateway.jwt.public_key``."""

    private: Ed25519PrivateKey
    public_pem: str

    @classmethod
    def generate(cls) -> SigningKey:
        private = Ed25519PrivateKey.generate()
        pem = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        return cls(private, pem.decode())

    def private_pem(self) -> str:
        return self.private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()

    def token(
        self,
        user_id: int | None,
        *,
        lifetime: float = TOKEN_LIFETIME_S,
        audience: str = AUDIENCE,
        issuer: str = ISSUER,
        drop: tuple[str, ...] = (),
        **extra: Any,
    ) -> str:
        """A Fechatter-shaped access token (``user`` claim with ``id``; ``sub`` = the id).

        ``user_id=None`` leaves ``user.id`` out; ``drop`` removes registered claims.
        """
        now = int(time.time())
        user: dict[str, Any] = {
            "workspace_id": 1,
            "fullname": f"User {user_id}",
            "email": f"user{user_id}@example.com",
            "status": "Active",
            "created_at": "2025-06-27T02:45:46.782538Z",
        }
        if user_id is not None:
            user["id"] = user_id
        claims: dict[str, Any] = {
            "sub": str(user_id),
            "exp": now + int(lifetime),
            "iat": now,
            "aud": audience,
            "iss": issuer,
            "user": user,
            **extra,
        }
        for name in drop:
            claims.pop(name, None)
        return jwt.encode(claims, self.private, algorithm="EdDSA")


async def write_inbox(
    redis: Redis, namespace: str, user_id: int, body: str, *, max_len: int = 1000
) -> str:
    """``XADD`` one notification (JSON text) to the user's inbox; returns the entry id."""
    raw_id = await redis.xadd(
        inbox_key(namespace, user_id), {INBOX_FIELD: body}, maxlen=max_len, approximate=True
    )
    return raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)


async def announce(redis: Redis, namespace: str, user_id: int, entry_id: str, body: str) -> None:
    """``PUBLISH`` the live announcement of an inbox entry."""
    await redis.publish(live_channel(namespace, user_id), encode_announcement(entry_id, body))


async def publish_notification(
    redis: Redis, namespace: str, user_id: int, notification: dict[str, Any], *, max_len: int = 1000
) -> str:
    """Deliver like a worker: ``XADD`` to the user's inbox, then announce on the live channel.

    Returns the inbox entry id.
    """
    body = json.dumps(notification, separators=(",", ":"))
    entry_id = await write_inbox(redis, namespace, user_id, body, max_len=max_len)
    await announce(redis, namespace, user_id, entry_id, body)
    return entry_id


async def announce_live(redis: Redis, namespace: str, user_id: int, notification: dict[str, Any]) -> None:
    """Deliver a live-only notification like a worker (typing, presence): announce, store nothing."""
    body = json.dumps(notification, separators=(",", ":"))
    await redis.publish(live_channel(namespace, user_id), encode_announcement(None, body))


def typing_started(user_id: int = 9, chat_id: int = 42) -> dict[str, Any]:
    """The ``typing_started`` notification (live only)."""
    return {"type": "typing_started", "chat_id": chat_id, "user_id": user_id, "user_name": f"User {user_id}"}


def new_message(message_id: int, chat_id: int = 42, sender_id: int = 7, **extra: Any) -> dict[str, Any]:
    """The flat ``new_message`` frame the web client reads (docs/web-client-contract.md#payload-shapes)."""
    return {
        "type": "new_message",
        "id": message_id,
        "chat_id": chat_id,
        "sender_id": sender_id,
        "content": f"message {message_id}",
        "files": [],
        "created_at": "2025-06-27T02:45:46.782538Z",
        "idempotency_key": f"key-{message_id}",
        "sender_name": "Alice Zhang",
        **extra,
    }


@dataclass
class SseEvent:
    """One dispatched SSE event (``event`` is ``None`` when the frame had no ``event:`` line)."""

    data: str
    id: str | None = None
    event: str | None = None

    def json(self) -> dict[str, Any]:
        value = json.loads(self.data)
        assert isinstance(value, dict), f"data is not a JSON object: {self.data!r}"
        return value


@dataclass
class SseReader:
    """Parses an ``aiohttp`` response body as SSE (enough of the spec for our frames)."""

    response: aiohttp.ClientResponse
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    #: Set when the server ended the body.
    closed: bool = False

    async def next_event(self, within: float = 5.0) -> SseEvent:
        """The next event with data.

        Raises:
          TimeoutError: none within ``within`` seconds.
          EOFError: the server closed the stream.
        """
        async with asyncio.timeout(within):
            data: list[str] = []
            event_id: str | None = None
            event: str | None = None
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    self.closed = True
                    raise EOFError("stream closed by the server")
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if data:
                        return SseEvent("\n".join(data), event_id, event)
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data.append(value)
                elif name == "id":
                    event_id = value
                elif name == "event":
                    event = value
                elif name == "retry" and value.isdigit():
                    self.retry = int(value)

    async def next_json(self, within: float = 5.0) -> tuple[str | None, dict[str, Any]]:
        """The next event as ``(id, data object)``; asserts there is no ``event:`` name."""
        event = await self.next_event(within)
        assert event.event is None, f"named event {event.event!r} is never delivered to onmessage"
        return event.id, event.json()

    async def wait_closed(self, within: float = 5.0) -> None:
        """Read until the server ends the stream (frames are discarded)."""
        async with asyncio.timeout(within):
            while await self.response.content.readany():
                pass
        self.closed = True


def gateway_settings(
    redis_url: str,
    public_pem: str,
    *,
    namespace: str | None = None,
    nats_servers: list[str] | None = None,
    **gateway: Any,
) -> Settings:
    """Settings for a test gateway on 127.0.0.1, any free port, a fresh key namespace.

    ``gateway`` overrides keys of the ``gateway`` section (``keep_alive=0.2``, ...).
    """
    jwt_section: dict[str, Any] = {"public_key": public_pem, **gateway.pop("jwt", {})}
    return Settings.model_validate({
        "redis": {"url": redis_url, "namespace": namespace or f"test-{secrets.token_hex(4)}"},
        "nats": {
            "servers": nats_servers or [UNREACHABLE_NATS],
            "connect_timeout": 1.0,
            "reconnect_backoff_base": 0.2,
        },
        "gateway": {"host": "127.0.0.1", "port": 0, "jwt": jwt_section, **gateway},
    })


@dataclass
class RunningGateway:
    """A gateway served on a real socket, plus what a test needs to drive it."""

    app: web.Application
    runner: web.AppRunner
    url: str
    key: SigningKey
    redis: Redis
    session: aiohttp.ClientSession

    @property
    def settings(self) -> Settings:
        return self.app[state.SETTINGS]

    @property
    def namespace(self) -> str:
        return self.settings.redis.namespace

    @property
    def metrics(self) -> GatewayMetrics:
        return self.app[state.METRICS]

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """A sample value from the gateway's registry (0.0 when absent)."""
        self.metrics.sync()
        value = self.metrics.registry.get_sample_value(name, dict(labels or {}))
        return 0.0 if value is None else value

    async def publish(self, user_id: int, notification: dict[str, Any], *, max_len: int = 1000) -> str:
        return await publish_notification(self.redis, self.namespace, user_id, notification,
                                          max_len=max_len)

    async def publish_live(self, user_id: int, notification: dict[str, Any]) -> None:
        """A live-only notification: announced, in no inbox."""
        await announce_live(self.redis, self.namespace, user_id, notification)

    async def write_inbox(self, user_id: int, body: str) -> str:
        """Only the XADD half of a delivery (an announcement still in flight, or lost)."""
        return await write_inbox(self.redis, self.namespace, user_id, body)

    async def announce(self, user_id: int, entry_id: str, body: str) -> None:
        """Only the PUBLISH half of a delivery."""
        await announce(self.redis, self.namespace, user_id, entry_id, body)

    async def connect(
        self,
        user_id: int | None = None,
        *,
        token: str | None = None,
        last_event_id: str | None = None,
        bearer: bool = False,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> tuple[aiohttp.ClientResponse, SseReader]:
        """``GET /events`` (token in ``access_token`` unless ``bearer``); response and reader."""
        if token is None and user_id is not None:
            token = self.key.token(user_id)
        params = dict(query or {})
        request_headers = dict(headers or {})
        if token is not None:
            if bearer:
                request_headers["Authorization"] = f"Bearer {token}"
            else:
                params["access_token"] = token
        if last_event_id is not None:
            request_headers["Last-Event-ID"] = last_event_id
        response = await self.session.get(
            self.url + "/events", params=params, headers=request_headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        )
        return response, SseReader(response)

    async def stream(self, user_id: int, **kwargs: Any) -> tuple[aiohttp.ClientResponse, SseReader]:
        """An open stream whose ``connection_confirmed`` was read and whose replay has begun."""
        response, reader = await self.connect(user_id, **kwargs)
        assert response.status == 200, await response.text()
        _, first = await reader.next_json()
        assert first["type"] == "connection_confirmed", first
        return response, reader


@asynccontextmanager
async def running_gateway(settings: Settings, key: SigningKey) -> AsyncIterator[RunningGateway]:
    """Serve a gateway for ``settings`` (signed by ``key``) until the block ends."""
    app = build_app(settings)
    runner, port = await start_server(app, settings.gateway.host, settings.gateway.port)
    # Retries, like the gateway's own pool: tests restart redis-server under it.
    redis = Redis.from_url(settings.redis.url.get_secret_value(),
                           retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3))
    session = aiohttp.ClientSession()
    try:
        yield RunningGateway(app, runner, f"http://{settings.gateway.host}:{port}", key, redis, session)
    finally:
        await session.close()
        await runner.cleanup()
        await redis.aclose()
