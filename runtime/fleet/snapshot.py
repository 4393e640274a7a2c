"""One snapshot of the running system: every registered process's figures, its rates since the
previous snapshot, consumer lag per durable and the dramatiq queue depths.

``fechatter-notify top`` and the gateway's ``/ops`` page show the same figures because both call
:func:`collect_snapshot`. It finds the processes through their registrations
(:mod:`runtime.fleet.registration`), scrapes each one's Prometheus ``/metrics`` concurrently and
reads the queues from Redis. It only reads.

:meth:`Snapshot.as_dict` (JSON-ready)::

    {"at": 1764434700.1, "namespace": "fechatter-notify", "interval_s": 1.0 | null,
     "processes": [{"id", "role", "host", "pid", "metrics_url", "started_at", "version",
                    "last_warning": {"at", "level", "logger", "event", "line"} | null,
                    "up": bool, "error": str | null,
                    "totals": {figure: count}, "rates": {figure: per second | null},
                    "gauges": {"circuit_open", "in_flight", "open_streams", "connected_users", ...},
                    "circuits": {metric name: value}, "lag": {durable: {"pending", "ack_pending"}},
                    "latency": {"enqueue" | "delivery": {"p50", "p90", "p99", "count"} (seconds)}}],
     "rates": {figure: summed over processes}, "totals": {figure: summed},
     "lag": {durable: {"pending", "ack_pending"}}, "open_streams": int,
     "queues": {queue: {"ready", "delayed", "dead"}}}

Figures (:data:`FIGURES`): fetched, enqueued, deduplicated, acked, naked, termed, dead_lettered,
redelivered, core_dropped (bridge), jobs_done, jobs_failed, jobs_retried, notifications_delivered,
realtime_dropped, inbox_trims (workers), frames_sent, connects, resyncs, frames_dropped (gateway). ``circuits``
holds every bridge gauge whose name has ``circuit`` in it, as ``name`` or ``name:consumer``.
Rates are per second over the interval since ``previous``; null for the first snapshot of a
process, and after its counters went backwards (a restart). Latency percentiles are over the
same interval (since start on the first snapshot).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import aiohttp
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from events import dead_letter_queue, delay_queue, queue_key
from runtime.fleet.registration import ProcessRecord, read_registrations

__all__ = ["FIGURES", "LATENCIES", "ProcessView", "Snapshot", "collect_snapshot", "parse_metrics"]

#: How long one process's scrape may take, in seconds (a stuck process must not stall the view).
SCRAPE_TIMEOUT_S: Final = 2.0
#: The quantiles reported for each latency histogram.
QUANTILES: Final = (0.5, 0.9, 0.99)

_B: Final = "fechatter_notify_bridge_"
_W: Final = "fechatter_notify_worker_"
_G: Final = "fechatter_notify_gateway_"

#: figure -> (sample name, label values a sample must have); a figure sums its matching samples.
FIGURES: Final[dict[str, tuple[str, dict[str, str]]]] = {
    "fetched": (f"{_B}events_fetched_total", {}),
    "enqueued": (f"{_B}jobs_enqueued_total", {}),
    "deduplicated": (f"{_B}jobs_deduplicated_total", {}),
    "acked": (f"{_B}events_acked_total", {}),
    "naked": (f"{_B}events_naked_total", {}),
    "termed": (f"{_B}events_termed_total", {}),
    "dead_lettered": (f"{_B}dead_letters_total", {}),
    "redelivered": (f"{_B}redeliveries_total", {}),
    "core_dropped": (f"{_B}core_events_dropped_total", {}),
    "jobs_done": (f"{_W}jobs_total", {"outcome": "ok"}),
    "jobs_failed": (f"{_W}jobs_total", {"outcome": "failed"}),
    "jobs_retried": (f"{_W}jobs_total", {"outcome": "retried"}),
    "notifications_delivered": (f"{_W}notifications_total", {}),
    "realtime_dropped": (f"{_W}realtime_dropped_total", {}),
    "inbox_trims": (f"{_W}inbox_trims_total", {}),
    "frames_sent": (f"{_G}frames_sent_total", {}),
    "connects": (f"{_G}connects_total", {}),
    "resyncs": (f"{_G}resyncs_total", {}),
    "frames_dropped": (f"{_G}frames_dropped_total", {}),
}
#: gauge -> sample name (summed over labels).
GAUGES: Final[dict[str, str]] = {
    "circuit_open": f"{_B}circuit_open",
    "in_flight": f"{_B}in_flight",
    "open_streams": f"{_G}open_streams",
    "connected_users": f"{_G}connected_users",
}
#: latency -> histogram family name (seconds).
LATENCIES: Final[dict[str, str]] = {
    "enqueue": f"{_B}enqueue_latency_seconds",
    "delivery": f"{_W}delivery_latency_seconds",
}
#: Each role's metric prefix.
_ROLE_PREFIX: Final = {"bridge": _B, "worker": _W, "gateway": _G}
_LAG: Final = {"pending": f"{_B}consumer_num_pending", "ack_pending": f"{_B}consumer_num_ack_pending"}

Sample = tuple[str, dict[str, str], float]


def parse_metrics(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition as (name, labels, value)."""
    return [(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text) for s in family.samples]


@dataclass
class ProcessView:
    """One process in a snapshot (see the module docstring for the fields)."""

    record: ProcessRecord
    up: bool
    error: str | None = None
    totals: dict[str, float] = field(default_factory=dict)
    rates: dict[str, float | None] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    circuits: dict[str, float] = field(default_factory=dict)
    lag: dict[str, dict[str, float]] = field(default_factory=dict)
    latency: dict[str, dict[str, float | None]] = field(default_factory=dict)
    #: Cumulative histogram buckets (upper bound -> count) per latency, for the next interval.
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the buckets stay internal)."""
        data = asdict(self.record)
        data.update(up=self.up, error=self.error, totals=self.totals, rates=self.rates, gauges=self.gauges,
                    circuits=self.circuits, lag=self.lag, latency=self.latency)
        return data


@dataclass
class Snapshot:
    """The system at one moment; pass it as ``previous`` to the next :func:`collect_snapshot`."""

    at: float
    namespace: str
    processes: list[ProcessView]
    queues: dict[str, dict[str, int]]
    interval_s: float | None = None

    def rates(self) -> dict[str, float]:
        """Each figure's rate summed over the processes that have one."""
        summed: dict[str, float] = {}
        for view in self.processes:
            for name, rate in view.rates.items():
                if rate is not None:
                    summed[name] = summed.get(name, 0.0) + rate
        return summed

    def totals(self) -> dict[str, float]:
        """Each figure's count summed over the processes."""
        summed: dict[str, float] = {}
        for view in self.processes:
            for name, value in view.totals.items():
                summed[name] = summed.get(name, 0.0) + value
        return summed

    def lag(self) -> dict[str, dict[str, float]]:
        """Lag per durable: every bridge reads the same consumer info, so the largest figure wins."""
        merged: dict[str, dict[str, float]] = {}
        for view in self.processes:
            for durable, figures in view.lag.items():
                into = merged.setdefault(durable, {})
                for name, value in figures.items():
                    into[name] = max(into.get(name, value), value)
        return merged

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: what ``top --once --format json`` prints and ``/ops`` serves."""
        return {
            "at": self.at, "namespace": self.namespace, "interval_s": self.interval_s,
            "processes": [p.as_dict() for p in self.processes],
            "rates": self.rates(), "totals": self.totals(), "lag": self.lag(),
            "open_streams": int(sum(p.gauges.get("open_streams", 0) for p in self.processes)),
            "queues": self.queues,
        }


async def collect_snapshot(client: aioredis.Redis, namespace: str, *, previous: Snapshot | None = None,
                           session: aiohttp.ClientSession | None = None) -> Snapshot:
    """Scrape every registered process and read the queues (see the module docstring).

    Parameters:
      client(redis.asyncio.Redis): Any client of the system's Redis (only reads).
      namespace(str): ``redis.namespace``.
      previous(Snapshot | None): The last snapshot: rates and latency are over the time since.
      session(aiohttp.ClientSession | None): Reused for the scrapes when given (one per call otherwise).

    Raises:
      redis.RedisError, OSError: Redis did not answer (a process that does not answer is
        ``up: false`` with its error instead).
    """
    records = await read_registrations(client, namespace)
    now = time.time()
    own = session is None
    http = session if session is not None else aiohttp.ClientSession()
    try:
        texts = await asyncio.gather(*(_scrape(http, r.metrics_url) for r in records))
    finally:
        if own:
            await http.close()
    before = {p.record.id: p for p in previous.processes} if previous is not None else {}
    interval = now - previous.at if previous is not None else None
    views = [_view(record, text, before.get(record.id), interval) for record, text in zip(records, texts, strict=True)]
    queues = await _queue_depths(client, namespace, _queue_names(records))
    return Snapshot(at=now, namespace=namespace, processes=views, queues=queues, interval_s=interval)


async def _scrape(http: aiohttp.ClientSession, url: str | None) -> str | BaseException:
    if not url:
        return LookupError("no metrics URL registered yet")
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)) as resp:
            if resp.status != 200:
                return LookupError(f"HTTP {resp.status}")
            return await resp.text()
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return exc


def _view(record: ProcessRecord, text: str | BaseException, before: ProcessView | None,
          interval: float | None) -> ProcessView:
    if isinstance(text, BaseException):
        return ProcessView(record, up=False, error=f"{type(text).__name__}: {text}".rstrip(": "))
    try:
        samples = parse_metrics(text)
    except ValueError as exc:
        return ProcessView(record, up=False, error=f"unreadable metrics: {exc}")
    view = ProcessView(record, up=True)
    # A family a process has not written yet (a labelled one in the workers' multiprocess mode shows only
    # once a child has a value) counts 0 for the role that owns it.
    own = _ROLE_PREFIX.get(record.role, "-")
    view.totals = {name: _sum(samples, metric, want) for name, (metric, want) in FIGURES.items()
                   if metric.startswith(own) or _has(samples, metric)}
    view.gauges = {name: _sum(samples, metric, {}) for name, metric in GAUGES.items() if _has(samples, metric)}
    view.circuits = _circuits(samples)
    view.lag = _lag(samples)
    view.buckets = {name: _buckets(samples, metric) for name, metric in LATENCIES.items()
                    if _has(samples, f"{metric}_bucket")}
    view.rates = _rates(view.totals, before, interval)
    prior = before.buckets if before is not None and before.up else {}
    view.latency = {name: _quantiles(_minus(buckets, prior.get(name))) for name, buckets in view.buckets.items()}
    return view


def _has(samples: Iterable[Sample], name: str) -> bool:
    return any(s[0] == name for s in samples)


def _sum(samples: Iterable[Sample], name: str, want: Mapping[str, str]) -> float:
    return sum(v for n, labels, v in samples if n == name and all(labels.get(k) == x for k, x in want.items()))


def _circuits(samples: Iterable[Sample]) -> dict[str, float]:
    """The bridge's circuit gauges (Redis and, per durable, NATS), by short name (and consumer)."""
    circuits: dict[str, float] = {}
    for name, labels, value in samples:
        if name.startswith(_B) and "circuit" in name and not name.endswith(("_total", "_created")):
            short = name.removeprefix(_B)
            circuits[f"{short}:{labels['consumer']}" if "consumer" in labels else short] = value
    return circuits


def _lag(samples: Iterable[Sample]) -> dict[str, dict[str, float]]:
    lag: dict[str, dict[str, float]] = {}
    for figure, metric in _LAG.items():
        for name, labels, value in samples:
            if name == metric and "consumer" in labels:
                lag.setdefault(labels["consumer"], {})[figure] = value
    return lag


def _rates(totals: Mapping[str, float], before: ProcessView | None,
           interval: float | None) -> dict[str, float | None]:
    if before is None or not before.up or not interval or interval <= 0:
        return dict.fromkeys(totals)
    rates: dict[str, float | None] = {}
    for name, value in totals.items():
        delta = value - before.totals.get(name, 0.0)
        rates[name] = delta / interval if delta >= 0 else None  # backwards: the process restarted
    return rates


def _buckets(samples: Iterable[Sample], family: str) -> dict[float, float]:
    """Cumulative counts per upper bound, summed over the histogram's other labels."""
    buckets: dict[float, float] = {}
    for name, labels, value in samples:
        if name == f"{family}_bucket":
            bound = float(labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    return buckets


def _minus(now: dict[float, float], before: dict[float, float] | None) -> dict[float, float]:
    if not before or any(now.get(b, 0.0) < c for b, c in before.items()):
        return now  # first look, or reset by a restart: since start
    return {bound: count - before.get(bound, 0.0) for bound, count in now.items()}


def _quantiles(buckets: dict[float, float]) -> dict[str, float | None]:
    """Prometheus's ``histogram_quantile`` (linear within a bucket) for each of :data:`QUANTILES`."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    result: dict[str, float | None] = {"count": total}
    for q in QUANTILES:
        result[f"p{round(q * 100)}"] = _quantile(q, bounds, buckets, total) if total > 0 else None
    return result


def _quantile(q: float, bounds: list[float], buckets: dict[float, float], total: float) -> float:
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound, as Prometheus answers
            share = (rank - below) / (count - below) if count > below else 1.0
            return lower + (bound - lower) * share
        lower, below = bound, count
    return lower


def _queue_names(records: Iterable[ProcessRecord]) -> list[str]:
    names: dict[str, None] = {}
    for record in records:
        for queue in record.details.get("queues", ()):
            names[str(queue)] = None
    return list(names)


async def _queue_depths(client: aioredis.Redis, namespace: str, queues: list[str]) -> dict[str, dict[str, int]]:
    if not queues:
        return {}
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(queue_key(namespace, queue))
        pipe.llen(queue_key(namespace, delay_queue(queue)))
        pipe.zcard(queue_key(namespace, dead_letter_queue(queue)))
    answers = await pipe.execute()
    return {queue: {"ready": int(answers[3 * i]), "delayed": int(answers[3 * i + 1]),
                    "dead": int(answers[3 * i + 2])} for i, queue in enumerate(queues)}
