"""Prometheus Operator CRDs checked against their schemas, and checkov with 0 failures."""

from __future__ import annotations

import json
import re

import pytest

from tests.deploy.deploylib import DEPLOY, OVERLAYS, Manifest, Rendered, run_tool, tool

# Runs in .venv-deploy: validates each ServiceMonitor/PrometheusRule (and the Istio
# DestinationRule of deploy/routing) with the cloudcoil prometheus-operator and istio
# models (generated from the CRDs' OpenAPI schemas) and
# flags any field the model dropped, i.e. a field the CRD does not know.
CRD_CHECK = r"""
import json, sys
from cloudcoil.models.istio.networking.v1 import DestinationRule
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

MODELS = {"ServiceMonitor": ServiceMonitor, "PrometheusRule": PrometheusRule, "DestinationRule": DestinationRule}

def unknown(given, kept, path):
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [path or "/"]
        out = []
        for key, value in given.items():
            if key not in kept:
                out.append(f"{path}/{key}")
            else:
                out.extend(unknown(value, kept[key], f"{path}/{key}"))
        return out
    if isinstance(given, list) and isinstance(kept, list):
        return [p for i, (g, k) in enumerate(zip(given, kept)) for p in unknown(g, k, f"{path}/{i}")]
    return []

problems = []
for doc in json.load(sys.stdin):
    model = MODELS[doc["kind"]]
    name = f'{doc["kind"]}/{doc["metadata"]["name"]}'
    try:
        obj = model.model_validate(doc)
    except Exception as exc:
        problems.append(f"{name}: {exc}")
        continue
    kept = obj.model_dump(by_alias=True, exclude_unset=True, mode="json")
    for path in unknown(doc, kept, ""):
        problems.append(f"{name}: unknown field {path}")
json.dump(problems, sys.stdout)
"""


def crd_problems(docs: list[Manifest]) -> list[str]:
    """Schema problems of the ServiceMonitor, PrometheusRule and DestinationRule objects in ``docs``."""
    crds = [d for d in docs if d["kind"] in {"ServiceMonitor", "PrometheusRule", "DestinationRule"}]
    result = run_tool([tool("python"), "-c", CRD_CHECK], stdin=json.dumps(crds))
    assert result.returncode == 0, f"CRD schema check crashed:\n{result.stderr}"
    problems = json.loads(result.stdout)
    assert isinstance(problems, list)
    return [str(p) for p in problems]


@pytest.mark.parametrize("name", [o for o in OVERLAYS if o != "dev"])
def test_prometheus_operator_objects_match_crd_schema(
    rendered_overlays: dict[str, Rendered], name: str
) -> None:
    rendered = rendered_overlays[name]
    assert rendered.of_kind("ServiceMonitor") and rendered.of_kind("PrometheusRule")
    assert crd_problems(rendered.docs) == []


def test_crd_check_catches_mistakes() -> None:
    """A misspelt field and a wrong type are both reported."""
    docs: list[Manifest] = [
        {
            "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": {"name": "typo"},
            "spec": {"selector": {}, "endpoints": [{"port": "metrics", "pth": "/metrics"}]},
        },
        {
            "apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "wrong-type"},
            "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "1", "labels": "x"}]}]},
        },
    ]
    problems = crd_problems(docs)
    assert any("typo" in p and "/spec/endpoints/0/pth" in p for p in problems), problems
    assert any("wrong-type" in p for p in problems), problems


def checkov(framework: str) -> Manifest:
    """Run checkov offline on deploy/ for one framework; return its JSON report."""
    result = run_tool(
        [tool("checkov"), "--framework", framework, "-d", DEPLOY, "--skip-download",
         "--quiet", "--output", "json"],
        timeout=600,
    )
    assert result.stdout.strip(), f"checkov printed nothing:\n{result.stderr}"
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    assert len(reports) == 1 and reports[0]["check_type"] == framework, reports
    return reports[0]


def test_checkov_kustomize_no_failures() -> None:
    report = checkov("kustomize")
    summary = report["summary"]
    failed = [
        f"{c['check_id']} {c['check_name']} ({c['resource']})"
        for c in report["results"].get("failed_checks", [])
    ]
    assert summary["failed"] == 0 and not failed, "\n".join(failed)
    assert summary["parsing_errors"] == 0
    # base + every overlay were built and scanned
    assert summary["passed"] >= 80 * (1 + len(OVERLAYS)), summary
    assert summary["resource_count"] >= 8 * (1 + len(OVERLAYS)), summary


def test_checkov_dockerfile_no_failures() -> None:
    report = checkov("dockerfile")
    failed = [
        f"{c['check_id']} {c['check_name']} ({c['file_path']})"
        for c in report["results"].get("failed_checks", [])
    ]
    assert report["summary"]["failed"] == 0 and not failed, "\n".join(failed)
    assert report["summary"]["passed"] > 0


def test_checkov_skips_are_justified(rendered_overlays: dict[str, Rendered]) -> None:
    """Every checkov skip annotation names a check and says why."""
    for rendered in rendered_overlays.values():
        for doc in rendered.docs:
            for key, value in (doc["metadata"].get("annotations") or {}).items():
                if not key.startswith("checkov.io/skip"):
                    continue
                match = re.fullmatch(r"(CKV2?_[A-Z0-9]+_\d+)=(.+)", value)
                assert match and len(match.group(2).split()) >= 5, (
                    f"{rendered.name} {doc['kind']}/{doc['metadata']['name']} {key}: "
                    f"write CHECK_ID=<reason of a few words>, got {value!r}"
                )
