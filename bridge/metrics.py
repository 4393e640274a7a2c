"""The bridge's Prometheus metrics, on a per-process :class:`CollectorRegistry` passed around.

A per-bridge registry (not the global one) lets tests run many bridges in one process. Hot
paths count per batch (``inc(n)`` once per job type), never per message.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["CORE_SOURCE", "PREFIX", "BridgeMetrics"]

#: Every metric's name starts with this (as the workers' and the gateway's do with theirs).
PREFIX: Final = "fechatter_notify_bridge"

#: The ``consumer`` label of events that arrived on core NATS (not a JetStream durable).
CORE_SOURCE: Final = "core"

#: Enqueue round-trip buckets, in seconds.
_LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Batch size buckets, in events.
_BATCH_BUCKETS: Final = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


class BridgeMetrics:
    """Every collector of one bridge process.

    Parameters:
      registry(CollectorRegistry | None): Where to register; a fresh one when None.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.fetched = Counter(f"{PREFIX}_events_fetched", "Events received from NATS", ["consumer"], registry=r)
        self.enqueued = Counter(f"{PREFIX}_jobs_enqueued", "Jobs written to a dramatiq queue",
                                ["consumer", "job_type"], registry=r)
        self.deduplicated = Counter(f"{PREFIX}_jobs_deduplicated",
                                    "Events already enqueued within the dedupe window (not enqueued again, acked)",
                                    ["consumer", "job_type"], registry=r)
        self.acked = Counter(f"{PREFIX}_events_acked", "JetStream acks sent", ["consumer"], registry=r)
        self.naked = Counter(f"{PREFIX}_events_naked", "JetStream naks sent (with a delay)", ["consumer"], registry=r)
        self.termed = Counter(f"{PREFIX}_events_termed", "JetStream terms sent (dead letters)", ["consumer"],
                              registry=r)
        self.dead_lettered = Counter(f"{PREFIX}_dead_letters", "Events stored as dead letters",
                                     ["consumer", "code"], registry=r)
        self.dropped = Counter(f"{PREFIX}_core_events_dropped",
                               "Core NATS events that could not be enqueued (no redelivery exists)",
                               ["reason"], registry=r)
        self.slow_consumer = Counter(f"{PREFIX}_slow_consumer", "Slow-consumer drops reported by the NATS client",
                                     ["subject"], registry=r)
        self.missed_heartbeats = Counter(f"{PREFIX}_missed_heartbeats",
                                         "Pull requests silent for 2 x idle_heartbeat", ["consumer"], registry=r)
        self.statuses = Counter(f"{PREFIX}_pull_statuses", "Status messages on pull inboxes, by classification",
                                ["consumer", "reason"], registry=r)
        self.recoveries = Counter(f"{PREFIX}_consumer_recoveries", "Consumer verify/re-create rounds",
                                  ["consumer", "outcome"], registry=r)
        self.reconnects = Counter(f"{PREFIX}_nats_reconnects", "NATS reconnections", registry=r)
        self.connection_events = Counter(f"{PREFIX}_nats_connection_events", "NATS connection state changes",
                                         ["event"], registry=r)
        self.circuit_open = Gauge(f"{PREFIX}_circuit_open", "1 while the Redis circuit breaker is open", registry=r)
        self.circuit_opened = Counter(f"{PREFIX}_circuit_opened", "Times the Redis circuit breaker opened", registry=r)
        self.enqueue_latency = Histogram(f"{PREFIX}_enqueue_latency_seconds", "One batch's Redis round trip",
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(f"{PREFIX}_batch_size", "Events per enqueue batch", buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.num_pending = Gauge(f"{PREFIX}_consumer_num_pending", "Stream messages not yet delivered to the consumer",
                                 ["consumer"], registry=r)
        self.num_ack_pending = Gauge(f"{PREFIX}_consumer_num_ack_pending", "Delivered, not yet acked",
                                     ["consumer"], registry=r)
        self.in_flight = Gauge(f"{PREFIX}_in_flight", "Fetched, not yet acked in this process", ["consumer"],
                               registry=r)
        self.pull_requests = Counter(f"{PREFIX}_pull_requests", "MSG.NEXT requests sent", ["consumer"], registry=r)
        # Events held through a Redis outage (bridge/holding.py).
        self.held_events = Gauge(f"{PREFIX}_events_held",
                                 "JetStream events held (kept ours with in-progress acks) while Redis is down",
                                 ["consumer"], registry=r)
        self.held_bytes = Gauge(f"{PREFIX}_events_held_bytes", "Payload bytes of the held events", ["consumer"],
                                registry=r)
        self.in_progress_sent = Counter(f"{PREFIX}_in_progress_acks", "In-progress acks (+WPI) sent for held events",
                                        ["consumer"], registry=r)
        self.hold_naked = Counter(f"{PREFIX}_held_events_naked",
                                  "Events nak'd instead of held: over the hold bound, or held at shutdown",
                                  ["consumer", "reason"], registry=r)
        self.advisories = Counter(f"{PREFIX}_max_deliveries_advisories", "Max-deliveries advisories received",
                                  ["consumer"], registry=r)
        # Give-ups on events that had reached Redis (bridge/advisories.py): no dead letter is written.
        self.max_deliveries_already_enqueued = Counter(
            f"{PREFIX}_max_deliveries_already_enqueued",
            "Max-deliveries advisories of events whose marker was in Redis (marker: job or dead_letter); "
            "not dead-lettered", ["consumer", "marker"], registry=r)
        # Operating figures (`fechatter-notify top`, deploy/grafana): redeliveries by the JetStream delivery
        # count of each settled message (bridge/acks.py).
        self.redeliveries = Counter(f"{PREFIX}_redeliveries",
                                    "JetStream messages settled whose delivery count was above 1 (redelivered)",
                                    ["consumer"], registry=r)
        # The NATS circuit of each durable (bridge/nats_circuit.py).
        self.nats_circuit_state = Gauge(f"{PREFIX}_nats_circuit_state",
                                        "NATS circuit of a durable: 0 closed, 1 half-open (one trial pull out), "
                                        "2 open (not pulling)", ["consumer"], registry=r)
        self.nats_circuit_opened = Counter(f"{PREFIX}_nats_circuit_opened",
                                           "Times a durable's NATS circuit opened, by the failure that opened it",
                                           ["consumer", "reason"], registry=r)
