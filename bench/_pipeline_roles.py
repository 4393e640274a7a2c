"""The two kinds of helper process of bench/pipeline.py: SSE clients and the NATS publisher.

Each runs as its own process (``python bench/_pipeline_roles.py client|publisher ...``) so its CPU
is measured apart from the system under test, and both take one command per line on stdin and
answer one JSON line on stdout.

client (browsers): opens one SSE stream (``GET /events?access_token=...``) per assigned user on
its gateway, from one of many loopback source addresses (the gateway's per-address connect rate
applies as with real browsers); counts every notification frame (``id:`` line) and, on every
``--sample``-th stream, records each frame's publish time (carried in the message content as
``t=<time.time()>``) and its publish -> frame latency. Commands: ``connect``, ``report`` (frame
count so far), ``take`` (the samples recorded since the last ``take``; they are then dropped),
``quit``.

publisher (Fechatter's chat server): publishes ``fechatter.message.created`` events (the
``Created`` dialect, with the chat's member list) to JetStream the way an async JetStream
publisher does: a core publish with a reply subject, PubAcks counted as they come back, so the
offered load does not wait for acks. Commands: a JSON object ``{"rate": R, "seconds": S}`` ->
``{"sent", "t0", "t1", "acked", "errors"}``; ``acks``; ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import resource
import sys
import time
from array import array
from pathlib import Path
from typing import Any, cast

from _lines import client_loop, complete_frames

#: Streams come from this many loopback addresses (127.0.0.2 ...), a few streams each: the
#: gateway's default connect burst (100 per address) is never the limit.
SOURCE_ADDRESSES = 250
#: Concurrent connection attempts per client process.
CONNECT_CONCURRENCY = 200
#: The publish time inside a frame: the notification's ``content`` is ``t=<seconds>``.
SENT_AT = re.compile(rb'"content":"t=([0-9.]+)"')
SUBJECT = "fechatter.message.created"
CREATED_AT = "2026-11-29T17:00:00.000000Z"
OCCURRED_AT = "2026-11-29T17:00:00.000000417Z"


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def _commands() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


# --------------------------------------------------------------------------- client


class _Stats:
    def __init__(self) -> None:
        self.frames = 0
        self.closed = 0
        self.sent = array("d")
        self.latency = array("d")


class _Stream(asyncio.Protocol):
    """One SSE stream: counts frames, and on sampled streams records publish times and latencies."""

    def __init__(self, request: bytes, stats: _Stats, confirmed: asyncio.Future[None], timed: bool) -> None:
        self.request, self.stats, self.confirmed, self.timed = request, stats, confirmed, timed
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()  # first thing: the receive time the latency is measured to
        chunk, self.buffer = complete_frames(self.buffer, data)
        if not chunk:
            return
        if not self.confirmed.done():
            if b"connection_confirmed" in chunk:
                self.confirmed.set_result(None)
            elif b" 200 " not in chunk[:20]:
                self.confirmed.set_exception(RuntimeError(chunk[:200].decode(errors="replace")))
        frames = chunk.count(b"\nid: ") + chunk.startswith(b"id: ")
        if frames:
            self.stats.frames += frames
            if self.timed:
                for sent in SENT_AT.findall(chunk):
                    value = float(sent)
                    self.stats.sent.append(value)
                    self.stats.latency.append(now - value)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.closed += 1
        if not self.confirmed.done():
            self.confirmed.set_exception(ConnectionError("closed before confirmation"))


async def client_main(args: argparse.Namespace) -> None:
    raise_fd_limit()
    assigned: list[list[Any]] = args.loaded  # [user, port, token]
    stats = _Stats()
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    transports: list[asyncio.BaseTransport] = []
    failures: list[str] = []

    async def open_one(index: int) -> None:
        _, port, token = assigned[index]
        request = (f"GET /events?access_token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                   f"Accept: text/event-stream\r\n\r\n").encode()
        confirmed: asyncio.Future[None] = loop.create_future()
        async with gate:
            try:
                transport, _ = await loop.create_connection(
                    lambda: _Stream(request, stats, confirmed, index % args.sample == 0), "127.0.0.1", port,
                    local_addr=(f"127.0.0.{2 + index % SOURCE_ADDRESSES}", 0))
                transports.append(transport)
                await asyncio.wait_for(confirmed, 30)
            except (OSError, RuntimeError, TimeoutError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}"[:200])

    reader = await _commands()
    while line := await reader.readline():
        command = line.decode().strip()
        if command == "connect":
            await asyncio.gather(*(open_one(i) for i in range(args.first, args.first + args.count)))
            _say(confirmed=args.count - len(failures), failed=len(failures), failures=failures[:3])
        elif command == "report":
            _say(frames=stats.frames, closed=stats.closed)
        elif command == "take":
            _say(frames=stats.frames, closed=stats.closed, sent=stats.sent.tolist(), latency=stats.latency.tolist())
            stats.sent, stats.latency = array("d"), array("d")
        elif command == "quit":
            break
    for transport in transports:
        transport.close()


# --------------------------------------------------------------------------- publisher


def payload(chat_id: int, members: list[int], message_id: int, sender: int, sent_at: float) -> bytes:
    """A ``fechatter.message.created`` event as Fechatter publishes it (docs/event-contract.md, the C
    dialect), its content the publish time."""
    msg = {"id": message_id, "chat_id": chat_id, "sender_id": sender, "content": f"t={sent_at:.6f}",
           "files": [], "created_at": CREATED_AT, "idempotency_key": None}
    event = {"version": "V1", "kind": "Created", "msg": msg, "members": members, "occurred_at": OCCURRED_AT}
    return json.dumps(event, separators=(",", ":")).encode()


async def publisher_main(args: argparse.Namespace) -> None:
    import nats

    chats: list[tuple[int, list[int]]] = [(c, m) for c, m in args.loaded]
    rng = random.Random(args.seed)
    counts = {"acked": 0, "errors": 0}

    async def on_ack(msg: Any) -> None:
        counts["errors" if b'"error"' in msg.data else "acked"] += 1

    nc = await nats.connect(args.nats, name="bench-pipeline-publisher", pending_size=256 * 1024 * 1024,
                            max_reconnect_attempts=-1)
    inbox = nc.new_inbox()
    await nc.subscribe(f"{inbox}.*", cb=on_ack, pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 30)
    next_id = 1

    async def run(rate: float, seconds: float) -> dict[str, Any]:
        nonlocal next_id
        total, sent = int(rate * seconds), 0
        t0 = time.time()
        while sent < total:
            due = min(total, int((time.time() - t0) * rate) + 1)
            while sent < due:
                chat_id, members = chats[rng.randrange(len(chats))]
                now = time.time()
                data = payload(chat_id, members, next_id, members[rng.randrange(len(members))], now)
                await nc.publish(SUBJECT, data, reply=f"{inbox}.{next_id}")
                next_id += 1
                sent += 1
            await asyncio.sleep(0.001)  # lets the client's flusher write what was published
        await nc.flush()
        return {"sent": sent, "t0": t0, "t1": time.time(), **counts}

    reader = await _commands()
    while line := await reader.readline():
        command = line.decode().strip()
        if command.startswith("{"):
            order = json.loads(command)
            _say(**await run(float(order["rate"]), float(order["seconds"])))
        elif command == "acks":
            await nc.flush()
            _say(**counts)
        elif command == "quit":
            break
    await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=("client", "publisher"))
    parser.add_argument("--assign", help="client: JSON [[user, port, token], ...]")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--sample", type=int, default=1, help="client: every Nth stream records latencies")
    parser.add_argument("--nats", help="publisher: NATS URL")
    parser.add_argument("--chats", help="publisher: JSON [[chat_id, [members]], ...]")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    args.loaded = json.loads(Path(args.assign if args.role == "client" else args.chats).read_text())
    main_coro = client_main(args) if args.role == "client" else publisher_main(args)
    with asyncio.Runner(loop_factory=client_loop()) as runner:
        runner.run(main_coro)


if __name__ == "__main__":
    main()
