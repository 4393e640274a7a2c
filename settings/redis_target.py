"""Which Redis the processes talk to: one server by URL, or a primary found through Redis Sentinel.

``redis.url`` names one server (``redis://``, ``rediss://``, ``unix://``: redis-py's own forms).
A Sentinel-managed primary is named either by ``redis.sentinels`` + ``redis.master_name`` (+ the
``db``/credential/``tls`` keys) or by one ``redis+sentinel://`` URL, the form several Python
libraries share (redis-sentinel-url, LangChain, RedisVL, Prefect, docket); redis-py and dramatiq
have no URL form for Sentinel::

    redis+sentinel://[user:password@]host[:port][,host2[:port2]...]/master_name[/db][?options]
    rediss+sentinel://...   TLS towards the primary and the sentinels

The user info is the primary's credentials; the sentinels' own go in the options
``sentinel_username`` and ``sentinel_password``; ``ssl_ca_certs``, ``ssl_certfile`` and
``ssl_keyfile`` name PEM files. A sentinel without a port is on 26379. Either form gives the
same :class:`SentinelTarget`; :mod:`runtime.redis_client` turns it into clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qsl, unquote

if TYPE_CHECKING:
    from settings.model import Redis

__all__ = ["DEFAULT_SENTINEL_PORT", "SENTINEL_SCHEMES", "SentinelTarget", "is_sentinel_url",
           "parse_sentinel_address", "parse_sentinel_url", "sentinel_target"]

#: Where a sentinel listens unless told otherwise.
DEFAULT_SENTINEL_PORT: Final = 26379
#: URL schemes of the Sentinel form; the second turns TLS on.
SENTINEL_SCHEMES: Final = ("redis+sentinel", "rediss+sentinel")
#: Options a Sentinel URL may carry, and the TargetTLS/credential field each one sets.
_URL_OPTIONS: Final = {
    "sentinel_username": "sentinel_username",
    "sentinel_password": "sentinel_password",
    "ssl_ca_certs": "ca_file",
    "ssl_certfile": "cert_file",
    "ssl_keyfile": "key_file",
}


@dataclass(frozen=True)
class SentinelTarget:
    """A Sentinel-managed primary, however it was configured. Holds secrets: never log it whole."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def describe(self) -> str:
        """``master 'name' via host:port,host:port`` (no credentials), for logs and findings."""
        hosts = ",".join(_address(h, p) for h, p in self.sentinels)
        return f"master {self.master_name!r} via sentinels {hosts}"


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` is the ``redis+sentinel://`` form (only the scheme is looked at)."""
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_address(entry: str) -> tuple[str, int]:
    """``host[:port]`` (``[v6]:port`` for IPv6) -> ``(host, port)``.

    Raises:
      ValueError: no host, or a port that is not 1-65535.
    """
    text = entry.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else None)
        if port_text is None:
            raise ValueError(f"{entry!r}: expected [v6-address]:port")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, ""
        elif ":" in host:
            raise ValueError(f"{entry!r}: write an IPv6 address as [address]:port")
    if not host:
        raise ValueError(f"{entry!r}: no host")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{entry!r}: port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The :class:`SentinelTarget` a ``redis+sentinel://`` URL names (see the module docstring).

    Raises:
      ValueError: why the URL is not one (never with the password in the message).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError(f"scheme is not one of {', '.join(s + '://' for s in SENTINEL_SCHEMES)}")
    rest, _, query = rest.partition("?")
    authority, _, path = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if not at:
        userinfo, hosts = "", authority
    username, _, password = userinfo.partition(":")
    if not hosts:
        raise ValueError("no sentinel host")
    sentinels = tuple(parse_sentinel_address(h) for h in hosts.split(","))
    master, _, db_text = path.strip("/").partition("/")
    if not master:
        raise ValueError("no master name: redis+sentinel://host:26379/<master_name>[/db]")
    if db_text and not db_text.isdigit():
        raise ValueError(f"database {db_text!r} is not a number")
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        field = _URL_OPTIONS.get(key)
        if field is None:
            raise ValueError(f"unknown option {key!r} (known: {', '.join(_URL_OPTIONS)})")
        options[field] = value
    return SentinelTarget(
        sentinels=sentinels, master_name=unquote(master), db=int(db_text or 0),
        username=unquote(username) or None, password=unquote(password) or None,
        tls=scheme.lower() == "rediss+sentinel", **options,
    )


def sentinel_target(r: Redis) -> SentinelTarget | None:
    """The Sentinel target of a validated ``redis`` section, or None when ``redis.url`` names one server.

    Raises:
      ValueError: the section was not validated (``config check`` reports the same problem).
    """
    url = r.url.get_secret_value()
    if is_sentinel_url(url):
        return parse_sentinel_url(url)
    if not r.sentinels:
        return None
    if not r.master_name:
        raise ValueError("redis.sentinels needs redis.master_name")
    tls = r.tls
    return SentinelTarget(
        sentinels=tuple(parse_sentinel_address(s) for s in r.sentinels), master_name=r.master_name, db=r.db,
        username=r.username, password=r.password.get_secret_value() if r.password else None,
        sentinel_username=r.sentinel_username,
        sentinel_password=r.sentinel_password.get_secret_value() if r.sentinel_password else None,
        tls=tls.enabled, ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file,
    )


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
