"""A real Chromium, connected like Fechatter's web client, receives a message Fechatter's server
published on NATS: JetStream -> bridge -> Redis queue -> worker -> inbox -> gateway -> EventSource.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from tests.browser.driver import CdpError, Chromium, frames, serve_pages
from tests.pipeline import Pipeline, shutdown, start_pipeline
from tests.servers import NatsServer, RedisServer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

CREATED = {"version": "V1", "kind": "Created",
           "msg": {"id": 1234, "chat_id": 42, "sender_id": 7, "content": "Hi team", "files": [],
                   "created_at": "2025-06-27T02:45:46.782538Z",
                   "idempotency_key": "0190b5e2-7c3a-7d82-9206-54b2f6b4f7c4"},
           "members": [7, 9, 11], "occurred_at": "2025-06-27T02:45:46.790112345Z"}


@pytest.fixture
def pipeline(nats_server: NatsServer, redis_server: RedisServer, tmp_path: Path) -> Iterator[Pipeline]:
    running = start_pipeline(nats_server, redis_server, tmp_path)
    try:
        running.wait_ready()
        yield running
    finally:
        for name in running.processes:
            print(f"--- {name} log ---\n{running.log_tail(name, 60)}")
        shutdown(running)


async def test_chromium_receives_a_message_published_through_nats(pipeline: Pipeline) -> None:
    async with serve_pages() as pages, Chromium.launch() as browser:
        # Given Bob's page open on another origin, connected with his token in ?access_token=
        try:
            page = await browser.open(pages.url("events_page.html", gateway=pipeline.gateway_url,
                                                token=pipeline.token(9)))
            await page.wait_for("window.opened", within=15.0)
            await page.wait_for("window.received.some(f => f.type === 'connection_confirmed')")
        except (TimeoutError, CdpError) as exc:
            raise AssertionError(f"{exc}\n--- chromium log ---\n{browser.log_tail()}") from exc

        # When Fechatter's server publishes message 1234 on JetStream's fechatter.message.created
        nc = await nats.connect(pipeline.nats.url)
        try:
            await nc.publish("fechatter.message.created", json.dumps(CREATED).encode())
            await nc.flush()
        finally:
            await nc.close()

        # Then onmessage got one flat new_message frame with the client's fields
        await page.wait_for("window.received.some(f => f.type === 'new_message')", within=30.0)
        (message,) = frames(await page.evaluate("window.received"), "new_message")
        assert (message["id"], message["chat_id"], message["sender_id"], message["content"]) == (1234, 42, 7, "Hi team")
        assert message["idempotency_key"] == CREATED["msg"]["idempotency_key"]
        assert message["_id"]  # the inbox entry id, for Last-Event-ID
        assert await page.evaluate("window.errors") == 0
