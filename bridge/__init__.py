"""bridge: NATS (JetStream durable pull consumers + core NATS subjects) -> typed jobs on dramatiq's Redis queues.

JetStream messages are acked only after their batch is in Redis; bad payloads become dead
letters. Start with :class:`Bridge` (:mod:`bridge.app`) or ``fechatter-notify bridge``.
"""

from bridge.app import Bridge
from bridge.errors import BridgeError
from bridge.pull_request import PullRequest, PullState, next_pull

__all__ = ["Bridge", "BridgeError", "PullRequest", "PullState", "next_pull"]
