"""Drive a headless Chromium over the DevTools protocol (CDP), with aiohttp's websocket client.

Reusable by any browser test:

    async with Chromium.launch() as browser, serve_pages() as pages:
        page = await browser.open(pages.url("events_page.html", gateway=..., token=...))
        await page.wait_for("window.opened")
        frames = await page.evaluate("window.received")

A missing Chromium skips the test locally and FAILS it in CI (``CI=true``), like the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

#: This directory: the pages served to the browser.
PAGES = Path(__file__).parent
#: Executables tried in order (``$CHROMIUM`` first).
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: The flags the suite runs Chromium with: quiet, sandbox-free (root in containers), no QUIC.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
)
#: Seconds any single DevTools command may take before the test fails (instead of hanging).
COMMAND_TIMEOUT = 15.0
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def find_chromium() -> str:
    """Path of a Chromium executable; skips the test (fails it in CI) when there is none."""
    override = os.environ.get("CHROMIUM")
    for name in ((override,) if override else ()) + CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    reason = "no Chromium found (Debian: apt-get install -y chromium; or set $CHROMIUM)"
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing browser is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


class CdpError(RuntimeError):
    """A DevTools command failed, or a page expression threw."""


class Page:
    """One browser tab, driven through its own DevTools websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one CDP command and return its ``result`` (events in between are skipped)."""
        command_id = next(self._ids)
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await self._ws.send_json({"id": command_id, "method": method, "params": params})
                while True:
                    message = await self._ws.receive_json()
                    if message.get("id") == command_id:
                        break
        except TimeoutError:
            raise CdpError(f"{method}: no answer within {COMMAND_TIMEOUT}s") from None
        if "error" in message:
            raise CdpError(f"{method}: {message['error']}")
        result: dict[str, Any] = message.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, within: float = 10.0, interval: float = 0.05) -> Any:
        """Poll ``expression`` until it is truthy; return its value.

        Raises:
          TimeoutError: with the last value, when ``within`` seconds pass.
        """
        deadline = time.monotonic() + within
        value: Any = None
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{expression!r} still falsy after {within}s (last: {value!r})")
            await asyncio.sleep(interval)


@dataclass
class Chromium:
    """A headless Chromium process with its own profile dir, killed with its process group."""

    process: asyncio.subprocess.Process
    profile: Path
    devtools: str
    session: aiohttp.ClientSession

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, start_within: float = 20.0) -> AsyncIterator[Self]:
        executable = find_chromium()
        profile = Path(tempfile.mkdtemp(prefix="fechatter-notify-chromium-"))
        log = (profile / "chromium.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            executable, *FLAGS, f"--user-data-dir={profile}", "about:blank",
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: renderers die with it
        )
        session = aiohttp.ClientSession()
        try:
            port = await _devtools_port(process, profile, start_within)
            yield cls(process, profile, f"http://127.0.0.1:{port}", session)
        finally:
            await session.close()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            log.close()
            shutil.rmtree(profile, ignore_errors=True)

    async def open(self, url: str) -> Page:
        """Open ``url`` in a new tab; returns once the navigation was committed."""
        # A blank tab first, then Page.navigate: /json/new?<url> would cut the URL at its "&".
        async with asyncio.timeout(COMMAND_TIMEOUT):
            async with self.session.put(f"{self.devtools}/json/new?about:blank") as response:
                if response.status != 200:
                    raise CdpError(f"/json/new: {response.status} {await response.text()}")
                target = await response.json()
            ws = await self.session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        page = Page(ws)
        result = await page.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise CdpError(f"navigating to {url}: {result['errorText']}")
        return page

    def log_tail(self, lines: int = 40) -> str:
        path = self.profile / "chromium.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


async def _devtools_port(process: asyncio.subprocess.Process, profile: Path, within: float) -> int:
    # With --remote-debugging-port=0 Chromium picks a free port and writes it here.
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"chromium exited with {process.returncode}")
        if marker.exists():
            first = marker.read_text().splitlines()[:1]
            if first and first[0].isdigit():
                return int(first[0])
        await asyncio.sleep(0.05)
    raise TimeoutError(f"chromium wrote no DevToolsActivePort within {within}s")


@dataclass
class PageServer:
    """Serves :data:`PAGES` over HTTP on 127.0.0.1 (a different origin than the gateway)."""

    base: str

    def url(self, page: str, **query: str) -> str:
        return f"{self.base}/{page}" + (f"?{urlencode(query)}" if query else "")


@contextlib.asynccontextmanager
async def serve_pages(directory: Path = PAGES) -> AsyncIterator[PageServer]:
    """Serve ``directory`` statically on a free port until the block ends."""
    app = web.Application()
    app.router.add_static("/", directory)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield PageServer(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def frames(received: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The parsed frames of type ``kind`` among what the page recorded."""
    return [json.loads(item["data"]) | {"_id": item["id"]} for item in received if item["type"] == kind]
