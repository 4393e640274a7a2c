"""A worker supervisor killed with SIGKILL (its pid only, as ``kill -9 PID`` does): its worker
processes notice and stop, instead of consuming on unsupervised beside a restarted supervisor's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.servers import RedisServer, free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_worker_processes_stop_when_their_supervisor_is_killed(redis_server: RedisServer, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY") and k != "REDIS_URL"}
    env.update({"REDIS_URL": redis_server.url, "NOTIFY__HEALTH__WORKER_PORT": str(free_port()),
                "NOTIFY__METRICS__WORKER_PORT": str(free_port()), "NOTIFY__HEALTH__HOST": "127.0.0.1",
                "NOTIFY__METRICS__HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"})
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fechatter_notify", "worker", "-p", "2", "-t", "1"],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: log.read_text().count("event=worker_started") == 2, timeout=60,
                   message=lambda: log.read_text())
        workers = [pid for pid in children_of(proc.pid) if alive(pid)]
        assert workers
        proc.kill()  # the supervisor's pid only: its children are not signalled
        proc.wait(10)
        wait_until(lambda: not any(alive(pid) for pid in workers), timeout=20,
                   message=lambda: f"orphaned workers still running\n{log.read_text()}")
        assert log.read_text().count("event=worker_orphaned") >= 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in children_of(proc.pid):
            os.kill(pid, signal.SIGKILL)
