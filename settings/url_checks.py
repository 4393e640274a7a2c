"""Named checks of the server addresses: each URL parsed by the library that will use it.

A mistyped URL otherwise passes validation and fails only when a process connects, often
with an error that names neither the setting nor the source it came from. The parsers are the
clients' own (redis-py, psycopg, sentry-sdk); NATS URLs follow nats-py's rules (``host:port``
without a scheme means ``nats://``). Values in problems are redacted.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

from settings.model import Settings
from settings.problems import Path, Problem, problem_at
from settings.redact import redact_url, redact_urls_in
from settings.redis_checks import REDIS_CHECKS
from settings.redis_target import is_sentinel_url, parse_sentinel_url
from settings.sources import Origins

__all__ = ["URL_CHECKS"]

NATS_SCHEMES = ("nats", "tls", "ws", "wss")


def _bad(origins: Origins, path: Path, code: str, url: str, reason: str, fix: str) -> Problem:
    return problem_at(origins, path, code, redact_urls_in(reason), redact_url(url), fix)


def nats_servers_are_urls(s: Settings, o: Origins) -> Iterator[Problem]:
    """Each ``nats.servers`` entry is ``[nats|tls|ws|wss]://host:port`` (or ``host:port``)."""
    for i, server in enumerate(s.nats.servers):
        reason = _nats_url_problem(server)
        if reason:
            yield _bad(o, ("nats", "servers", i), "bad_nats_url", server, reason,
                       "nats://host:4222 (tls:// for TLS; credentials as nats://user:password@host:4222)")


def _nats_url_problem(server: str) -> str | None:
    url = server if "://" in server else f"nats://{server}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a NATS URL: {exc}"
    if parts.scheme not in NATS_SCHEMES:
        return f"scheme {parts.scheme!r} is not one of {', '.join(NATS_SCHEMES)}"
    if not parts.hostname:
        return "no host"
    if port == 0:
        return "port 0"
    if parts.scheme in ("nats", "tls") and parts.path not in ("", "/"):
        return f"unexpected path {parts.path!r} (a typo in '://'?)"
    return None


def redis_url_is_valid(s: Settings, o: Origins) -> Iterator[Problem]:
    """``redis.url`` is what redis-py accepts, with a host and a numeric database."""
    from redis.connection import parse_url

    url = s.redis.url.get_secret_value()
    fix = "redis://[:password@]host:6379/0 (rediss:// for TLS, unix:///path/to/redis.sock)"
    if is_sentinel_url(url):
        try:
            parse_sentinel_url(url)
        except ValueError as exc:
            yield _bad(o, ("redis", "url"), "bad_redis_url", url, str(exc),
                       "redis+sentinel://[user:password@]host:26379[,host2:26379]/master_name[/db]")
        return
    try:
        parsed = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        yield _bad(o, ("redis", "url"), "bad_redis_url", url, str(exc), fix)
        return
    if "path" in parsed:  # unix socket
        return
    if not parsed.get("host"):
        yield _bad(o, ("redis", "url"), "bad_redis_url", url, "no host", fix)
    database = urlsplit(url).path.strip("/")
    if database and not database.isdigit():
        yield _bad(o, ("redis", "url"), "bad_redis_url", url,
                   f"database {database!r} is not a number (redis-py would silently use 0)", fix)


def database_url_is_valid(s: Settings, o: Origins) -> Iterator[Problem]:
    """``database.url`` is a PostgreSQL URL or conninfo string psycopg accepts."""
    if s.database.url is None:
        return
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    url = s.database.url.get_secret_value()
    try:
        conninfo_to_dict(url)
    except ProgrammingError as exc:
        yield _bad(o, ("database", "url"), "bad_database_url", url, str(exc).strip(),
                   "postgresql://user:password@host:5432/fechatter")


def sentry_dsn_is_valid(s: Settings, o: Origins) -> Iterator[Problem]:
    """``sentry.dsn`` is a DSN sentry-sdk accepts (otherwise it would fail at start-up)."""
    if s.sentry.dsn is None:
        return
    from sentry_sdk.utils import BadDsn, Dsn

    dsn = s.sentry.dsn.get_secret_value()
    try:
        Dsn(dsn)
    except BadDsn as exc:
        yield _bad(o, ("sentry", "dsn"), "bad_sentry_dsn", dsn, f"not a Sentry DSN: {exc}",
                   "https://<public key>@<host>/<project id>, as the project's Client Keys page shows")


URL_CHECKS = (nats_servers_are_urls, redis_url_is_valid, *REDIS_CHECKS, database_url_is_valid, sentry_dsn_is_valid)
