"""The live Redis checked for the workers: what ``fechatter-notify doctor`` reports about Redis and dramatiq's queues.

The workers own this knowledge: their scripts need Redis 6.2, and their broker defines the queues,
the heartbeats and the wake-up channels. Only reads are sent.
"""

from __future__ import annotations

import time
from typing import Final, Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from events import dead_letter_queue, delay_queue, heartbeats_key, queue_key, wake_channel
from runtime import Findings, async_sentinels
from settings import Problem, Settings, sentinel_target

__all__ = ["MIN_REDIS", "diagnose_queues", "diagnose_redis_server", "diagnose_redis_topology"]

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


async def diagnose_redis_topology(client: Redis, settings: Settings, origin: str) -> list[Problem]:
    """What a Redis failure or restart would cost: the primary and its replicas (with their lag), the
    sentinels that agree on the primary, persistence, the eviction policy, and whether enough
    replicas are connected for ``redis.min_replicas_acked``."""
    report = Findings()
    replication = await client.info("replication")
    if replication.get("role") != "master":
        report.add("error", "redis_not_primary", "redis.url", f"the server is a {replication.get('role')}: "
                   "every write would fail with READONLY", origin=origin,
                   fix="point redis.url at the primary, or use redis.sentinels to find it")
    replicas = _replicas(replication)
    online = [r for r in replicas if r.get("state") == "online"]
    primary_offset = int(replication.get("master_repl_offset", 0))
    listed = "; ".join(f"{r.get('ip')}:{r.get('port')} {r.get('state')}, lag {r.get('lag')}s, "
                       f"{primary_offset - int(str(r.get('offset', 0)))} byte(s) behind" for r in replicas)
    report.add("info", "redis_replicas", "redis",
               f"{len(online)} replica(s) online" + (f": {listed}" if listed else ""), origin=origin)
    needed = settings.redis.min_replicas_acked
    if needed > len(online):
        report.add("error", "too_few_replicas", "redis.min_replicas_acked",
                   f"min_replicas_acked is {needed} but {len(online)} replica(s) are online: every enqueue and "
                   "every job would fail until more replicas connect", origin=origin,
                   fix=f"connect {needed - len(online)} more replica(s), or lower min_replicas_acked")
    report += await _diagnose_persistence(client, origin)
    report += await _diagnose_sentinels(settings, origin)
    return report


def _replicas(replication: dict[str, object]) -> list[dict[str, object]]:
    """INFO replication's ``slaveN`` entries (redis-py parses each into a dict)."""
    return [value for key, value in sorted(replication.items())
            if key.startswith("slave") and key[5:].isdigit() and isinstance(value, dict)]


async def _diagnose_persistence(client: Redis, origin: str) -> list[Problem]:
    report = Findings()
    memory = await client.info("memory")
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        report.add("error", "redis_evicts", "redis", f"maxmemory-policy is {policy}: under memory pressure Redis "
                   "deletes keys, which here are queued jobs, dedupe markers and inboxes", origin=origin,
                   fix="CONFIG SET maxmemory-policy noeviction (and in redis.conf); give Redis the memory it needs")
    aof = bool(int((await client.info("persistence")).get("aof_enabled", 0)))
    try:
        save = str((await client.config_get("save")).get("save", ""))
    except ResponseError:  # CONFIG renamed or denied (managed Redis): only AOF is known
        save = "unknown"
    if not aof and not save.strip():
        report.add("warning", "redis_not_persistent", "redis", "neither AOF nor RDB snapshots are on: queued jobs, "
                   "dedupe markers and inboxes die with a Redis restart", origin=origin,
                   fix="appendonly yes (or a save schedule) in redis.conf")
    else:
        report.add("info", "redis_persistence", "redis", f"AOF {'on' if aof else 'off'}, RDB save {save!r}",
                   origin=origin)
    return report


async def _diagnose_sentinels(settings: Settings, origin: str) -> list[Problem]:
    """Ask every sentinel which server it calls the primary; report who agrees and who cannot be asked."""
    target = sentinel_target(settings.redis)
    if target is None:
        return []
    report = Findings()
    answers: dict[str, str] = {}
    for address, sentinel in async_sentinels(settings.redis):
        try:
            reply = await sentinel.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", target.master_name)
            answers[address] = ":".join(_text(part) for part in reply) if reply else "none"
        except (RedisError, OSError) as exc:
            report.add("warning", "sentinel_unreachable", "redis.sentinels", f"sentinel {address}: "
                       f"{type(exc).__name__}: {exc}", origin=origin, fix="start it, or remove it from the list")
        finally:
            await sentinel.aclose()
    if not answers:
        return report
    votes: dict[str, list[str]] = {}
    for address, primary in answers.items():
        votes.setdefault(primary, []).append(address)
    primary, agreeing = max(votes.items(), key=lambda item: len(item[1]))
    report.add("info", "sentinels_agree", "redis.sentinels", f"{len(agreeing)} of {len(target.sentinels)} "
               f"sentinel(s) name {primary} the primary of {target.master_name!r}", origin=origin)
    for other, addresses in votes.items():
        if other != primary:
            report.add("warning", "sentinels_disagree", "redis.sentinels", f"{', '.join(addresses)} name {other} "
                       f"instead (a failover in progress, or sentinels that do not see each other)",
                       origin=origin, fix="check the sentinels' logs and that they reach each other")
    if len(agreeing) <= len(target.sentinels) // 2:
        report.add("error", "sentinels_no_majority", "redis.sentinels", f"only {len(agreeing)} of "
                   f"{len(target.sentinels)} sentinels agree: a failover could not be authorised", origin=origin,
                   fix="bring the sentinels back, or fix the list in redis.sentinels")
    return report


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
