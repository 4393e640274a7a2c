"""Consumer lag, polled: ``num_pending`` and ``num_ack_pending`` of each durable into gauges."""

from __future__ import annotations

import asyncio
import logging

from bridge.errors import JetStreamError
from bridge.jsapi import JetStreamApi
from bridge.metrics import BridgeMetrics
from settings import Consumer

__all__ = ["poll_lag"]

log = logging.getLogger("bridge.lag")


async def poll_lag(api: JetStreamApi, consumers: list[Consumer], metrics: BridgeMetrics, interval: float) -> None:
    """Every ``interval`` seconds, read each consumer's info into the lag gauges (runs until cancelled)."""
    while True:
        for consumer in consumers:
            try:
                info = await api.consumer_info(consumer.stream, consumer.durable)
            except JetStreamError as exc:
                log.debug("lag poll of %s failed: %s", consumer.durable, exc)
                continue
            metrics.num_pending.labels(consumer.durable).set(info.get("num_pending", 0))
            metrics.num_ack_pending.labels(consumer.durable).set(info.get("num_ack_pending", 0))
        await asyncio.sleep(interval)
