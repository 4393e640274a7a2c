"""Python 3.11's ``asyncio.wait_for`` loses a cancellation; give redis-py 3.12's behaviour.

On 3.11, ``wait_for`` returns the inner result instead of raising ``CancelledError`` when the
cancellation arrives after the inner awaitable finished but before ``wait_for`` resumed (cpython
gh-86296, fixed in 3.12 by building ``wait_for`` on ``asyncio.timeout``). redis-py wraps every
socket send in ``wait_for`` when a socket timeout is set, and a send finishes at once, so a task
looping over Redis calls is in that window on every call: measured here under CPU load, one task
in six survived twenty cancellations over two seconds, which is how a bridge could hang on
SIGTERM. :func:`stop_task` re-cancels, but cannot win against a window that open.

The fix is local: redis-py's connection module gets its own ``asyncio`` namespace whose
``wait_for`` is the 3.12 one; every other user of ``asyncio`` is untouched.
"""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ["give_redis_a_cancellable_wait_for"]

T = TypeVar("T")


async def _wait_for(awaitable: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109 (wait_for's signature)
    async with asyncio.timeout(timeout):
        return await awaitable


class _AsyncioWithWaitFor(types.ModuleType):
    """``asyncio`` as seen by one module, with 3.12's ``wait_for``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


def give_redis_a_cancellable_wait_for() -> None:
    """Patch redis-py's asyncio connection module (a no-op on Python >= 3.12; idempotent)."""
    if sys.version_info >= (3, 12):
        return
    import redis.asyncio.connection as connection

    if isinstance(getattr(connection, "asyncio", None), _AsyncioWithWaitFor):
        return
    namespace = _AsyncioWithWaitFor("asyncio")
    namespace.wait_for = _wait_for  # type: ignore[attr-defined]
    setattr(connection, "asyncio", namespace)  # noqa: B010 (the module does not export the name)
