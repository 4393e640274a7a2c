"""The live Redis checked for the workers: what ``fechatter-notify doctor`` reports about Redis and dramatiq's queues.

The workers own this knowledge: their scripts need Redis 6.2, and their broker defines the queues,
the heartbeats and the wake-up channels. Only reads are sent.
"""

from __future__ import annotations

import time
from typing import Final, Literal

from redis.asyncio import Redis

from events import dead_letter_queue, delay_queue, heartbeats_key, queue_key, wake_channel
from runtime import Findings
from settings import Problem, Settings

__all__ = ["MIN_REDIS", "diagnose_queues", "diagnose_redis_server"]

#: Redis 6.2 is the oldest the scripts and the gateway support.
MIN_REDIS: Final = (6, 2)
#: A worker whose heartbeat is older than this is not counted as live, in milliseconds
#: (workers.broker.DEFAULT_HEARTBEAT_TIMEOUT_MS; workers heartbeat every few seconds).
WORKER_HEARTBEAT_TIMEOUT_MS: Final = 15_000


async def diagnose_redis_server(client: Redis, origin: str) -> list[Problem]:
    """The server's version, an error when it is older than :data:`MIN_REDIS`."""
    report = Findings()
    info = await client.info("server")
    version = str(info.get("redis_version", "0"))
    numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    level: Literal["error", "info"] = "error" if numbers < MIN_REDIS else "info"
    report.add(level, "redis_server" if level == "info" else "redis_too_old", "redis.url",
               f"redis-server {version}" + (" (the scripts need >= 6.2)" if level == "error" else ""),
               origin=origin, fix="upgrade Redis to 6.2 or newer" if level == "error" else None)
    return report


async def diagnose_queues(client: Redis, settings: Settings, origin: str) -> list[Problem]:
    """Jobs waiting and dead per queue, live workers, and workers listening for wake-ups."""
    report = Findings()
    ns = settings.redis.namespace
    now_ms = int(time.time() * 1000)
    live = await client.zcount(heartbeats_key(ns), now_ms - WORKER_HEARTBEAT_TIMEOUT_MS, "+inf")
    waiting_total = 0
    for lane, queue in (("realtime", settings.queues.realtime), ("domain", settings.queues.domain)):
        waiting = await client.llen(queue_key(ns, queue)) + await client.llen(queue_key(ns, delay_queue(queue)))
        dead = await client.zcard(queue_key(ns, dead_letter_queue(queue)))
        listening = dict(await client.pubsub_numsub(wake_channel(ns, queue))).get(
            wake_channel(ns, queue).encode(), 0)
        waiting_total += waiting
        report.add("info", "queue", f"queues.{lane}", f"queue {queue!r}: {waiting} job(s) waiting, {dead} in "
                   f"dramatiq's dead-letter queue, {listening} worker process(es) listening for wake-ups",
                   origin=origin)
        if dead:
            report.add("warning", "jobs_dead", f"queues.{lane}", f"{dead} job(s) of {queue!r} failed for good "
                       f"(dramatiq's {queue_key(ns, dead_letter_queue(queue))})", origin=origin,
                       fix="fechatter-notify dlq list --source dramatiq says why; once fixed, "
                       "fechatter-notify dlq replay --source dramatiq")
    report.add("info", "workers", "queues", f"{live} worker process(es) heartbeating", origin=origin)
    if waiting_total and not live:
        report.add("warning", "no_live_workers", "queues",
                   f"{waiting_total} job(s) waiting and no worker heartbeating in the last "
                   f"{WORKER_HEARTBEAT_TIMEOUT_MS // 1000}s", origin=origin,
                   fix="start workers (fechatter-notify worker) against this Redis and namespace")
    return report
