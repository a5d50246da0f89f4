"""Every overlay renders and passes strict schema validation for three Kubernetes versions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.deploy.deploylib import (
    ALLOWED_CRDS,
    DEPLOY,
    K8S_VERSIONS,
    OVERLAYS,
    Manifest,
    Rendered,
    render,
    run_tool,
    tool,
)

CORE_KINDS = {
    "Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service",
    "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
}
MONITORING_KINDS = {"ServiceMonitor", "PrometheusRule"}


def kubernetes_validate(docs: list[Manifest], version: str, tmp_path: Path) -> str:
    """Run ``kubernetes-validate --strict`` on ``docs``; return its output, fail on errors.

    Allow-listed CRDs are left out (they have no bundled schema); any other kind without
    a schema fails, because the validator's "Couldn't find schema" warning is an error here.
    """
    core = [d for d in docs if (d.get("apiVersion"), d.get("kind")) not in ALLOWED_CRDS]
    path = tmp_path / f"manifests-{version}.json"
    # One JSON document per file keeps the validator's messages per object; JSON is YAML.
    paths = []
    for i, doc in enumerate(core):
        doc_path = path.with_name(f"{i:02d}-{doc['kind']}-{doc['metadata']['name']}.json")
        doc_path.write_text(json.dumps(doc))
        paths.append(doc_path)
    result = run_tool([tool("kubernetes-validate"), "--strict", "-k", version, *paths])
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"kubernetes-validate {version} failed:\n{output}"
    assert "Couldn't find schema" not in output, f"unknown kind (not an allowed CRD):\n{output}"
    return output


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_renders_expected_kinds(rendered_overlays: dict[str, Rendered], name: str) -> None:
    rendered = rendered_overlays[name]
    kinds = [d["kind"] for d in rendered.docs]
    assert set(kinds) >= CORE_KINDS, f"{name} lacks {CORE_KINDS - set(kinds)}"
    assert kinds.count("Service") == 2, "a ClusterIP and a headless Service"
    if name == "dev":
        assert not MONITORING_KINDS & set(kinds), "dev must not need the Prometheus Operator CRDs"
    else:
        assert set(kinds) >= MONITORING_KINDS
    namespaces = {d["metadata"].get("namespace") for d in rendered.docs if d["kind"] != "Namespace"}
    assert len(namespaces) == 1 and None not in namespaces, f"{name}: objects span {namespaces}"
    assert rendered.one("Namespace")["metadata"]["name"] in namespaces


def test_base_renders() -> None:
    rendered = render(DEPLOY / "base")
    assert rendered.one("Deployment")["metadata"]["name"] == "lstm-serve"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", OVERLAYS)
def test_kubernetes_validate_strict(
    rendered_overlays: dict[str, Rendered], name: str, version: str, tmp_path: Path
) -> None:
    kubernetes_validate(rendered_overlays[name].docs, version, tmp_path)


def test_kubernetes_validate_rejects_unknown_fields_and_kinds(tmp_path: Path) -> None:
    """The validator really is strict: a misspelt field and an unknown kind both fail."""
    bad_field: Manifest = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 1, "targetPort": "grpc", "nmae": "typo"}]},
    }
    with pytest.raises(AssertionError, match="nmae"):
        kubernetes_validate([bad_field], K8S_VERSIONS[0], tmp_path)
    unknown_kind: Manifest = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}}
    with pytest.raises(AssertionError, match="unknown kind"):
        kubernetes_validate([unknown_kind], K8S_VERSIONS[0], tmp_path)


def test_hpa_active_sessions_component(tmp_path: Path) -> None:
    """The documented custom-metric HPA variant renders on top of an overlay and validates."""
    overlay = tmp_path / "with-sessions-hpa"
    overlay.mkdir()
    # kustomize takes relative paths only.
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources:\n  - {os.path.relpath(DEPLOY / 'overlays' / 'cpu', overlay)}\n"
        f"components:\n  - {os.path.relpath(DEPLOY / 'components' / 'hpa-active-sessions', overlay)}\n"
    )
    rendered = render(overlay)
    metrics = rendered.one("HorizontalPodAutoscaler")["spec"]["metrics"]
    kinds = {m["type"] for m in metrics}
    assert kinds == {"Resource", "Pods"}
    pods_metric = next(m for m in metrics if m["type"] == "Pods")["pods"]
    assert pods_metric["metric"]["name"] == "lstm_serve_sessions_active"
    for version in K8S_VERSIONS:
        kubernetes_validate(rendered.docs, version, tmp_path)
