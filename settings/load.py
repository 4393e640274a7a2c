"""Load the configuration once: find the file, merge sources, validate, run the named checks.

Sources in priority order (lowest first): defaults < notify.yml < environment. The merged
values are validated once by :class:`settings.model.Settings`, then every rule in
:mod:`settings.checks` runs. All problems are collected before anything is raised.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from settings.checks import run_checks
from settings.fechatter_layout import FECHATTER_SECTIONS, fechatter_equivalent, is_fechatter_layout, translate
from settings.model import Settings
from settings.problems import ConfigError, Path, Problem, dotted
from settings.redact import MASK, is_secret_key
from settings.sources import (
    Origins,
    env_overrides,
    load_yaml_file,
    load_yaml_text,
    locate_config,
    set_path,
)


@dataclass(frozen=True)
class Loaded:
    """The validated settings plus everything ``config check`` reports about how they were read."""

    settings: Settings
    source: str
    problems: list[Problem] = field(default_factory=list)
    origins: Origins = field(default_factory=dict)

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]


def load_settings(config: str | None = None, env: Mapping[str, str] | None = None, *,
                  text: str | None = None) -> Loaded:
    """Load and validate the configuration.

    Parameters:
      config(str | None): the ``--config`` path, if given.
      env(Mapping | None): the environment (default ``os.environ``).
      text(str | None): YAML text to use instead of a file (tests, ``config check -``).

    Returns:
      Loaded: the settings, their source, and the warnings/infos.

    Raises:
      ConfigFileError: a named file is missing, unreadable or not YAML.
      ConfigError: any validation problem; ``.problems`` lists all of them.
    """
    env = os.environ if env is None else env
    if text is not None:
        data, origins = load_yaml_text(text, config or "<text>")
        source = config or "<text>"
    else:
        path = locate_config(config, env)
        data, origins = load_yaml_file(path) if path else ({}, {})
        source = str(path) if path else "defaults (no notify.yml found)"
    return _build(data, origins, env, source)


def _build(data: dict[str, Any], origins: Origins, env: Mapping[str, str], source: str) -> Loaded:
    problems: list[Problem] = []
    merged, merged_origins = _split_layouts(data, origins, problems)
    _apply_env(merged, merged_origins, env, problems)
    unknown = _unknown_keys(merged, merged_origins, Settings, ())
    problems += unknown
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        invalid = _validation_problems(exc, merged_origins)
        problems += invalid
        # Run the cross-field rules on what is valid, so one typo does not hide the rest.
        bad_paths = [tuple(e["loc"]) for e in exc.errors(include_url=False)]
        reported = {p.path for p in invalid + unknown}
        try:
            partial = Settings.model_validate(_without(merged, bad_paths))
        except ValidationError:
            raise ConfigError(_ordered(problems)) from None
        problems += [p for p in run_checks(partial, merged_origins) if p.path not in reported]
        raise ConfigError(_ordered(problems)) from None
    problems += run_checks(settings, merged_origins)
    if any(p.level == "error" for p in problems):
        raise ConfigError(_ordered(problems))
    return Loaded(settings, source, _ordered(problems), merged_origins)


def _without(data: dict[str, Any], paths: list[tuple[Any, ...]]) -> dict[str, Any]:
    pruned = copy.deepcopy(data)
    for path in sorted(paths, key=lambda p: [str(x) for x in p], reverse=True):
        parent = _get(pruned, path[:-1])
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
        elif isinstance(parent, list) and isinstance(path[-1], int) and path[-1] < len(parent):
            parent[path[-1]] = None if not path[:-1] else parent[path[-1]]
    return pruned


def _ordered(problems: list[Problem]) -> list[Problem]:
    rank = {"error": 0, "warning": 1, "info": 2}
    return sorted(problems, key=lambda p: rank[p.level])


def _split_layouts(data: dict[str, Any], origins: Origins,
                   problems: list[Problem]) -> tuple[dict[str, Any], Origins]:
    ours = {k: v for k, v in data.items() if k not in FECHATTER_SECTIONS}
    our_origins = {p: o for p, o in origins.items() if not p or p[0] not in FECHATTER_SECTIONS}
    if not is_fechatter_layout(data):
        return ours, our_origins
    translated, t_origins, t_problems = translate(data, origins)
    problems += t_problems
    for path, _value in _leaves(translated):
        if _get(ours, path) is not None:
            problems.append(Problem("error", "set_twice", dotted(path),
                                    f"set both in Fechatter's layout ({t_origins.get(path)}) and in ours",
                                    origin=our_origins.get(path, "default"), fix="keep one of them"))
    merged = _deep_merge(translated, ours)
    return merged, {**t_origins, **our_origins}


def _leaves(node: Any, path: Path = ()) -> list[tuple[Path, Any]]:
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _leaves(v, (*path, k))]
    return [(path, node)]


def _get(node: Any, path: Path) -> Any:
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return None
        elif not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _apply_env(merged: dict[str, Any], origins: Origins, env: Mapping[str, str],
               problems: list[Problem]) -> None:
    overrides, env_problems = env_overrides(env)
    problems += env_problems
    defaults = Settings().model_dump()
    for path, value, origin in overrides:
        if path and path[0] in FECHATTER_SECTIONS:
            problems.append(_fechatter_env_problem(path, origin))
            continue
        _materialize_lists(merged, defaults, path)
        why = set_path(merged, path, value)
        if why:
            problems.append(Problem("error", "env_path", dotted(path), why, origin=origin,
                                    fix="check the section and key names in the variable"))
            continue
        for known in [p for p in origins if p[: len(path)] == path]:
            del origins[known]
        origins[path] = origin


def _fechatter_env_problem(path: Path, origin: str) -> Problem:
    # NOTIFY__SERVER__PORT: overrides address our layout; name the key that does what was meant.
    ours = fechatter_equivalent(path)
    fix = f"use NOTIFY__{'__'.join(str(p).upper() for p in ours)}" if ours else "override a key of our layout"
    return Problem("error", "env_fechatter_layout", dotted(path),
                   "NOTIFY__ variables set keys of our layout, not of Fechatter's", origin=origin, fix=fix)


def _materialize_lists(merged: dict[str, Any], defaults: dict[str, Any], path: Path) -> None:
    # NOTIFY__JETSTREAM__CONSUMERS__0__BATCH must work even when the file has no consumers list.
    node: Any = merged
    default: Any = defaults
    for index, part in enumerate(path[:-1]):
        if not isinstance(part, str) or not isinstance(node, dict) or not isinstance(default, dict):
            return
        if part not in node:
            if isinstance(path[index + 1], str):
                node[part] = {}
            elif isinstance(default.get(part), list):
                node[part] = _plain(copy.deepcopy(default[part]))
            else:
                return
        node, default = node[part], default.get(part)


def _plain(value: Any) -> Any:
    from pydantic import SecretStr

    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _model_at(model: type[BaseModel], key: str) -> tuple[type[BaseModel] | None, bool]:
    """The sub-model of ``model.key`` and whether it is a list of models."""
    info = model.model_fields.get(key)
    if info is None:
        return None, False
    ann = info.annotation
    origin = getattr(ann, "__origin__", None)
    if origin is list:
        (inner,) = ann.__args__  # type: ignore[union-attr]
        return (inner, True) if isinstance(inner, type) and issubclass(inner, BaseModel) else (None, False)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann, False
    return None, False


def _unknown_keys(node: Any, origins: Origins, model: type[BaseModel], path: Path) -> list[Problem]:
    if not isinstance(node, dict):
        return []
    problems: list[Problem] = []
    known = list(model.model_fields)
    for key, value in node.items():
        here = (*path, key)
        if key not in model.model_fields:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
            problems.append(Problem("error", "unknown_key", dotted(here), f"unknown key; {hint}",
                                    origin=origins.get(here, "default"),
                                    fix=f"rename it to {close[0]}" if close else "remove it"))
            continue
        sub, is_list = _model_at(model, key)
        if sub is None:
            continue
        if is_list and isinstance(value, list):
            for i, item in enumerate(value):
                problems += _unknown_keys(item, origins, sub, (*here, i))
        elif not is_list:
            problems += _unknown_keys(value, origins, sub, here)
    return problems


def _validation_problems(exc: ValidationError, origins: Origins) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        if err["type"] == "extra_forbidden":
            continue  # reported by _unknown_keys, with a suggestion
        loc: Path = tuple(err["loc"])
        origin = "default"
        for cut in range(len(loc), -1, -1):
            if loc[:cut] in origins:
                origin = origins[loc[:cut]]
                break
        value = err.get("input")
        if isinstance(value, dict | list):
            value = None
        elif loc and isinstance(loc[-1], str) and is_secret_key(loc[-1]):
            value = MASK  # a token or password refused for its shape is still a secret
        msg = str(err["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        problems.append(Problem("error", str(err["type"]), dotted(loc), msg, origin=origin, value=value,
                                fix=_fix_for(err)))
    return problems


def _fix_for(err: Any) -> str | None:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = next(iter(ctx.values()), None)
        word = {"greater_than": "above", "greater_than_equal": "at least", "less_than": "below",
                "less_than_equal": "at most"}[kind]
        return f"use a value {word} {bound}"
    if kind == "literal_error":
        return f"use one of {ctx.get('expected')}"
    if kind == "missing":
        return "add this key"
    return None


__all__ = ["ConfigError", "Loaded", "load_settings"]
