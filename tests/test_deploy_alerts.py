"""deploy/alerts.yml names only metrics and labels the processes really export.

A renamed metric or label would otherwise leave an alert that can never fire, silently.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from bridge.metrics import BridgeMetrics
from gateway.metrics import GatewayMetrics
from workers.metrics import WorkerMetrics

ALERTS = Path(__file__).resolve().parents[1] / "deploy" / "alerts.yml"
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}
_METRIC = re.compile(r"\bfechatter_notify_[a-z_]+")
_SUFFIX = re.compile(r"_(total|bucket|sum|count)$")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"\{([^}]*)\}")
_LABEL_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)")
_TEMPLATE_LABEL = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")


def exported() -> dict[str, set[str]]:
    """Metric family name -> its label names, over the bridge's, workers' and gateway's registries."""
    registries: list[CollectorRegistry] = [BridgeMetrics().registry, WorkerMetrics().registry,
                                           GatewayMetrics().registry]
    families: dict[str, set[str]] = {}
    for registry in registries:
        for collector in list(registry._collector_to_names):  # private: there is no public listing
            labels = set(getattr(collector, "_labelnames", ()))
            for name in registry._collector_to_names[collector]:
                family = families.setdefault(_SUFFIX.sub("", name), set())
                family |= labels | ({"le"} if name.endswith("_bucket") else set())
    return families


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_every_rule_is_complete() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names)) and names
    for rule in rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert _METRIC.search(rule["expr"]), rule["alert"]


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: rule["alert"])
def test_each_rule_uses_exported_metrics_and_labels(rule: dict[str, Any]) -> None:
    families = exported()
    expr = rule["expr"]
    used = {_SUFFIX.sub("", name) for name in _METRIC.findall(expr)}
    unknown = used - families.keys()
    assert not unknown, f"{rule['alert']}: not exported: {sorted(unknown)}"
    available = TARGET_LABELS.union(*(families[name] for name in used))
    for selector in _SELECTOR.findall(expr):
        for label, _ in _LABEL_MATCHER.findall(selector):
            assert label in available, f"{rule['alert']}: no label {label!r} on {sorted(used)}"
    grouped = [{part.strip() for part in by.split(",") if part.strip()} for by in _BY.findall(expr)]
    for labels in grouped:
        assert labels <= available, f"{rule['alert']}: by {sorted(labels - available)} not on {sorted(used)}"
    # What a message may refer to: the outermost aggregation's labels, or every label if none.
    result_labels = grouped[-1] if grouped else available
    if "histogram_quantile" in expr:
        result_labels = result_labels - {"le"}
    text = " ".join(str(v) for v in rule["annotations"].values())
    for label in _TEMPLATE_LABEL.findall(text):
        assert label in result_labels, f"{rule['alert']}: $labels.{label} is not in the result"
