"""The live JetStream checked against the settings: what ``fechatter-notify doctor`` reports about NATS.

The bridge owns this knowledge (it provisions the streams and durables, and refuses to start on a
difference in ``verify`` mode), so the comparison lives beside :mod:`bridge.provision`. Only INFO-style
requests are sent: nothing is created, changed, fetched or acked.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import nats
import nats.errors
from nats.aio.client import Client as NATS
from redis.asyncio import Redis

from bridge.advisory_assets import advisory_consumer, advisory_stream
from bridge.errors import JetStreamError, JetStreamRefused, JetStreamTimeout, JetStreamUnavailable
from bridge.jsapi import JetStreamApi
from bridge.provision import consumer_config, diff_consumer, diff_stream, stream_config
from bridge.status import ERR_CONSUMER_NOT_FOUND, ERR_STREAM_NOT_FOUND
from runtime import Findings, connect_options
from settings import (
    DEFAULT_DOMAIN_SUBJECTS,
    Consumer,
    Problem,
    Settings,
    Stream,
    format_duration,
    redact_url,
    subject_within,
)

__all__ = ["diagnose_dead_letters", "diagnose_nats"]

#: Where findings about the give-ups' stream and durable point (bridge/advisory_assets.py).
ADVISORIES_PATH: Final = "jetstream.advisories"

#: Seconds allowed to connect and for each request.
TIMEOUT_S: Final = 5.0
#: nats-server 2.10 brought consumers with more than one filter subject.
MULTI_FILTER_VERSION: Final = (2, 10)
#: The status a clustered JetStream answers while the asset (or the meta layer) has no leader:
#: 503 "JetStream system temporarily unavailable" (err_code 10008), or "cluster not available".
CODE_UNAVAILABLE: Final = 503


async def diagnose_nats(settings: Settings) -> list[Problem]:
    """Connection, JetStream, streams, consumers and subject coverage, as findings (nothing changes)."""
    report = Findings()
    await _check_nats(settings, report)
    return report


async def _check_nats(settings: Settings, report: Findings) -> None:
    """Connection, JetStream, streams, consumers and subject coverage."""
    servers = ", ".join(redact_url(s) for s in settings.nats.servers)
    options = connect_options(settings.nats, name_suffix="-doctor")
    # Two attempts per server (nats-py reads 0 as "no limit"), the error reported once below
    # rather than logged by the client on each attempt.
    failures: list[Exception] = []

    async def remember(exc: Exception) -> None:
        failures.append(exc)

    options.update(allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.2, error_cb=remember,
                   connect_timeout=min(settings.nats.connect_timeout, TIMEOUT_S))
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
        api = JetStreamApi(nc, timeout=TIMEOUT_S)
        cluster = _cluster_name(nc)
        # INFO and every stream and durable at once: on a cluster whose leaders are gone each request
        # waits its whole timeout, and doctor should take one timeout then, not one per request.
        assets = Findings()
        jetstream_up, failure = await asyncio.gather(_check_jetstream(api, report, origin, cluster),
                                                     _check_assets(api, settings, assets, origin, cluster))
        # A lone server without JetStream: each asset would only repeat that. A cluster without a meta
        # leader may still have streams with leaders: each one is named.
        if not jetstream_up and cluster is None:
            return
        report.extend(assets)
        if failure is not None:
            raise failure
        if jetstream_up:
            await _check_coverage(api, settings, report, origin)
    except JetStreamError as exc:
        report.add("error", "jetstream_request_failed", "jetstream", f"{type(exc).__name__}: {exc}", origin=origin,
                   fix="check the server's log; run doctor again")
    finally:
        await nc.close()


async def _check_assets(api: JetStreamApi, settings: Settings, report: Findings, origin: str,
                        cluster: str | None) -> BaseException | None:
    """Every stream and durable at once, reported in settings order up to the first that failed (returned)."""
    js = settings.jetstream
    streams = [(f"jetstream.streams[{i}]", stream) for i, stream in enumerate(js.streams)]
    consumers = [(f"jetstream.consumers[{i}]", consumer) for i, consumer in enumerate(js.consumers)]
    # The give-ups' own stream and durable (bridge/advisory_assets.py), provisioned like the others.
    advisories, reader = advisory_stream(js), advisory_consumer(js)
    streams += [(ADVISORIES_PATH, advisories)] if advisories else []
    consumers += [(ADVISORIES_PATH, reader)] if reader else []
    parts = [Findings() for _ in [*streams, *consumers]]
    checks = [_check_stream(api, settings, path, stream, parts[i], origin, cluster)
              for i, (path, stream) in enumerate(streams)]
    checks += [_check_consumer(api, settings, path, consumer, parts[len(streams) + i], origin, cluster)
               for i, (path, consumer) in enumerate(consumers)]
    outcomes = await asyncio.gather(*checks, return_exceptions=True)
    for part, outcome in zip(parts, outcomes, strict=True):
        report.extend(part)
        if isinstance(outcome, BaseException):
            return outcome
    return None


async def _check_server(nc: NATS, settings: Settings, report: Findings, origin: str) -> None:
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


def _cluster_name(nc: NATS) -> str | None:
    """The cluster the connected server belongs to (its INFO names it), None for a lone server."""
    info = getattr(nc, "_server_info", {}) or {}
    name = info.get("cluster")
    return str(name) if name else None


def _unavailable(exc: JetStreamError) -> bool:
    """No answer, or 503: what a clustered JetStream says while the asset has no leader."""
    return isinstance(exc, JetStreamUnavailable | JetStreamTimeout) or exc.code == CODE_UNAVAILABLE


async def _check_jetstream(api: JetStreamApi, report: Findings, origin: str, cluster: str | None) -> bool:
    try:
        account = await api.request("INFO")
    except JetStreamError as exc:
        if cluster is not None and _unavailable(exc):
            report.add("error", "jetstream_unavailable", "jetstream",
                       f"cluster {cluster}: the JetStream API does not answer ({exc}): the cluster has no meta "
                       "leader (fewer than a majority of its servers up, or their routes cut); streams and "
                       "durables cannot be created or changed", origin=origin,
                       fix="start the cluster's missing servers, or check the routes between them")
            return False
        report.add("error", "jetstream_unavailable", "jetstream",
                   f"the JetStream API does not answer ({exc}): every pull and API call gets 'no responders'",
                   origin=origin, fix="run nats-server with JetStream (-js) and enable it for this account")
        return False
    report.add("info", "jetstream", "jetstream",
               f"JetStream on: {account.get('streams', 0)} stream(s), {account.get('consumers', 0)} consumer(s) "
               f"in this account", origin=origin)
    return True


async def _check_stream(api: JetStreamApi, settings: Settings, path: str, stream: Stream, report: Findings,
                        origin: str, cluster: str | None) -> None:
    what = f"stream {stream.name}"
    try:
        info = await api.stream_info(stream.name)
    except JetStreamError as exc:
        if isinstance(exc, JetStreamRefused) and exc.err_code == ERR_STREAM_NOT_FOUND:
            _report_missing(report, settings, "stream_missing", path, what, origin)
            return
        if cluster is None or not _unavailable(exc):
            raise
        _report_leaderless(report, "stream_leaderless", path, what, f"no answer ({exc})", origin)
        return
    _report_differences(report, settings, "stream_differs", path, what,
                        diff_stream(stream_config(stream), info["config"]), origin)
    placement = info.get("cluster") or {}
    if placement and not placement.get("leader"):
        _report_leaderless(report, "stream_leaderless", path, what, "no leader", origin)
    # A lone server's STREAM.INFO also has a "cluster" (its own name as leader), but no cluster name.
    cluster = cluster or placement.get("name")
    if cluster and int(info["config"].get("num_replicas") or 1) == 1:
        own = path != ADVISORIES_PATH  # the give-ups' stream has no replicas setting of its own
        report.add("warning", "stream_r1_on_cluster", f"{path}.replicas" if own else path,
                   f"{what} has 1 replica on cluster {cluster}: while its one "
                   "server is down the stream has no leader, Fechatter's publishes fail and every pull gets "
                   "'no responders'", origin=origin,
                   fix=f"set {path}.replicas: 3 (provision auto updates the stream; the durables follow it)" if own
                   else "set jetstream.streams[].replicas: 3: the give-ups' stream follows the most replicated "
                   "event stream")
    state = info.get("state") or {}
    report.add("info", "stream", path, f"{what}: {state.get('messages', 0)} message(s), "
               f"sequences {state.get('first_seq', 0)}..{state.get('last_seq', 0)}", origin=origin)


async def _check_consumer(api: JetStreamApi, settings: Settings, path: str, consumer: Consumer, report: Findings,
                          origin: str, cluster: str | None) -> None:
    what = f"consumer {consumer.stream}/{consumer.durable}"
    try:
        info = await api.consumer_info(consumer.stream, consumer.durable)
    except JetStreamError as exc:
        if isinstance(exc, JetStreamRefused) and exc.err_code in (ERR_CONSUMER_NOT_FOUND, ERR_STREAM_NOT_FOUND):
            _report_missing(report, settings, "consumer_missing", path, what, origin)
            return
        if cluster is None or not _unavailable(exc):
            raise
        _report_leaderless(report, "consumer_leaderless", path, what, f"no answer ({exc})", origin)
        return
    _report_differences(report, settings, "consumer_differs", path, what,
                        diff_consumer(consumer_config(consumer), info["config"]), origin)
    _check_consumer_placement(info, report, path, what, origin, cluster, consumer.stream)
    pending, waiting = info.get("num_pending", 0), info.get("num_waiting", 0)
    report.add("info", "consumer", path,
               f"{what}: {pending} pending, {info.get('num_ack_pending', 0)} awaiting ack, "
               f"{info.get('num_redelivered', 0)} redelivered, {waiting} pull request(s) waiting", origin=origin)
    if pending and not waiting and not info.get("num_ack_pending"):
        report.add("warning", "consumer_not_pulled", path,
                   f"{what} has {pending} message(s) waiting and nobody pulling", origin=origin,
                   fix="start a bridge (fechatter-notify bridge) or check its log")


def _check_consumer_placement(info: dict[str, Any], report: Findings, path: str, what: str, origin: str,
                              cluster: str | None, stream: str) -> None:
    """A durable without a leader, or with one replica on a cluster (its peers: 1 + the replicas listed)."""
    placement = info.get("cluster") or {}
    if placement and not placement.get("leader"):
        _report_leaderless(report, "consumer_leaderless", path, what, "no leader", origin)
    cluster = cluster or placement.get("name")
    if cluster and 1 + len(placement.get("replicas") or []) == 1:
        report.add("warning", "consumer_r1_on_cluster", path,
                   f"{what} has 1 replica on cluster {cluster}: while its one "
                   "server is down the bridge's pulls get 'no responders'", origin=origin,
                   fix=f"set stream {stream}'s replicas to 3: a durable the bridge creates follows its "
                   "stream's replicas")


def _report_leaderless(report: Findings, code: str, path: str, what: str, detail: str, origin: str) -> None:
    """A stream or durable whose raft group elects no leader: pulls and publishes get 'no responders'."""
    report.add("error", code, path,
               f"{what} is leaderless or unavailable ({detail}): pulls and publishes get 'no responders' "
               "until a majority of its replicas' servers is up again", origin=origin,
               fix="start the replicas' missing servers, or check the cluster's routes; run doctor again")


def _report_missing(report: Findings, settings: Settings, code: str, path: str, what: str, origin: str) -> None:
    """Missing: the bridge creates it (auto, info) or refuses to start (verify, error)."""
    if settings.jetstream.provision == "auto":
        report.add("info", code, path, f"{what} does not exist: the bridge creates it when it starts", origin=origin)
    else:
        report.add("error", code, path, f"{what} does not exist and provision is verify", origin=origin,
                   fix="create it, or set jetstream.provision: auto")


def _report_differences(report: Findings, settings: Settings, code: str, path: str, what: str,
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


async def _check_coverage(api: JetStreamApi, settings: Settings, report: Findings, origin: str) -> None:
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


async def diagnose_dead_letters(client: Redis, settings: Settings, origin: str) -> list[Problem]:
    """How many events the bridge dead-lettered, and the newest one's reason (none: no finding)."""
    report = Findings()
    key = f"{settings.redis.namespace}:{settings.dead_letters.stream}"
    count = await client.xlen(key)
    if not count:
        return report
    newest = await client.xrevrange(key, count=1)
    fields: dict[Any, Any] = (newest[0][1] if newest else None) or {}
    reason = _text(fields.get(b"reason", b"?"))
    subject = _text(fields.get(b"subject", b"?"))
    report.add("warning", "dead_letters", "dead_letters.stream",
               f"{count} event(s) the bridge could not turn into jobs; newest: {subject}: {reason}",
               origin=origin, fix="list them with fechatter-notify dlq list --source bridge; once the cause is "
               "fixed, fechatter-notify dlq replay")
    return report


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
