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

from settings.problems import ConfigError, Path, Problem
from settings.safe_yaml import MAX_FILE_BYTES, BoundError, compose_bounded, decode_utf8, scalar_value

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


class ConfigFileError(ConfigError):
    """The configuration cannot be found or read; the message names it, the problem says where.

    A :class:`ConfigError` with one problem, so ``config check`` and a refused reload report it
    the same way as every other problem (place, code, fix), never as a traceback.
    """

    def __init__(self, message: str, *, code: str = "config_file", origin: str = "default",
                 fix: str | None = None) -> None:
        super().__init__([Problem("error", code, "<file>", message, origin=origin, fix=fix)])
        self.message = f"{origin}: {message}"

    def __str__(self) -> str:
        return self.message


def locate_config(explicit: str | None, env: Mapping[str, str]) -> FsPath | None:
    """Pick the configuration file: ``--config``, then ``$NOTIFY_CONFIG``, then the defaults.

    A path named explicitly (flag or variable) that does not exist is an error, never a
    silent fall-through to defaults.
    """
    for path, how in ((explicit, "--config"), (env.get("NOTIFY_CONFIG"), "$NOTIFY_CONFIG")):
        if path:
            candidate = FsPath(path)
            if not candidate.is_file():
                raise ConfigFileError(f"{how} names {path}, which does not exist or is not a file",
                                      code="config_missing", origin=path, fix="give the path of an existing file")
            return candidate
    for candidate in DEFAULT_LOCATIONS:
        if candidate.is_file():
            return candidate
    return None


def _mark(name: str, node: yaml.Node) -> str:
    return f"{name}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _walk_nodes(node: yaml.Node, path: Path, origins: Origins, name: str) -> Any:
    # A key's place is where its name is written, which is where an operator looks.
    # The composer has bounded the graph (nodes, aliases, depth), so this walk is bounded too.
    origins.setdefault(path, _mark(name, node))
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # `<<: *defaults`: explicit keys win, as YAML says
                merges += value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                continue
            key = str(key_node.value)
            origins[(*path, key)] = _mark(name, key_node)
            out[key] = _walk_nodes(value_node, (*path, key), origins, name)
        for merged in merges:
            if not isinstance(merged, yaml.MappingNode):
                raise ConfigFileError("`<<` merges only mappings", code="bad_merge", origin=_mark(name, merged),
                                      fix="write <<: *anchor where the anchor is a mapping")
            for key, value in _walk_nodes(merged, path, {}, name).items():
                out.setdefault(key, value)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk_nodes(child, (*path, i), origins, name) for i, child in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)
    return scalar_value(node)


def read_bounded(path: FsPath) -> str:
    """The file's text: at most MAX_FILE_BYTES, UTF-8, refused with its place otherwise."""
    try:
        with path.open("rb") as f:
            # Read one byte past the limit rather than trusting stat: the file may be growing.
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigFileError(f"cannot read it: {exc.strerror}", code="unreadable", origin=str(path),
                              fix="check the path and its permissions") from exc
    if len(data) > MAX_FILE_BYTES:
        raise ConfigFileError(f"larger than {MAX_FILE_BYTES} bytes ({MAX_FILE_BYTES // 1024} KiB); "
                              "a notify.yml is a few KB", code="file_too_large", origin=str(path),
                              fix="is this the right file? remove what is not configuration")
    try:
        return decode_utf8(data)
    except BoundError as exc:
        raise _file_error(exc, str(path)) from None


def _file_error(exc: BoundError, name: str) -> ConfigFileError:
    return ConfigFileError(exc.message, code=exc.code, origin=exc.place(name), fix=exc.fix)


def load_yaml_file(path: FsPath) -> tuple[dict[str, Any], Origins]:
    """Read a YAML file keeping each value's line and column."""
    return load_yaml_text(read_bounded(path), str(path))


def load_yaml_text(text: str, name: str) -> tuple[dict[str, Any], Origins]:
    """Parse YAML ``text`` (called ``name`` in messages) into data and origins, every bound checked."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigFileError(f"longer than {MAX_FILE_BYTES} characters", code="file_too_large",
                              origin=name, fix="is this the right file?")
    try:
        node = compose_bounded(text)
    except BoundError as exc:
        raise _file_error(exc, name) from None
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, name) from None
    if node is None:
        return {}, {}
    origins: Origins = {}
    try:
        data = _walk_nodes(node, (), origins, name)
    except yaml.YAMLError as exc:  # a scalar the safe constructor refuses (an unknown !tag, a bad date)
        raise _yaml_error(exc, name) from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"the top level must be a mapping of sections, not {type(data).__name__}",
                              code="not_a_mapping", origin=_mark(name, node), fix="write section: ... at the top")
    return data, origins


def _yaml_error(exc: yaml.YAMLError, name: str) -> ConfigFileError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    origin = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else name
    what = " ".join(str(x) for x in (getattr(exc, "context", None), getattr(exc, "problem", None)) if x)
    return ConfigFileError(f"not valid YAML: {what or exc}", code="invalid_yaml", origin=origin,
                           fix="fix the syntax at that place (indentation, quotes, a missing ':')")


def _env_value(raw: str, name: str) -> tuple[Any, Problem | None]:
    # Values are YAML scalars so NOTIFY__X=[a, b], =true and =45s all read naturally. They go
    # through the same bounded reader as the file: an alias bomb in a variable is refused too.
    if not raw.strip():
        return raw, None
    try:
        node = compose_bounded(raw)
        return (_walk_nodes(node, (), {}, name) if node is not None else None), None
    except BoundError as exc:
        return None, Problem("error", exc.code, name, exc.message, origin=f"env {name}", fix=exc.fix)
    except yaml.YAMLError:
        return raw, None  # not YAML: the text itself (a password with a ':' in it, say)


def env_overrides(env: Mapping[str, str]) -> tuple[list[tuple[Path, Any, str]], list[Problem]]:
    """The environment's overrides as ``(path, value, origin)``, plus problems with the names."""
    overrides: list[tuple[Path, Any, str]] = []
    problems: list[Problem] = []
    for name, path in ENV_SHORTCUTS.items():
        raw = env.get(name)
        if raw:
            value: Any = [s.strip() for s in raw.split(",") if s.strip()] if name == "NATS_URL" else raw
            if name in ("PORT", "NOTIFY_PORT"):
                value, problem = _env_value(raw, name)
                if problem is not None:
                    problems.append(problem)
                    continue
            overrides.append((path, value, f"env {name}"))
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            problems += _near_miss(name)
            continue
        tokens = name[len(ENV_PREFIX) :].split("__")
        if not all(tokens):
            problems.append(
                Problem("error", "env_name", name, "empty section or key in the variable name",
                        origin=f"env {name}", fix="write NOTIFY__SECTION__KEY=value")
            )
            continue
        key_path: Path = tuple(int(t) if t.isdigit() else t.lower() for t in tokens)
        value, problem = _env_value(env[name], name)
        if problem is not None:
            problems.append(problem)
            continue
        overrides.append((key_path, value, f"env {name}"))
    return overrides, problems


#: Other variables of ours that start like an override.
_OUR_NOTIFY_NAMES = frozenset({"NOTIFY_CONFIG", *ENV_SHORTCUTS})


def _near_miss(name: str) -> list[Problem]:
    """A variable that looks meant as an override but would be skipped (``NOTIFY_REDIS__URL``,
    ``notify__redis__url``): a warning with the name it needs, never silence."""
    upper = name.upper()
    if name in _OUR_NOTIFY_NAMES or not upper.startswith("NOTIFY_") or "__" not in upper:
        return []
    meant = ENV_PREFIX + upper[len("NOTIFY_"):].lstrip("_")
    return [Problem("warning", "env_name", name, "looks like a NOTIFY__ override but is not one, so it is ignored",
                    origin=f"env {name}", fix=f"name it {meant}")]


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
