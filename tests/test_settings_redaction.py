"""No secret ever shows in config show, a repr or a log line."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.log import LogfmtFormatter
from settings import load_settings, redact_url

SECRETS = {
    "NATS_URL": "nats://natsuser:natspass-SECRET1@n:4222",
    "REDIS_URL": "redis://:redispass-SECRET2@r:6379/0",
    "SENTRY_DSN": "https://dsnkey-SECRET3@o1.ingest.sentry.example/42",
    "DATABASE_URL": "postgresql://pg:pgpass-SECRET4@db/fechatter",
    "NOTIFY__NATS__PASSWORD": "SECRET5",
    "NOTIFY__NATS__TOKEN": "SECRET6",
    "NOTIFY__NATS__NKEY_SEED": "SUAMSECRET7",
}


@pytest.mark.parametrize(
    ("url", "shown"),
    [("redis://:pw@h:1/0", "redis://***@h:1/0"), ("nats://u:p@h:4222", "nats://u:***@h:4222"),
     ("https://key@sentry.io/1", "https://***@sentry.io/1"), ("redis://h:1", "redis://h:1")],
)
def test_urls_keep_their_host_and_lose_their_credentials(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_the_settings_repr_hides_every_secret() -> None:
    text = repr(load_settings(env=SECRETS, text="").settings)
    assert "SECRET" not in text
    assert "r:6379" in text  # the host stays readable


def test_a_log_line_hides_url_credentials() -> None:
    record = logging.LogRecord("x", logging.INFO, "f", 1, "connected", None, None)
    record.server = SECRETS["NATS_URL"]
    assert "SECRET" not in LogfmtFormatter().format(record)


def test_config_show_prints_the_effective_config_with_secrets_redacted(tmp_path: Path) -> None:
    pem = (Path(__file__).parent / "fixtures" / "fechatter_notify_server.yml").read_text()
    assert "PRIVATE KEY" in pem
    env = {**SECRETS, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "fechatter_notify", "config", "show", "--format", "json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert "SECRET" not in out
    data = json.loads(out)
    assert data["redis"]["url"] == "redis://***@r:6379/0"
    assert data["nats"]["servers"] == ["nats://natsuser:***@n:4222"]
    assert data["nats"]["password"] == "***"


def test_a_log_line_hides_the_credentials_of_every_url_in_a_list_or_message() -> None:
    record = logging.LogRecord("x", logging.INFO, "f", 1, "nats_connect_failed", None, None)
    record.servers = "nats://a:SECRET-A@h1:4222,nats://b:SECRET-B@h2:4222"
    record.reason = "cannot reach redis://:SECRET-C@r:6379/0 (refused)"
    line = LogfmtFormatter().format(record)
    assert "SECRET" not in line
    assert "nats://a:***@h1:4222,nats://b:***@h2:4222" in line and "redis://***@r:6379/0" in line


def test_config_check_prints_its_summary_without_secrets(tmp_path: Path) -> None:
    env = {**SECRETS, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "fechatter_notify", "config", "check"],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "nats: nats://natsuser:***@n:4222" in result.stdout
    assert "SECRET" not in result.stdout + result.stderr
