"""Where a new stream starts: the newest entry id of the user's inbox, read in batches.

A reconnect storm opens thousands of streams within a second, and each needs one read. One
pipeline for all reads waiting at that moment costs Redis and this process a fraction of
thousands of separate round trips (and does not exhaust the connection pool).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.frames import ZERO_ID, StreamId, parse_stream_id
from runtime import stop_task


class InboxHeads:
    """Batches ``XREVRANGE key + - COUNT 1`` of concurrent callers into pipelines."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pending: dict[str, list[asyncio.Future[StreamId]]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def newest(self, key: str) -> StreamId:
        """The id of the newest entry of stream ``key`` (``0-0`` when empty or missing).

        Raises:
          RedisError: when the batch it was part of failed.
        """
        future: asyncio.Future[StreamId] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append(future)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="gateway-inbox-heads")
        return await future

    async def close(self) -> None:
        """Stop the flusher (waiting callers get ``CancelledError``)."""
        flusher, self._flusher = self._flusher, None
        await stop_task(flusher)
        for futures in self._pending.values():
            for future in futures:
                future.cancel()
        self._pending.clear()

    async def _flush(self) -> None:
        try:
            # Requests made while a pipeline is in flight go out together in the next one.
            while self._pending:
                batch, self._pending = self._pending, {}
                try:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for key in batch:
                            pipe.xrevrange(key, max="+", min="-", count=1)
                        results: list[Any] = await pipe.execute()
                except RedisError as exc:
                    for futures in batch.values():
                        _settle(futures, exc)
                    continue
                for futures, entries in zip(batch.values(), results, strict=True):
                    _settle(futures, parse_stream_id(entries[0][0]) if entries else ZERO_ID)
        finally:
            self._flusher = None


def _settle(futures: list[asyncio.Future[StreamId]], outcome: StreamId | BaseException) -> None:
    for future in futures:
        if future.done():  # the stream was cancelled meanwhile
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
