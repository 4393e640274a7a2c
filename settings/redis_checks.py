"""Named checks of the ``redis`` section's combinations: one server or Sentinel, and ``WAIT``'s bound.

What only the live servers can tell (replicas connected, sentinels agreeing, persistence,
eviction policy) is ``fechatter-notify doctor``'s (workers.diagnose), not these.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from settings.durations import format_duration as fmt
from settings.model import Redis, Settings
from settings.problems import Path, Problem, problem_at
from settings.redis_target import is_sentinel_url, parse_sentinel_address
from settings.sources import Origins

__all__ = ["REDIS_CHECKS"]

#: Keys that describe the primary and the sentinels in Sentinel mode only.
SENTINEL_ONLY_KEYS: Final = ("db", "username", "password", "sentinel_username", "sentinel_password", "tls")
#: Fewer sentinels than this cannot outvote one that fails with its machine.
RECOMMENDED_SENTINELS: Final = 3


def _set(s: Settings, o: Origins, key: str) -> bool:
    """Whether the operator wrote ``redis.<key>`` (in a file or the environment) with a value other than
    its default: a file written from ``config show`` names every key, at its default."""
    path: Path = ("redis", key)
    if not any(p[: len(path)] == path for p in o):
        return False
    default = Redis.model_fields[key].get_default(call_default_factory=True)
    return bool(getattr(s.redis, key) != default)


def redis_url_or_sentinels(s: Settings, o: Origins) -> Iterator[Problem]:
    """``redis.url`` and ``redis.sentinels`` name the same thing two ways: only one may be set."""
    r = s.redis
    if r.sentinels and _set(s, o, "url"):
        yield problem_at(o, ("redis", "sentinels"), "redis_url_and_sentinels",
                         f"both redis.url (from {o.get(('redis', 'url'), 'default')}) and redis.sentinels are "
                         "set: which Redis is meant?", r.sentinels,
                         "keep one: redis.sentinels + redis.master_name, or redis.url (a redis+sentinel:// "
                         "URL names sentinels too)")


def sentinels_are_complete(s: Settings, o: Origins) -> Iterator[Problem]:
    """Sentinels need the name of the primary they monitor; a name needs sentinels to ask."""
    r = s.redis
    if r.sentinels and not r.master_name:
        yield problem_at(o, ("redis", "sentinels"), "sentinels_without_master_name",
                         "redis.sentinels is set but redis.master_name is not: the sentinels are asked for "
                         "the primary by that name", r.sentinels,
                         "master_name: the name of the sentinels' 'sentinel monitor <name> ...' line")
    if r.master_name and not r.sentinels:
        yield problem_at(o, ("redis", "master_name"), "master_name_without_sentinels",
                         "redis.master_name is set but redis.sentinels is not: nothing would use it",
                         r.master_name, "list the sentinels in redis.sentinels (host:port), or remove master_name")
    for i, entry in enumerate(r.sentinels):
        try:
            parse_sentinel_address(entry)
        except ValueError as exc:
            yield problem_at(o, ("redis", "sentinels", i), "bad_sentinel_address", str(exc), entry,
                             "host:port, e.g. 10.0.0.5:26379 ([v6-address]:port for IPv6)")
    if 0 < len(r.sentinels) < RECOMMENDED_SENTINELS:
        yield problem_at(o, ("redis", "sentinels"), "few_sentinels",
                         f"{len(r.sentinels)} sentinel(s): with fewer than {RECOMMENDED_SENTINELS}, losing one "
                         "machine can leave too few to agree on a failover", len(r.sentinels),
                         f"run at least {RECOMMENDED_SENTINELS} sentinels on separate machines", level="warning")


def sentinel_keys_need_sentinels(s: Settings, o: Origins) -> Iterator[Problem]:
    """The primary's db/credentials/TLS keys apply in Sentinel mode only; a URL carries its own."""
    r = s.redis
    url_form = is_sentinel_url(r.url.get_secret_value())
    if r.sentinels and not url_form:
        return
    where = "the redis+sentinel:// URL (user info, /db, ?sentinel_password=..., rediss+sentinel://)" \
        if url_form else "the URL (redis://user:password@host:6379/0, rediss:// for TLS)"
    for key in SENTINEL_ONLY_KEYS:
        if _set(s, o, key):
            yield problem_at(o, ("redis", key), "sentinel_key_without_sentinels",
                             f"redis.{key} applies only with redis.sentinels; with redis.url it is ignored",
                             None, f"put it in {where}, or configure redis.sentinels")


def replica_ack_timeout_fits(s: Settings, o: Origins) -> Iterator[Problem]:
    """``WAIT``'s bound must end before the socket timeout, or every slow WAIT reads as a dead Redis."""
    r = s.redis
    if r.min_replicas_acked and r.replica_ack_timeout >= r.socket_timeout:
        yield problem_at(o, ("redis", "replica_ack_timeout"), "replica_ack_timeout_too_long",
                         f"replica_ack_timeout {fmt(r.replica_ack_timeout)} is not below redis.socket_timeout "
                         f"{fmt(r.socket_timeout)}: the client would time out before WAIT answers",
                         fmt(r.replica_ack_timeout), f"replica_ack_timeout: {fmt(r.socket_timeout / 2)}")


REDIS_CHECKS = (redis_url_or_sentinels, sentinels_are_complete, sentinel_keys_need_sentinels,
                replica_ack_timeout_fits)
