"""Building blocks of the gateway's edge protections (see :mod:`gateway.admission`).

Each is small and knows nothing of aiohttp's request handling: a per-address token bucket, the
process's resident memory, the client address behind trusted proxies, a log that an attack cannot
flood, and the JSON refusal every limit answers with.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import resource
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from runtime import log_event

#: Buckets kept for client addresses; the least recently seen is forgotten first (it then starts
#: with a full bucket, which only ever lets an address through, never locks one out).
MAX_TRACKED_ADDRESSES: Final = 100_000
#: Descriptors kept back from RLIMIT_NOFILE for what is not a client connection: the Redis pool
#: (64), pub/sub, NATS, log files, the listening socket, imports, and room for accept() to fail
#: softly rather than at random in the middle of a Redis reconnect.
FD_RESERVE: Final = 256
#: Connections above ``max_connections`` still accepted so that probes (/healthz, /readyz,
#: /metrics) are answered while streams are refused; beyond it a connection is closed at once.
PROBE_RESERVE: Final = 64
#: How long a measured RSS is reused: reading /proc per stream open would cost more than it saves.
RSS_TTL_S: Final = 1.0
#: Log lines per event per window before lines are only counted (and the count logged next time).
LOG_BURST: Final = 10
LOG_WINDOW_S: Final = 10.0

_PAGE: Final = os.sysconf("SC_PAGE_SIZE")
_CGROUP_LIMITS: Final = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


class TokenBuckets:
    """Connect rate per client address: ``rate`` tokens/s up to ``burst``; one per new stream.

    Parameters:
      rate(float): refill per second (0: no limit).
      burst(int): bucket size, i.e. how many connects an idle address may make at once.
      clock(callable): monotonic seconds (tests pass their own).
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, address: str) -> float:
        """Take a token for ``address``: 0.0 when granted, else the seconds until one is due."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, then = self._buckets.pop(address, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._remember(address, tokens - 1.0, now)
            return 0.0
        self._remember(address, tokens, now)
        return (1.0 - tokens) / self.rate

    def _remember(self, address: str, tokens: float, now: float) -> None:
        self._buckets[address] = (tokens, now)
        if len(self._buckets) > MAX_TRACKED_ADDRESSES:
            self._buckets.popitem(last=False)


class RssProbe:
    """This process's resident set size, re-read at most every :data:`RSS_TTL_S` seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._value = 0
        self._read_at = float("-inf")

    def bytes(self) -> int:
        now = self._clock()
        if now - self._read_at >= RSS_TTL_S:
            self._value = current_rss()
            self._read_at = now
        return self._value


def current_rss() -> int:
    """Resident bytes now (``/proc/self/statm``; the peak from getrusage where there is no /proc)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available_memory() -> int:
    """The container's memory limit (cgroup) if it has one, else the machine's memory."""
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < (1 << 60):  # v1 writes a huge number for "none"
            return int(text)
    return int(os.sysconf("SC_PHYS_PAGES")) * _PAGE


def derived_connection_cap(soft_nofile: int) -> int:
    """The most client connections the open-files limit leaves room for (probes included)."""
    return max(1, soft_nofile - FD_RESERVE - PROBE_RESERVE)


class ClientAddress:
    """The client's address: the TCP peer, or what trusted proxies put in ``X-Forwarded-For``.

    Only a peer inside ``trusted`` is believed, and the header is read from the right (the
    entries proxies append) past every trusted hop: the leftmost entry is whatever the client
    wrote, so trusting it would let anyone pick an address per request and dodge the rate limit.
    """

    def __init__(self, trusted: Sequence[str]) -> None:
        self._networks = [ipaddress.ip_network(entry, strict=False) for entry in trusted]

    def of(self, request: web.BaseRequest) -> str:
        peer = request.remote or ""
        if not self._networks or not self._trusted(peer):
            return peer
        hops = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",")]
        for hop in reversed(hops):
            if hop and not self._trusted(hop):
                return hop
        return peer

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)


class QuietLog:
    """At most :data:`LOG_BURST` lines per event per :data:`LOG_WINDOW_S` seconds; the rest are
    counted and the count rides on the next line that is written (``suppressed=N``)."""

    def __init__(self, logger: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._clock = clock
        self._windows: dict[str, tuple[float, int, int]] = {}

    def event(self, event: str, level: int = logging.WARNING, **fields: Any) -> None:
        now = self._clock()
        start, written, suppressed = self._windows.get(event, (now, 0, 0))
        if now - start >= LOG_WINDOW_S:
            start, written = now, 0
        if written >= LOG_BURST:
            self._windows[event] = (start, written, suppressed + 1)
            return
        if suppressed:
            fields["suppressed"] = suppressed
        log_event(self._logger, event, level, **fields)
        self._windows[event] = (start, written + 1, 0)


def refusal(status: int, code: str, reason: str, retry_after: float | None = None) -> web.Response:
    """The JSON answer of every limit; the connection is closed after it (a refused client
    should not keep a descriptor, and a flood should not keep-alive its way past the cap)."""
    headers = {"Retry-After": str(max(1, round(retry_after + 0.499)))} if retry_after else None
    response = web.json_response({"error": code, "reason": reason}, status=status, headers=headers)
    response.force_close()
    return response


def raw_refusal(status: int, phrase: str, code: str, reason: str, retry_after: int | None = None) -> bytes:
    """:func:`refusal` as bytes, for a connection refused before aiohttp parsed a request."""
    body = json.dumps({"error": code, "reason": reason}).encode()
    retry = f"Retry-After: {retry_after}\r\n" if retry_after else ""
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n{retry}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body
