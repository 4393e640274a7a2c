"""Transient or permanent: the one place that decides whether a failed job is retried.

A transient failure is the infrastructure's (Redis or PostgreSQL unreachable, a failover, a
time limit hit while a server hung): the same job can succeed later, so dramatiq's
:class:`~dramatiq.middleware.Retries` re-enqueues it with backoff. Everything else is
permanent (an undecodable job, a bug): retrying cannot help, so the job goes to dramatiq's
dead-letter queue (``{ns}:{queue}.XQ``) on its first failure, where an operator can read it.

:class:`DurableRetries` is dramatiq's ``Retries`` whose retry enqueue waits for Redis instead of
being dropped (see its docstring).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import dramatiq
import psycopg
import psycopg_pool
import redis
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import Retries, TimeLimit, TimeLimitExceeded

from runtime import log_event

__all__ = ["TRANSIENT", "TRANSIENT_REPLIES", "DurableRetries", "is_transient", "retry_when"]

#: First and largest pause, in seconds, between attempts to enqueue a retry while Redis is down.
ENQUEUE_RETRY_FIRST_S: Final = 0.1
ENQUEUE_RETRY_MAX_S: Final = 2.0

log = logging.getLogger(__name__)

#: Exception types worth retrying. ``redis.ConnectionError`` covers refused, reset and
#: ``BusyLoadingError`` (a restarting Redis replaying its AOF).
TRANSIENT: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica promoted mid-failover still refuses writes
    redis.exceptions.TryAgainError,
    BrokerConnectionError,
    psycopg.OperationalError,
    psycopg_pool.PoolTimeout,
    TimeLimitExceeded,
)


#: Server replies that mean "not now" (a demoted or loading server, a primary without its replicas).
#: Inside a Lua script they reach redis-py as a plain ``ResponseError`` that quotes them (Redis 6:
#: ``ERR Error running script ... -READONLY You can't write ...``), so the type alone misses them.
TRANSIENT_REPLIES: tuple[str, ...] = ("READONLY", "LOADING", "MASTERDOWN", "NOREPLICAS", "TRYAGAIN")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may go away if the same job runs again later."""
    if isinstance(exc, TRANSIENT):
        return True
    if isinstance(exc, redis.ResponseError):
        text = str(exc)
        return any(text.startswith(code) or f"-{code} " in text for code in TRANSIENT_REPLIES)
    return False


def retry_when(max_retries: int) -> Callable[[int, BaseException], bool]:
    """A ``Retries(retry_when=...)`` predicate: transient failures, at most ``max_retries`` times.

    Parameters:
      max_retries(int): Retries after the first attempt (``delivery.max_retries``).

    Returns:
      ``predicate(retries_so_far, exception) -> bool``; False sends the job to the dead letters.
    """

    def predicate(retries: int, exc: BaseException) -> bool:
        return retries < max_retries and is_transient(exc)

    return predicate


class DurableRetries(Retries):
    """dramatiq's :class:`~dramatiq.middleware.Retries`, whose retry is enqueued before the job is acked.

    Why: stock ``Retries`` enqueues the retry from ``after_process_message``. When Redis is down
    (the usual reason a job failed here), that enqueue raises, ``Broker.emit_after`` only logs it
    (``Unexpected failure in after_process_message``), the message is not marked failed, and the
    worker thread's ``post_process_message`` then retries the *ack* every 5 s until Redis answers
    and acks the original: the job is gone, its notifications never delivered.

    What: the retry's enqueue is retried the same way the ack is, until Redis answers (pauses
    :data:`ENQUEUE_RETRY_FIRST_S` doubling to :data:`ENQUEUE_RETRY_MAX_S`); only then does the
    ack follow. The wait is bounded exactly as the ack's already is: a worker thread cannot finish
    a job without Redis anyway (its ack waits without limit in dramatiq), so this adds no new way
    for a thread to hang; and if the process is stopped or dies while waiting, the original is
    still unacked in its broker's ack set, which recovery requeues once that heartbeat is stale.
    An enqueue error that is not transient (:func:`is_transient`) will not go away by waiting: the
    job is failed instead, so it is nacked into the dead letters, not acked.

    Chosen over "leave the original unacked / requeue it": dramatiq acks under the broker id of
    the moment, and the broker may have continued under a new id since the fetch
    (``WakeRedisBroker.connection_lost``), so a requeue could miss the ack set the job sits in and
    the job would come back only after the heartbeat timeout. Waiting touches no ack set at all.
    The job's time limit is disarmed while waiting (the actor is done): an outage longer than
    what was left of it would otherwise interrupt the wait and the original would be acked.

    Duplicates: an enqueue whose reply was lost may have been applied, so the retry can exist
    twice, and an original left in an abandoned ack set runs again after recovery; each copy
    writes through the per-user delivered markers (``workers.delivery``), so a notification
    already in an inbox is not written or published again.
    """

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        super().after_process_message(  # type: ignore[no-untyped-call]
            _PatientEnqueue(broker, message), message, result=result, exception=exception)


class _PatientEnqueue:
    """The broker as ``Retries`` sees it: ``enqueue`` retries transient failures until Redis answers."""

    def __init__(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._broker = broker
        self._job = message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        pause, attempts = ENQUEUE_RETRY_FIRST_S, 0
        while True:
            try:
                enqueued: dramatiq.Message[Any] = self._broker.enqueue(message, delay=delay)
                break
            # TimeLimitExceeded is a BaseException raised into this thread by the TimeLimit
            # middleware, possibly already on its way when the deadline is disarmed below.
            except (Exception, TimeLimitExceeded) as exc:
                if not is_transient(exc):
                    log_event(log, "retry_enqueue_failed", logging.ERROR, message_id=message.message_id,
                              error=type(exc).__name__, outcome="job failed: dead-lettered, not acked")
                    self._job.fail()
                    return message
                if attempts == 0:
                    self._disarm_time_limit()
                    log_event(log, "retry_enqueue_waiting", logging.WARNING, message_id=message.message_id,
                              error=type(exc).__name__,
                              reason="redis unavailable: the job is acked only once its retry is enqueued")
                attempts += 1
            with contextlib.suppress(TimeLimitExceeded):  # raised as it was disarmed: fires once
                time.sleep(pause)
            pause = min(pause * 2, ENQUEUE_RETRY_MAX_S)
        if attempts:
            log_event(log, "retry_enqueued", message_id=message.message_id, failed_attempts=attempts)
        return enqueued

    def _disarm_time_limit(self) -> None:
        # The job's actor is done; its time limit is cleared by TimeLimit's own after-hook, which
        # runs only after this one (after-hooks run bottom-up). Left armed, it would interrupt
        # the wait for Redis with a BaseException that emit_after does not catch, and the job
        # would be acked without its retry: the loss this class exists to prevent.
        for middleware in self._broker.middleware:
            if isinstance(middleware, TimeLimit):
                middleware.manager.remove_timeout(threading.get_ident())  # type: ignore[no-untyped-call]
