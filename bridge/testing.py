"""Helpers for tests and the benchmark: test settings, an in-process bridge, reading queued jobs.

Nothing here is used by the running bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import redis.asyncio as aioredis
import yaml

from bridge.app import Bridge
from events import messages_key, queue_key
from settings import Settings, load_settings

__all__ = ["bridge_settings", "deep_merge", "queued_messages", "running_bridge", "settings_yaml"]

#: Seconds an in-process bridge may take to start, and to stop, before the test fails with
#: every task's stack (far below pytest's own timeout, which would say nothing about where).
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0

#: Short durations so every fault is seen within seconds (the seed's rule, heartbeat > ping:
#: docs/nats-pitfalls.md#the-seeds-heartbeat-rule).
TEST_CONSUMER: dict[str, Any] = {
    "durable": "notification_processor",
    "stream": "FECHATTER_EVENTS",
    "ack_wait": "3s",
    "idle_heartbeat": "1s",
    "expires": "2s",
    "max_deliver": 3,
    "batch": 100,
}


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated recursively with ``over`` (lists replaced)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def settings_yaml(nats_url: str, redis_url: str, overrides: Mapping[str, Any] | None = None) -> str:
    """A notify.yml for tests: the given servers, short timings, free HTTP ports."""
    base: dict[str, Any] = {
        "nats": {"servers": [nats_url], "ping_interval": "500ms", "max_outstanding_pings": 2,
                 "connect_timeout": "2s", "reconnect_backoff_base": "100ms", "reconnect_backoff_cap": "500ms"},
        "jetstream": {"provision": "auto", "streams": [{"name": "FECHATTER_EVENTS"}], "consumers": [TEST_CONSUMER]},
        "realtime": {"queue_group": "fechatter-notify-bridge"},
        "redis": {"url": redis_url, "namespace": "test-notify", "socket_timeout": "500ms",
                  "socket_connect_timeout": "500ms"},
        "health": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
    }
    return yaml.safe_dump(deep_merge(base, overrides or {}), sort_keys=False)


def bridge_settings(nats_url: str, redis_url: str, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Validated :class:`Settings` from :func:`settings_yaml` (every config check runs)."""
    return load_settings(text=settings_yaml(nats_url, redis_url, overrides), env={}).settings


@contextlib.asynccontextmanager
async def running_bridge(settings: Settings, **kwargs: Any) -> AsyncIterator[Bridge]:
    """Run a :class:`Bridge` as a task until the block ends (then a graceful stop).

    Raises whatever the bridge's start raised (e.g. :class:`bridge.errors.ProvisionRefused`).
    """
    bridge = Bridge(settings, **kwargs)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(bridge.run(stop))
    started = asyncio.get_running_loop().create_task(bridge.started.wait())
    await asyncio.wait({task, started}, timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        started.cancel()
        task.result()
    elif not started.done():
        stacks = task_stacks()
        task.cancel()
        raise AssertionError(f"the bridge did not start within {START_TIMEOUT_S}s; its tasks:\n{stacks}")
    try:
        yield bridge
    finally:
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
        if not done:
            stacks = task_stacks()
            task.cancel()
            raise AssertionError(f"the bridge did not stop within {STOP_TIMEOUT_S}s; its tasks:\n{stacks}")
        task.result()


def task_stacks() -> str:
    """Where every task of the running loop is waiting (for a hang's error message)."""
    out = io.StringIO()
    for pending in asyncio.all_tasks():
        pending.print_stack(file=out)
    return out.getvalue()


async def queued_messages(client: aioredis.Redis, namespace: str, queue: str) -> list[dict[str, Any]]:
    """The dramatiq messages waiting on ``queue``, in queue order, decoded."""
    ids = await client.lrange(queue_key(namespace, queue), 0, -1)
    if not ids:
        return []
    data = await client.hmget(messages_key(namespace, queue), ids)
    return [json.loads(d) for d in data if d is not None]
