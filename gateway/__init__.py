"""gateway: the SSE endpoint Fechatter's web client connects to (``fechatter-notify gateway``)."""

from gateway.app import HANDLER_CANCELLATION, build_app, start_server
from gateway.auth import AuthError, Principal, TokenVerifier
from gateway.main import run

__all__ = [
    # Application
    "HANDLER_CANCELLATION",
    "build_app",
    "run",
    "start_server",
    # Auth
    "AuthError",
    "Principal",
    "TokenVerifier",
]
