"""``fechatter-notify top``: a live view of every running process, what ``nats top`` is for NATS.

The processes register themselves in Redis (``runtime.Registration``), so ``top`` needs only the
settings' Redis and namespace to find every bridge, worker supervisor and gateway. Each second it
takes a snapshot (``runtime.collect_snapshot``: the processes' own ``/metrics``, rates since the
previous snapshot, consumer lag per durable, the dramatiq queue depths) and redraws it with rich.
``--once --format json`` prints one snapshot (rates over ``--interval``) for scripts: the same
object the gateway's ``/ops`` page charts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Mapping
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from runtime import RET_CONFIG, RET_OK, Snapshot, async_client, collect_snapshot, describe_redis
from settings import Loaded

__all__ = ["RET_OK", "RET_UNREACHABLE", "add_arguments", "render", "run"]

#: Redis did not answer (the code of a command that could not do what it was asked).
RET_UNREACHABLE: Final = RET_CONFIG
#: Seconds allowed to connect to Redis and for each of its answers.
REDIS_TIMEOUT_S: Final = 3.0

#: Per role, the rates shown (figure, column heading), in order.
ROLE_RATES: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "bridge": (("fetched", "fetched"), ("enqueued", "enqueued"), ("acked", "acked"), ("naked", "naked"),
               ("dead_lettered", "dead"), ("redelivered", "redeliv")),
    "worker": (("jobs_done", "done"), ("jobs_failed", "failed"), ("jobs_retried", "retried"),
               ("notifications_delivered", "delivered"), ("realtime_dropped", "rt dropped")),
    "gateway": (("frames_sent", "frames"), ("connects", "connects"), ("resyncs", "resyncs"),
                ("frames_dropped", "dropped")),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``top``'s options."""
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit (rates over --interval)")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="json (with --once): the snapshot as one JSON object")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S",
                        help="seconds between snapshots (default 1)")
    parser.add_argument("--namespace", default=None, help="redis.namespace to look in (default: the settings')")


def run(loaded: Loaded, args: argparse.Namespace) -> int:
    """The command; returns its exit code."""
    settings = loaded.settings
    namespace = args.namespace or settings.redis.namespace
    interval = max(float(args.interval), 0.1)
    where = describe_redis(settings.redis)
    try:
        if args.once:
            snapshot = asyncio.run(_once(_client(loaded), namespace, interval))
            if args.format == "json":
                print(json.dumps(snapshot.as_dict(), sort_keys=True))
            else:
                Console().print(render(snapshot))
            return RET_OK
        asyncio.run(_live(_client(loaded), namespace, interval))
    except (RedisError, OSError) as exc:
        print(f"fechatter-notify top: Redis at {where} did not answer: {type(exc).__name__}: {exc}", file=sys.stderr)
        return RET_UNREACHABLE
    except KeyboardInterrupt:
        pass
    return RET_OK


def _client(loaded: Loaded) -> aioredis.Redis:
    # The processes' own factory: a plain URL or Sentinel alike, with top's shorter timeouts.
    return async_client(loaded.settings.redis, socket_timeout=REDIS_TIMEOUT_S,
                        socket_connect_timeout=REDIS_TIMEOUT_S)


async def _once(client: aioredis.Redis, namespace: str, interval: float) -> Snapshot:
    """Two snapshots ``interval`` apart: the second, with rates."""
    try:
        first = await collect_snapshot(client, namespace)
        await asyncio.sleep(interval)
        return await collect_snapshot(client, namespace, previous=first)
    finally:
        await client.aclose()


async def _live(client: aioredis.Redis, namespace: str, interval: float) -> None:
    try:
        snapshot = await collect_snapshot(client, namespace)
        with Live(render(snapshot), auto_refresh=False, screen=False) as live:
            spent = 0.0
            while True:
                await asyncio.sleep(max(interval - spent, 0.0))  # one snapshot per interval, however long it took
                began = time.monotonic()
                snapshot = await collect_snapshot(client, namespace, previous=snapshot)
                live.update(render(snapshot), refresh=True)
                spent = time.monotonic() - began
    finally:
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()


# ------------------------------------------------------------------------------------- rendering


def render(snapshot: Snapshot) -> Group:
    """The whole view: a summary line, the processes, lag per durable, the queues."""
    data = snapshot.as_dict()
    parts: list[Any] = [_summary(data)]
    for role in ("bridge", "worker", "gateway"):
        processes = [p for p in data["processes"] if p["role"] == role]
        if processes:
            parts.append(_role_table(role, processes))
    others = [p for p in data["processes"] if p["role"] not in ROLE_RATES]
    if others:
        parts.append(_role_table("other", others))
    parts.append(_pairs_table("consumer lag", ("durable", "pending", "ack pending"),
                              {d: (f["pending"], f.get("ack_pending", 0)) for d, f in data["lag"].items()}
                              if data["lag"] else {}))
    parts.append(_pairs_table("queues", ("queue", "ready", "delayed", "dead"),
                              {q: (f["ready"], f["delayed"], f["dead"]) for q, f in data["queues"].items()}))
    warnings = [(p["id"], p["last_warning"]) for p in data["processes"] if p.get("last_warning")]
    for process_id, warning in warnings:
        parts.append(Text(f"last warning of {process_id}: {warning.get('line', '')}", style="yellow"))
    return Group(*parts)


def _summary(data: Mapping[str, Any]) -> Text:
    rates = data["rates"]
    at = time.strftime("%H:%M:%S", time.localtime(data["at"]))
    counts = {role: sum(1 for p in data["processes"] if p["role"] == role) for role in ROLE_RATES}
    down = sum(1 for p in data["processes"] if not p["up"])
    text = Text(f"fechatter-notify top  {at}  namespace {data['namespace']}  ", style="bold")
    text.append(f"bridges {counts['bridge']}  workers {counts['worker']}  gateways {counts['gateway']}")
    if down:
        text.append(f"  ({down} not answering)", style="red")
    text.append(f"\nfetched {_rate(rates.get('fetched'))}  enqueued {_rate(rates.get('enqueued'))}  "
                f"delivered {_rate(rates.get('notifications_delivered'))}  frames {_rate(rates.get('frames_sent'))}  "
                f"open streams {data['open_streams']}")
    return text


def _role_table(role: str, processes: list[dict[str, Any]]) -> Table:
    columns = ROLE_RATES.get(role, ())
    table = Table(title=f"{role}s", title_justify="left", expand=False)
    table.add_column("process")
    table.add_column("up")
    for _, heading in columns:
        table.add_column(f"{heading}/s", justify="right")
    table.add_column("state")
    table.add_column("last warning", overflow="ellipsis", max_width=48)
    for p in processes:
        state = _state(role, p)
        up = Text("up", style="green") if p["up"] else Text("DOWN", style="red")
        rates = [_rate(p["rates"].get(figure)) for figure, _ in columns]
        warning = (p.get("last_warning") or {}).get("event", "") if p["up"] else (p.get("error") or "")
        table.add_row(f"{p['host']}:{p['pid']}", up, *rates, state, warning)
    return table


def _state(role: str, p: Mapping[str, Any]) -> str:
    gauges: dict[str, float] = p.get("gauges", {})
    parts: list[str] = []
    if role == "bridge":
        circuits = p.get("circuits", {})
        opened = [name for name, value in circuits.items() if value]
        parts.append("circuit " + ("OPEN " + ",".join(opened) if opened else "closed"))
        parts.append(f"in flight {int(gauges.get('in_flight', 0))}")
        parts.append(_latency("enqueue", p))
    elif role == "worker":
        parts.append(_latency("delivery", p))
    elif role == "gateway":
        parts.append(f"streams {int(gauges.get('open_streams', 0))}, users {int(gauges.get('connected_users', 0))}")
    return "; ".join(x for x in parts if x)


def _latency(name: str, p: Mapping[str, Any]) -> str:
    figures = p.get("latency", {}).get(name)
    if not figures or figures.get("p99") is None:
        return ""
    return f"{name} p50 {_ms(figures['p50'])} p99 {_ms(figures['p99'])}"


def _pairs_table(title: str, headings: tuple[str, ...], rows: Mapping[str, tuple[Any, ...]]) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for index, heading in enumerate(headings):
        table.add_column(heading, justify="left" if index == 0 else "right")
    for name, values in rows.items():
        table.add_row(name, *(f"{int(v):,}" for v in values))
    return table


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


