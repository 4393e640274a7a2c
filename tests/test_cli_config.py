"""``fechatter-notify config check|show`` run as a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fechatter_notify", *args], cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)}, capture_output=True, text=True)


def test_config_check_prints_a_resolved_summary_and_exits_0(tmp_path: Path) -> None:
    result = run_cli("config", "check", "--config", str(FIXTURES / "seed_layout.yml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert "durable pull consumer notification_processor on fechatter_events" in result.stdout
    assert "heartbeat 45s per request" in result.stdout and "expires 1m30s" in result.stdout
    assert "read as core NATS subscriptions" in result.stdout


def test_config_check_reports_every_problem_with_file_and_line_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "notify.yml"
    bad.write_text("nats:\n  ping_interval: 60s\njetstream:\n  consumers:\n    - batchh: 5\n")
    result = run_cli("config", "check", cwd=tmp_path)
    assert result.returncode == 2
    assert "notify.yml:5:7: error [unknown_key] jetstream.consumers[0].batchh" in result.stderr
    assert "did you mean 'batch'" in result.stderr
    # The default heartbeat (45s) is now below the 60s ping: reported at the consumer it belongs to.
    assert "notify.yml:5:7: error [heartbeat_not_above_ping] jetstream.consumers[0].idle_heartbeat" in result.stderr
    assert "2 error(s)" in result.stderr


def test_config_check_with_a_missing_explicit_file_exits_2(tmp_path: Path) -> None:
    result = run_cli("--config", str(tmp_path / "missing.yml"), "config", "check", cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_config_check_names_a_sentinel_deployment_without_its_passwords(tmp_path: Path) -> None:
    config = tmp_path / "notify.yml"
    config.write_text("redis:\n  sentinels: [127.0.0.1:26379, 127.0.0.1:26380, 127.0.0.1:26381]\n"
                      "  master_name: notify\n  password: hunter2-primary\n  sentinel_password: hunter2-sentinel\n")
    result = run_cli("config", "check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "redis: master 'notify' via sentinels 127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr
