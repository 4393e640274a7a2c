"""Reading a notify.yml written in Fechatter's own layout.

Fechatter's files use ``server``, ``auth``, ``messaging.nats.jetstream.consumers.*`` and
``notification.delivery.web``. Each value we use is moved to its place in our layout, keeping
its file position; each value we do not use is reported once as ignored. How each section
was read is reported too, so ``config check`` shows the interpretation, not just the result.

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
        self.used: set[Path] = set()

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
        self.used.add(src)
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
    if provider is not None:
        t.used.add(("messaging", "provider"))
    if provider is not None and provider != "nats":
        t.problems.append(Problem("error", "unsupported_provider", "messaging.provider",
                                  "fechatter-notify reads events from NATS only",
                                  origin=t.origin(("messaging", "provider")),
                                  value=provider, fix='provider: "nats"'))
    _translate_jetstream(t)
    _report_ignored(t, data, ())
    return t.out, t.out_origins, t.problems


def _translate_jetstream(t: _Translation) -> None:
    js = t.get(_JS)
    if not isinstance(js, dict):
        return
    stream_name = js.get("stream")
    stream: dict[str, Any] = {}
    for key, ours in _STREAM_KEYS.items():
        if key in js:
            t.used.add((*_JS, key))
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
    t.used.add((*_JS, "consumers"))
    for name, spec in consumers.items():
        base = (*_JS, "consumers", name)
        if not isinstance(spec, dict):
            continue
        if name == "realtime_processor":
            _translate_realtime(t, base, spec)
        else:
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
        t.used.add((*base, key))
        consumer[ours] = spec[key]
        t.out_origins[(*dst_base, ours)] = t.origin((*base, key))
        if isinstance(spec[key], list):
            for i in range(len(spec[key])):
                t.out_origins[(*dst_base, ours, i)] = t.origin((*base, key, i))
        if key in _DURATION_KEYS:
            _warn_bare_integer(t, (*base, key), spec[key], None)
    consumers.append(consumer)
    t.used.add(base)
    t.info(base, f"read as JetStream durable pull consumer {consumer['durable']!r}"
                 f"{' on stream ' + repr(stream_name) if stream_name else ''}; its idle_heartbeat is "
                 "sent in each pull request, never set on the consumer")


def _translate_realtime(t: _Translation, base: Path, spec: dict[str, Any]) -> None:
    realtime = t.out.setdefault("realtime", {})
    for key, ours in _REALTIME_KEYS.items():
        if key not in spec:
            continue
        t.used.add((*base, key))
        realtime[ours] = spec[key]
        t.out_origins[("realtime", ours)] = t.origin((*base, key))
        if isinstance(spec[key], list):
            for i in range(len(spec[key])):
                t.out_origins[("realtime", ours, i)] = t.origin((*base, key, i))
        if key == "idle_heartbeat":
            _warn_bare_integer(t, (*base, key), spec[key], None)
    t.used.add(base)
    subjects = spec.get("filter_subjects")
    t.info(base, f"read as core NATS subscriptions (queue group {spec.get('name', '<default>')!r}) to "
                 f"{subjects!r}: realtime events are not persisted, so this is not a JetStream consumer")
    for key in _REALTIME_IGNORED:
        if key in spec:
            t.used.add((*base, key))
            t.problems.append(Problem("info", "ignored_key", ".".join((*map(str, base), key)),
                                      "core NATS has no acks or pull batches; ignored",
                                      origin=t.origin((*base, key)), value=spec[key]))


def _warn_bare_integer(t: _Translation, path: Path, value: Any, meant: str | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        return
    hint = f"; Fechatter's files meant {meant}, i.e. {value}{meant[0]} = {value * 3600}s" if meant else ""
    fix = f"write {value}{meant[0]} or {value * 3600}s" if meant else f"write {value}s with its unit"
    t.problems.append(Problem("warning", "bare_integer_duration", ".".join(map(str, path)),
                              f"a bare integer is read as {value} seconds{hint}",
                              origin=t.origin(path), value=value, fix=fix))


def _report_ignored(t: _Translation, node: Any, path: Path) -> None:
    # A subtree nobody used is reported once, at its top, not key by key.
    if path and path[0] not in FECHATTER_SECTIONS:
        return
    if not path:
        for key, child in node.items():
            if key in FECHATTER_SECTIONS:
                _report_ignored(t, child, (key,))
        return
    if path in t.used:
        return
    if isinstance(node, dict) and any(p[: len(path)] == path for p in t.used):
        for key, child in node.items():
            _report_ignored(t, child, (*path, key))
        return
    t.problems.append(Problem("info", "ignored_key", ".".join(map(str, path)),
                              "Fechatter setting that fechatter-notify does not use; ignored",
                              origin=t.origin(path)))
