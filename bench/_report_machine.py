"""The machine a benchmark run measured: what RESULTS.md names beside every absolute number.

CPU model, cores, RAM, kernel, Python, the server binaries the benches start (tests/servers.py
finds them the same way) and the client libraries' versions, the tree's commit, and whether
other work was running: the load average and how busy the CPUs were just before the run.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Client libraries whose versions the report names (distribution names).
PACKAGES = ("dramatiq", "nats-py", "redis", "hiredis", "msgspec", "aiohttp", "uvloop", "faststream")


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def ram() -> str:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy (not idle, not iowait) over ``seconds``, 0..1 (Linux /proc/stat)."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in _read("/proc/stat").splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def other_load(seconds: float = 1.0) -> str:
    """The load average and the CPUs' busy share now: was the machine quiet?"""
    return f"load average {load()}; CPUs {cpu_busy(seconds) * 100:.0f} % busy over {seconds:g} s"


def server_version(find: Callable[[], Path]) -> str:
    try:
        binary = find()
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10)
    except Exception as exc:  # the report says so rather than failing the whole run
        return f"not found ({exc})"
    return f"{(out.stdout or out.stderr).strip().splitlines()[0]} ({binary})"


def packages() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' with uncommitted changes' if dirty else ''}"


def machine() -> dict[str, str]:
    """Everything RESULTS.md's machine table shows, as label -> text."""
    sys.path.insert(0, str(ROOT))
    from tests.servers import find_nats_server, find_redis_server

    return {
        "CPU": f"{cpu_model()}, {os.cpu_count()} logical CPUs",
        "RAM": ram(),
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "nats-server": server_version(find_nats_server),
        "redis-server": server_version(find_redis_server),
        "libraries": packages(),
        "commit": commit(),
        "other load at start": other_load(),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
