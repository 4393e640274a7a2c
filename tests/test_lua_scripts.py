"""Every Lua script is a ``.lua`` file with its key-schema header, loaded and run by runtime.LuaScript."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dramatiq.brokers.redis import RedisBroker

from runtime import LuaScript
from workers.broker import WakeRedisBroker

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("settings", "events", "runtime", "bridge", "workers", "gateway", "fechatter_notify")
SCRIPTS = sorted(p for package in PACKAGES for p in (ROOT / package).glob("*.lua"))
SOURCES = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _header(path: Path) -> str:
    """The leading comment lines."""
    header = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("--"):
            break
        header.append(line)
    return "\n".join(header)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_starts_with_its_key_schema(path: Path) -> None:
    header = _header(path)
    assert header, f"{path.name}: start with a comment naming the keys and arguments"
    assert re.search(r"KEYS|key", header), f"{path.name}: the header names no key"
    assert re.search(r"ARGV", header), f"{path.name}: the header names no argument"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_is_loaded_by_the_one_loader(path: Path) -> None:
    package = path.parent
    callers = [p for p in package.glob("*.py") if f'"{path.name}"' in p.read_text(encoding="utf-8")]
    assert callers, f"no module of {package.name} loads {path.name}"
    LuaScript(package.name, path.name)  # the header check passes


def test_no_other_way_to_load_a_script() -> None:
    other = re.compile(r"register_script\(|\"EVALSHA\"|\.evalsha\(|\.eval\(|SCRIPT\", \"LOAD|script_load\(")
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
             for p in SOURCES if p != ROOT / "runtime" / "lua.py"
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if other.search(line)]
    assert not found, "load and run scripts with runtime.LuaScript:\n" + "\n".join(found)


def test_broker_runs_the_dispatch_script_dramatiq_registers() -> None:
    url = "redis://127.0.0.1:1/0"  # nothing is sent
    ours = WakeRedisBroker(url=url, wake=False)
    assert ours._dispatch_script.sha == RedisBroker(url=url).scripts["dispatch"].sha
