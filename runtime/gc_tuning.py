"""Fewer cyclic-GC passes for the long-running asyncio processes (bridge, gateway).

Every event the bridge handles and every frame the gateway writes allocates a few short-lived
objects; at CPython's default young-generation threshold (700 net allocations) the collector ran
so often that it walked the processes' long-lived objects a great many times a second (a third of
the gateway's fan-out CPU at 10,000 streams; ~6 % of the bridge's CPU per event). Their objects
rarely form cycles, so collecting less often costs little memory, and what exists once start-up is
done (modules, settings, scripts) is frozen out of the collector's walks altogether.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["GC_THRESHOLDS", "tune_gc"]

#: Net allocations between young-generation collections, then the older generations' ratios.
GC_THRESHOLDS: Final = (50_000, 20, 100)


def tune_gc() -> None:
    """Collect less often, and never walk what exists now (call it once start-up is done)."""
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()
