"""The Grafana dashboard and the PrometheusRule query only metrics the server exports:
checked against the declarations in lstm_serve.metrics and against a live scrape."""

from __future__ import annotations

import json
import urllib.request

import pytest

from lstm_serve.metrics import Metrics
from tests.deploy.deploylib import (
    DASHBOARD,
    Manifest,
    Rendered,
    dashboard_queries,
    exposed_names,
    promql_metric_names,
    rule_expressions,
    scrape_families,
)
from tests.harness import ServerHandle


@pytest.fixture(scope="module")
def dashboard() -> Manifest:
    """The Grafana dashboard JSON."""
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def queried_names(dashboard: Manifest, rendered_overlays: dict[str, Rendered]) -> dict[str, set[str]]:
    """Metric name -> where it is queried, over the dashboard and every PrometheusRule."""
    where: dict[str, set[str]] = {}
    for query in dashboard_queries(dashboard):
        for name in promql_metric_names(query):
            where.setdefault(name, set()).add("dashboard")
    for overlay in rendered_overlays.values():
        for rule in overlay.of_kind("PrometheusRule"):
            for expr in rule_expressions(rule):
                for name in promql_metric_names(expr):
                    where.setdefault(name, set()).add(f"PrometheusRule ({overlay.name})")
    assert len(where) >= 10, f"suspiciously few metric names found: {sorted(where)}"
    return where


def declared_names() -> set[str]:
    """Sample names the metrics declared in lstm_serve.metrics can expose."""
    metrics = Metrics()
    families = [(family.name, family.type) for family in metrics.registry.collect()]
    names = exposed_names(families)
    for family in metrics.registry.collect():
        names.update(sample.name for sample in family.samples)
    return names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            'histogram_quantile(0.99, sum by (method, le) (rate(lstm_serve_rpc_duration_seconds_bucket'
            '{namespace=~"$namespace", method!~".*Stream"}[$__rate_interval])))',
            {"lstm_serve_rpc_duration_seconds_bucket"},
        ),
        (
            "sum by (namespace) (rate(a_total[5m])) / sum(rate(b_count[5m] offset 1h)) > 0.05",
            {"a_total", "b_count"},
        ),
        ("max by (pod) (lstm_serve_sessions_stored) > 8e3 and on (pod) up == 1", {"lstm_serve_sessions_stored", "up"}),
        ("label_values(lstm_serve_model_ready{namespace=~\"$namespace\"}, model)", {"lstm_serve_model_ready"}),
        ("lstm_serve_model_ready == 0", {"lstm_serve_model_ready"}),
    ],
)
def test_promql_metric_name_extraction(expr: str, expected: set[str]) -> None:
    assert promql_metric_names(expr) == expected


def test_dashboard_has_the_required_panels(dashboard: Manifest) -> None:
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = " | ".join(p["title"].lower() for p in panels)
    for needed in ("p50 / p99", "queue wait vs compute", "batch size", "active", "errors by code", "stream lag"):
        assert needed in titles, f"no panel for {needed!r}: {titles}"
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
    all_exprs = " ".join(dashboard_queries(dashboard))
    for metric in (
        "lstm_serve_rpc_duration_seconds_bucket", "lstm_serve_queue_wait_seconds_bucket",
        "lstm_serve_compute_seconds_bucket", "lstm_serve_batch_size_bucket",
        "lstm_serve_sessions_active", "lstm_serve_errors_total", "lstm_serve_stream_lag_seconds_bucket",
    ):
        assert metric in all_exprs, metric


def test_queries_use_declared_metrics(queried_names: dict[str, set[str]]) -> None:
    """Static: every queried name is exported by a metric declared in lstm_serve.metrics."""
    declared = declared_names()
    missing = {name: sorted(where) for name, where in queried_names.items() if name not in declared}
    assert not missing, f"queried but not declared in lstm_serve.metrics: {missing}"


def test_queries_use_scraped_metrics(bundled_server: ServerHandle, queried_names: dict[str, set[str]]) -> None:
    """Live: every queried name appears in a real server's /metrics scrape."""
    with urllib.request.urlopen(bundled_server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    scraped = exposed_names(scrape_families(text))
    missing = {name: sorted(where) for name, where in queried_names.items() if name not in scraped}
    assert not missing, f"queried but absent from {bundled_server.metrics_url}: {missing}"
