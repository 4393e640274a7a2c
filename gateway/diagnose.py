"""The live Redis checked for the gateways: how many users have an open stream (``fechatter-notify doctor``).

Each gateway subscribes the live channel of every user it holds a stream of, so the channels
subscribed in Redis count the users connected across all gateways. Only reads are sent.
"""

from __future__ import annotations

from redis.asyncio import Redis

from events import live_channel
from runtime import Findings
from settings import Problem, Settings

__all__ = ["diagnose_streams"]


async def diagnose_streams(client: Redis, settings: Settings, origin: str) -> list[Problem]:
    """The number of users with an open stream on some gateway."""
    report = Findings()
    pattern = live_channel(settings.redis.namespace, 0)[:-1] + "*"
    users = len(await client.pubsub_channels(pattern))
    report.add("info", "gateways", "gateway", f"{users} user(s) with an open stream on a gateway", origin=origin)
    return report
