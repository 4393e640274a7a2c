"""What ``fechatter-notify dev`` tells other commands about the system it runs.

``dev`` writes a small JSON file, :data:`STATE_FILE`, in its working directory once everything
is ready (and removes it on exit), so that ``fechatter-notify publish --watch 1`` in a second
terminal finds the NATS server, the gateway and a key to sign a token with, without flags.

Also here: which servers ``dev`` and ``publish`` use. Only an explicit choice counts (a flag, the
environment, or a configuration file named with ``--config`` / ``$NOTIFY_CONFIG``): a notify.yml
that is merely found in the current directory does not, because the repository's own notify.yml
would otherwise send ``dev`` to whatever happens to listen on the default ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from settings import Loaded

#: Written by ``dev`` in its working directory; looked up from the current directory upwards.
STATE_FILE = ".fechatter-notify-dev.json"

#: Fechatter issues 30-minute tokens.
TOKEN_LIFETIME_S = 1800


@dataclass(frozen=True)
class ServerChoice:
    """The server a command uses (``url`` None: start an embedded one) and why."""

    url: str | None
    reason: str


def explicit_config(args: object, env: Mapping[str, str]) -> str | None:
    """The configuration file the user named (``--config`` or ``$NOTIFY_CONFIG``), if any."""
    named = getattr(args, "sub_config", None) or getattr(args, "config", None) or env.get("NOTIFY_CONFIG")
    return str(named) if named else None


def choose_server(loaded: Loaded, path: tuple[str, str], flag: str, flag_value: str | None,
                  env: Mapping[str, str], args: object) -> ServerChoice:
    """Pick the server at settings ``path`` (``nats.servers`` or ``redis.url``).

    Order: the ``flag`` (``--nats``), the environment (``$NATS_URL``, ``NOTIFY__NATS__SERVERS``),
    an explicitly named configuration file; else ``url`` is None and ``reason`` says why.
    """
    if flag_value:
        return ServerChoice(flag_value, f"from {flag}")
    origin = loaded.origins.get(path, "default")
    value = _setting(loaded, path)
    if origin.startswith("env "):
        return ServerChoice(value, f"from ${origin[4:]}")
    config = explicit_config(args, env)
    if origin != "default" and config:
        return ServerChoice(value, f"from {origin}")
    if origin != "default":
        return ServerChoice(None, f"{origin} names {value!r} but was not named with --config or $NOTIFY_CONFIG")
    return ServerChoice(None, f"no {flag}, ${_ENV_NAME[path]} or --config names one")


_ENV_NAME = {("nats", "servers"): "NATS_URL", ("redis", "url"): "REDIS_URL"}


def _setting(loaded: Loaded, path: tuple[str, str]) -> str:
    if path == ("nats", "servers"):
        return ",".join(loaded.settings.nats.servers)
    if path == ("redis", "url"):
        return loaded.settings.redis.url.get_secret_value()
    raise ValueError(f"no server setting at {'.'.join(path)}")


@dataclass(frozen=True)
class DevState:
    """The running ``dev`` system, as ``publish`` needs it."""

    pid: int
    nats_url: str
    gateway_url: str
    #: Path of the throw-away Ed25519 private key (PEM), or None when the gateway was given its own key.
    signing_key: str | None
    audience: str
    issuer: str
    workdir: str

    def write(self, directory: Path) -> Path:
        """Write the state file (owner-only: it may hold a server's credentials); returns its path."""
        path = directory / STATE_FILE
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(self), out, indent=2)
        tmp.replace(path)  # a reader never sees half a file
        return path

    def sign(self, user_id: int) -> str:
        """A Fechatter-shaped access token for ``user_id``, signed with the dev key."""
        if self.signing_key is None:
            raise ValueError("dev was started with its own gateway.jwt.public_key: pass --token")
        return sign_token(Path(self.signing_key).read_bytes(), user_id, audience=self.audience, issuer=self.issuer)


def remove_state(directory: Path, pid: int) -> None:
    """Remove the state file if it is still the one ``pid`` wrote."""
    path = directory / STATE_FILE
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if json.loads(path.read_text())["pid"] == pid:
            path.unlink()


class NoDevState(Exception):
    """No running ``dev`` was found; the message says where it looked and what to do."""


def find_state(start: Path | None = None) -> DevState:
    """The state of the ``dev`` running for this directory (or a parent), checked to be alive.

    Raises:
      NoDevState: no state file, or the ``dev`` that wrote it is gone (a stale file).
    """
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        path = directory / STATE_FILE
        if path.is_file():
            return _read_state(path)
    raise NoDevState(f"No {STATE_FILE} in {here} or its parents: is `fechatter-notify dev` (./run dev) "
                     "running, started from this directory?")


def _read_state(path: Path) -> DevState:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        state = DevState(**data)
    except (OSError, ValueError, TypeError) as exc:
        raise NoDevState(f"{path} is unreadable ({exc}); restart `fechatter-notify dev`") from exc
    if not _alive(state.pid):
        raise NoDevState(f"{path} was written by `fechatter-notify dev` (pid {state.pid}), which is no longer "
                         "running; start it again")
    return state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def sign_token(private_pem: bytes, user_id: int, *, audience: str, issuer: str,
               lifetime: int = TOKEN_LIFETIME_S) -> str:
    """An EdDSA token shaped like Fechatter's (``sub`` and ``user.id`` = ``user_id``)."""
    import jwt
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(private_pem, password=None)
    now = int(time.time())
    user = {"id": user_id, "workspace_id": 1, "fullname": f"Dev User {user_id}",
            "email": f"user{user_id}@example.invalid", "status": "Active"}
    claims = {"sub": str(user_id), "iss": issuer, "aud": audience, "iat": now, "exp": now + lifetime, "user": user}
    return jwt.encode(claims, key, algorithm="EdDSA")  # type: ignore[arg-type]
