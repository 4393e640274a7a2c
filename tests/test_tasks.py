"""stop_task: tasks inside redis-py calls do stop, though redis-py may swallow a cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import random

from bridge.enqueue import connect_redis
from runtime.cancel_fix import give_redis_a_cancellable_wait_for
from runtime.tasks import stop_task
from tests.servers import RedisServer


async def test_a_task_that_swallowed_the_first_cancel_is_cancelled_again() -> None:
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            swallowed.set()  # what redis-py sometimes does
        await asyncio.sleep(10)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await stop_task(task, within=2)
    assert swallowed.is_set() and task.cancelled()


async def test_a_task_that_never_stops_is_given_up_on_within_the_bound() -> None:
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)

    task = asyncio.create_task(deaf())
    await asyncio.sleep(0)
    assert not await stop_task(task, within=0.3)
    release.set()
    await stop_task(task)


async def test_loops_of_redis_calls_always_stop(redis_server: RedisServer) -> None:
    # A loop of script calls cancelled at random moments: a single cancel() was lost in most
    # tries with redis-py 8.1; stop_task must end every one.
    client = connect_redis(redis_server.url, socket_timeout=5, connect_timeout=5)
    script = client.register_script("return 1")

    async def calls() -> None:
        while True:
            await script(args=[])

    try:
        for _ in range(30):
            task = asyncio.create_task(calls())
            await asyncio.sleep(random.random() * 0.002)
            assert await stop_task(task, within=5)
    finally:
        await client.aclose()


async def test_one_cancel_stops_a_loop_of_redis_calls(redis_server: RedisServer) -> None:
    # Python 3.11's wait_for (around every redis-py send) lost a single cancel() in about two of
    # three tries here; runtime.cancel_fix (applied when runtime.tasks is imported) must make one
    # cancel() enough, every time, without stop_task's re-cancelling.
    give_redis_a_cancellable_wait_for()
    client = connect_redis(redis_server.url, socket_timeout=5, connect_timeout=5)
    script = client.register_script("return 1")

    async def calls() -> None:
        while True:
            await script(args=[])

    lost = 0
    try:
        for _ in range(50):
            task = asyncio.create_task(calls())
            await asyncio.sleep(random.random() * 0.002)
            task.cancel()
            await asyncio.wait({task}, timeout=2)
            if not task.done():
                lost += 1
                await stop_task(task)
    finally:
        await client.aclose()
    assert lost == 0, f"{lost} of 50 single cancellations were lost"
