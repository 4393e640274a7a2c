"""Scenario 5, gateway failover: kill -9 the gateway holding 1,000 streams; nothing is lost or doubled.

Two ``fechatter-notify gateway`` processes (the Procfile's ``web:``) sit behind one address, a TCP
balancer that sends every new connection to the first gateway that accepts it. 1,000 users each
hold one stream through it, read by a client that reconnects like the browser's EventSource
(after the ``retry:`` delay, with ``Last-Event-ID``). The real bridge and worker deliver messages
published on JetStream before, during and after the gateway holding every stream is killed -9.

Invariants: every client reconnects (to the survivor) and keeps no failure; every user's inbox
holds each message addressed to them exactly once; and every client received exactly its inbox,
entry by entry, in order (no gap at the cut, no entry replayed twice).
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import nats
import pytest
import redis

from fechatter_notify.embedded import free_port
from tests.chaos.audit import inbox_entries
from tests.chaos.balancer import Balancer
from tests.chaos.eventsource import EventSourceClient
from tests.pipeline import Pipeline, shutdown, start_pipeline
from tests.servers import NatsServer, RedisServer, async_wait_until

pytestmark = pytest.mark.timeout(180)

USERS: Final = 1000
CHAT_SIZE: Final = 50
#: Messages published while the kill happens (before and after it), beside one per chat before and after.
DURING: Final = 160
#: Messages per second while the kill happens.
RATE: Final = 40.0
#: How far into the "during" messages gateway A is killed.
KILL_AFTER: Final = 50
NAMESPACE: Final = "fechatter-notify"
SUBJECT: Final = "fechatter.message.created"


@dataclass(frozen=True)
class Chat:
    id: int
    members: tuple[int, ...]


def chats() -> list[Chat]:
    return [Chat(100 + c, tuple(range(c * CHAT_SIZE + 1, (c + 1) * CHAT_SIZE + 1)))
            for c in range(USERS // CHAT_SIZE)]


def raise_fd_limit() -> None:
    """1,000 streams here hold ~3,000 descriptors (client + both balancer sides)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 4 * USERS, "raise the hard open-files limit"


def start_gateway(pipeline: Pipeline, name: str, port: int) -> None:
    """One more gateway process on ``port``, like Pipeline.start but with a name (and log) of its own."""
    env = {**pipeline.env, "NOTIFY_PORT": str(port)}
    args = [sys.executable, "-m", "fechatter_notify", "--config", str(pipeline.workdir / "notify.yml"), "gateway"]
    with (pipeline.workdir / f"{name}.log").open("ab") as log:
        pipeline.processes[name] = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                    start_new_session=True)


@pytest.fixture
def pipeline(nats_server: NatsServer, redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[Pipeline, int]]:
    """The bridge, a worker and two gateways; yields the pipeline and gateway B's port (A's is the pipeline's)."""
    running = start_pipeline(nats_server, redis_server, tmp_path, processes=("bridge", "worker"))
    # Every client reaches the gateways from 127.0.0.1 (through the balancer, which adds no
    # X-Forwarded-For): the per-address connect rate would refuse the reconnect storm it is built for.
    running.env["NOTIFY__GATEWAY__LIMITS__CONNECT_RATE"] = "0"
    running.env["NOTIFY__GATEWAY__DRAIN_WINDOW"] = "1s"  # the survivor's stop at the end
    running.start("gateway")
    port_b = free_port()
    start_gateway(running, "gateway_b", port_b)
    try:
        running.wait_ready(timeout=60)
        yield running, port_b
    finally:
        for name in running.processes:
            print(f"--- {name} log ---\n{running.log_tail(name, 30)}")
        codes = shutdown(running)
        del codes["gateway"]  # killed -9 by the test (or, had it failed first, stopped)
        assert codes == {"bridge": 0, "worker": 0, "gateway_b": 0}, codes


def message(chat: Chat, message_id: int) -> bytes:
    """Message ``message_id`` in the ``kind: Created`` dialect, with the member list (the recipients)."""
    sender = chat.members[message_id % len(chat.members)]
    return json.dumps({
        "version": "V1", "kind": "Created",
        "msg": {"id": message_id, "chat_id": chat.id, "sender_id": sender, "content": f"m{message_id}",
                "files": [], "created_at": "2025-06-27T02:45:46.782538Z",
                "idempotency_key": f"0190b5e2-7c3a-7d82-9206-{message_id:012x}"},
        "members": list(chat.members), "occurred_at": "2025-06-27T02:45:46.790112345Z",
    }).encode()


class Publisher:
    """Publishes messages on JetStream (each awaited until stored) and records who must get each."""

    def __init__(self, js: Any) -> None:
        self.js = js
        self.next_id = 1
        self.expected: dict[int, list[int]] = {}  # user -> message ids addressed to them

    async def publish(self, chat: Chat) -> None:
        message_id, self.next_id = self.next_id, self.next_id + 1
        await self.js.publish(SUBJECT, message(chat, message_id))
        sender = chat.members[message_id % len(chat.members)]
        for user in chat.members:
            if user != sender:  # the sender confirms from its own POST
                self.expected.setdefault(user, []).append(message_id)

    @property
    def count(self) -> int:
        return self.next_id - 1


def read_inboxes(url: str) -> dict[int, list[tuple[str, int]]]:
    """Every user's inbox as ``[(entry id, message id)]``."""
    client = redis.Redis.from_url(url)
    try:
        return {user: [(entry, notification["id"]) for entry, notification in inbox_entries(client, NAMESPACE, user)]
                for user in range(1, USERS + 1)}
    finally:
        client.close()


def audit(expected: dict[int, list[int]], inboxes: dict[int, list[tuple[str, int]]],
          clients: dict[int, EventSourceClient]) -> tuple[int, int, list[str]]:
    """``(lost, duplicated, problems)``: inbox against what was published, stream against inbox."""
    lost = duplicated = 0
    problems: list[str] = []
    for user, client in clients.items():
        want = Counter(expected.get(user, []))
        have = Counter(message_id for _, message_id in inboxes[user])
        got = Counter(frame["id"] for _, frame in client.entries)
        lost += sum(((want - got) | (want - have)).values())
        duplicated += sum((got - want).values()) + sum((have - want).values())
        streamed = [(entry, frame["id"]) for entry, frame in client.entries]
        if streamed != inboxes[user] and len(problems) < 5:
            problems.append(f"user {user}: streamed {len(streamed)} entries, inbox holds {len(inboxes[user])}; "
                            f"first difference at {_first_difference(streamed, inboxes[user])}")
    return lost, duplicated, problems


def _first_difference(a: list[Any], b: list[Any]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


async def test_the_streams_of_a_killed_gateway_resume_on_the_other_without_gap_or_duplicate(
    pipeline: tuple[Pipeline, int],
) -> None:
    raise_fd_limit()
    running, port_b = pipeline
    ports = [int(running.gateway_url.rsplit(":", 1)[1]), port_b]
    balancer = Balancer([("127.0.0.1", port) for port in ports], policy="first")
    address = f"http://127.0.0.1:{await balancer.start()}/events"
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
    clients = {user: EventSourceClient(address, running.token(user)) for user in range(1, USERS + 1)}
    nc = await nats.connect(running.nats.url)
    publisher = Publisher(nc.jetstream())
    try:
        # Given 1,000 streams, all on gateway A (the balancer's first choice while it lives)
        for client in clients.values():
            client.start(session)
        await async_wait_until(lambda: all(c.connected for c in clients.values()), timeout=60,
                               message=lambda: _not_connected(clients))
        assert balancer.open[0] == USERS and balancer.open[1] == 0, (balancer.open, balancer.refused)
        # ... which deliver what is published before the fault
        for chat in chats():
            await publisher.publish(chat)
        await _all_received(publisher, clients, within=30)

        # When messages keep coming and gateway A is killed -9 in the middle of them
        killed_at = 0.0
        rooms = chats()
        started = time.monotonic()
        for n in range(DURING):
            if n == KILL_AFTER:
                running.stop("gateway", signal.SIGKILL)
                killed_at = time.monotonic()
            await publisher.publish(rooms[n % len(rooms)])
            await asyncio.sleep(max(0.0, started + (n + 1) / RATE - time.monotonic()))  # pacing, not waiting
        # Then every client comes back, through the same address, on gateway B: all 1,000 streams
        # open there at once (a stream B closed again, e.g. on a Redis error, reconnects once more)
        def all_back() -> bool:
            return (balancer.open[1] == USERS and balancer.open[0] == 0
                    and all(c.connected and c.confirmed_at[-1] > killed_at for c in clients.values()))

        await async_wait_until(all_back, timeout=40, interval=0.05,
                               message=lambda: f"{_not_connected(clients, after=killed_at)}; balancer {balancer.open}")
        recover_max_s = time.monotonic() - killed_at
        for chat in chats():  # and after it
            await publisher.publish(chat)
        await _all_received(publisher, clients, within=30)
    finally:
        await nc.close()
        for client in clients.values():
            await client.stop()
        await session.close()
        await balancer.close()

    failures = {user: c.failures for user, c in clients.items() if c.failures}
    assert not failures, f"EventSource would have given up: {dict(list(failures.items())[:5])}"
    assert all(len(c.dropped_at) >= 1 for c in clients.values()), "a stream on the killed gateway did not drop"
    lost, duplicated, problems = audit(publisher.expected, read_inboxes(running.redis.url), clients)
    redropped = sum(1 for c in clients.values() if len(c.dropped_at) > 1)
    print(f"scenario=gateway_failover events={publisher.count} faults=1 lost={lost} duplicated={duplicated} "
          f"dead_lettered=0 recover_max_s={recover_max_s:.2f} (streams={USERS}, entries streamed="
          f"{sum(len(c.entries) for c in clients.values())}, streams dropped again on the survivor={redropped})")
    assert (lost, duplicated) == (0, 0), problems
    assert not problems, problems
    survivor_log = (running.workdir / "gateway_b.log").read_text(errors="replace")
    assert "level=error" not in survivor_log, running.log_tail("gateway_b", 60)


def _not_connected(clients: dict[int, EventSourceClient], after: float = 0.0) -> str:
    waiting = [u for u, c in clients.items() if not c.confirmed_at or c.confirmed_at[-1] <= after or not c.connected]
    failed = {u: c.failures for u, c in clients.items() if c.failures}
    return (f"{len(waiting)} streams not (re)connected, e.g. users {waiting[:5]}; "
            f"failures {dict(list(failed.items())[:3])}")


async def _all_received(publisher: Publisher, clients: dict[int, EventSourceClient], within: float) -> None:
    def done() -> bool:
        return all(len(clients[u].entries) >= len(ids) for u, ids in publisher.expected.items())

    def behind() -> str:
        late = {u: (len(clients[u].entries), len(ids)) for u, ids in publisher.expected.items()
                if len(clients[u].entries) < len(ids)}
        return f"{len(late)} streams behind (received, expected), e.g. {dict(list(late.items())[:5])}"

    await async_wait_until(done, timeout=within, interval=0.05, message=behind)
