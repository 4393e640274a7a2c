"""``fechatter-notify doctor``: the live servers checked against the settings, in one command.

``config check`` proves a configuration consistent on paper; the two production errors this
project exists to end also come from what the servers actually hold. ``doctor`` connects with
the same options as the processes and reports, in ``config check``'s one-line format:

- NATS: reachable, JetStream on for the account ("no responders" otherwise), the server new
  enough for multiple filter subjects, round-trip time against each pull heartbeat;
- JetStream: each stream and durable as the server has it, field by field against the
  settings (what the bridge would create or update, or refuse to start on in ``verify`` mode);
  streams that are not ours but capture our subjects (the server then refuses ours); streams
  that store realtime subjects (every typing event written to disk); domain subjects Fechatter
  publishes that none of the bridge's streams stores (those events reach nobody);
  durables with messages waiting and nobody pulling;
- a NATS cluster: streams and durables without a leader (or not answering: while leaders are
  missing, requests time out, so all are sent at once), and ones with a single replica;
- Redis: reachable and new enough; the primary, its replicas and their lag, the sentinels that
  agree on the primary, persistence (none: jobs die with a restart), an eviction policy that could
  drop jobs, fewer replicas than ``redis.min_replicas_acked``; jobs waiting and dead, live workers,
  idle workers listening for wake-ups, users connected to gateways, and the bridge's dead letters
  with the newest reason.

Nothing is created, changed, fetched or acked: only INFO-style requests are sent. Exit code 0
when no error was found (warnings may remain), 2 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any, Final

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from bridge import diagnose_dead_letters, diagnose_nats
from gateway import diagnose_streams
from runtime import RET_CONFIG, RET_OK, async_client, describe_redis
from settings import Loaded, Problem, Settings
from workers import diagnose_queues, diagnose_redis_server, diagnose_redis_topology

__all__ = ["RET_OK", "RET_PROBLEMS", "diagnose", "run"]

#: Errors found (the same code as a configuration with errors).
RET_PROBLEMS: Final = RET_CONFIG
#: Seconds allowed to connect to Redis and for each request.
TIMEOUT_S: Final = 5.0


async def diagnose(settings: Settings) -> list[Problem]:
    """Every finding about the live NATS and Redis named by ``settings`` (none are changed).

    Each package checks what it owns: the bridge JetStream and its dead letters, the workers Redis
    and dramatiq's queues, the gateway its open streams. This module only connects and formats.
    """
    return [*await diagnose_nats(settings), *await _diagnose_redis(settings)]


async def _diagnose_redis(settings: Settings) -> list[Problem]:
    # The same client the processes build: one server by URL, or the primary the sentinels name.
    origin = describe_redis(settings.redis)
    client = async_client(settings.redis, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
                          retry=Retry(NoBackoff(), 0))
    findings: list[Problem] = []
    try:
        findings += await diagnose_redis_server(client, origin)
        findings += await diagnose_redis_topology(client, settings, origin)
        findings += await diagnose_queues(client, settings, origin)
        findings += await diagnose_streams(client, settings, origin)
        findings += await diagnose_dead_letters(client, settings, origin)
    except (RedisError, OSError) as exc:
        findings.append(Problem("error", "redis_unreachable", "redis.url", f"{type(exc).__name__}: {exc}",
                                origin=origin, fix="start redis-server there (or the sentinels), or correct redis.url "
                                "(redis.sentinels)"))
    finally:
        await client.aclose()
    return findings


# ------------------------------------------------------------------------------------- command


def run(loaded: Loaded, args: argparse.Namespace) -> int:
    """The ``doctor`` subcommand: configuration findings, then the live ones; exit 2 on errors."""
    findings = [*loaded.problems, *asyncio.run(diagnose(loaded.settings))]
    if getattr(args, "quiet", False):
        findings = [f for f in findings if f.level != "info"]
    errors = sum(f.level == "error" for f in findings)
    if getattr(args, "format", "text") == "json":
        print(json.dumps([_as_dict(f) for f in findings], indent=2))
    else:
        for finding in findings:
            print(finding.format())
        print(f"\n{errors} error(s), {sum(f.level == 'warning' for f in findings)} warning(s)")
    return RET_PROBLEMS if errors else RET_OK


def _as_dict(finding: Problem) -> dict[str, Any]:
    """A finding for scripts (``--format json``); values are left out, as in the log."""
    return {"level": finding.level, "code": finding.code, "path": finding.path, "message": finding.message,
            "origin": finding.origin, "fix": finding.fix}
