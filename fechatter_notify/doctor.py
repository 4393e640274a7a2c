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
- Redis: reachable and new enough, jobs waiting and dead, live workers, idle workers listening
  for wake-ups, users connected to gateways, and the bridge's dead letters with the newest reason.

Nothing is created, changed, fetched or acked: only INFO-style requests are sent. Exit code 0
when no error was found (warnings may remain), 2 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any, Final

import nats
import nats.errors
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from redis.exceptions import RedisError

from bridge.errors import JetStreamError, JetStreamRefused
from bridge.jsapi import JetStreamApi
from bridge.provision import consumer_config, diff_consumer, diff_stream, stream_config
from bridge.status import ERR_CONSUMER_NOT_FOUND, ERR_STREAM_NOT_FOUND
from events.inbox import live_channel, wake_channel
from runtime import connect_options
from settings import Loaded, Problem, format_duration, redact_url
from settings.model import DEFAULT_DOMAIN_SUBJECTS, Consumer, Settings, Stream
from settings.subjects import subject_within

__all__ = ["RET_OK", "RET_PROBLEMS", "diagnose", "run"]

RET_OK: Final = 0
RET_PROBLEMS: Final = 2
#: Seconds allowed to connect to each server and for each request.
TIMEOUT: Final = 5.0
#: nats-server 2.10 brought consumers with more than one filter subject.
MULTI_FILTER_VERSION: Final = (2, 10)
#: Redis 6.2 is the oldest the scripts and the gateway support.
MIN_REDIS: Final = (6, 2)
#: A worker whose heartbeat is older than this is not counted as live, in milliseconds
#: (workers.broker.DEFAULT_HEARTBEAT_TIMEOUT_MS; workers heartbeat every few seconds).
WORKER_HEARTBEAT_TIMEOUT_MS: Final = 15_000


class Report:
    """The findings of one run, each a :class:`settings.Problem` with its place."""

    def __init__(self) -> None:
        self.findings: list[Problem] = []

    def add(self, level: str, code: str, path: str, message: str, *, origin: str, fix: str | None = None) -> None:
        self.findings.append(Problem(level, code, path, message, origin=origin, fix=fix))  # type: ignore[arg-type]


async def diagnose(settings: Settings) -> list[Problem]:
    """Every finding about the live NATS and Redis named by ``settings`` (none are changed)."""
    report = Report()
    await check_nats(settings, report)
    await check_redis(settings, report)
    return report.findings


# ---------------------------------------------------------------------------------------- NATS


async def check_nats(settings: Settings, report: Report) -> None:
    """Connection, JetStream, streams, consumers and subject coverage."""
    servers = ", ".join(redact_url(s) for s in settings.nats.servers)
    options = connect_options(settings.nats, name_suffix="-doctor")
    # Two attempts per server (nats-py reads 0 as "no limit"), the error reported once below
    # rather than logged by the client on each attempt.
    failures: list[Exception] = []

    async def remember(exc: Exception) -> None:
        failures.append(exc)

    options.update(allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.2, error_cb=remember,
                   connect_timeout=min(settings.nats.connect_timeout, TIMEOUT))
    try:
        nc = await nats.connect(**options)
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        cause = failures[-1] if failures else exc
        report.add("error", "nats_unreachable", "nats.servers", f"cannot connect: {type(cause).__name__}: {cause}",
                   origin=servers, fix="start nats-server there, or correct nats.servers and the credentials")
        return
    origin = redact_url(nc.connected_url.geturl()) if nc.connected_url else servers
    try:
        await _check_server(nc, settings, report, origin)
        api = JetStreamApi(nc, timeout=TIMEOUT)
        if not await _check_jetstream(api, report, origin):
            return
        for index, stream in enumerate(settings.jetstream.streams):
            await _check_stream(api, settings, index, stream, report, origin)
        for index, consumer in enumerate(settings.jetstream.consumers):
            await _check_consumer(api, settings, index, consumer, report, origin)
        await _check_coverage(api, settings, report, origin)
    except JetStreamError as exc:
        report.add("error", "jetstream_request_failed", "jetstream", f"{type(exc).__name__}: {exc}", origin=origin,
                   fix="check the server's log; run doctor again")
    finally:
        await nc.close()


async def _check_server(nc: NATS, settings: Settings, report: Report, origin: str) -> None:
    version = nc.connected_server_version
    info = getattr(nc, "_server_info", {}) or {}
    rtt = await nc.rtt()
    report.add("info", "nats_server", "nats.servers",
               f"nats-server {_version(version)} ({info.get('server_name', '?')}), round trip {rtt * 1000:.1f} ms",
               origin=origin)
    multi = [i for i, c in enumerate(settings.jetstream.consumers) if len(c.filter_subjects) > 1]
    if multi and (version.major, version.minor) < MULTI_FILTER_VERSION:
        for i in multi:
            report.add("error", "server_too_old", f"jetstream.consumers[{i}].filter_subjects",
                       f"nats-server {_version(version)} cannot keep more than one filter subject (needs >= 2.10)",
                       origin=origin, fix="upgrade nats-server, or use one filter subject (or none)")
    for i, consumer in enumerate(settings.jetstream.consumers):
        # Heartbeats travel the same connection: one taking a good part of the heartbeat
        # interval leaves no room for a busy moment before "missed idle heartbeat".
        if rtt * 4 > consumer.idle_heartbeat:
            report.add("warning", "slow_round_trip", f"jetstream.consumers[{i}].idle_heartbeat",
                       f"round trip {rtt * 1000:.0f} ms is over a quarter of idle_heartbeat "
                       f"{format_duration(consumer.idle_heartbeat)}", origin=origin,
                       fix="raise idle_heartbeat, or connect to a closer server")


def _version(version: Any) -> str:
    return f"{version.major}.{version.minor}.{version.patch}"


async def _check_jetstream(api: JetStreamApi, report: Report, origin: str) -> bool:
    try:
        account = await api.request("INFO")
    except JetStreamError as exc:
        report.add("error", "jetstream_unavailable", "jetstream",
                   f"the JetStream API does not answer ({exc}): every pull and API call gets 'no responders'",
                   origin=origin, fix="run nats-server with JetStream (-js) and enable it for this account")
        return False
    report.add("info", "jetstream", "jetstream",
               f"JetStream on: {account.get('streams', 0)} stream(s), {account.get('consumers', 0)} consumer(s) "
               f"in this account", origin=origin)
    return True


async def _check_stream(api: JetStreamApi, settings: Settings, index: int, stream: Stream, report: Report,
                        origin: str) -> None:
    path, what = f"jetstream.streams[{index}]", f"stream {stream.name}"
    try:
        info = await api.stream_info(stream.name)
    except JetStreamRefused as exc:
        if exc.err_code != ERR_STREAM_NOT_FOUND:
            raise
        _report_missing(report, settings, "stream_missing", path, what, origin)
        return
    _report_differences(report, settings, "stream_differs", path, what,
                        diff_stream(stream_config(stream), info["config"]), origin)
    cluster = info.get("cluster") or {}
    if cluster and not cluster.get("leader"):
        report.add("error", "stream_leaderless", path,
                   f"{what} has no leader: requests get 'no responders' until one is elected",
                   origin=origin, fix="check the cluster's routes and the replicas' servers")
    state = info.get("state") or {}
    report.add("info", "stream", path, f"{what}: {state.get('messages', 0)} message(s), "
               f"sequences {state.get('first_seq', 0)}..{state.get('last_seq', 0)}", origin=origin)


async def _check_consumer(api: JetStreamApi, settings: Settings, index: int, consumer: Consumer, report: Report,
                          origin: str) -> None:
    path, what = f"jetstream.consumers[{index}]", f"consumer {consumer.stream}/{consumer.durable}"
    try:
        info = await api.consumer_info(consumer.stream, consumer.durable)
    except JetStreamRefused as exc:
        if exc.err_code not in (ERR_CONSUMER_NOT_FOUND, ERR_STREAM_NOT_FOUND):
            raise
        _report_missing(report, settings, "consumer_missing", path, what, origin)
        return
    _report_differences(report, settings, "consumer_differs", path, what,
                        diff_consumer(consumer_config(consumer), info["config"]), origin)
    pending, waiting = info.get("num_pending", 0), info.get("num_waiting", 0)
    report.add("info", "consumer", path,
               f"{what}: {pending} pending, {info.get('num_ack_pending', 0)} awaiting ack, "
               f"{info.get('num_redelivered', 0)} redelivered, {waiting} pull request(s) waiting", origin=origin)
    if pending and not waiting and not info.get("num_ack_pending"):
        report.add("warning", "consumer_not_pulled", path,
                   f"{what} has {pending} message(s) waiting and nobody pulling", origin=origin,
                   fix="start a bridge (fechatter-notify bridge) or check its log")


def _report_missing(report: Report, settings: Settings, code: str, path: str, what: str, origin: str) -> None:
    """Missing: the bridge creates it (auto, info) or refuses to start (verify, error)."""
    if settings.jetstream.provision == "auto":
        report.add("info", code, path, f"{what} does not exist: the bridge creates it when it starts", origin=origin)
    else:
        report.add("error", code, path, f"{what} does not exist and provision is verify", origin=origin,
                   fix="create it, or set jetstream.provision: auto")


def _report_differences(report: Report, settings: Settings, code: str, path: str, what: str,
                        differences: list[str], origin: str) -> None:
    """Each differing field: the bridge updates it (auto, warning) or refuses to start (verify, error)."""
    auto = settings.jetstream.provision == "auto"
    for difference in differences:
        if auto:
            report.add("warning", code, path, f"{what}: {difference}; the bridge updates it when it starts",
                       origin=origin)
        else:
            report.add("error", code, path, f"{what}: {difference}", origin=origin,
                       fix="change the server or the settings, or set jetstream.provision: auto")


async def _check_coverage(api: JetStreamApi, settings: Settings, report: Report, origin: str) -> None:
    ours = {s.name for s in settings.jetstream.streams}
    for index, stream in enumerate(settings.jetstream.streams):
        for subject in stream.subjects:
            others = sorted(set(await _streams_for(api, subject)) - ours)
            if others:
                report.add("error", "subjects_taken", f"jetstream.streams[{index}].subjects",
                           f"stream(s) {', '.join(others)} already store {subject}: nats-server refuses a "
                           f"second stream with overlapping subjects, so {stream.name} cannot hold them",
                           origin=origin, fix=f"remove {subject} from {', '.join(others)}, or name that "
                           "stream in jetstream.streams")
    for subject in settings.realtime.subjects:
        capturing = await _streams_for(api, subject)
        if capturing:
            report.add("warning", "realtime_stored", "realtime.subjects",
                       f"stream(s) {', '.join(sorted(capturing))} store realtime subject {subject}: every typing "
                       f"and presence event is written to disk, and a consumer of it sees them twice",
                       origin=origin, fix="remove the realtime subjects from those streams")
    for subject in DEFAULT_DOMAIN_SUBJECTS:
        # Stored by one of our streams but filtered out by its durables: config check's
        # subject_not_consumed already says so.
        if any(subject_within(subject, s) for stream in settings.jetstream.streams for s in stream.subjects):
            continue
        elsewhere = sorted(set(await _streams_for(api, subject)) - ours)
        stored = f" (stream(s) {', '.join(elsewhere)} store it, but the bridge does not read them)" if elsewhere else ""
        report.add("warning", "domain_subject_unread", "jetstream.streams",
                   f"Fechatter publishes on {subject}, and none of the bridge's streams stores it: those "
                   f"events reach nobody{stored}", origin=origin, fix=f"add {subject} to a stream's subjects")


async def _streams_for(api: JetStreamApi, subject: str) -> list[str]:
    """Names of the streams on the server whose subjects overlap ``subject``."""
    answer = await api.request("STREAM.NAMES", {"subject": subject})
    return list(answer.get("streams") or [])


# --------------------------------------------------------------------------------------- Redis


async def check_redis(settings: Settings, report: Report) -> None:
    """Reachability, version, queues, workers and dead letters."""
    url = settings.redis.url.get_secret_value()
    origin = redact_url(url)
    client = aioredis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
    try:
        await _check_redis_server(client, report, origin)
        await _check_queues(client, settings, report, origin)
        await _check_gateways(client, settings, report, origin)
        await _check_dead_letters(client, settings, report, origin)
    except (RedisError, OSError) as exc:
        report.add("error", "redis_unreachable", "redis.url", f"{type(exc).__name__}: {exc}", origin=origin,
                   fix="start redis-server there, or correct redis.url")
    finally:
        await client.aclose()


async def _check_redis_server(client: aioredis.Redis, report: Report, origin: str) -> None:
    info = await client.info("server")
    version = str(info.get("redis_version", "0"))
    numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    level = "error" if numbers < MIN_REDIS else "info"
    report.add(level, "redis_server" if level == "info" else "redis_too_old", "redis.url",
               f"redis-server {version}" + (" (the scripts need >= 6.2)" if level == "error" else ""),
               origin=origin, fix="upgrade Redis to 6.2 or newer" if level == "error" else None)


async def _check_queues(client: aioredis.Redis, settings: Settings, report: Report, origin: str) -> None:
    ns = settings.redis.namespace
    now_ms = int(time.time() * 1000)
    live = await client.zcount(f"{ns}:__heartbeats__", now_ms - WORKER_HEARTBEAT_TIMEOUT_MS, "+inf")
    waiting_total = 0
    for lane, queue in (("realtime", settings.queues.realtime), ("domain", settings.queues.domain)):
        waiting = await client.llen(f"{ns}:{queue}") + await client.llen(f"{ns}:{queue}.DQ")
        dead = await client.zcard(f"{ns}:{queue}.XQ")
        listening = dict(await client.pubsub_numsub(wake_channel(ns, queue))).get(
            wake_channel(ns, queue).encode(), 0)
        waiting_total += waiting
        report.add("info", "queue", f"queues.{lane}", f"queue {queue!r}: {waiting} job(s) waiting, {dead} in "
                   f"dramatiq's dead-letter queue, {listening} worker process(es) listening for wake-ups",
                   origin=origin)
        if dead:
            report.add("warning", "jobs_dead", f"queues.{lane}", f"{dead} job(s) of {queue!r} failed for good "
                       f"(dramatiq's {ns}:{queue}.XQ)", origin=origin,
                       fix="see the workers' Sentry issues or logs for why; requeue once fixed")
    report.add("info", "workers", "queues", f"{live} worker process(es) heartbeating", origin=origin)
    if waiting_total and not live:
        report.add("warning", "no_live_workers", "queues",
                   f"{waiting_total} job(s) waiting and no worker heartbeating in the last "
                   f"{WORKER_HEARTBEAT_TIMEOUT_MS // 1000}s", origin=origin,
                   fix="start workers (fechatter-notify worker) against this Redis and namespace")


async def _check_gateways(client: aioredis.Redis, settings: Settings, report: Report, origin: str) -> None:
    # Each gateway subscribes the live channel of every user it holds a stream of.
    pattern = live_channel(settings.redis.namespace, 0)[:-1] + "*"
    users = len(await client.pubsub_channels(pattern))
    report.add("info", "gateways", "gateway", f"{users} user(s) with an open stream on a gateway", origin=origin)


async def _check_dead_letters(client: aioredis.Redis, settings: Settings, report: Report, origin: str) -> None:
    key = f"{settings.redis.namespace}:{settings.dead_letters.stream}"
    count = await client.xlen(key)
    if not count:
        return
    newest = await client.xrevrange(key, count=1)
    fields: dict[Any, Any] = (newest[0][1] if newest else None) or {}
    reason = _text(fields.get(b"reason", b"?"))
    subject = _text(fields.get(b"subject", b"?"))
    report.add("warning", "dead_letters", "dead_letters.stream",
               f"{count} event(s) the bridge could not turn into jobs; newest: {subject}: {reason}",
               origin=origin, fix=f"read them with XRANGE {key} - +")


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


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
