"""Hypothesis strategies for configuration files an operator (or an attacker) might hand the loader.

Each drawn :class:`ConfigCase` is the file's bytes and what the loader must answer:

- ``expect="load"``: the file is the base configuration written another way (key order, block or
  flow style, quoting, comments, equivalent duration spellings); it must load, to the same settings;
- ``expect="key"``: one key was given a value of the wrong type, out of its bounds, a bad duration
  or subject, or a key the model does not know; it must be refused with a problem naming that key
  (``path``, dotted as ``config check`` prints it);
- ``expect="place"``: the file is not a YAML document we read (syntax error, a key written twice,
  an alias bomb, nesting too deep, bytes that are not UTF-8, not a mapping); it must be refused with
  one problem whose origin is ``file:line:col``.

The leaves mutated come from :class:`settings.Settings` itself (every scalar key of every section),
so a key added to the model is fuzzed without editing this module.
"""

from __future__ import annotations

import copy
import json
import typing
from dataclasses import dataclass
from typing import Any, Final, Literal

import annotated_types
import yaml
from hypothesis import strategies as st
from pydantic import BaseModel, SecretStr

from settings import Settings

Expect = Literal["load", "key", "place"]

#: The configuration every case starts from (valid; durations in several spellings).
BASE: Final[dict[str, Any]] = {
    "nats": {"servers": ["nats://127.0.0.1:4222"], "ping_interval": "30s", "connect_timeout": "10s"},
    "redis": {"url": "redis://127.0.0.1:6379/0", "dedupe_window": "1h"},
    "realtime": {"subjects": ["fechatter.realtime.>"], "typing_ttl": "5s"},
    "gateway": {"port": 6687, "keep_alive": "20s", "drain_window": "10s"},
    "delivery": {"inbox_max_age": "7d", "min_backoff": "100ms"},
}
#: Equivalent spellings of BASE's durations (seconds -> what may be written instead).
SPELLINGS: Final[dict[float, list[Any]]] = {
    30.0: ["30s", "30", 30, "0.5m", "30000ms"], 10.0: ["10s", 10, "10000ms"], 3600.0: ["1h", "60m", 3600, "3600s"],
    5.0: ["5s", 5, "5000ms"], 20.0: ["20s", 20, "20000ms"], 604800.0: ["7d", "168h", 604800],
    0.1: ["100ms", 0.1, "0.1s"],
}
SECTION_OF_DURATION: Final = {("nats", "ping_interval"): 30.0, ("nats", "connect_timeout"): 10.0,
                              ("redis", "dedupe_window"): 3600.0, ("realtime", "typing_ttl"): 5.0,
                              ("gateway", "keep_alive"): 20.0, ("gateway", "drain_window"): 10.0,
                              ("delivery", "inbox_max_age"): 604800.0, ("delivery", "min_backoff"): 0.1}
BAD_SUBJECTS: Final = ["a..b", "foo bar", "a.>.b", ".a", "a.", "", "*x", "a.*b", "a\tb", ">x", "a.b>"]
BAD_DURATION_UNITS: Final = ["parsecs", "x", "sec", "w", "yrs", "s-", " s s", "mss", "hh"]


@dataclass(frozen=True)
class Leaf:
    """One scalar key of the model: where it is and what kind of value it takes."""

    path: tuple[str, ...]
    kind: Literal["duration", "int", "float", "bool", "literal", "str", "size"]
    low: float | None = None  # the lowest valid value (ge) or the bound it must exceed (gt)
    low_open: bool = False  # gt rather than ge
    high: float | None = None  # le

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True)
class ConfigCase:
    kind: str
    data: bytes
    expect: Expect
    path: str = ""  # the key a "key" refusal must name


def _kind(annotation: Any, metadata: list[Any]) -> Leaf | None:
    validators = [getattr(getattr(m, "func", None), "__name__", "") for m in metadata]
    low = next((m.ge for m in metadata if isinstance(m, annotated_types.Ge)), None)
    gt = next((m.gt for m in metadata if isinstance(m, annotated_types.Gt)), None)
    high = next((m.le for m in metadata if isinstance(m, annotated_types.Le)), None)
    bounds: dict[str, Any] = {"low": gt if gt is not None else low, "low_open": gt is not None, "high": high}
    if "parse_duration" in validators:
        return Leaf((), "duration", **bounds)
    if "parse_size" in validators:
        return Leaf((), "size", **bounds)
    if annotation is bool:
        return Leaf((), "bool")
    if annotation is int:
        return Leaf((), "int", **bounds)
    if annotation is float:
        return Leaf((), "float", **bounds)
    if typing.get_origin(annotation) is Literal:
        return Leaf((), "literal")
    if annotation in (str, SecretStr, str | None, SecretStr | None):
        return Leaf((), "str")
    return None  # lists, unions the fuzzer does not model


def model_leaves(model: type[BaseModel] = Settings, path: tuple[str, ...] = ()) -> list[Leaf]:
    """Every scalar key of the model (nested sections included, lists of sections left out)."""
    leaves: list[Leaf] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            leaves += model_leaves(annotation, (*path, name))
            continue
        leaf = _kind(annotation, list(info.metadata))
        if leaf is not None:
            leaves.append(Leaf((*path, name), leaf.kind, leaf.low, leaf.low_open, leaf.high))
    return leaves


def _dump(data: Any, flow: bool = False) -> bytes:
    return yaml.safe_dump(data, default_flow_style=flow, sort_keys=False, allow_unicode=True).encode()


def _with(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    node: Any = data
    for part in path[:-1]:
        node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
    node[path[-1]] = value
    return data


# --------------------------------------------------------------------------- refused at a key

_not_a_scalar = st.one_of(st.lists(st.integers(), min_size=1, max_size=3),
                          st.dictionaries(st.sampled_from(["a", "b", "value"]), st.integers(), min_size=1))
_words = st.text(alphabet="abcdefgijklnopqrtuvxyz_", min_size=1, max_size=12)  # no duration unit letter alone


@st.composite
def _bad_value(draw: st.DrawFn, leaf: Leaf) -> Any:
    """A value ``leaf`` must refuse."""
    options: list[st.SearchStrategy[Any]] = [_not_a_scalar]
    if leaf.kind in ("duration", "size", "int", "float"):
        options.append(_words.map(lambda w: f"x{w}"))
    if leaf.kind == "duration":
        units = st.sampled_from(BAD_DURATION_UNITS)
        options.append(st.tuples(st.integers(1, 999), units).map(lambda t: f"{t[0]}{t[1]}"))
        options.append(st.integers(1, 10**6).map(lambda n: f"-{n}s"))  # every duration is >= 0
    if leaf.kind == "int":
        options.append(st.floats(0.1, 0.9).map(lambda f: 1000 + f))  # a fraction is not an int
    if leaf.kind in ("int", "float") and leaf.low is not None:
        below = leaf.low if leaf.low_open else leaf.low - 1
        options.append(st.integers(0, 10**6).map(lambda n: below - n))
    if leaf.kind in ("int", "float") and leaf.high is not None:
        high = leaf.high
        options.append(st.integers(1, 10**6).map(lambda n: high + n))
    if leaf.kind == "bool":
        options.append(st.sampled_from(["maybe", "sometimes", "2"]))
    if leaf.kind == "literal":
        options.append(_words.map(lambda w: f"not-{w}"))
    return draw(st.one_of(options))


@st.composite
def wrong_values(draw: st.DrawFn) -> ConfigCase:
    leaf = draw(st.sampled_from(model_leaves()))
    value = draw(_bad_value(leaf))
    return ConfigCase(f"wrong_{leaf.kind}", _dump(_with(leaf.path, value)), "key", leaf.dotted)


@st.composite
def unknown_keys(draw: st.DrawFn) -> ConfigCase:
    section = draw(st.sampled_from([None, *BASE]))
    key = "zz_" + draw(_words)
    if section is None:
        data = {**copy.deepcopy(BASE), key: draw(st.integers() | _words)}
        return ConfigCase("unknown_section", _dump(data), "key", key)
    return ConfigCase("unknown_key", _dump(_with((section, key), draw(st.integers() | _words))), "key",
                      f"{section}.{key}")


@st.composite
def bad_subjects(draw: st.DrawFn) -> ConfigCase:
    subjects = ["fechatter.realtime.>"]
    index = draw(st.integers(0, 1))
    subjects.insert(index, draw(st.sampled_from(BAD_SUBJECTS)))
    return ConfigCase("bad_subject", _dump(_with(("realtime", "subjects"), subjects)), "key",
                      f"realtime.subjects[{index}]")


# --------------------------------------------------------------------------- refused at a place


@st.composite
def alias_bombs(draw: st.DrawFn) -> ConfigCase:
    """A "billion laughs": each level lists the one before it ``width`` times."""
    width, depth = draw(st.integers(5, 12)), draw(st.integers(5, 9))
    lines = ["a0: &a0 [lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth)]
    return ConfigCase("alias_bomb", "\n".join(lines).encode(), "place")


@st.composite
def duplicate_keys(draw: st.DrawFn) -> ConfigCase:
    section = draw(st.sampled_from(list(BASE)))
    key = draw(st.sampled_from(list(BASE[section])))
    text = _dump(BASE).decode()
    line = f"  {key}: {json.dumps(BASE[section][key])}\n"
    if draw(st.booleans()):
        text += f"{section}:\n{line}"  # the whole section twice
    else:
        text = text.replace(f"{section}:\n", f"{section}:\n{line}", 1)  # one key twice in it
    return ConfigCase("duplicate_key", text.encode(), "place")


@st.composite
def invalid_bytes(draw: st.DrawFn) -> ConfigCase:
    data = _dump(BASE)
    at = draw(st.integers(0, len(data)))
    bad = draw(st.sampled_from([b"\xff", b"\xfe", b"\xc3\x28", b"\x80", b"\xe2\x82", b"\xf0\x28\x8c\xbc",
                                b"\xed\xa0\x80"]))
    # Never split a multi-byte character of the base (it is ASCII, so every offset is a boundary).
    return ConfigCase("invalid_utf8", data[:at] + bad + data[at:], "place")


@st.composite
def syntax_errors(draw: st.DrawFn) -> ConfigCase:
    broken = draw(st.sampled_from([
        "nats: [1, 2\n", 'redis:\n  url: "unterminated\n', "gateway:\n  port: 1\n    keep_alive: 2s\n",
        "a: b: c\n", "nats:\n\t- x\n", "- 1\n: 2\n", "{a: 1\n", "key: [}\n", "x: !!python/object:os.system ls\n",
        "realtime:\n  subjects: [a, b]]\n",
    ]))
    text = _dump(BASE).decode()
    cut = draw(st.integers(0, text.count("\n")))
    lines = text.splitlines(keepends=True)
    # Between top-level sections, so the broken fragment is what breaks the document.
    while cut < len(lines) and lines[cut].startswith(" "):
        cut += 1
    return ConfigCase("syntax_error", "".join([*lines[:cut], broken, *lines[cut:]]).encode(), "place")


@st.composite
def too_deep(draw: st.DrawFn) -> ConfigCase:
    depth = draw(st.integers(65, 300))
    flow = draw(st.booleans())
    text = ("x: " + "[" * depth + "]" * depth) if flow else "".join(f"{'  ' * i}k{i}:\n" for i in range(depth))
    return ConfigCase("too_deep", text.encode(), "place")


@st.composite
def not_mappings(draw: st.DrawFn) -> ConfigCase:
    value = draw(st.one_of(st.lists(st.integers(), min_size=1, max_size=3), st.integers(), _words))
    return ConfigCase("not_a_mapping", _dump(value), "place")


# --------------------------------------------------------------------------- valid


@st.composite
def rewritten(draw: st.DrawFn) -> ConfigCase:
    """BASE, written another way: the loader must read the same settings."""
    data: dict[str, Any] = {}
    for section in draw(st.permutations(list(BASE))):
        keys = draw(st.permutations(list(BASE[section])))
        data[section] = {k: draw(st.sampled_from(SPELLINGS[SECTION_OF_DURATION[(section, k)]]))
                         if (section, k) in SECTION_OF_DURATION else BASE[section][k] for k in keys}
    text = _dump(data, flow=draw(st.booleans())).decode()
    if draw(st.booleans()):
        text = "# notify.yml\n" + text.replace("\n", "  # a comment\n", 1)
    return ConfigCase("valid", text.encode(), "load")


def config_cases() -> st.SearchStrategy[ConfigCase]:
    """Every kind above, the refusals weighted by how many ways each can go wrong."""
    return st.one_of(wrong_values(), wrong_values(), wrong_values(), unknown_keys(), bad_subjects(),
                     alias_bombs(), duplicate_keys(), invalid_bytes(), syntax_errors(), too_deep(),
                     not_mappings(), rewritten())
