"""Sentry in every process: bridge, worker and gateway, each a real process reporting to a local
envelope receiver, hit an error while holding chat content (and, for the gateway, a token).

What is checked is the raw bytes that left: the content only with ``send_default_pii``, the
token never. The scrubber's rules are also tested alone, at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from bridge.testing import settings_yaml as bridge_yaml
from events.inbox import members_key, presence_key
from gateway.testing import UNREACHABLE_NATS, SigningKey, SseReader
from runtime.sentry import FILTERED, Scrubber, traces_sampler
from tests.sentry_fault import FAULT_MARKER
from tests.sentry_ingest import SentryIngest
from tests.servers import HOST, NatsServer, RedisServer, async_wait_until, free_port, wait_until
from tests.test_workers_sentry import start_worker, stop_worker, undecodable, worker_settings
from tests.test_workers_support import R_MESSAGE, enqueue, wait_drained, wait_subscribed

ROOT = Path(__file__).resolve().parents[1]
#: The chat content every scenario carries; it must not leave unless send_default_pii is on.
CONTENT = b"Hi team"
PII = pytest.mark.parametrize("pii", [False, True], ids=["scrubbed", "send_default_pii"])


@pytest.fixture
def ingest() -> Iterator[SentryIngest]:
    server = SentryIngest()
    yield server
    server.close()


def child_env() -> dict[str, str]:
    """The test's environment without anything that would configure the child instead of its file."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NOTIFY") and k not in ("REDIS_URL", "NATS_URL", "DATABASE_URL", "SENTRY_DSN", "PORT")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def sentry_section(ingest: SentryIngest, pii: bool) -> dict[str, Any]:
    return {"dsn": ingest.dsn, "send_default_pii": pii, "traces_sample_rate": 1.0, "release": "test-release",
            "environment": "test"}


def assert_scrubbed(ingest: SentryIngest, role: str, *, pii: bool, secrets: Sequence[bytes] = ()) -> dict[str, Any]:
    """Every event came from ``role``; the content left only with ``pii``; no secret ever. Returns an event."""
    events = ingest.events()
    assert events
    assert {e["tags"].get("role") for e in events} == {role}
    assert {(e.get("release"), e.get("environment")) for e in events} == {("test-release", "test")}
    raw = ingest.raw()
    assert (CONTENT in raw) is pii, "chat content " + ("missing" if pii else "sent")
    for secret in secrets:
        assert secret not in raw, f"secret fragment {secret[:6]!r}... was sent"
    return events[0]


def spawn(module: str, config: Path, command: str) -> subprocess.Popen[bytes]:
    """``python -m MODULE --config CONFIG COMMAND`` in its own process group, output captured."""
    return subprocess.Popen([sys.executable, "-m", module, "--config", str(config), command], cwd=ROOT,
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
    """SIGTERM the process group (a graceful stop flushes Sentry's queue); its output."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.communicate(timeout=timeout)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()[0].decode(errors="replace")


# -- worker --------------------------------------------------------------------------------------


@pytest.mark.slow
@PII
def test_worker_reports_a_failed_job_without_its_content(
    pii: bool, redis_server: RedisServer, ingest: SentryIngest, tmp_path: Path
) -> None:
    # Given a worker with Sentry on
    settings = worker_settings(redis_server.url, sentry=sentry_section(ingest, pii))
    client = redis_server.client()
    proc = start_worker(settings, tmp_path)
    try:
        wait_subscribed(client, settings, ["domain"])
        # When a job carrying chat content fails for good
        enqueue(client, settings, undecodable("fechatter.realtime.chat.42", R_MESSAGE))
        wait_drained(client, settings)
        wait_until(ingest.events, timeout=10, message="event not received")
    finally:
        output = stop_worker(proc)
        client.close()
    assert proc.returncode == 0, output
    # Then it is reported, tagged worker, with the content only when send_default_pii is on
    event = assert_scrubbed(ingest, "worker", pii=pii)
    assert event["exception"]["values"][-1]["type"] == "InvalidJob"
    args = event["contexts"]["dramatiq"]["data"]["args"]
    assert args[0]["content"] == "Hi team" if pii else args == FILTERED


# -- bridge --------------------------------------------------------------------------------------


async def publish_until_stored(nats_url: str, subject: str, payload: bytes) -> None:
    """Publish once the bridge has created the stream (JetStream refuses until then)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await async_wait_until(lambda: js.publish(subject, payload, timeout=1), timeout=20,
                               ignore=(nats.errors.Error,), message="the bridge did not create the stream")
    finally:
        await nc.close()


@pytest.mark.slow
@PII
async def test_bridge_reports_a_failing_batch_without_the_payload(
    pii: bool, nats_server: NatsServer, redis_server: RedisServer, ingest: SentryIngest, tmp_path: Path
) -> None:
    # Given a bridge with Sentry on, and a bug planted in its event parsing (tests/sentry_fault.py)
    config = tmp_path / "notify.yml"
    config.write_text(bridge_yaml(nats_server.url, redis_server.url, {"sentry": sentry_section(ingest, pii)}))
    proc = spawn("tests.sentry_fault", config, "bridge")
    try:
        # When an event whose chat content trips the bug arrives
        payload = json.dumps({
            "version": "V1", "kind": "Created",
            "msg": {"id": 1, "chat_id": 42, "sender_id": 7, "content": f"Hi team {FAULT_MARKER.decode()}",
                    "files": [], "created_at": "2025-06-27T02:45:46.782538Z", "idempotency_key": None},
            "members": [7, 9], "occurred_at": "2025-06-27T02:45:46.790112345Z"}).encode()
        await publish_until_stored(nats_server.url, "fechatter.message.created", payload)
        await async_wait_until(ingest.events, timeout=20, message="event not received")
    finally:
        output = stop(proc)
    assert proc.returncode == 0, output
    # Then the failure is reported, tagged bridge, with the payload only when send_default_pii is on
    event = assert_scrubbed(ingest, "bridge", pii=pii)
    assert event["logger"] == "bridge.pull"
    error = event["exception"]["values"][-1]
    assert error["type"] == "ValueError"
    assert (error["value"] == FILTERED) is not pii
    frames = error["stacktrace"]["frames"]
    assert any(f["function"] == "add" and f["module"] == "bridge.batch" for f in frames)
    assert any("vars" in f for f in frames) is pii


# -- gateway -------------------------------------------------------------------------------------


NS = "sentry-gw"


@pytest.mark.slow
@PII
async def test_gateway_reports_a_failing_request_without_token_or_content(
    pii: bool, redis_server: RedisServer, ingest: SentryIngest, tmp_path: Path
) -> None:
    # Given a gateway with Sentry on, traces at 100 %, and a chat whose member 9's presence is
    # corrupt: chat content where a timestamp belongs, in bytes that are not UTF-8
    key = SigningKey.generate()
    port = free_port()
    escaped = key.public_pem.strip().replace("\n", "\\n")
    config = tmp_path / "notify.yml"
    config.write_text(
        f"redis:\n  url: {redis_server.url}\n  namespace: {NS}\n"
        f"nats:\n  servers: [{UNREACHABLE_NATS}]\n"
        f"gateway:\n  host: {HOST}\n  port: {port}\n"
        f'  jwt:\n    public_key: "{escaped}"\n'
        f"sentry: {json.dumps(sentry_section(ingest, pii))}\n"
    )
    client = redis_server.client()
    client.sadd(members_key(NS, 42), "7", "9")
    client.hset(presence_key(NS, 9), mapping={"status": "online", "last_seen": CONTENT + b" \xff"})
    token = key.token(7)
    cookie = "session=cookie-secret-4711"
    proc = spawn("fechatter_notify", config, "gateway")
    url = f"http://{HOST}:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await async_wait_until(lambda: _ready(session, url, proc), timeout=20, message="gateway not ready")
            # When a stream is open (never traced) and a request with the token fails
            async with session.get(f"{url}/events", params={"access_token": token}) as stream:
                assert stream.status == 200
                first = await SseReader(stream).next_event()
                assert "connection_confirmed" in first.data
                async with session.get(f"{url}/online-users", params={"chat_id": "42", "access_token": token},
                                       headers={"Authorization": f"Bearer {token}", "Cookie": cookie}) as failed:
                    assert failed.status == 500
                await async_wait_until(lambda: ingest.events() and ingest.items("transaction"), timeout=10,
                                       message="event and transaction not received")
    finally:
        output = stop(proc)
        client.close()
    assert proc.returncode == 0, output
    # Then the error is reported, tagged gateway, without the token or the cookie in any case
    fragments = [part.encode() for part in token.split(".")] + [b"cookie-secret-4711"]
    event = assert_scrubbed(ingest, "gateway", pii=pii, secrets=fragments)
    assert event["exception"]["values"][-1]["type"] == "UnicodeDecodeError"
    assert event["request"]["url"] == f"{url}/online-users"
    assert "chat_id=42" in event["request"]["query_string"]
    # And the request is traced, but the stream (hours long in real life) is not
    names = [t["transaction"] for t in ingest.items("transaction")]
    assert "gateway.presence_api.online_users" in names, names
    assert not any("events" in name for name in names), names
    assert {t["tags"]["role"] for t in ingest.items("transaction")} == {"gateway"}


async def _ready(session: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, "the gateway exited"
    try:
        async with session.get(url + "/readyz") as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False


# -- the scrubber alone --------------------------------------------------------------------------

JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiI3In0.c2lnbmF0dXJlLWJ5dGVz"


def _event() -> dict[str, Any]:
    return {
        "logger": "asyncio",
        "logentry": {"message": "Task exception: %r", "formatted": "Task exception: 'Hi team'", "params": ["Hi team"]},
        "exception": {"values": [
            {"type": "KeyError", "module": None, "value": "'Hi team'",
             "stacktrace": {"frames": [{"function": "f", "vars": {"data": "Hi team"}}]}},
            {"type": "ConnectionError", "module": "redis.exceptions", "value": "Error 111 connecting"},
            {"type": "OperationalError", "module": "psycopg", "value": "no postgresql://app:pw-4711@db/x"},
            {"type": "TimeoutError", "module": None, "value": "timed out"},
            {"type": "DecodeError", "module": "dramatiq.errors", "value": "failed to decode message 'Hi team'"},
            {"type": "PoolTimeout", "module": "psycopg_pool", "value": "couldn't get a connection after 1.00 sec"},
        ]},
        "extra": {"reason": "unknown kind 'Hi team'", "stream": "FECHATTER_EVENTS", "seq": 16},
        "breadcrumbs": {"values": [
            {"type": "log", "category": "bridge.process", "message": "dead_letter",
             "data": {"reason": "has 'Hi team'", "subject": "fechatter.message.created"}},
            {"type": "log", "category": "dramatiq.worker", "message": "Failed new_message('Hi team')"},
        ]},
        "request": {"url": "http://gw/online-users", "query_string": f"chat_id=42&access_token={JWT}",
                    "headers": {"Authorization": f"Bearer {JWT}", "Cookie": "s=1", "X-Forwarded-For": "10.0.0.1"},
                    "data": "Hi team", "env": {"REMOTE_ADDR": "10.0.0.1"}},
        "user": {"ip_address": "10.0.0.1"},
        "contexts": {"dramatiq": {"data": {"args": [{"content": "Hi team"}], "kwargs": {},
                                           "options": {"traceback": "KeyError: 'Hi team'"}}}},
    }


def test_without_pii_no_payload_text_leaves_and_ids_names_and_own_messages_stay() -> None:
    event = Scrubber("bridge", send_default_pii=False)(_event(), {})
    assert "Hi team" not in json.dumps(event) and "10.0.0.1" not in json.dumps(event)
    assert JWT[:20] not in json.dumps(event)
    assert event["tags"] == {"role": "bridge"}
    values = event["exception"]["values"]
    assert [v["value"] for v in values] == [
        FILTERED, "Error 111 connecting", "no postgresql://app:***@db/x", "timed out", FILTERED,
        "couldn't get a connection after 1.00 sec"]
    assert "vars" not in values[0]["stacktrace"]["frames"][0]
    assert event["extra"] == {"reason": FILTERED, "stream": "FECHATTER_EVENTS", "seq": 16}
    crumbs = event["breadcrumbs"]["values"]
    assert crumbs[0]["message"] == "dead_letter"
    assert crumbs[0]["data"] == {"reason": FILTERED, "subject": "fechatter.message.created"}
    assert event["request"]["query_string"] == f"chat_id=42&access_token={FILTERED}"


def test_with_pii_content_stays_but_credentials_never_do() -> None:
    event = Scrubber("gateway", send_default_pii=True)(_event(), {})
    text = json.dumps(event)
    assert "Hi team" in text and "10.0.0.1" in text
    assert "eyJ" not in text and "s=1" not in text
    assert event["request"]["headers"]["Authorization"] == FILTERED
    assert event["request"]["query_string"] == f"chat_id=42&access_token={FILTERED}"


def test_a_token_in_a_truncated_repr_or_a_variable_is_removed() -> None:
    event: dict[str, Any] = {"exception": {"values": [{"type": "X", "stacktrace": {"frames": [{"vars": {
        "token": "opaque-secret", "message": f"RawRequestMessage(path='/events?access_token={JWT[:30]}",
        "headers": f"{{'authorization': 'bearer {JWT[:25]}"}}]}}]}}
    text = json.dumps(Scrubber("gateway", send_default_pii=True)(event, {}))
    assert "opaque-secret" not in text and JWT[:25] not in text and JWT[5:20] not in text


def test_streams_and_probes_are_never_traced_and_a_parent_decision_is_followed() -> None:
    sample = traces_sampler(0.25)

    class Request:
        def __init__(self, path: str) -> None:
            self.path = path

    assert sample({"aiohttp_request": Request("/events"), "parent_sampled": True}) == 0.0
    assert sample({"aiohttp_request": Request("/healthz")}) == 0.0
    assert sample({"aiohttp_request": Request("/online-users")}) == 0.25
    assert sample({"parent_sampled": True}) == 1.0
    assert sample({"parent_sampled": False}) == 0.0
