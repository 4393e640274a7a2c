"""Transient or permanent: the one place that decides whether a failed job is retried.

A transient failure is the infrastructure's (Redis or PostgreSQL unreachable, a failover, a
time limit hit while a server hung): the same job can succeed later, so dramatiq's
:class:`~dramatiq.middleware.Retries` re-enqueues it with backoff. Everything else is
permanent (an undecodable job, a bug): retrying cannot help, so the job goes to dramatiq's
dead-letter queue (``{ns}:{queue}.XQ``) on its first failure, where an operator can read it.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import psycopg_pool
import redis
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import TimeLimitExceeded

__all__ = ["TRANSIENT", "TRANSIENT_REPLIES", "is_transient", "retry_when"]

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
