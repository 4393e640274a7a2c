"""Errors of the bridge: one root, leaves named for the fact.

nats-py and redis-py exceptions never leave the module that talks to that server; they are
translated here-shaped at the edge (see :mod:`bridge.jsapi`, :mod:`bridge.enqueue`,
:mod:`bridge.connection`), so the rest of the bridge reasons about facts, not drivers.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BridgeError",
    "ConfigMismatch",
    "ConsumerMissing",
    "JetStreamError",
    "JetStreamRefused",
    "JetStreamTimeout",
    "JetStreamUnavailable",
    "NatsClosed",
    "NatsUnavailable",
    "ProvisionRefused",
    "RedisUnavailable",
    "StreamMissing",
]


class BridgeError(Exception):
    """Root of every error raised by the ``bridge`` package."""


class NatsUnavailable(BridgeError):
    """NATS could not be reached at start (every connect attempt failed)."""


class JetStreamError(BridgeError):
    """A JetStream API call failed; ``code``/``err_code`` feed :func:`bridge.status.classify`.

    Parameters:
      code(int): The status code (400, 404, 503, ...; 0 timeout, -1 connection closed).
      err_code(int): nats-server's stable error code (10014 consumer not found, 10059 stream not found, ...).
      description(str): The server's text, for the log.
    """

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{code}/{err_code}: {description}")
        self.code = code
        self.err_code = err_code
        self.description = description


class JetStreamUnavailable(JetStreamError):
    """503 / no responders: stream or consumer missing, leaderless, or JetStream off."""


class JetStreamTimeout(JetStreamError):
    """An API request got no answer in time (connection stale or reconnecting)."""


class JetStreamRefused(JetStreamError):
    """The API answered with an error object (not found, bad request, ...)."""


class NatsClosed(JetStreamError):
    """The NATS connection is closed for good."""


class StreamMissing(BridgeError):
    """A stream the settings declare does not exist on the server."""


class ConsumerMissing(BridgeError):
    """A durable consumer the settings declare does not exist on the server."""


class ConfigMismatch(BridgeError):
    """The server's stream or consumer config differs from the wanted one.

    Parameters:
      what(str): ``"stream NAME"`` or ``"consumer STREAM/DURABLE"``.
      differences(Sequence[str]): One line per field: ``"ack_wait: server 30s, settings 3s"``.
    """

    def __init__(self, what: str, differences: Sequence[str]) -> None:
        super().__init__(f"{what} differs from the settings: " + "; ".join(differences))
        self.what = what
        self.differences = list(differences)


class ProvisionRefused(BridgeError):
    """``provision: verify`` found the server not as the settings describe; the bridge refuses to start."""


class RedisUnavailable(BridgeError):
    """Redis refused, timed out or failed the batch script; nothing of that batch may be acked."""
