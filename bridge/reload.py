"""What a running bridge can take from a changed notify.yml (SIGHUP), and what needs a restart.

Every pull request carries its own batch, expiry and idle heartbeat (a pull consumer's config
cannot hold a heartbeat: docs/nats-pitfalls.md#pull-request-heartbeats), so those
take effect with the next request: an operator can widen a heartbeat that keeps being missed
without dropping a connection or an in-flight batch. The same holds for the local in-flight
cap, the miss count before "not ready", and the core path's batching. Everything else
(servers, credentials, streams, a durable's server-side config, queues, Redis) is named as
needing a restart; nothing of it is applied halfway. What only the workers or the gateway read
(:data:`NOT_READ`) is not the bridge's to report.

Pure logic: :func:`plan_reload` compares two validated :class:`Settings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from settings import Path, Settings, changed_paths, dotted

__all__ = ["LIVE_CONSUMER_FIELDS", "NOT_READ", "ReloadPlan", "apply_live", "plan_reload"]

#: Per-durable fields sent with each pull request (or kept locally), applied live.
LIVE_CONSUMER_FIELDS: Final = frozenset({"batch", "expires", "idle_heartbeat", "max_in_flight"})
#: What the bridge never reads (the workers', the gateway's): a change there is neither applied
#: nor a reason to restart the bridge, so it is not reported by the bridge at all.
NOT_READ: Final = frozenset({
    ("delivery",),
    ("gateway",),
    ("database",),
    ("health", "worker_port"),
    ("metrics", "worker_port"),
})
#: Other fields applied live, by path.
LIVE_PATHS: Final = frozenset({
    ("jetstream", "max_missed_heartbeats"),
    ("realtime", "batch_window"),
    ("realtime", "batch_size"),
})


@dataclass(frozen=True)
class ReloadPlan:
    """The changed settings, as dotted paths."""

    #: Applied by the running bridge.
    live: tuple[str, ...]
    #: Changed in the file but in effect only after a restart.
    restart: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.live or self.restart)


def plan_reload(old: Settings, new: Settings) -> ReloadPlan:
    """Split the differences between ``old`` (running) and ``new`` (just loaded)."""
    live: list[str] = []
    restart: list[str] = []
    for path in changed_paths(old, new):
        if any(path[:len(prefix)] == prefix for prefix in NOT_READ):
            continue
        (live if _is_live(path, old, new) else restart).append(dotted(path))
    return ReloadPlan(tuple(live), tuple(restart))


def apply_live(old: Settings, new: Settings) -> Settings:
    """``old`` with the live fields of ``new``: what the bridge runs with after a reload."""
    consumers = old.jetstream.consumers
    if len(consumers) == len(new.jetstream.consumers):  # else the list is a change for a restart
        consumers = [
            before.model_copy(update={f: getattr(after, f) for f in LIVE_CONSUMER_FIELDS})
            if (before.stream, before.durable) == (after.stream, after.durable) else before
            for before, after in zip(consumers, new.jetstream.consumers, strict=True)
        ]
    jetstream = old.jetstream.model_copy(
        update={"consumers": consumers, "max_missed_heartbeats": new.jetstream.max_missed_heartbeats})
    realtime = old.realtime.model_copy(
        update={"batch_window": new.realtime.batch_window, "batch_size": new.realtime.batch_size})
    return old.model_copy(update={"jetstream": jetstream, "realtime": realtime})


def _is_live(path: Path, old: Settings, new: Settings) -> bool:
    if path in LIVE_PATHS:
        return True
    if len(path) == 4 and path[:2] == ("jetstream", "consumers") and path[3] in LIVE_CONSUMER_FIELDS:
        index = path[2]
        assert isinstance(index, int)
        before, after = old.jetstream.consumers[index], new.jetstream.consumers[index]
        return (before.stream, before.durable) == (after.stream, after.durable)
    return False
