"""Where configuration values come from, each value remembering its origin.

A source returns ``(data, origins)``: a plain nested dict, and for each path the place that
supplied it (``notify.yml:12:5`` or ``env NOTIFY__REDIS__URL``). Sources are merged in
priority order (defaults < file < environment) and then validated once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path as FsPath
from typing import Any

import yaml

from settings.problems import Path, Problem

Origins = dict[Path, str]

#: Searched in order when neither --config nor $NOTIFY_CONFIG names a file.
DEFAULT_LOCATIONS = (FsPath("notify.yml"), FsPath("/etc/fechatter/notify.yml"))

#: Common deploy knobs and where they land.
ENV_SHORTCUTS: dict[str, Path] = {
    "NATS_URL": ("nats", "servers"),
    "REDIS_URL": ("redis", "url"),
    "SENTRY_DSN": ("sentry", "dsn"),
    # Heroku-style platforms and Procfile runners give the web process its port in $PORT;
    # NOTIFY_PORT, listed after it, wins when both are set.
    "PORT": ("gateway", "port"),
    "NOTIFY_PORT": ("gateway", "port"),
    "DATABASE_URL": ("database", "url"),
}
ENV_PREFIX = "NOTIFY__"


class ConfigFileError(Exception):
    """The configuration file cannot be found or read; the message names it."""


def locate_config(explicit: str | None, env: Mapping[str, str]) -> FsPath | None:
    """Pick the configuration file: ``--config``, then ``$NOTIFY_CONFIG``, then the defaults.

    A path named explicitly (flag or variable) that does not exist is an error, never a
    silent fall-through to defaults.
    """
    for path, how in ((explicit, "--config"), (env.get("NOTIFY_CONFIG"), "$NOTIFY_CONFIG")):
        if path:
            candidate = FsPath(path)
            if not candidate.is_file():
                raise ConfigFileError(f"{how} names {path}, which does not exist or is not a file")
            return candidate
    for candidate in DEFAULT_LOCATIONS:
        if candidate.is_file():
            return candidate
    return None


def _mark(name: str, node: yaml.Node) -> str:
    return f"{name}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


def _walk_nodes(node: yaml.Node, path: Path, origins: Origins, name: str) -> Any:
    # A key's place is where its name is written, which is where an operator looks.
    origins.setdefault(path, _mark(name, node))
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            origins[(*path, key)] = _mark(name, key_node)
            out[key] = _walk_nodes(value_node, (*path, key), origins, name)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk_nodes(child, (*path, i), origins, name) for i, child in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def load_yaml_file(path: FsPath) -> tuple[dict[str, Any], Origins]:
    """Read a YAML file keeping each value's line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(f"cannot read {path}: {exc.strerror}") from exc
    return load_yaml_text(text, str(path))


def load_yaml_text(text: str, name: str) -> tuple[dict[str, Any], Origins]:
    """Parse YAML ``text`` (called ``name`` in messages) into data and origins."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{name} is not valid YAML: {exc}") from exc
    if node is None:
        return {}, {}
    origins: Origins = {}
    data = _walk_nodes(node, (), origins, name)
    if not isinstance(data, dict):
        raise ConfigFileError(f"{name}: the top level must be a mapping of sections, not {type(data).__name__}")
    return data, origins


def _env_value(raw: str) -> Any:
    # Values are YAML scalars so NOTIFY__X=[a, b], =true and =45s all read naturally.
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw


def env_overrides(env: Mapping[str, str]) -> tuple[list[tuple[Path, Any, str]], list[Problem]]:
    """The environment's overrides as ``(path, value, origin)``, plus problems with the names."""
    overrides: list[tuple[Path, Any, str]] = []
    problems: list[Problem] = []
    for name, path in ENV_SHORTCUTS.items():
        raw = env.get(name)
        if raw:
            value: Any = [s.strip() for s in raw.split(",") if s.strip()] if name == "NATS_URL" else raw
            if name in ("PORT", "NOTIFY_PORT"):
                value = _env_value(raw)
            overrides.append((path, value, f"env {name}"))
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        tokens = name[len(ENV_PREFIX) :].split("__")
        if not all(tokens):
            problems.append(
                Problem("error", "env_name", name, "empty section or key in the variable name",
                        origin=f"env {name}", fix="write NOTIFY__SECTION__KEY=value")
            )
            continue
        key_path: Path = tuple(int(t) if t.isdigit() else t.lower() for t in tokens)
        overrides.append((key_path, _env_value(env[name]), f"env {name}"))
    return overrides, problems


def set_path(data: dict[str, Any], path: Path, value: Any) -> str | None:
    """Set ``value`` at ``path`` in ``data``, creating mappings; say why not when impossible."""
    node: Any = data
    for index, part in enumerate(path[:-1]):
        nxt = path[index + 1]
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return f"no list item [{part}] to override"
            node = node[part]
            continue
        if not isinstance(node, dict):
            return f"{part!r} is not inside a mapping"
        if part not in node or node[part] is None:
            node[part] = [] if isinstance(nxt, int) else {}
        node = node[part]
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            return f"no list item [{last}] to override"
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        return f"{last!r} is not inside a mapping"
    return None
