"""dramatiq's Redis layout: the contract between the bridge (writer) and the workers' broker (reader).

The bridge writes jobs straight into dramatiq's own keys (``bridge/enqueue.lua``) and the workers
consume them with dramatiq's RedisBroker, so both sides, and ``doctor``, spell every key here. The
layout is dramatiq's (``dramatiq/brokers/redis`` and ``dramatiq.common``; tests/test_events_queues.py
checks that they still agree). Every key lives under the configured namespace (``redis.namespace``):

=====================================  ======  ======================================================
key                                    type    content
=====================================  ======  ======================================================
``{ns}:{queue}``                       list    redis message ids waiting, oldest at the head
``{ns}:{queue}.msgs``                  hash    redis message id -> encoded message (JSON)
``{ns}:{queue}.DQ`` (+ ``.msgs``)      list    the queue's delay queue (retries waiting for their eta)
``{ns}:{queue}.XQ`` (+ ``.msgs``)      zset    the queue's dead-letter queue, scored by time of death
``{ns}:__heartbeats__``                zset    broker ids -> last heartbeat (ms)
``{ns}:__acks__.{broker}.{queue}``     set     ids a worker fetched and has not acked yet
=====================================  ======  ======================================================
"""

from __future__ import annotations

__all__ = [
    "dead_letter_queue",
    "delay_queue",
    "heartbeats_key",
    "is_delay_queue",
    "messages_key",
    "queue_key",
]

_DELAY = ".DQ"
_DEAD = ".XQ"


def queue_key(namespace: str, queue: str) -> str:
    """The list of message ids waiting on ``queue`` (also a delay or dead-letter queue's name)."""
    return f"{namespace}:{queue}"


def messages_key(namespace: str, queue: str) -> str:
    """The hash of ``queue``'s messages by redis message id."""
    return f"{namespace}:{queue}.msgs"


def delay_queue(queue: str) -> str:
    """The name of ``queue``'s delay queue (dramatiq's ``dq_name``)."""
    return queue + _DELAY


def dead_letter_queue(queue: str) -> str:
    """The name of ``queue``'s dead-letter queue (dramatiq's ``xq_name``)."""
    return queue + _DEAD


def is_delay_queue(queue: str) -> bool:
    """Whether ``queue`` names a delay queue."""
    return queue.endswith(_DELAY)


def heartbeats_key(namespace: str) -> str:
    """The sorted set of live brokers (workers), scored by their last heartbeat in milliseconds."""
    return f"{namespace}:__heartbeats__"
