"""The one way Lua scripts are loaded and run: a ``.lua`` file of a package, called by SHA.

Every script is a file beside the code that calls it, starting with a comment header that names
the keys it touches and its arguments (the key-schema header), so the layout a script writes can
be read without reading Lua. A script is sent as ``EVALSHA`` (one round trip); only when Redis
answers ``NOSCRIPT`` (after a restart or ``SCRIPT FLUSH``) is it loaded and the call repeated.
That needs the script to be safe to run again, which every script of this project is.

redis-py's ``register_script`` is not used: in a pipeline it sends ``SCRIPT EXISTS`` before every
``execute`` (an extra round trip per job on the workers' hot path), and it would be a second way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

__all__ = ["LuaScript"]


class LuaScript:
    """One Lua file of a package.

    Parameters:
      package(str): The package the file ships in (``"workers"``, or a dependency's).
      filename(str): The file's path inside the package, e.g. ``"deliver.lua"``.

    Raises:
      ValueError: The file does not start with its header comment.
    """

    def __init__(self, package: str, filename: str) -> None:
        self.name = f"{package}/{filename}"
        self.source = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
        if not self.source.startswith("--"):
            raise ValueError(f"{self.name}: a script starts with its header comment (its keys and arguments)")
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def command(self, keys: Sequence[Any], args: Sequence[Any]) -> tuple[Any, ...]:
        """The ``EVALSHA`` command that runs the script (for a pipeline of raw commands)."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def call(self, send: Callable[..., Any], keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run the script through ``send(*command)`` (a connection's raw call); one round trip
        unless Redis lost the script."""
        try:
            return send(*self.command(keys, args))
        except NoScriptError:
            send("SCRIPT", "LOAD", self.source)
            return send(*self.command(keys, args))

    async def acall(self, client: Redis, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run the script on an asyncio client; one round trip unless Redis lost the script."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)

    @staticmethod
    def call_all(send_all: Callable[[list[tuple[Any, ...]]], list[Any]], send: Callable[..., Any],
                 calls: Sequence[tuple[LuaScript, Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Run several calls (any scripts) as one pipeline, ``send_all(commands)``: one round trip.

        On ``NOSCRIPT`` the scripts are loaded through ``send`` and the whole pipeline runs again,
        so only for scripts that may run twice.
        """
        commands = [script.command(keys, args) for script, keys, args in calls]
        try:
            return send_all(commands)
        except NoScriptError:
            for script in {id(s): s for s, _, _ in calls}.values():
                send("SCRIPT", "LOAD", script.source)
            return send_all(commands)

    def queue(self, pipe: Pipeline, keys: Sequence[Any], args: Sequence[Any]) -> None:
        """Queue a call on an asyncio pipeline; :func:`load` the scripts before its ``execute``."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    @staticmethod
    async def load(client: Redis, scripts: Sequence[LuaScript]) -> None:
        """Make sure Redis holds ``scripts`` (``SCRIPT EXISTS``, then ``SCRIPT LOAD`` of the missing).

        For pipelines whose calls may not be repeated one by one (a call's answer reports a change
        that a second run would not): as redis-py's own pipelines do, one round trip before each.
        """
        held = await client.script_exists(*(s.sha for s in scripts))
        for script, present in zip(scripts, held, strict=True):
            if not present:
                await client.script_load(script.source)
