"""deploy/grafana/fechatter-notify.json and deploy/alerts.yml against the processes themselves.

The bridge, the worker supervisor and the gateway run as real processes (tests/pipeline.py), carry a
little traffic (messages, one payload that becomes a dead letter, an open stream) and are scraped
twice, before and after it. Then:

- every expression of the dashboard and of the alerts names metric families the processes export and
  only labels those families carry. A family must appear in a live scrape; the worker supervisor
  serves its children's values in prometheus_client's multiprocess mode, where a labelled family shows
  only once a child has a value, so such a family may instead be declared by the process's own
  registry. Labels are those seen on live samples or declared on the family;
- promtool (Debian's ``prometheus`` package; ./run installs it for the test step) parses every
  expression with Prometheus's own parser (``promtool check rules``; the dashboard's expressions as
  recording rules, with Grafana's ``$__rate_interval`` as 5m);
- promtool evaluates every alert rule on the two scrapes as series a minute apart (``promtool test
  rules``): the dead letter fires FechatterNotifyDeadLetters with its code, and the alerts whose
  inputs the test controls stay silent on this healthy system.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import redis
import yaml

from gateway import read_frames
from runtime.fleet import ProcessRecord, parse_metrics
from tests.pipeline import Pipeline, start_pipeline
from tests.servers import NatsServer, RedisServer, ServerBinaryNotFound, wait_until
from tests.test_deploy_alerts import exported
from tests.test_top import stop_all

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "fechatter-notify.json"
ALERTS = ROOT / "deploy" / "alerts.yml"
NS = "fechatter-notify"
#: Grafana's variables, as Prometheus receives them.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "${__rate_interval}": "5m", "$__interval": "1m",
                     "${__interval}": "1m"}
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}
#: Alerts the test's traffic cannot trigger on a healthy system: each must stay silent.
SILENT = ("FechatterNotifyRedisCircuitOpen", "FechatterNotifyConsumerLag", "FechatterNotifyRealtimeEventsDropped",
          "FechatterNotifySlowEnqueue", "FechatterNotifyNatsCircuitOpen", "FechatterNotifyJobsFailing",
          "FechatterNotifyStaleRealtimeJobs", "FechatterNotifyUnknownMembership",
          "FechatterNotifyGatewayAuthFailures", "FechatterNotifyGatewaySlowClients", "FechatterNotifyRedeliveries",
          "FechatterNotifySlowDelivery")
_METRIC = re.compile(r"\bfechatter_notify_[a-z_]+")
_SUFFIX = re.compile(r"_(total|bucket|sum|count|created)$")
_SELECTOR = re.compile(r"\{([^}]*)\}")
_LABEL_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")

Samples = list[tuple[str, dict[str, str], float]]

pytestmark = pytest.mark.timeout(120)


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, expression) of every target, rows' nested panels included."""
    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            yield from walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                yield panel["title"], target["expr"]
    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def promql(expr: str) -> str:
    """``expr`` with Grafana's variables replaced, as Prometheus receives it."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


# ------------------------------------------------------------------------------------- the live system


def _created(message_id: int) -> bytes:
    return json.dumps({"version": "V1", "kind": "Created",
                       "msg": {"id": message_id, "chat_id": 42, "sender_id": 7, "content": "hi", "files": [],
                               "created_at": "2025-06-27T02:45:46.782538Z",
                               "idempotency_key": f"0190b5e2-7c3a-7d82-9206-{message_id:012d}"},
                       "members": [7, 9, 11], "occurred_at": "2025-06-27T02:45:46.790112345Z"}).encode()


def _records(client: redis.Redis) -> list[ProcessRecord]:
    ids = [i.decode() for i in client.zrange(f"{NS}:fleet:processes", 0, -1)]
    raws = client.mget([f"{NS}:fleet:process:{i}" for i in ids]) if ids else []
    records = [ProcessRecord.from_json(raw) for raw in raws if raw is not None]
    return [r for r in records if r is not None and r.metrics_url]


def _scrape(records: list[ProcessRecord]) -> dict[str, Samples]:
    scraped: dict[str, Samples] = {}
    for record in records:
        assert record.metrics_url is not None
        with urllib.request.urlopen(record.metrics_url, timeout=5) as resp:
            scraped[record.role] = parse_metrics(resp.read().decode())
    return scraped


def _families(text_samples: Samples) -> set[str]:
    return {_SUFFIX.sub("", name) for name, _, _ in text_samples}


async def _traffic(pipeline: Pipeline) -> None:
    """An open stream for user 9, five messages to chat 42 and one payload that is not JSON."""
    async with aiohttp.ClientSession() as session:
        resp = await session.get(f"{pipeline.gateway_url}/events", params={"access_token": pipeline.token(9)})
        frames: list[dict[str, Any]] = []

        async def read() -> None:
            async for _, frame in read_frames(resp.content):
                frames.append(frame)

        reader = asyncio.create_task(read())
        nc = await nats.connect(pipeline.nats.url)
        try:
            js = nc.jetstream()
            for message_id in range(1, 6):
                await js.publish("fechatter.message.created", _created(message_id))
            await js.publish("fechatter.message.created", b"not json")
        finally:
            await nc.close()
        deadline = asyncio.get_running_loop().time() + 30
        while sum(f["type"] == "new_message" for f in frames) < 5:
            assert asyncio.get_running_loop().time() < deadline, "messages not delivered"
            await asyncio.sleep(0.05)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Samples], dict[str, Samples]]]:
    """Each process's samples before and after the traffic."""
    try:
        nats_server, redis_server = NatsServer(), RedisServer()
    except ServerBinaryNotFound as exc:
        pytest.skip(str(exc))
    with nats_server, redis_server:
        pipeline = start_pipeline(nats_server, redis_server, tmp_path_factory.mktemp("dashboard"))
        client = redis_server.client()
        try:
            pipeline.wait_ready()
            records = wait_until(lambda: (r := _records(client)) and len(r) == 3 and r, timeout=20,
                                 message="processes not registered")
            before = _scrape(records)
            asyncio.run(_traffic(pipeline))
            wait_until(lambda: _dead_letter_counted(records), timeout=20, message="dead letter not counted")
            yield before, _scrape(records)
        finally:
            client.close()
            codes = stop_all(pipeline)
            assert codes == {"bridge": 0, "worker": 0, "gateway": 0}, {n: pipeline.log_tail(n) for n in codes}


def _dead_letter_counted(records: list[ProcessRecord]) -> bool:
    bridge = _scrape([r for r in records if r.role == "bridge"])["bridge"]
    return any(name == "fechatter_notify_bridge_dead_letters_total" and value >= 1 for name, _, value in bridge)


# ------------------------------------------------------------------------------------------- the checks


def test_the_dashboard_draws_all_three_processes() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "fechatter-notify"
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["bridge", "workers", "gateway"]
    expressions = [expr for _, expr in dashboard_expressions()]
    for prefix in ("fechatter_notify_bridge_", "fechatter_notify_worker_", "fechatter_notify_gateway_"):
        assert any(prefix in expr for expr in expressions), prefix
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_expression_names_metrics_and_labels_the_processes_export(
        scrapes: tuple[dict[str, Samples], dict[str, Samples]]) -> None:
    _, after = scrapes
    assert set(after) == {"bridge", "worker", "gateway"}
    live: set[str] = set().union(*(_families(samples) for samples in after.values()))
    seen_labels: dict[str, set[str]] = {}
    for samples in after.values():
        for name, labels, _ in samples:
            seen_labels.setdefault(_SUFFIX.sub("", name), set()).update(labels)
    declared = exported()
    # The live scrape is the real thing: what the traffic touched is there, by its own labels.
    assert {"fechatter_notify_bridge_dead_letters", "fechatter_notify_worker_delivery_latency_seconds",
            "fechatter_notify_gateway_frames_sent", "fechatter_notify_bridge_redeliveries"} <= live
    assert {"consumer", "code"} <= seen_labels["fechatter_notify_bridge_dead_letters"]
    expressions = [(f"dashboard panel {t!r}", e) for t, e in dashboard_expressions()]
    expressions += [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    problems = []
    for where, expr in expressions:
        used = {_SUFFIX.sub("", name) for name in _METRIC.findall(expr)}
        for family in sorted(used):
            labelled = bool(declared.get(family, set()) - {"le"})
            if family not in live and not (labelled and family in declared):
                problems.append(f"{where}: {family} is not exported")
        available = TARGET_LABELS.union(*(seen_labels.get(f, set()) | declared.get(f, set()) for f in used))
        matchers = [label for selector in _SELECTOR.findall(expr) for label, _ in _LABEL_MATCHER.findall(selector)]
        grouped = [part.strip() for group in _GROUPING.findall(expr) for part in group.split(",") if part.strip()]
        problems += [f"{where}: no label {label!r} on {sorted(used)}"
                     for label in matchers + grouped if label not in available]
    assert not problems, "\n".join(problems)


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is missing: install Debian's 'prometheus' package (./run test does, as root)")
    return found


def test_promtool_parses_every_expression(tmp_path: Path) -> None:
    promtool = _promtool()
    recording = [{"record": f"dashboard:panel_{i}", "expr": promql(expr)}
                 for i, (_, expr) in enumerate(dashboard_expressions())]
    rules = {"groups": [{"name": "dashboard", "rules": recording}]}
    recorded = tmp_path / "dashboard-rules.yml"
    recorded.write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool, "check", "rules", str(ALERTS), str(recorded)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def _series(role: str, before: Samples, after: Samples) -> list[dict[str, str]]:
    """Each live sample as promtool input: its value before the traffic at 0m, after it from 1m on."""
    old = {(name, tuple(sorted(labels.items()))): value for name, labels, value in before}
    series = []
    for name, labels, value in after:
        if name.endswith("_created") or value != value:  # creation times and NaN say nothing here
            continue
        key = (name, tuple(sorted(labels.items())))
        start = old.get(key, 0.0 if name.endswith(("_total", "_bucket", "_count", "_sum")) else value)
        labels = {**labels, "instance": f"{role}:1", "job": f"fechatter-notify-{role}"}
        selector = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
        series.append({"series": f"{name}{{{selector}}}", "values": f"{start!r} {value!r}x30"})
    return series


def _rendered(text: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m.group(1)], text)


def test_promtool_evaluates_every_alert_on_the_live_scrape(
        scrapes: tuple[dict[str, Samples], dict[str, Samples]], tmp_path: Path) -> None:
    promtool = _promtool()
    before, after = scrapes
    series = [s for role in after for s in _series(role, before.get(role, []), after[role])]
    dead_letters = next(r for r in alert_rules() if r["alert"] == "FechatterNotifyDeadLetters")
    fired_labels = {"code": "not_json"}
    expected = [{"exp_labels": {**dead_letters["labels"], **fired_labels},
                 "exp_annotations": {k: _rendered(v, fired_labels) for k, v in dead_letters["annotations"].items()}}]
    names = {r["alert"] for r in alert_rules()}
    assert set(SILENT) <= names, sorted(set(SILENT) - names)
    tests = [{"interval": "1m", "input_series": series, "alert_rule_test": [
        {"eval_time": "10m", "alertname": "FechatterNotifyDeadLetters", "exp_alerts": expected},
        *({"eval_time": "10m", "alertname": name, "exp_alerts": []} for name in SILENT)]}]
    spec = tmp_path / "alerts-test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": tests}))
    done = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
