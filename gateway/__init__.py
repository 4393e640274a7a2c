"""gateway: the SSE endpoint Fechatter's web client connects to (``fechatter-notify gateway``).

What other packages may use is named here (``__all__``) and loads on first use, so importing a
submodule (``gateway.frames``, say) does not import the app and the process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime import lazy_face

if TYPE_CHECKING:
    from gateway.app import HANDLER_CANCELLATION, build_app, start_server
    from gateway.auth import AuthError, Principal, TokenVerifier
    from gateway.diagnose import diagnose_streams
    from gateway.frames import read_frames
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
    # Operator commands
    "diagnose_streams",
    # Clients of a stream (publish --watch, tests)
    "read_frames",
]

_HOME: dict[str, str] = {
    "HANDLER_CANCELLATION": "app",
    "build_app": "app",
    "start_server": "app",
    "AuthError": "auth",
    "Principal": "auth",
    "TokenVerifier": "auth",
    "diagnose_streams": "diagnose",
    "read_frames": "frames",
    "run": "main",
}

__getattr__ = lazy_face(__name__, _HOME)
