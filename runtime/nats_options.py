"""nats-py ``connect`` keyword arguments from the ``nats`` settings section, shared by every
process that talks to NATS (bridge, gateway), so auth, TLS and timings mean the same everywhere.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import ParseResult

from settings import NatsConnection


def server_address(url: ParseResult | None) -> str:
    """``host:port`` of nats-py's ``connected_url`` (a ParseResult, whose repr would be logged
    field by field, credentials included), or ``-`` when not connected."""
    return f"{url.hostname}:{url.port}" if url is not None else "-"


def tls_context(config: NatsConnection) -> ssl.SSLContext | None:
    """A client TLS context from ``nats.tls``, or None when TLS is not configured."""
    tls = config.tls
    if not (tls.ca_file or tls.cert_file):
        return None
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def connect_options(config: NatsConnection, *, name_suffix: str = "") -> dict[str, Any]:
    """Servers, name, timings, reconnect policy, credentials and TLS; callbacks are the caller's."""
    options: dict[str, Any] = {
        "servers": list(config.servers),
        "name": config.name + name_suffix,
        "connect_timeout": config.connect_timeout,
        "ping_interval": config.ping_interval,
        "max_outstanding_pings": config.max_outstanding_pings,
        "allow_reconnect": True,
        "max_reconnect_attempts": config.max_reconnects,
        "reconnect_time_wait": config.reconnect_backoff_base,
        "tls": tls_context(config),
    }
    if config.user:
        options["user"] = config.user
    if config.password:
        options["password"] = config.password.get_secret_value()
    if config.token:
        options["token"] = config.token.get_secret_value()
    if config.creds_file:
        options["user_credentials"] = config.creds_file
    if config.nkey_seed:
        options["nkeys_seed_str"] = config.nkey_seed.get_secret_value()
    return options
