"""``dramatiq workers.app``: dramatiq's own CLI finds our broker, with every actor, configured from the settings.

workers/app.py is the documented entry point for running the workers under dramatiq's CLI instead
of ``fechatter-notify worker``; it loads the settings at import time, so it is imported in a fresh
process with the configuration in the environment (no server is contacted at import).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json
from dramatiq.cli import import_broker
from events import ACTORS
from workers.broker import WakeRedisBroker
module, broker = import_broker("workers.app")
assert isinstance(broker, WakeRedisBroker) and broker is module.broker
print(json.dumps({"actors": sorted(broker.actors), "expected": sorted(s.actor_name for s in ACTORS.values()),
                  "queues": sorted(q for q in broker.get_declared_queues() if not q.endswith(".DQ")),
                  "namespace": broker.namespace}))
"""


def test_dramatiq_cli_imports_the_configured_broker(tmp_path: Path) -> None:
    env = {**os.environ, "NOTIFY__REDIS__URL": "redis://127.0.0.1:1/0", "NOTIFY__REDIS__NAMESPACE": "probe",
           "NOTIFY__QUEUES__REALTIME": "rt", "NOTIFY__QUEUES__DOMAIN": "dom"}
    env.pop("NOTIFY_CONFIG", None)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=60, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["actors"] == found["expected"]
    assert found["queues"] == ["dom", "rt"]
    assert found["namespace"] == "probe"
