"""What ``/ops/data`` answers: a snapshot of the system, shaped for the page's charts.

The body (stable; the page and scripts read it)::

    {"at": 1764437000.25,                # Unix seconds the snapshot was taken
     "source": "this gateway",
     "charts": [{"id": "rates", "title": "Rates", "unit": "/s",
                 "series": {"gateway frames sent": 12.0, ...}},   # label -> value (null: unknown)
                {"id": "lag", ...}, {"id": "latency", ...}, {"id": "streams", ...}],
     "processes": [{"role": "gateway", "name": "host:pid", "up": true, "state": "up",
                    "warning": null}],
     "snapshot": {...}}                  # the snapshot itself, for scripts

Each chart is always present, in this order, with ``series`` possibly empty (``empty`` then says
why). The snapshot comes from a :class:`SnapshotSource`.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Final, Protocol

from aiohttp import web

from gateway import state

#: The charts, in page order: id, title, unit, what an empty chart means.
CHARTS: Final = (
    ("rates", "Rates", "/s", "no process reported a rate yet"),
    ("lag", "Consumer lag", "messages", "no consumer lag reported"),
    ("latency", "Enqueue to delivery latency", "s", "no delivery measured yet"),
    ("streams", "Open streams", "", "no gateway reported"),
)


class SnapshotSource(Protocol):
    """Collects one snapshot as the ``/ops/data`` body (see the module docstring)."""

    async def collect(self) -> dict[str, Any]: ...


def snapshot_source(app: web.Application) -> SnapshotSource:
    """The source ``/ops/data`` uses."""
    return LocalSource(app)


def chart_list(series: dict[str, dict[str, float | None]]) -> list[dict[str, Any]]:
    """Every chart of :data:`CHARTS`, with its series from ``series`` (chart id -> label -> value)."""
    charts = []
    for chart_id, title, unit, empty in CHARTS:
        values = series.get(chart_id, {})
        chart: dict[str, Any] = {"id": chart_id, "title": title, "unit": unit, "series": values}
        if not values:
            chart["empty"] = empty
        charts.append(chart)
    return charts


class LocalSource:
    """This gateway's own figures, read from its metrics registry (no other process)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._name = f"{socket.gethostname()}:{os.getpid()}"
        self._previous: tuple[float, float, float] | None = None  # at, frames sent, connects

    async def collect(self) -> dict[str, Any]:
        metrics = self._app[state.METRICS]
        metrics.sync()
        now = time.time()
        frames, connects = metrics.frames_sent._value.get(), metrics.connects._value.get()
        rates: dict[str, float | None] = {}
        if self._previous is not None:
            at, frames_before, connects_before = self._previous
            span = max(now - at, 1e-6)
            rates = {f"gateway {self._name} frames sent": (frames - frames_before) / span,
                     f"gateway {self._name} streams opened": (connects - connects_before) / span}
        self._previous = (now, frames, connects)
        streams = len(self._app[state.STREAMS])
        return {
            "at": now,
            "source": "this gateway",
            "charts": chart_list({"rates": rates, "streams": {f"gateway {self._name}": float(streams)}}),
            "processes": [{"role": "gateway", "name": self._name, "up": True, "state": "up", "warning": None}],
            "snapshot": {"frames_sent": frames, "connects": connects, "open_streams": streams},
        }
