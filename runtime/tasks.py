"""Stopping asyncio tasks that may be inside a redis-py call.

redis-py's asyncio client can swallow a task's cancellation that arrives at the wrong moment
inside a command (redis/redis-py#2028 and #2551; reproduced here with redis-py 8.1: a loop of
script calls survived ``cancel()`` in 4 of 7 tries, and a bridge then never exited on
SIGTERM). One ``cancel()`` is then lost and ``await task`` waits forever. :func:`stop_task`
cancels again until the task has finished, within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

from runtime.cancel_fix import give_redis_a_cancellable_wait_for
from runtime.log import log_event

__all__ = ["RECANCEL_INTERVAL_S", "stop_task"]

log = logging.getLogger(__name__)

# Every process that stops tasks with stop_task imports this module: make sure the cancellations
# it sends are not lost inside redis-py on Python 3.11 (see runtime.cancel_fix).
give_redis_a_cancellable_wait_for()

#: Seconds between cancellations of a task that has not finished yet.
RECANCEL_INTERVAL_S: Final = 0.1


async def stop_task(task: asyncio.Task[Any] | None, within: float = 5.0) -> bool:
    """Cancel ``task`` until it is done, at most ``within`` seconds; True when it finished.

    Whatever the task raised is consumed (a task being stopped has nothing left to report).
    """
    if task is None:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            log_event(log, "task_not_stopped", logging.WARNING, task=task.get_name(), within_s=within)
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(RECANCEL_INTERVAL_S, remaining))
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.exception()
    return True
