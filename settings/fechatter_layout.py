"""Reading a notify.yml written in Fechatter's own layout.

Fechatter's files use ``server``, ``auth``, ``messaging.nats.jetstream.consumers.*`` and
``notification.delivery.web``. Each value we use is moved to its place in our layout, keeping
its file position; each key Fechatter knows but we do not use is reported once as ignored, with
the reason (:data:`FECHATTER_KEYS`); a key Fechatter does not know either is an error with a
suggestion. How each section was read is reported too, so ``config check`` shows the
interpretation, not just the result.

``consumers.notification_processor`` is read as a JetStream durable pull consumer and
``consumers.realtime_processor.filter_subjects`` as the **core NATS** subjects the bridge
subscribes to: Fechatter lists both under ``consumers`` but describes the realtime path as "Core
NATS - Non-persistent", and its server publishes realtime events with a plain core publish that no
stream captures (docs/event-contract.md#transport). The realtime section's ``idle_heartbeat`` is
kept only to be checked against the seed's heartbeat rule
(docs/nats-pitfalls.md#the-seeds-heartbeat-rule), so such a file validates the way its authors
expect.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from settings.problems import Path, Problem
from settings.sources import Origins

#: Top-level keys that mark a Fechatter-layout file.
FECHATTER_SECTIONS = ("server", "auth", "messaging", "notification", "search", "analytics", "security")

# Fechatter key path -> our key path. Paths relative to the top of the file.
_SCALARS: dict[Path, Path] = {
    ("server", "port"): ("gateway", "port"),
    ("server", "db_url"): ("database", "url"),
    ("auth", "pk"): ("gateway", "jwt", "public_key"),
    ("notification", "delivery", "web", "heartbeat_interval_ms"): ("gateway", "keep_alive"),
}
_JS = ("messaging", "nats", "jetstream")
_STREAM_KEYS = {"stream": "name", "storage": "storage", "max_bytes": "max_bytes",
                "max_msg_size": "max_msg_size", "max_age": "max_age"}
_DURABLE_KEYS = {"name": "durable", "filter_subjects": "filter_subjects", "ack_wait": "ack_wait",
                 "max_deliver": "max_deliver", "max_batch": "batch", "idle_heartbeat": "idle_heartbeat"}
_REALTIME_KEYS = {"name": "queue_group", "filter_subjects": "subjects", "idle_heartbeat": "idle_heartbeat"}
# Keys that are Fechatter's but mean nothing on core NATS: accepted, reported as ignored.
_REALTIME_IGNORED = ("ack_wait", "max_deliver", "max_batch")
_DURATION_KEYS = ("max_age", "ack_wait", "idle_heartbeat")

#: Every key Fechatter's notify_server knows (its ``AppConfig``), section by section, and what we
#: do with it: :data:`USED` (moved to our layout above), a reason it is ignored, or the keys of a
#: sub-section. A key in a section we read that is not listed here is a typo: an error with a
#: suggestion, exactly as in our own layout, never a silent fall-back to the default.
USED = "used"
_Spec = dict[str, "str | _Spec"]
_NO_ACKS = "core NATS has no acks, redeliveries or pull batches"
_CONSUMER: _Spec = {key: USED for key in _DURABLE_KEYS}
_REALTIME_CONSUMER: _Spec = {**{key: USED for key in _REALTIME_KEYS}, **dict.fromkeys(_REALTIME_IGNORED, _NO_ACKS)}
FECHATTER_KEYS: _Spec = {
    "server": {
        "port": USED, "db_url": USED,
        "request_timeout_ms": "the gateway serves long-lived SSE streams, not requests with a deadline",
        "base_dir": "fechatter-notify keeps no files",
    },
    "auth": {
        "pk": USED,
        "sk": "fechatter-notify only verifies tokens and never signs one (the private key need not be here)",
        "token_expiration": "each token carries its own expiry (its exp claim), checked with gateway.jwt.leeway",
    },
    "messaging": {
        "enabled": "fechatter-notify always reads its events from NATS",
        "provider": USED,
        "nats": {
            "url": USED,
            "auth": "NATS credentials are nats.user/password/token/creds_file in our layout",
            "subscription_subjects": "the subjects read are the consumers' filter_subjects (JetStream) and "
                                     "realtime_processor's (core NATS)",
            "jetstream": {
                "enabled": "domain events are always read from JetStream",
                **{key: USED for key in _STREAM_KEYS},
                "consumers": {"notification_processor": _CONSUMER, "realtime_processor": _REALTIME_CONSUMER},
            },
        },
    },
    "notification": {
        "delivery": {
            "web": {
                "heartbeat_interval_ms": USED,
                "enabled": "web delivery is what the gateway does; it is always on",
                "sse_enabled": "the gateway always serves Server-Sent Events",
                "connection_timeout_ms": "SSE streams stay open until the client leaves",
            },
        },
    },
    "search": "search (Meilisearch) is the Fechatter server's business, not the notification back end's",
    "analytics": "analytics events are published by Fechatter's servers, not by the notification back end",
    "security": "event signatures (HMAC) are not checked: NATS credentials decide who may publish",
}


def fechatter_equivalent(path: Path) -> Path | None:
    """Our key for a Fechatter key that maps to one scalar of ours (``server.port`` -> ``gateway.port``)."""
    if path == ("messaging", "nats", "url"):
        return ("nats", "servers")
    return _SCALARS.get(path)


def is_fechatter_layout(data: dict[str, Any]) -> bool:
    """True when the file has any of Fechatter's top-level sections."""
    return any(key in data for key in FECHATTER_SECTIONS)


class _Translation:
    def __init__(self, data: dict[str, Any], origins: Origins) -> None:
        self.data = data
        self.origins = origins
        self.out: dict[str, Any] = {}
        self.out_origins: Origins = {}
        self.problems: list[Problem] = []

    def get(self, path: Path) -> Any:
        node: Any = self.data
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def origin(self, path: Path) -> str:
        return self.origins.get(path, "default")

    def put(self, src: Path, dst: Path, convert: Callable[[Any], Any] | None = None) -> None:
        value = self.get(src)
        if value is None:
            return
        node: dict[Any, Any] = self.out
        for part in dst[:-1]:
            node = node.setdefault(part, {})
        node[dst[-1]] = convert(value) if convert else value
        self.out_origins[dst] = self.origin(src)
        if isinstance(value, list):
            for i in range(len(value)):
                self.out_origins[(*dst, i)] = self.origin((*src, i))

    def info(self, path: Path, message: str) -> None:
        self.problems.append(Problem("info", "fechatter_layout", ".".join(map(str, path)), message,
                                     origin=self.origin(path)))


def _ms_to_duration(value: Any) -> Any:
    return f"{value}ms" if isinstance(value, int) and not isinstance(value, bool) else value


def translate(data: dict[str, Any], origins: Origins) -> tuple[dict[str, Any], Origins, list[Problem]]:
    """Move Fechatter-layout values to our layout.

    Returns ``(data, origins, problems)``: the translated values (only Fechatter's sections;
    our own sections in the same file are merged by the caller), where each came from, and
    the info/warning records describing how the file was read.
    """
    t = _Translation(data, origins)
    for src, dst in _SCALARS.items():
        t.put(src, dst, _ms_to_duration if str(src[-1]).endswith("_ms") else None)
    url = t.get(("messaging", "nats", "url"))
    if url is not None:
        t.put(("messaging", "nats", "url"), ("nats", "servers"), lambda v: [v] if isinstance(v, str) else v)
    provider = t.get(("messaging", "provider"))
    if provider is not None and provider != "nats":
        t.problems.append(Problem("error", "unsupported_provider", "messaging.provider",
                                  "fechatter-notify reads events from NATS only",
                                  origin=t.origin(("messaging", "provider")),
                                  value=provider, fix='provider: "nats"'))
    _translate_jetstream(t)
    _check_keys(t, data, FECHATTER_KEYS, ())
    return t.out, t.out_origins, t.problems


def _translate_jetstream(t: _Translation) -> None:
    js = t.get(_JS)
    if not isinstance(js, dict):
        return
    stream_name = js.get("stream")
    stream: dict[str, Any] = {}
    for key, ours in _STREAM_KEYS.items():
        if key in js:
            stream[ours] = js[key]
            t.out_origins[("jetstream", "streams", 0, ours)] = t.origin((*_JS, key))
            if key in _DURATION_KEYS:
                _warn_bare_integer(t, (*_JS, key), js[key], "hours" if key == "max_age" else None)
    if stream:
        t.out.setdefault("jetstream", {})["streams"] = [stream]
        t.out_origins[("jetstream", "streams", 0)] = t.origin((*_JS, "stream"))
        t.info((*_JS,), f"read as JetStream stream {stream_name or '<default name>'!r}; it captures our "
                        "default domain subjects (Fechatter's file names none)")
    consumers = js.get("consumers")
    if not isinstance(consumers, dict):
        return
    for name, spec in consumers.items():
        base = (*_JS, "consumers", name)
        if not isinstance(spec, dict):
            continue  # reported by _check_keys
        if name == "realtime_processor":
            _translate_realtime(t, base, spec)
        elif name == "notification_processor":  # any other name is a typo, reported by _check_keys
            _translate_durable(t, base, spec, stream_name)


def _translate_durable(t: _Translation, base: Path, spec: dict[str, Any], stream_name: Any) -> None:
    consumers = t.out.setdefault("jetstream", {}).setdefault("consumers", [])
    index = len(consumers)
    consumer: dict[str, Any] = {"durable": spec.get("name", base[-1])}
    if stream_name is not None:
        consumer["stream"] = stream_name
    dst_base: Path = ("jetstream", "consumers", index)
    t.out_origins[dst_base] = t.origin(base)
    for key, ours in _DURABLE_KEYS.items():
        if key not in spec:
            continue
        consumer[ours] = spec[key]
        t.out_origins[(*dst_base, ours)] = t.origin((*base, key))
        if isinstance(spec[key], list):
            for i in range(len(spec[key])):
                t.out_origins[(*dst_base, ours, i)] = t.origin((*base, key, i))
        if key in _DURATION_KEYS:
            _warn_bare_integer(t, (*base, key), spec[key], None)
    consumers.append(consumer)
    t.info(base, f"read as JetStream durable pull consumer {consumer['durable']!r}"
                 f"{' on stream ' + repr(stream_name) if stream_name else ''}; its idle_heartbeat is "
                 "sent in each pull request, never set on the consumer")


def _translate_realtime(t: _Translation, base: Path, spec: dict[str, Any]) -> None:
    realtime = t.out.setdefault("realtime", {})
    for key, ours in _REALTIME_KEYS.items():
        if key not in spec:
            continue
        realtime[ours] = spec[key]
        t.out_origins[("realtime", ours)] = t.origin((*base, key))
        if isinstance(spec[key], list):
            for i in range(len(spec[key])):
                t.out_origins[("realtime", ours, i)] = t.origin((*base, key, i))
        if key == "idle_heartbeat":
            _warn_bare_integer(t, (*base, key), spec[key], None)
    subjects = spec.get("filter_subjects")
    t.info(base, f"read as core NATS subscriptions (queue group {spec.get('name', '<default>')!r}) to "
                 f"{subjects!r}: realtime events are not persisted, so this is not a JetStream consumer")


def _warn_bare_integer(t: _Translation, path: Path, value: Any, meant: str | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        return
    hint = f"; Fechatter's files meant {meant}, i.e. {value}{meant[0]} = {value * 3600}s" if meant else ""
    fix = f"write {value}{meant[0]} or {value * 3600}s" if meant else f"write {value}s with its unit"
    t.problems.append(Problem("warning", "bare_integer_duration", ".".join(map(str, path)),
                              f"a bare integer is read as {value} seconds{hint}",
                              origin=t.origin(path), value=value, fix=fix))


def _check_keys(t: _Translation, node: dict[str, Any], spec: _Spec, path: Path) -> None:
    """Each key of a section we read is used, ignored with its reason, or an error with a suggestion."""
    for key, value in node.items():
        here: Path = (*path, key)
        if not path and key not in FECHATTER_SECTIONS:
            continue  # our own layout's sections: validated by the model
        rule = spec.get(key)
        if rule is None:
            t.problems.append(_unknown_key(t, here, spec))
        elif isinstance(rule, dict):
            if isinstance(value, dict):
                _check_keys(t, value, rule, here)
            elif value is not None:
                t.problems.append(Problem("error", "not_a_mapping", _dotted(here),
                                          f"a section of Fechatter's layout, with keys {', '.join(rule)}",
                                          origin=t.origin(here), fix=f"write {key}: followed by its keys, indented"))
        elif rule != USED:
            # Reported once, at the top of the subtree: its keys are not ours to check.
            t.problems.append(Problem("info", "ignored_key", _dotted(here), f"ignored: {rule}",
                                      origin=t.origin(here)))


def _unknown_key(t: _Translation, path: Path, spec: _Spec) -> Problem:
    known = list(spec)
    close = difflib.get_close_matches(str(path[-1]), known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
    return Problem("error", "unknown_key", _dotted(path),
                   f"unknown key in Fechatter's layout (its notify_server would not read it either); {hint}",
                   origin=t.origin(path), fix=f"rename it to {close[0]}" if close else "remove it")


def _dotted(path: Path) -> str:
    return ".".join(map(str, path))
