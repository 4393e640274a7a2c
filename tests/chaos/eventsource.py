"""A client that reconnects like the browser's EventSource, for many streams in one process.

What it copies from the HTML standard's EventSource (server-sent events section) because the
failover scenario depends on it:

- the last event ID is the last ``id:`` field seen (frames without one keep it), and every
  reconnect sends it as ``Last-Event-ID``;
- the reconnection delay is the last ``retry:`` the server sent (the gateway sends one first);
- a dropped connection (network error, or the body ending) is retried after that delay; a
  response that is not ``200 text/event-stream`` fails the source for good (recorded here, so
  the test can fail on it instead of retrying forever);
- a frame cut off by the drop (no blank line yet) is discarded, never dispatched.

Only frames that carried an ``id:`` line are kept with their id: those are inbox entries, which
the scenario compares with the user's inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

#: The delay before the first ``retry:`` arrives (browsers use about 3 s).
DEFAULT_RETRY_MS: Final = 3000


@dataclass
class EventSourceClient:
    """One user's stream through ``url`` (``GET /events?access_token=…``)."""

    url: str
    token: str
    retry_ms: int = DEFAULT_RETRY_MS
    last_event_id: str = ""
    #: ``(id, data)`` of every dispatched frame that carried an ``id:`` line, in arrival order.
    entries: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: ``time.monotonic()`` of every ``connection_confirmed`` frame.
    confirmed_at: list[float] = field(default_factory=list)
    #: ``time.monotonic()`` of every drop (the body ended or broke).
    dropped_at: list[float] = field(default_factory=list)
    #: Non-200 answers: EventSource gives up on them, so the scenario must not see any.
    failures: list[str] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self, session: aiohttp.ClientSession) -> None:
        self._task = asyncio.create_task(self._run(session))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def connected(self) -> bool:
        """Confirmed since its last drop."""
        return bool(self.confirmed_at) and (not self.dropped_at or self.confirmed_at[-1] > self.dropped_at[-1])

    async def _run(self, session: aiohttp.ClientSession) -> None:
        while not self.failures:
            headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
            try:
                async with session.get(self.url, params={"access_token": self.token}, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=None, sock_read=None,
                                                                     sock_connect=10)) as resp:
                    if resp.status != 200 or not resp.content_type.startswith("text/event-stream"):
                        self.failures.append(f"{resp.status} {await resp.text()}")
                        return
                    await self._read(resp)
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass  # a network error: reconnect, as EventSource does
            self.dropped_at.append(time.monotonic())
            await asyncio.sleep(self.retry_ms / 1000)  # the reconnection delay (not a wait for a condition)

    async def _read(self, resp: aiohttp.ClientResponse) -> None:
        data: list[str] = []
        id_buffer = self.last_event_id
        had_id = False
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if not line:
                self.last_event_id = id_buffer  # set on dispatch, even without data
                if data:
                    self._dispatch(had_id, "\n".join(data))
                data, had_id = [], False
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "id" and "\0" not in value:
                id_buffer, had_id = value, True
            elif name == "retry" and value.isdigit():
                self.retry_ms = int(value)

    def _dispatch(self, had_id: bool, text: str) -> None:
        frame = json.loads(text)
        if had_id:
            self.entries.append((self.last_event_id, frame))
        elif frame.get("type") == "connection_confirmed":
            self.confirmed_at.append(time.monotonic())
