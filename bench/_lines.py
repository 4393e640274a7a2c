"""What the benchmarks' helper processes share: one JSON answer per command line, and SSE frames
cut from a byte stream (bench/gateway.py and bench/pipeline.py each drive client processes)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any


async def ask(proc: asyncio.subprocess.Process, command: str, who: str) -> dict[str, Any]:
    """Send ``command`` (one line) to ``proc`` and read its one-line JSON answer."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(command.encode() + b"\n")
    await proc.stdin.drain()
    line = await proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{who} exited while answering {command[:40]!r}")
    answer: dict[str, Any] = json.loads(line)
    return answer


def complete_frames(buffer: bytes, data: bytes) -> tuple[bytes, bytes]:
    """``(frames, rest)``: the complete SSE frames of ``buffer + data`` (each ends in a blank line)
    and what follows the last one, kept for the next read."""
    joined = buffer + data
    end = joined.rfind(b"\n\n")
    if end < 0:
        return b"", joined
    return joined[: end + 2], joined[end + 2:]


def client_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when installed: client processes stand in for other machines, so they
    should take as little of the shared cores as they can."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
