"""A real Chromium receives a notification through EventSource.onmessage (cross-origin page).

The page (tests/browser/events_page.html) connects exactly like Fechatter's live client; the
driver (tests/browser/driver.py) is shared with the full-pipeline browser tests.
"""

from __future__ import annotations

import pytest

from gateway.testing import SigningKey, gateway_settings, new_message, running_gateway, typing_started
from tests.browser.driver import CdpError, Chromium, frames, serve_pages
from tests.servers import RedisServer

pytestmark = pytest.mark.browser


async def test_chromium_receives_a_new_message_through_onmessage(redis_server: RedisServer) -> None:
    key = SigningKey.generate()
    settings = gateway_settings(redis_server.url, key.public_pem)
    async with (
        running_gateway(settings, key) as gw,
        serve_pages() as pages,
        Chromium.launch() as browser,
    ):
        # Given the page open on another origin, connected with its token in ?access_token=
        try:
            page = await browser.open(
                pages.url("events_page.html", gateway=gw.url, token=key.token(7)))
            await page.wait_for("window.opened", within=10.0)
            await page.wait_for("window.received.some(f => f.type === 'connection_confirmed')")
        except (TimeoutError, CdpError) as exc:
            raise AssertionError(f"{exc}\n--- chromium log ---\n{browser.log_tail()}") from exc

        # When a new_message notification is delivered to the user's inbox
        entry_id = await gw.publish(7, new_message(1234, chat_id=42, sender_id=9))

        # Then onmessage got it: flat JSON with the client's fields, lastEventId = the inbox id
        await page.wait_for("window.received.some(f => f.type === 'new_message')")
        received = await page.evaluate("window.received")
        (message,) = frames(received, "new_message")
        assert message["_id"] == entry_id
        assert (message["id"], message["chat_id"], message["sender_id"]) == (1234, 42, 9)
        assert all(item["type"] != "INVALID_JSON" for item in received)
        assert await page.evaluate("document.title") == f"received {len(received)}"
        assert await page.evaluate("window.errors") == 0


async def test_chromium_keeps_the_last_inbox_id_across_a_live_only_frame(redis_server: RedisServer) -> None:
    key = SigningKey.generate()
    settings = gateway_settings(redis_server.url, key.public_pem)
    async with (
        running_gateway(settings, key) as gw,
        serve_pages() as pages,
        Chromium.launch() as browser,
    ):
        try:
            page = await browser.open(pages.url("events_page.html", gateway=gw.url, token=key.token(7)))
            await page.wait_for("window.opened", within=10.0)
            await page.wait_for("window.received.some(f => f.type === 'connection_confirmed')")
        except (TimeoutError, CdpError) as exc:
            raise AssertionError(f"{exc}\n--- chromium log ---\n{browser.log_tail()}") from exc

        # When an inbox entry is followed by a live-only typing frame (no id: line)
        entry_id = await gw.publish(7, new_message(1234, chat_id=42, sender_id=9))
        await gw.publish_live(7, typing_started(9))

        # Then the typing frame reaches onmessage, and the browser's last event id - what it
        # sends as Last-Event-ID on a reconnect - is still the inbox entry's
        await page.wait_for("window.received.some(f => f.type === 'typing_started')")
        received = await page.evaluate("window.received")
        (message,) = frames(received, "new_message")
        (typing,) = frames(received, "typing_started")
        assert message["_id"] == entry_id
        assert typing["_id"] == entry_id
        assert typing["user_id"] == 9
