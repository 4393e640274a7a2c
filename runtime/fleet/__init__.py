"""The fleet: processes register themselves in Redis (:class:`Registration`) and one call reads them
all (:func:`collect_snapshot`): what ``fechatter-notify top`` and the gateway's ``/ops`` page show.

Use it through ``runtime``'s face (``from runtime import Registration, collect_snapshot``).
"""

from runtime.fleet.registration import (
    ADVERTISE_HOST_ENV,
    DEFAULT_REFRESH_S,
    DEFAULT_TTL_S,
    ProcessRecord,
    Registration,
    advertised_url,
    index_key,
    read_registrations,
    record_key,
)
from runtime.fleet.snapshot import FIGURES, LATENCIES, ProcessView, Snapshot, collect_snapshot, parse_metrics

__all__ = [
    "ADVERTISE_HOST_ENV",
    "DEFAULT_REFRESH_S",
    "DEFAULT_TTL_S",
    "FIGURES",
    "LATENCIES",
    "ProcessRecord",
    "ProcessView",
    "Registration",
    "Snapshot",
    "advertised_url",
    "collect_snapshot",
    "index_key",
    "parse_metrics",
    "read_registrations",
    "record_key",
]
