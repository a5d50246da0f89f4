"""Checks that schemas miss: selectors, named ports, probes, settings, resources, drain."""

from __future__ import annotations

import json
import re

import pytest

from lstm_serve.settings import Settings, env_var_names
from tests.deploy.deploylib import (
    Manifest,
    Rendered,
    config_data,
    parse_quantity,
    pod_spec,
    server_container,
)


def pod_labels(rendered: Rendered) -> dict[str, str]:
    """Labels of the Deployment's pod template."""
    labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert isinstance(labels, dict)
    return labels


def selects(selector: Manifest, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels and matchExpressions) matches ``labels``."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return bool(selector.get("matchLabels") or selector.get("matchExpressions"))


def container_ports(rendered: Rendered) -> dict[str, int]:
    """Named container ports of the server container."""
    return {p["name"]: p["containerPort"] for p in server_container(rendered)["ports"]}


def test_selectors_match_pod_labels(overlay: Rendered) -> None:
    labels = pod_labels(overlay)
    deployment = overlay.one("Deployment")
    assert selects(deployment["spec"]["selector"], labels), "Deployment selector"
    for service in overlay.of_kind("Service"):
        selector = service["spec"]["selector"]
        assert selector and all(labels.get(k) == v for k, v in selector.items()), (
            f"Service {service['metadata']['name']} selects {selector}, pods have {labels}"
        )
    assert selects(overlay.one("PodDisruptionBudget")["spec"]["selector"], labels), "PDB"
    assert selects(overlay.one("NetworkPolicy")["spec"]["podSelector"], labels), "NetworkPolicy"
    for constraint in pod_spec(overlay).get("topologySpreadConstraints", []):
        assert selects(constraint["labelSelector"], labels), "topologySpreadConstraints"


def test_service_monitor_selects_exactly_the_clusterip_service(overlay: Rendered) -> None:
    monitors = overlay.of_kind("ServiceMonitor")
    if overlay.name == "dev":
        assert not monitors
        return
    (monitor,) = monitors
    matched = [
        s for s in overlay.of_kind("Service")
        if selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
    ]
    assert [s["metadata"]["name"] for s in matched] == ["lstm-serve"], "scrape each pod once"
    service_ports = {p["name"] for p in matched[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        assert endpoint.get("path", "/metrics") == "/metrics"


def test_services_target_named_container_ports(overlay: Rendered) -> None:
    ports = container_ports(overlay)
    health = health_port(overlay)
    assert ports == {"grpc": 50051, "metrics": 9090, **({"health": health} if health is not None else {})}
    for service in overlay.of_kind("Service"):
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert isinstance(target, str) and target in ports, (
                f"Service {service['metadata']['name']} targets {target!r}; named ports are {sorted(ports)}"
            )
            assert port["name"] == target
            assert target != "health", "the plaintext health port is for the kubelet's probes only"
    headless = overlay.one("Service", "lstm-serve-headless")["spec"]
    assert headless["clusterIP"] == "None"
    assert [p["name"] for p in headless["ports"]] == ["grpc"]
    clusterip = overlay.one("Service", "lstm-serve")["spec"]
    assert clusterip.get("type", "ClusterIP") == "ClusterIP" and clusterip.get("clusterIP") != "None"


def test_network_policy_ports_exist(overlay: Rendered) -> None:
    ports = container_ports(overlay)
    policy = overlay.one("NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    allowed = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert allowed == {"grpc", "metrics"}
    metrics_rules = [r for r in policy["ingress"] if {p["port"] for p in r["ports"]} == {"metrics"}]
    assert metrics_rules and all(
        src.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
        == "monitoring"
        for src in metrics_rules[0]["from"]
    ), "metrics only from the monitoring namespace"
    assert {p for p in allowed if isinstance(p, str)} <= set(ports)


def health_port(rendered: Rendered) -> int | None:
    """The plaintext health-only port the settings open (``LSTM_SERVE_SERVER__HEALTH_PORT``)."""
    value = config_data(rendered).get("LSTM_SERVE_SERVER__HEALTH_PORT")
    return int(value) if value else None


def test_probes_use_grpc_health_on_grpc_port(overlay: Rendered) -> None:
    """Native gRPC probes of the overall service: on the gRPC port, or, when TLS is on
    (the kubelet cannot speak it), on the plaintext health-only port."""
    container = server_container(overlay)
    ports = container_ports(overlay)
    tls = "LSTM_SERVE_TLS__CERT_FILE" in config_data(overlay)
    expected = health_port(overlay) if tls else ports["grpc"]
    assert expected is not None, "with TLS on, the probes need LSTM_SERVE_SERVER__HEALTH_PORT"
    assert not tls or ports.get("health") == expected, "the health port is a named container port"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container[probe]
        assert set(spec) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe
        assert spec["grpc"]["port"] == expected, probe
        assert spec["grpc"].get("service", "") == "", f"{probe} must check the overall service"


def test_tls_files_come_from_a_mounted_secret(overlay: Rendered) -> None:
    """Every TLS file is in a Secret mounted as a directory (no subPath, so a rotated
    Secret reaches the running pod), read-only."""
    data = config_data(overlay)
    files = [data[k] for k in ("LSTM_SERVE_TLS__CERT_FILE", "LSTM_SERVE_TLS__KEY_FILE",
                               "LSTM_SERVE_TLS__CLIENT_CA_FILE") if data.get(k)]
    volumes = {v["name"]: v for v in pod_spec(overlay).get("volumes", [])}
    for path in files:
        mounts = [m for m in server_container(overlay).get("volumeMounts", [])
                  if path.startswith(m["mountPath"].rstrip("/") + "/")]
        assert len(mounts) == 1, f"{path} is not under one volume mount"
        mount = mounts[0]
        assert mount.get("readOnly") and "subPath" not in mount, mount
        assert "secret" in volumes[mount["name"]], f"{path} must come from a Secret"


def test_configmap_keys_are_real_settings(overlay: Rendered, monkeypatch: pytest.MonkeyPatch) -> None:
    data = config_data(overlay)
    known = set(env_var_names())
    assert set(data) <= known, f"not settings: {sorted(set(data) - known)}"
    for name in known:
        monkeypatch.delenv(name, raising=False)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # every value parses and validates
    assert settings.server.port == 50051
    assert settings.metrics.port == 9090
    assert settings.server.models_dir == "/app/models", "the image bundles models at /app/models"
    assert settings.providers.providers, "providers must be an explicit list"


def test_limits_cover_requests(overlay: Rendered) -> None:
    for container in pod_spec(overlay)["containers"]:
        resources = container["resources"]
        requests, limits = resources["requests"], resources["limits"]
        assert {"cpu", "memory"} <= set(requests) and {"cpu", "memory"} <= set(limits)
        for name, request in requests.items():
            assert name in limits, f"{name} has a request but no limit"
            assert parse_quantity(limits[name]) >= parse_quantity(request), (
                f"{overlay.name}: limit {limits[name]} < request {request} for {name}"
            )


def test_hpa_targets_the_deployment(overlay: Rendered) -> None:
    hpa = overlay.one("HorizontalPodAutoscaler")["spec"]
    ref = hpa["scaleTargetRef"]
    deployment = overlay.one("Deployment")
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        deployment["apiVersion"], "Deployment", deployment["metadata"]["name"],
    )
    assert 1 <= hpa.get("minReplicas", 1) <= hpa["maxReplicas"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["metrics"])


def test_shutdown_is_aligned_with_server_drain(overlay: Rendered) -> None:
    """preStop sleep + the server's drain grace + margin fit in terminationGracePeriodSeconds."""
    spec = pod_spec(overlay)
    command = server_container(overlay)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    grace_s = float(config_data(overlay).get("LSTM_SERVE_SERVER__GRACE_PERIOD_S", "10"))
    assert spec["terminationGracePeriodSeconds"] >= pre_stop_s + grace_s + 5
    strategy = overlay.one("Deployment")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0, "keep capacity while pods drain"


def test_pod_is_hardened(overlay: Rendered) -> None:
    spec = pod_spec(overlay)
    container = server_container(overlay)
    assert spec["automountServiceAccountToken"] is False
    sa = overlay.one("ServiceAccount", spec["serviceAccountName"])
    assert sa["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert ctx["runAsUser"] == spec["securityContext"]["runAsUser"] == 10001
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "/tmp must be a writable emptyDir"


def test_session_saturation_alert_tracks_session_cap(overlay: Rendered) -> None:
    """The alert fires at 80 % of the overlay's LSTM_SERVE_SESSIONS__MAX_SESSIONS."""
    if overlay.name == "dev":
        return
    cap = int(config_data(overlay).get("LSTM_SERVE_SESSIONS__MAX_SESSIONS", "10000"))
    rules = [
        rule
        for group in overlay.one("PrometheusRule")["spec"]["groups"]
        for rule in group["rules"]
        if rule.get("alert") == "LstmServeSessionSaturation"
    ]
    assert len(rules) == 1
    match = re.search(r"lstm_serve_sessions_stored\)\s*>\s*([0-9.]+)\s*$", rules[0]["expr"].strip())
    assert match, rules[0]["expr"]
    assert float(match.group(1)) == pytest.approx(0.8 * cap)


def test_alerts_cover_latency_errors_and_saturation(overlay: Rendered) -> None:
    if overlay.name == "dev":
        return
    alerts = {
        rule["alert"]: rule
        for group in overlay.one("PrometheusRule")["spec"]["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    for expected, metric in {
        "LstmServeUnaryLatencyP99High": "lstm_serve_rpc_duration_seconds_bucket",
        "LstmServeErrorRateHigh": "lstm_serve_errors_total",
        "LstmServeSessionSaturation": "lstm_serve_sessions_stored",
    }.items():
        assert expected in alerts and metric in alerts[expected]["expr"]
    for rule in alerts.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_gpu_overlay_requests_a_gpu(rendered_overlays: dict[str, Rendered]) -> None:
    gpu = rendered_overlays["gpu"]
    container = server_container(gpu)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "gpu" in container["image"].rsplit("/", 1)[-1]
    spec = pod_spec(gpu)
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert spec["nodeSelector"]
    providers = json.loads(config_data(gpu)["LSTM_SERVE_PROVIDERS__PROVIDERS"])
    assert providers[0] in {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
    for name in ("cpu", "dev"):
        other = server_container(rendered_overlays[name])
        assert "nvidia.com/gpu" not in other["resources"]["limits"]


def test_dev_overlay_is_small(rendered_overlays: dict[str, Rendered]) -> None:
    dev = rendered_overlays["dev"]
    assert dev.one("Deployment")["spec"]["replicas"] == 1
    assert dev.one("HorizontalPodAutoscaler")["spec"]["maxReplicas"] == 1
    requests = server_container(dev)["resources"]["requests"]
    cpu_requests = server_container(rendered_overlays["cpu"])["resources"]["requests"]
    assert parse_quantity(requests["cpu"]) < parse_quantity(cpu_requests["cpu"])


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("cpu", "ghcr.io/lstm-serve/lstm-serve:0.1.0"),
        ("gpu", "ghcr.io/lstm-serve/lstm-serve-gpu:0.1.0"),
        ("dev", "lstm-serve:dev"),
        ("cpu-tls", "ghcr.io/lstm-serve/lstm-serve:0.1.0"),
    ],
)
def test_overlay_image(rendered_overlays: dict[str, Rendered], name: str, image: str) -> None:
    """Each overlay's image override really applies (kustomize matches on the base's result)."""
    assert server_container(rendered_overlays[name])["image"] == image
