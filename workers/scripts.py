"""Lua scripts shipped with the workers, called by SHA in one round trip (:class:`runtime.LuaScript`).

redis-py's ``Script`` objects, when used in a pipeline, send ``SCRIPT EXISTS`` before every
``execute``: one extra round trip per job. Here a script is called with ``EVALSHA`` on the
calling thread's connection (:mod:`workers.connections`); only when Redis answers ``NOSCRIPT``
(after a restart or ``SCRIPT FLUSH``) is it loaded and the call repeated. Every script in this
package is idempotent, so repeating a whole pipeline is safe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import runtime
from workers.connections import ThreadConnections

__all__ = ["LuaScript", "ScriptCall", "run_pipeline", "template"]

#: One script call inside a pipeline: the script, its KEYS, its ARGV.
ScriptCall = tuple["LuaScript", Sequence[str], Sequence[Any]]


class LuaScript(runtime.LuaScript):
    """One Lua file of the ``workers`` package, called on a thread's connection.

    Parameters:
      filename(str): The file name inside the package, e.g. ``"deliver.lua"``.
    """

    def __init__(self, filename: str) -> None:
        super().__init__("workers", filename)

    def __call__(self, conns: ThreadConnections, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run the script once; one round trip unless Redis lost the script."""
        return self.call(conns.call, keys, args)


def run_pipeline(conns: ThreadConnections, calls: Sequence[ScriptCall]) -> list[Any]:
    """Run several script calls (any scripts) in one pipeline: one round trip in all.

    On ``NOSCRIPT`` the scripts are loaded and the whole pipeline runs again (every script of
    this package is idempotent).
    """
    if len(calls) == 1:
        script, keys, args = calls[0]
        return [script(conns, keys, args)]
    return runtime.LuaScript.call_all(conns.pipeline, conns.call, calls)


#: A user id no key or namespace contains, to split a key function's output around.
_SENTINEL: Final = 918_273_645_546_372_819


def template(key_for: Callable[[int], str]) -> tuple[str, str]:
    """``(prefix, suffix)`` such that ``prefix + str(user) + suffix == key_for(user)``.

    The Lua script builds per-user key names from these, so events/inbox.py stays the only
    place that spells the layout.
    """
    prefix, found, suffix = key_for(_SENTINEL).partition(str(_SENTINEL))
    if not found or prefix + "7" + suffix != key_for(7):
        raise ValueError("key layout is not prefix + user id + suffix")
    return prefix, suffix
