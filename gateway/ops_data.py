"""What ``/ops/data`` answers: the fleet snapshot ``fechatter-notify top`` shows, shaped for charts.

The snapshot is :func:`runtime.collect_snapshot` (every process registered in Redis, scraped;
rates over the time since the previous snapshot). The body (stable; the page and scripts read it)::

    {"at": 1764437000.25,                 # Unix seconds the snapshot was taken
     "interval_s": 1.0 | null,            # what the rates are over (null: the first snapshot)
     "source": "fleet fechatter-notify",  # what was read: the fleet of this namespace
     "charts": [{"id": "rates", "title": ..., "unit": "/s",
                 "series": {"fetched": 12.0, ...},      # label -> value (null: not known yet)
                 "empty": "why there is nothing"},      # only when series is empty
                {"id": "trouble", ...}, {"id": "lag", ...}, {"id": "latency", ...},
                {"id": "streams", ...}, {"id": "queues", ...}],
     "processes": [{"role": "gateway", "name": "host:pid", "up": true,
                    "state": "up" | "up, circuit open" | "down: <error>", "warning": "<line>" | null}],
     "snapshot": {...}}                   # Snapshot.as_dict(), everything top shows, for scripts

Every chart of :data:`CHARTS` is always there, in that order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import aiohttp
from aiohttp import web

from gateway import state
from runtime import Snapshot, collect_snapshot

Series = dict[str, float | None]

#: The charts, in page order: id, title, unit, what an empty chart means.
CHARTS: Final = (
    ("rates", "Flow", "/s", "no rate yet: rates need two snapshots of a registered process"),
    ("trouble", "Trouble", "/s", "no rate yet"),
    ("lag", "Consumer lag", "messages", "no bridge reports its consumer's lag"),
    ("latency", "Latency percentiles", "s", "nothing measured since the last snapshot"),
    ("streams", "Open streams", "streams", "no gateway registered"),
    ("queues", "Queue depths", "jobs", "no queue registered"),
)
#: The figures of the "Flow" chart: an event's way from NATS to the browser, in order.
FLOW: Final = ("fetched", "enqueued", "acked", "jobs_done", "notifications_delivered", "frames_sent", "connects")
#: The figures of the "Trouble" chart: what an operator wants to see at zero.
TROUBLE: Final = ("naked", "termed", "dead_lettered", "redelivered", "realtime_dropped", "deduplicated",
                  "jobs_failed", "jobs_retried", "resyncs")
#: The percentiles drawn of each latency histogram.
PERCENTILES: Final = ("p50", "p90", "p99")


class FleetSource:
    """Collects fleet snapshots for ``/ops/data``, each one's rates since the one before."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._previous: Snapshot | None = None
        self._http: aiohttp.ClientSession | None = None

    async def collect(self) -> dict[str, Any]:
        """The next ``/ops/data`` body.

        Raises:
          redis.RedisError, OSError: Redis did not answer (a process that does not is ``up: false``).
        """
        if self._http is None:  # made in the loop, on first use; closed with the app
            self._http = aiohttp.ClientSession()
        settings = self._app[state.SETTINGS]
        snapshot = await collect_snapshot(self._app[state.REDIS], settings.redis.namespace,
                                          previous=self._previous, session=self._http)
        self._previous = snapshot
        return body(snapshot.as_dict())

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


def body(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The ``/ops/data`` body of one ``Snapshot.as_dict()`` (see the module docstring)."""
    processes = snapshot.get("processes", [])
    rates: Mapping[str, float] = snapshot.get("rates", {})
    series: dict[str, Series] = {
        "rates": _figures(FLOW, rates, processes),
        "trouble": _figures(TROUBLE, rates, processes),
        "lag": {f"{durable} {name.replace('_', ' ')}": float(value)
                for durable, figures in snapshot.get("lag", {}).items() for name, value in figures.items()},
        "latency": _latencies(processes),
        "streams": {_name(p): float(p["gauges"].get("open_streams", 0))
                    for p in processes if p.get("role") == "gateway" and p.get("up")},
        "queues": {f"{queue} {kind}": float(count)
                   for queue, depths in snapshot.get("queues", {}).items() for kind, count in depths.items()},
    }
    return {
        "at": snapshot["at"],
        "interval_s": snapshot.get("interval_s"),
        "source": f"fleet {snapshot.get('namespace', '')}".strip(),
        "charts": _charts(series),
        "processes": [_process(p) for p in processes],
        "snapshot": snapshot,
    }


def _figures(names: Iterable[str], rates: Mapping[str, float], processes: list[dict[str, Any]]) -> Series:
    """The rate of each figure some process reports (null until it has two snapshots)."""
    reported = {name for p in processes for name in p.get("totals", {})}
    return {name: rates.get(name) for name in names if name in reported}


def _latencies(processes: list[dict[str, Any]]) -> Series:
    # Percentiles of different processes cannot be merged: with one process per kind the label is
    # the kind ("delivery p99"), with several the process is named too.
    reporting: dict[str, list[dict[str, Any]]] = {}
    for process in processes:
        for kind in process.get("latency", {}):
            reporting.setdefault(kind, []).append(process)
    series: Series = {}
    for kind, among in reporting.items():
        for process in among:
            figures = process["latency"][kind]
            suffix = f" {_name(process)}" if len(among) > 1 else ""
            for percentile in PERCENTILES:
                value = figures.get(percentile)
                series[f"{kind} {percentile}{suffix}"] = None if value is None else float(value)
    return series


def _charts(series: Mapping[str, Series]) -> list[dict[str, Any]]:
    charts = []
    for chart_id, title, unit, empty in CHARTS:
        values = series.get(chart_id, {})
        chart: dict[str, Any] = {"id": chart_id, "title": title, "unit": unit, "series": values}
        if not values:
            chart["empty"] = empty
        charts.append(chart)
    return charts


def _name(process: Mapping[str, Any]) -> str:
    return f"{process.get('host', '?')}:{process.get('pid', '?')}"


def _process(process: Mapping[str, Any]) -> dict[str, Any]:
    if not process.get("up"):
        status = f"down: {process.get('error') or 'no answer'}"
    elif process.get("gauges", {}).get("circuit_open"):
        status = "up, circuit open"
    else:
        status = "up"
    warning = process.get("last_warning") or {}
    return {"role": process.get("role", "?"), "name": _name(process), "up": bool(process.get("up")),
            "state": status, "warning": warning.get("line") or warning.get("event")}
