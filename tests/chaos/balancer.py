"""A small TCP balancer: several gateways behind one address, as a load balancer puts them.

Each accepted connection goes to the first upstream that accepts a connection (``first``
policy: all streams land on one gateway while it lives) or to the next one in turn
(``round_robin``). Bytes are copied both ways unchanged. When either side ends, the other is
closed at once: a gateway killed -9 drops every connection it held, and the client sees its
stream break exactly as it would behind a real L4 balancer (which holds no state of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Final, Literal

Policy = Literal["first", "round_robin"]

#: Bytes read per copy step: SSE frames are small, and a larger read only holds memory.
CHUNK_BYTES: Final = 64 * 1024
#: Seconds allowed to connect to one upstream before trying the next.
CONNECT_TIMEOUT_S: Final = 2.0


@dataclass
class Balancer:
    """Listens on 127.0.0.1 (any free port) and forwards to ``upstreams`` (``(host, port)`` pairs)."""

    upstreams: list[tuple[str, int]]
    policy: Policy = "first"
    #: Open connections per upstream index.
    open: Counter[int] = field(default_factory=Counter)
    #: Connections ever made per upstream index.
    accepted: Counter[int] = field(default_factory=Counter)
    #: Client connections no upstream took (closed at once).
    refused: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    async def start(self) -> int:
        """Start listening; returns the port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, backlog=4096)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop listening and drop every forwarded connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _order(self) -> list[int]:
        indexes = list(range(len(self.upstreams)))
        if self.policy == "round_robin":
            start = next(self._turn) % len(indexes)
            indexes = indexes[start:] + indexes[:start]
        return indexes

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            for index in self._order():
                host, port = self.upstreams[index]
                try:
                    async with asyncio.timeout(CONNECT_TIMEOUT_S):
                        upstream_r, upstream_w = await asyncio.open_connection(host, port)
                except (OSError, TimeoutError):
                    continue  # dead or unreachable: the next one
                await self._forward(index, client_r, client_w, upstream_r, upstream_w)
                return
            self.refused += 1
        finally:
            client_w.transport.abort()
            self._tasks.discard(task)

    async def _forward(self, index: int, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                       upstream_r: asyncio.StreamReader, upstream_w: asyncio.StreamWriter) -> None:
        self.open[index] += 1
        self.accepted[index] += 1
        pipes = [asyncio.create_task(_copy(client_r, upstream_w)), asyncio.create_task(_copy(upstream_r, client_w))]
        try:
            # Either side ending ends the connection: a half-open pair would hide a dead gateway.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.open[index] -= 1
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            upstream_w.transport.abort()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(CHUNK_BYTES):
            writer.write(data)
            await writer.drain()
