"""Secret redaction for ``config show``, reprs and log lines.

A value is secret when its field is a ``SecretStr`` (passwords, tokens, DSNs, seeds) or its
key names a secret; a URL keeps its host so the operator can still read where it points.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

MASK = "***"
_SECRET_KEY = re.compile(r"(password|passwd|token|secret|dsn|seed|private|(^|_)sk$|api_key)", re.I)


def redact_url(url: str) -> str:
    """Hide the password (and a DSN's public key) in ``url``; keep scheme, host, port and path."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    query = _redact_query(parts.query)
    if not parts.netloc or "@" not in parts.netloc:
        return url if query == parts.query else urlunsplit(parts._replace(query=query))
    userinfo, host = parts.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0]
    masked = f"{user}:{MASK}" if ":" in userinfo and user else MASK
    return urlunsplit((parts.scheme, f"{masked}@{host}", parts.path, query, parts.fragment))


def _redact_query(query: str) -> str:
    """Mask secret-named options (a ``redis+sentinel://`` URL's ``sentinel_password=``)."""
    if not query:
        return query
    pairs = [pair.partition("=") for pair in query.split("&")]
    return "&".join(f"{k}{eq}{MASK if eq and _SECRET_KEY.search(k) else v}" for k, eq, v in pairs)


_USERINFO_IN_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/@\s,]*)@")


def redact_urls_in(text: str) -> str:
    """Hide the password of every URL inside ``text`` (lists, error messages), keeping the user."""

    def mask(match: re.Match[str]) -> str:
        userinfo = match.group(2)
        user = userinfo.split(":", 1)[0]
        return f"{match.group(1)}{f'{user}:{MASK}' if ':' in userinfo and user else MASK}@"

    return _USERINFO_IN_URL.sub(mask, text)


def is_secret_key(key: str) -> bool:
    """Whether a setting named ``key`` holds a secret (its value is never printed)."""
    return bool(_SECRET_KEY.search(key))


def _redact_value(key: str, value: Any) -> Any:
    if isinstance(value, SecretStr):
        raw = value.get_secret_value()
        return redact_url(raw) if "://" in raw else MASK
    if isinstance(value, dict):
        return redacted(value)
    if isinstance(value, list):
        return [_redact_value(key, item) for item in value]
    if isinstance(value, str):
        if "://" in value:
            return redact_url(value)
        if _SECRET_KEY.search(key) or "PRIVATE KEY" in value:
            return MASK
    return value


def redacted(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` (a ``model_dump()``) with every secret masked."""
    return {key: _redact_value(key, value) for key, value in data.items()}
