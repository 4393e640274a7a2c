"""A shared inbox read that fails after all its waiters left is not an unhandled task error.

Found by chaos scenario 5 (tests/chaos/test_gateway_failover.py): in a reconnect storm a stream
can be cancelled while its shared read waits for a pooled Redis connection; asyncio.shield drops
its callback on the read then, and when the read failed ("No connection available.") asyncio
logged "Task exception was never retrieved" at ERROR, once per such read.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from gateway.replay import _single_flight, ticket


async def test_a_read_failing_after_its_only_waiter_was_cancelled_leaves_no_unretrieved_exception() -> None:
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    release = asyncio.Event()

    async def read() -> None:
        await release.wait()
        raise ConnectionError("No connection available.")

    try:
        since = ticket()
        waiter = asyncio.create_task(_single_flight("orphaned-read", since, read))
        await asyncio.sleep(0)  # the read has started
        waiter.cancel()  # the client left
        await asyncio.gather(waiter, return_exceptions=True)
        del waiter  # a finished handler's task is not kept either (it holds the read alive)
        release.set()  # then the read fails
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()  # "never retrieved" is reported when the task is collected
        await asyncio.sleep(0)
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert unhandled == []


async def test_waiters_that_stay_still_see_the_failure() -> None:
    async def read() -> None:
        await asyncio.sleep(0)
        raise ConnectionError("No connection available.")

    since = ticket()
    first = asyncio.create_task(_single_flight("failing-read", since, read))
    second = asyncio.create_task(_single_flight("failing-read", since - 1, read))
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionError, ConnectionError]
