"""JetStream API requests as plain JSON, with nats-py's exceptions translated at this edge.

The bridge speaks the wire API (``$JS.API.*``) itself instead of nats-py's ``JetStreamManager``
so it sees exactly the config the server returns (nats-py drops fields it does not know and
silently ignores ``config`` for an existing durable) and so every failure carries the server's
``code``/``err_code`` for :func:`bridge.status.classify`.
"""

from __future__ import annotations

import json
from typing import Any, Final

import nats.errors
from nats.aio.client import Client as NATS

from bridge.errors import JetStreamRefused, JetStreamTimeout, JetStreamUnavailable, NatsClosed
from bridge.status import CODE_CLOSED, CODE_NO_RESPONDERS, CODE_TIMEOUT

__all__ = ["API_PREFIX", "DEFAULT_API_TIMEOUT_S", "JetStreamApi"]

#: The JetStream API subject prefix (no domains/accounts mapping needed for Fechatter).
API_PREFIX: Final = "$JS.API"
#: How long one API request may take, in seconds.
DEFAULT_API_TIMEOUT_S: Final = 5.0


class JetStreamApi:
    """Typed-enough JetStream API calls over one NATS connection.

    Every method returns the server's JSON answer as a dict and raises only
    :class:`~bridge.errors.JetStreamError` leaves.
    """

    def __init__(self, nc: NATS, timeout: float = DEFAULT_API_TIMEOUT_S) -> None:
        self._nc = nc
        self._timeout = timeout

    async def request(self, subject: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one API request to ``$JS.API.<subject>`` and return the decoded answer.

        Raises:
          JetStreamUnavailable: 503 / no responders.
          JetStreamTimeout: no answer within the timeout.
          NatsClosed: the connection is closed.
          JetStreamRefused: the answer is an API error (``code``, ``err_code``, ``description``).
        """
        data = json.dumps(payload).encode() if payload is not None else b""
        try:
            msg = await self._nc.request(f"{API_PREFIX}.{subject}", data, timeout=self._timeout)
        except nats.errors.NoRespondersError:
            raise JetStreamUnavailable(CODE_NO_RESPONDERS, 0, f"no responders for {subject}") from None
        except nats.errors.TimeoutError:
            raise JetStreamTimeout(CODE_TIMEOUT, 0, f"no answer to {subject} in {self._timeout}s") from None
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
            raise NatsClosed(CODE_CLOSED, 0, "connection closed") from None
        except nats.errors.Error as exc:
            raise JetStreamTimeout(CODE_TIMEOUT, 0, f"{subject}: {type(exc).__name__}: {exc}") from None
        try:
            answer: dict[str, Any] = json.loads(msg.data)
        except ValueError:
            raise JetStreamRefused(500, 0, f"{subject}: answer is not JSON: {msg.data[:200]!r}") from None
        error = answer.get("error")
        if error:
            raise JetStreamRefused(int(error.get("code", 500)), int(error.get("err_code", 0)),
                                   str(error.get("description", "")))
        return answer

    async def stream_info(self, stream: str) -> dict[str, Any]:
        """``STREAM.INFO``: the stream's config and state."""
        return await self.request(f"STREAM.INFO.{stream}")

    async def stream_create(self, config: dict[str, Any]) -> dict[str, Any]:
        """``STREAM.CREATE``: create a stream from a wire config."""
        return await self.request(f"STREAM.CREATE.{config['name']}", config)

    async def stream_update(self, config: dict[str, Any]) -> dict[str, Any]:
        """``STREAM.UPDATE``: change an existing stream's mutable fields."""
        return await self.request(f"STREAM.UPDATE.{config['name']}", config)

    async def consumer_info(self, stream: str, durable: str) -> dict[str, Any]:
        """``CONSUMER.INFO``: the consumer's config and state (num_pending, num_ack_pending, ...)."""
        return await self.request(f"CONSUMER.INFO.{stream}.{durable}")

    async def consumer_create(self, stream: str, config: dict[str, Any]) -> dict[str, Any]:
        """``CONSUMER.CREATE`` (create or update) of a durable from a wire config."""
        durable = config["durable_name"]
        return await self.request(f"CONSUMER.CREATE.{stream}.{durable}", {"stream_name": stream, "config": config})

    async def consumer_delete(self, stream: str, durable: str) -> dict[str, Any]:
        """``CONSUMER.DELETE`` (tests and tools only)."""
        return await self.request(f"CONSUMER.DELETE.{stream}.{durable}")

    async def stream_msg_get(self, stream: str, seq: int) -> dict[str, Any]:
        """``STREAM.MSG.GET``: one stored message by sequence (``message`` has base64 ``data``/``hdrs``)."""
        return await self.request(f"STREAM.MSG.GET.{stream}", {"seq": seq})
