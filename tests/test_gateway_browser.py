"""A real Chromium receives a notification through EventSource.onmessage (cross-origin page).

The page (tests/browser/events_page.html) connects exactly like Fechatter's live client; the
driver (tests/browser/driver.py) is shared with the full-pipeline browser tests.
"""

from __future__ import annotations

import pytest

from gateway.testing import SigningKey, gateway_settings, new_message, running_gateway
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
