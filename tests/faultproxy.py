"""A TCP proxy under a test's control: forward to a target, black-hole, reset or delay the path.

    with FaultProxy(HOST, nats.port) as proxy:
        url = proxy.url("nats")   # point the process under test here: nats://127.0.0.1:<port>
        proxy.cut_silently()      # a dead network path: nothing forwarded, nothing closed
        proxy.restore()           # forwarding resumes; what was held during the cut follows, in order
        proxy.close_all()         # every open connection reset (RST) on both sides
        proxy.set_latency(0.2)    # each chunk delayed 0.2 s, per direction, order kept

A silent cut is what a dead path (a pulled cable, a NAT entry dropped, a firewall change) looks like
to both ends: the sockets stay open, writes are accepted, nothing arrives, and no FIN or RST ever
comes. Only an application-level check notices (NATS client PINGs, pull heartbeats). During a cut
the proxy reads nothing more from either side (the kernel's buffers fill as they would), holds the
one chunk a read had in hand, and accepts new connections without connecting them onward, as a
SYN that reaches a listener on loopback is always answered. :meth:`restore` lets all of it through
as a healed path would: late, complete and in order, so a client that kept its connection goes on.

The proxy runs its own asyncio loop in a daemon thread, so sync and async tests use it alike; every
method is thread-safe and returns once the proxy is in the new state.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

__all__ = ["FaultProxy"]

#: Bytes read at once per direction.
_CHUNK = 65536
#: How long a control call may wait for the proxy's loop, in seconds.
_CONTROL_TIMEOUT_S = 5.0


@dataclass(eq=False)
class _Pair:
    """One proxied connection: the client's side, the target's side, and the pump tasks."""

    client: asyncio.StreamWriter
    target: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class FaultProxy:
    """Listens on ``listen_host:listen_port`` (0: a free port) and forwards to ``target_host:target_port``.

    Attributes:
      port(int): The port it listens on (after :meth:`start`).
      accepted(int): Connections accepted so far.
    """

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1",
                 listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.host = listen_host
        self.port = listen_port
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"faultproxy-{target_port}", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._pairs: set[_Pair] = set()
        self._flowing: asyncio.Event | None = None
        self._latency = 0.0
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        """Start listening; returns self."""
        self._thread.start()
        self._call(self._start())
        return self

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Reset every connection, stop listening and stop the thread (idempotent)."""
        if self._closed or not self._thread.is_alive():
            self._closed = True
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CONTROL_TIMEOUT_S)
        if not self._thread.is_alive():
            self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset_all()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def url(self, scheme: str = "nats") -> str:
        """``scheme://host:port`` of the proxy's listener."""
        return f"{scheme}://{self.host}:{self.port}"

    # -- faults -----------------------------------------------------------------------------

    def cut_silently(self) -> None:
        """Stop forwarding in both directions without closing anything (a black hole)."""
        self._call(self._set_flowing(False))

    def restore(self) -> None:
        """Forward again: held bytes and held new connections go through, in order."""
        self._call(self._set_flowing(True))

    def close_all(self) -> None:
        """Reset every open connection (RST to both sides); the listener stays up."""
        self._call(self._reset_all())

    def set_latency(self, seconds: float) -> None:
        """Delay every chunk read from now on by ``seconds`` in each direction (0: none)."""
        self._latency = max(seconds, 0.0)

    @property
    def is_cut(self) -> bool:
        """True between :meth:`cut_silently` and :meth:`restore`."""
        return self._flowing is not None and not self._flowing.is_set()

    @property
    def connections(self) -> int:
        """Connections open through the proxy (held ones included)."""
        return len(self._pairs)

    # -- internals --------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        if not self._thread.is_alive():
            coro.close()
            raise RuntimeError("the proxy is not running")
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CONTROL_TIMEOUT_S)

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        pair = _Pair(writer)
        self._pairs.add(pair)
        accepting = asyncio.current_task()
        if accepting is not None:  # held during a cut: close_all() cancels this task
            pair.tasks.append(accepting)
        try:
            assert self._flowing is not None
            await self._flowing.wait()  # a connection made during a cut waits for the path to heal
            try:
                target_reader, target_writer = await asyncio.open_connection(*self.target)
            except OSError:
                _reset(writer)
                return
            pair.target = target_writer
            pair.tasks = [asyncio.create_task(self._pump(reader, target_writer, pair)),
                          asyncio.create_task(self._pump(target_reader, writer, pair))]
            await asyncio.gather(*pair.tasks, return_exceptions=True)
        finally:
            self._pairs.discard(pair)
            for side in (pair.client, pair.target):
                if side is not None:
                    side.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pair: _Pair) -> None:
        """Copy one direction; chunks wait out the latency and any cut, in order."""
        assert self._flowing is not None
        flowing = self._flowing
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send(queue, writer))
        try:
            while True:
                await flowing.wait()  # cut: read no more (the sender's kernel buffer fills, as on a dead path)
                try:
                    data = await reader.read(_CHUNK)
                except OSError:
                    data = b""
                await queue.put((time.monotonic() + self._latency, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
            # Either side gone: the other goes too (NATS and Redis never half-close).
            for task in pair.tasks:
                if task is not asyncio.current_task():
                    task.cancel()

    async def _send(self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        while True:
            due, data = await queue.get()
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._flowing.wait()  # a chunk in hand when the cut came is held, not dropped
            if not data:
                return
            writer.write(data)
            try:
                await writer.drain()
            except OSError:
                return

    async def _reset_all(self) -> None:
        pairs = list(self._pairs)
        for pair in pairs:
            for side in (pair.client, pair.target):
                if side is not None:
                    _reset(side)
            for task in pair.tasks:
                task.cancel()
        await asyncio.gather(*(t for p in pairs for t in p.tasks), return_exceptions=True)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer gets an RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
