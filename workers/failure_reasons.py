"""Why each job was dead-lettered: dramatiq keeps none, so this middleware keeps one beside its dead-letter queue.

``{ns}:{queue}.XQ.reasons`` is a hash of redis message id -> ``{"code": exception type, "reason": its
message}`` (URL passwords masked), read by :mod:`workers.dead_letter_queue` for ``fechatter-notify dlq``:
an operator tells a database outage from a bad job without searching the logs.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

import dramatiq
import redis
from dramatiq.middleware import Middleware
from redis.exceptions import RedisError

from events import dead_letter_queue, is_delay_queue
from settings import redact_urls_in

__all__ = ["FailureReasons", "reasons_key"]

log = logging.getLogger(__name__)

#: Longest reason kept (an exception message can quote a whole payload).
MAX_REASON: Final = 1000
#: dramatiq's default ``dead_message_ttl`` (7 days), for a broker that does not say, in milliseconds.
DEFAULT_TTL_MS: Final = 7 * 86_400_000


def reasons_key(namespace: str, queue: str) -> str:
    """The hash of failure reasons beside ``queue``'s dead-letter queue."""
    return f"{namespace}:{dead_letter_queue(queue)}.reasons"


class FailureReasons(Middleware):
    """Stores why each job was dead-lettered.

    Its ``after_process_message`` must run after :class:`~dramatiq.middleware.Retries` decided
    (``message.failed``): place it *before* ``Retries`` in the middleware list (``after_*`` hooks
    run bottom-up). The hash expires with dramatiq's ``dead_message_ttl`` unless failures go on;
    ``dlq purge`` drops reasons whose job dramatiq's maintenance expired meanwhile.
    """

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        client: redis.Redis | None = getattr(broker, "client", None)
        if exception is None or not message.failed or client is None:
            return
        queue = message.queue_name[:-3] if is_delay_queue(message.queue_name) else message.queue_name
        key = reasons_key(str(getattr(broker, "namespace", "dramatiq")), queue)
        text = redact_urls_in(str(exception) or type(exception).__name__)[:MAX_REASON]
        value = json.dumps({"code": type(exception).__name__, "reason": text})
        try:
            with client.pipeline(transaction=False) as pipe:
                pipe.hset(key, message.options.get("redis_message_id", message.message_id), value)
                pipe.pexpire(key, int(getattr(broker, "dead_message_ttl", DEFAULT_TTL_MS)))
                pipe.execute()
        except RedisError as exc:
            # The job is dead-lettered all the same; only its reason is lost.
            log.warning("event=failure_reason_lost message_id=%s error=%s", message.message_id, type(exc).__name__)
