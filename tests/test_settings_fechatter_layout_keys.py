"""Every key of every section read, in both layouts: used, ignored with its reason, or an error with a suggestion.

Before, a misspelt key inside a Fechatter-layout section (``idle_heartbaet`` in a consumer) was
reported as an ignored setting and its default used, while the same typo in our layout was an
error. These tests walk every section of both layouts so that no section can slip back.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from settings import ConfigError, Problem, load_settings
from settings.fechatter_layout import FECHATTER_KEYS, USED, translate
from settings.model import Settings
from settings.problems import Path
from settings.sources import load_yaml_text

#: A file in Fechatter's layout that loads cleanly (the seed's fix), the base of every case.
BASE: dict[str, Any] = {
    "server": {"port": 6687},
    "messaging": {"provider": "nats", "nats": {"url": "nats://127.0.0.1:4222", "jetstream": {
        "stream": "fechatter_events",
        "consumers": {
            "notification_processor": {"name": "notification_processor",
                                       "filter_subjects": ["fechatter.messages.>", "fechatter.chats.>"],
                                       "idle_heartbeat": "45s"},
            "realtime_processor": {"name": "realtime_processor", "filter_subjects": ["fechatter.realtime.>"],
                                   "idle_heartbeat": "45s"},
        }}}},
}


def sections(spec: dict[str, Any], path: Path = ()) -> list[tuple[Path, dict[str, Any]]]:
    """Every section of Fechatter's layout that we read (a mapping in FECHATTER_KEYS), with its keys."""
    found = [(path, spec)] if path else []
    for key, rule in spec.items():
        if isinstance(rule, dict):
            found += sections(rule, (*path, key))
    return found


def leaves(spec: dict[str, Any], path: Path = ()) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    for key, rule in spec.items():
        out += leaves(rule, (*path, key)) if isinstance(rule, dict) else [((*path, key), rule)]
    return out


def with_value(base: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    doc = yaml.safe_load(yaml.safe_dump(base))
    node = doc
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    return doc


def problems_of(doc: dict[str, Any]) -> list[Problem]:
    try:
        return load_settings("notify.yml", env={}, text=yaml.safe_dump(doc, sort_keys=False)).problems
    except ConfigError as exc:
        return exc.problems


def typo(key: str) -> str:
    return key[:-1] + key[-1] * 2 + "x" if len(key) > 3 else key + "x"


def test_the_base_file_loads_cleanly() -> None:
    assert not [p for p in problems_of(BASE) if p.level == "error"]


SECTIONS = sections(FECHATTER_KEYS)


@pytest.mark.parametrize(("section", "keys"), SECTIONS, ids=[".".join(map(str, p)) for p, _ in SECTIONS])
def test_a_typo_in_any_fechatter_section_is_an_error_with_a_suggestion(section: Path, keys: dict[str, Any]) -> None:
    meant = next(iter(keys))
    wrong = typo(meant)
    doc = with_value(BASE, (*section, wrong), "45s")
    errors = [p for p in problems_of(doc) if p.level == "error"]
    dotted = ".".join(map(str, (*section, wrong)))
    mine = [p for p in errors if p.path == dotted]
    assert [p.code for p in mine] == ["unknown_key"], [p.format() for p in errors]
    assert f"did you mean {meant!r}" in mine[0].message and mine[0].fix == f"rename it to {meant}"
    assert mine[0].origin.startswith("notify.yml:")


@pytest.mark.parametrize(("path", "rule"), leaves(FECHATTER_KEYS), ids=[".".join(map(str, p)) for p, _ in
                                                                         leaves(FECHATTER_KEYS)])
def test_every_known_fechatter_key_is_used_or_ignored_with_its_reason(path: Path, rule: str) -> None:
    value: Any = {"enabled": True} if rule != USED and path[-1] in ("search", "analytics", "security") else "x"
    data, origins = load_yaml_text(yaml.safe_dump(with_value(BASE, path, value)), "notify.yml")
    _out, out_origins, problems = translate(data, origins)
    dotted = ".".join(map(str, path))
    if path == ("messaging", "provider"):  # read, not moved: anything but nats is refused
        assert [p.code for p in problems if p.path == dotted] == ["unsupported_provider"]
    elif rule == USED:
        # Moved to our layout, remembering where it was written
        assert origins[path] in out_origins.values(), dotted
        assert not [p for p in problems if p.path == dotted and p.code in ("ignored_key", "unknown_key")]
    else:
        (ignored,) = [p for p in problems if p.path == dotted]
        assert (ignored.code, ignored.level) == ("ignored_key", "info")
        assert ignored.message == f"ignored: {rule}" and len(rule) > 20
        assert ignored.origin == origins[path]


def test_a_misspelt_consumer_is_an_error_not_a_second_durable() -> None:
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    consumers = doc["messaging"]["nats"]["jetstream"]["consumers"]
    consumers["realtime_procesor"] = consumers.pop("realtime_processor")
    errors = [p for p in problems_of(doc) if p.level == "error"]
    (problem,) = [p for p in errors if p.code == "unknown_key"]
    assert problem.path == "messaging.nats.jetstream.consumers.realtime_procesor"
    assert "did you mean 'realtime_processor'" in problem.message
    with pytest.raises(ConfigError):
        load_settings("notify.yml", env={}, text=yaml.safe_dump(doc))


def test_a_section_that_is_not_a_mapping_is_an_error() -> None:
    problems = problems_of(with_value(BASE, ("messaging", "nats", "jetstream", "consumers"), ["a", "b"]))
    (problem,) = [p for p in problems if p.code == "not_a_mapping"]
    assert problem.path == "messaging.nats.jetstream.consumers" and "notification_processor" in problem.message


def test_the_realtime_consumers_ack_settings_are_ignored_with_the_reason() -> None:
    doc = with_value(BASE, ("messaging", "nats", "jetstream", "consumers", "realtime_processor", "ack_wait"), "10s")
    (problem,) = [p for p in problems_of(doc) if p.path.endswith("realtime_processor.ack_wait")]
    assert problem.level == "info" and "core NATS has no acks" in problem.message


def _our_sections(model: type[BaseModel], path: Path = ()) -> list[tuple[Path, str]]:
    """Every section of our layout (lists of sections at index 0) with one of its keys."""
    found: list[tuple[Path, str]] = [(path, next(iter(model.model_fields)))] if path else []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if getattr(ann, "__origin__", None) is list:
            (inner,) = ann.__args__
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                found += _our_sections(inner, (*path, name, 0))
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            found += _our_sections(ann, (*path, name))
    return found


OURS = _our_sections(Settings)


@pytest.mark.parametrize(("section", "key"), OURS, ids=[".".join(map(str, p)) for p, _ in OURS])
def test_a_typo_in_any_section_of_our_layout_is_an_error_with_a_suggestion(section: Path, key: str) -> None:
    wrong = typo(key)
    doc: dict[str, Any] = {}
    node: Any = doc
    for part, nxt in zip(section, (*section[1:], wrong), strict=True):
        if isinstance(part, int):
            continue
        node[part] = [{}] if isinstance(nxt, int) else {}
        node = node[part][0] if isinstance(nxt, int) else node[part]
    node[wrong] = "x"
    errors = [p for p in problems_of(doc) if p.level == "error" and p.code == "unknown_key"]
    assert len(errors) == 1, [p.format() for p in errors]
    assert f"did you mean {key!r}" in errors[0].message and errors[0].origin.startswith("notify.yml:")


@pytest.mark.parametrize(("section", "key"), OURS[:6], ids=[".".join(map(str, p)) for p, _ in OURS[:6]])
def test_a_typo_in_an_environment_override_of_any_section_has_a_suggestion(section: Path, key: str) -> None:
    name = "NOTIFY__" + "__".join(str(p).upper() for p in (*section, typo(key)))
    with pytest.raises(ConfigError) as info:
        load_settings(env={name: "x"}, text="")
    (problem,) = [p for p in info.value.problems if p.code == "unknown_key"]
    assert problem.origin == f"env {name}" and f"did you mean {key!r}" in problem.message
