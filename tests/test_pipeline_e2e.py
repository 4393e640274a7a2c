"""End to end: Fechatter's events on NATS reach the right browsers' SSE streams exactly once.

Everything is real: nats-server, redis-server, and the bridge, worker and gateway processes
started the way the Procfile starts them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from events.inbox import inbox_key
from gateway import read_frames
from tests.pipeline import Pipeline, shutdown, start_pipeline
from tests.servers import NatsServer, RedisServer, async_wait_until

R_MESSAGE = {"MessageReceived": {"message": {"id": "1234", "chat_id": 42, "sender_id": 7, "content": "Hi team",
                                             "files": [], "timestamp": 1750992346},
                                 "chat_id": 42, "recipients": [7, 9, 11]}}
N_MESSAGE = {"event_type": "new_message", "chat_id": 42, "sender_id": 7, "sender_name": "Alice Zhang",
             "content": "Hi team", "files": [], "timestamp": "2025-06-27T02:45:46.782538Z", "message_id": 1234,
             "workspace_id": 2}
C_MESSAGE = {"version": "V1", "kind": "Created",
             "msg": {"id": 1234, "chat_id": 42, "sender_id": 7, "content": "Hi team", "files": [],
                     "created_at": "2025-06-27T02:45:46.782538Z",
                     "idempotency_key": "0190b5e2-7c3a-7d82-9206-54b2f6b4f7c4"},
             "members": [7, 9, 11], "occurred_at": "2025-06-27T02:45:46.790112345Z"}
U_MESSAGE = {**C_MESSAGE, "members": [7], "sender_name": "Alice Zhang", "chat_name": "Design", "workspace_id": 2,
             "event_id": "5b0c7f3e-2d1a-4c53-9a55-1f0f3f6f9b21", "trace_context": {}}

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def pipeline(nats_server: NatsServer, redis_server: RedisServer, tmp_path: Path) -> Iterator[Pipeline]:
    running = start_pipeline(nats_server, redis_server, tmp_path)
    try:
        running.wait_ready()
        yield running
    finally:
        for name in running.processes:  # shown by pytest when the test fails
            print(f"--- {name} log ---\n{running.log_tail(name, 80)}")
        codes = shutdown(running)
        assert codes == {"bridge": 0, "worker": 0, "gateway": 0}, {n: running.log_tail(n) for n in codes}


class Stream:
    """One browser-like SSE connection: collects JSON frames as they arrive."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.ids: list[str] = []
        #: Per frame: its ``id:`` line, or None when it had none.
        self.frame_ids: list[str | None] = []

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == kind]

    def with_ids(self) -> list[tuple[str | None, dict[str, Any]]]:
        return list(zip(self.frame_ids, self.frames, strict=True))


async def _read(resp: aiohttp.ClientResponse, stream: Stream) -> None:
    async for event_id, frame in read_frames(resp.content):
        if event_id is not None:
            stream.ids.append(event_id)
        stream.frame_ids.append(event_id)
        stream.frames.append(frame)


@pytest.fixture
async def open_stream(pipeline: Pipeline) -> AsyncIterator[Any]:
    session = aiohttp.ClientSession()
    tasks: list[asyncio.Task[None]] = []

    async def opener(user_id: int, last_event_id: str | None = None) -> Stream:
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        resp = await session.get(f"{pipeline.gateway_url}/events", params={"access_token": pipeline.token(user_id)},
                                 headers=headers)
        assert resp.status == 200, await resp.text()
        stream = Stream()
        tasks.append(asyncio.create_task(_read(resp, stream)))
        await async_wait_until(lambda: stream.of_type("connection_confirmed"), timeout=10)
        return stream

    yield opener
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await session.close()


async def _drained(pipeline: Pipeline) -> bool:
    """True once JetStream has nothing pending or unacked and dramatiq's queues are empty."""
    nc = await nats.connect(pipeline.nats.url)
    try:
        js = nc.jetstream()
        info = await js.consumer_info("FECHATTER_EVENTS", "notification_processor")
    finally:
        await nc.close()
    if info.num_pending or info.num_ack_pending:
        return False
    client = pipeline.redis.client()
    try:
        ns = "fechatter-notify"
        queued = sum(client.llen(f"{ns}:{q}") + client.hlen(f"{ns}:{q}.msgs") for q in ("realtime", "domain"))
        return queued == 0
    finally:
        client.close()


def _inbox_types(pipeline: Pipeline, user_id: int) -> list[str]:
    client = pipeline.redis.client()
    try:
        entries = client.xrange(inbox_key("fechatter-notify", user_id))
    finally:
        client.close()
    return [json.loads(fields[b"n"])["type"] for _, fields in entries]


async def test_one_message_in_four_dialects_reaches_each_member_once(pipeline: Pipeline, open_stream: Any) -> None:
    # Given members 9 and 11 connected (one of them twice, as the web client does)
    bob, carol, carol_again, alice = (await open_stream(9), await open_stream(11), await open_stream(11),
                                      await open_stream(7))
    # When Fechatter publishes message 1234 the way its server does: four copies, three transports
    nc = await nats.connect(pipeline.nats.url)
    try:
        await nc.publish("fechatter.realtime.chat.42", json.dumps(R_MESSAGE).encode())
        await nc.publish("fechatter.message.new", json.dumps(N_MESSAGE).encode())
        await nc.publish("fechatter.message.created", json.dumps(C_MESSAGE).encode())
        await nc.publish("fechatter.messages.message.created.v1", json.dumps(U_MESSAGE).encode())
        await nc.flush()
    finally:
        await nc.close()
    # Then each member's every stream shows the message, flat and with numeric ids
    for stream in (bob, carol, carol_again):
        await async_wait_until(lambda s=stream: s.of_type("new_message"), timeout=20)
    await async_wait_until(lambda: _drained(pipeline), timeout=30, message="pipeline did not drain")
    # Opening a stream marks a user online, but presence is live only: inboxes hold the message alone.
    assert _inbox_types(pipeline, 9) == _inbox_types(pipeline, 11) == ["new_message"]
    assert _inbox_types(pipeline, 9).count("new_message") == 1
    assert _inbox_types(pipeline, 11).count("new_message") == 1
    assert _inbox_types(pipeline, 7).count("new_message") == 0  # the sender confirms from its own POST
    for stream in (bob, carol, carol_again):
        (frame,) = stream.of_type("new_message")
        assert (frame["id"], frame["chat_id"], frame["sender_id"], frame["content"]) == (1234, 42, 7, "Hi team")
    assert alice.of_type("new_message") == []


async def test_typing_reaches_the_other_members_only(pipeline: Pipeline, open_stream: Any) -> None:
    bob, carol = await open_stream(9), await open_stream(11)
    nc = await nats.connect(pipeline.nats.url)
    try:
        # The membership cache learns chat 42 from the message's recipient list.
        await nc.publish("fechatter.realtime.chat.42", json.dumps(R_MESSAGE).encode())
        await nc.flush()
        await async_wait_until(lambda: carol.of_type("new_message"), timeout=20)
        await async_wait_until(lambda: bob.of_type("new_message"), timeout=20)  # Bob's stream works
        typing = {"TypingStarted": {"chat_id": 42, "user_id": 9, "user_name": "Bob Li"}}
        await nc.publish("fechatter.realtime.chat.42.typing", json.dumps(typing).encode())
        await nc.flush()
        await async_wait_until(lambda: carol.of_type("typing_started"), timeout=10)
        # Then Carol types: Bob must see that, and nothing of his own typing before it
        typing = {"TypingStarted": {"chat_id": 42, "user_id": 11, "user_name": "Carol"}}
        await nc.publish("fechatter.realtime.chat.42.typing", json.dumps(typing).encode())
        await nc.flush()
    finally:
        await nc.close()
    (frame,) = carol.of_type("typing_started")
    assert (frame["chat_id"], frame["user_id"], frame["user_name"]) == (42, 9, "Bob Li")
    # Bob's own typing was delivered (to Carol) before Carol's was published: had it been sent to
    # Bob as well, it would have reached his stream first.
    await async_wait_until(lambda: bob.of_type("typing_started"), timeout=10)
    assert [(f["user_id"], f["user_name"]) for f in bob.of_type("typing_started")] == [(11, "Carol")]


def _message(message_id: int) -> bytes:
    """Message ``message_id`` of chat 42 by 7, in the realtime dialect (recipients 7, 9, 11)."""
    event = json.loads(json.dumps(R_MESSAGE))
    event["MessageReceived"]["message"]["id"] = str(message_id)
    return json.dumps(event).encode()


async def test_a_resumed_stream_replays_messages_and_receipts_but_never_typing_or_presence(
    pipeline: Pipeline, open_stream: Any
) -> None:
    # Given Bob (9) and Carol (11) connected to chat 42, which the first message teaches the cache
    bob, carol = await open_stream(9), await open_stream(11)
    nc = await nats.connect(pipeline.nats.url)
    try:
        await nc.publish("fechatter.realtime.chat.42", _message(1234))
        await nc.flush()
        await async_wait_until(lambda: carol.of_type("new_message"), timeout=20)
        (resume_from,) = [i for i, f in carol.with_ids() if f.get("id") == 1234]
        assert resume_from is not None
        # When Bob types, goes away, reads message 1234, and message 1235 follows
        await nc.publish("fechatter.realtime.chat.42.typing", json.dumps(
            {"TypingStarted": {"chat_id": 42, "user_id": 9, "user_name": "Bob Li"}}).encode())
        await nc.publish("fechatter.realtime.user.9.presence", json.dumps(
            {"UserPresence": {"user_id": 9, "status": "away", "last_seen": None}}).encode())
        await nc.publish("fechatter.realtime.chat.42.read", json.dumps({"MessageRead": {
            "message_id": 1234, "chat_id": 42, "reader_id": 9, "read_at": "2025-06-27T02:46:01Z"}}).encode())
        await nc.publish("fechatter.realtime.chat.42", _message(1235))
        await nc.flush()

        # Then Carol's open stream gets all of it live, typing and presence without an id
        def live_frames() -> bool:
            return bool(carol.of_type("typing_started") and carol.of_type("message_read")
                        and [f for f in carol.of_type("user_presence") if f["status"] == "away"]
                        and len(carol.of_type("new_message")) == 2)

        await async_wait_until(live_frames, timeout=20, message="live frames missing")
        for frame_id, frame in carol.with_ids():
            assert (frame_id is None) == (frame["type"] in {"typing_started", "user_presence",
                                                            "connection_confirmed"}), (frame_id, frame)
        await async_wait_until(lambda: _drained(pipeline), timeout=30, message="pipeline did not drain")
        assert sorted(_inbox_types(pipeline, 11)) == ["message_read", "new_message", "new_message"]

        # And a burst of typing adds nothing to the inbox: only the message after it does
        for n in range(20):
            await nc.publish("fechatter.realtime.chat.42.typing", json.dumps(
                {"TypingStarted": {"chat_id": 42, "user_id": 9, "user_name": f"Bob {n}"}}).encode())
        await nc.publish("fechatter.realtime.chat.42", _message(1236))
        await nc.flush()
        await async_wait_until(lambda: len(carol.of_type("typing_started")) == 21
                               and len(carol.of_type("new_message")) == 3, timeout=20)
        await async_wait_until(lambda: _drained(pipeline), timeout=30, message="pipeline did not drain")
        assert sorted(_inbox_types(pipeline, 11)) == ["message_read", "new_message", "new_message", "new_message"]
    finally:
        await nc.close()

    # When Carol resumes from message 1234's id (a reconnect minutes later)
    resumed = await open_stream(11, last_event_id=resume_from)
    await async_wait_until(lambda: [f for f in resumed.of_type("new_message") if f["id"] == 1236], timeout=20,
                           message="replay did not reach message 1236")
    # Then the replay up to the known last entry is exactly the stored notifications after 1234:
    # the receipt and the messages, every one with its id, and no typing or presence
    frames = resumed.with_ids()
    end = next(i for i, (_, f) in enumerate(frames) if f.get("id") == 1236)
    replayed = frames[1:end + 1]
    assert frames[0][1]["type"] == "connection_confirmed"
    assert sorted(f["type"] for _, f in replayed) == ["message_read", "new_message", "new_message"]
    assert [f["id"] for _, f in replayed if f["type"] == "new_message"] == [1235, 1236]
    assert all(frame_id is not None for frame_id, _ in replayed)
    assert bob.of_type("typing_started") == []  # the typist is never told of their own typing
