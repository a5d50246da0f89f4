"""The redis-sessions component: rendered on the cpu overlay (deploy/overlays/cpu-redis),
strictly valid, hardened, and wired: the server reaches Redis by the Service the URL
names, through both NetworkPolicies, with the password from the Secret as a file."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest

from lstm_serve.settings import Settings, env_var_names
from tests.deploy.deploylib import (
    DEPLOY,
    K8S_VERSIONS,
    SERVER,
    Manifest,
    Rendered,
    config_data,
    parse_quantity,
    pod_spec,
    render,
    server_container,
)
from tests.deploy.test_deploy_render import kubernetes_validate
from tests.deploy.test_deploy_semantics import selects

REDIS = "lstm-serve-redis"
SECRET = "lstm-serve-redis"


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    return render(DEPLOY / "overlays" / "cpu-redis")


def redis_deployment(rendered: Rendered) -> Manifest:
    return rendered.one("Deployment", REDIS)


def redis_container(rendered: Rendered) -> Manifest:
    (container,) = redis_deployment(rendered)["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def server_labels(rendered: Rendered) -> dict[str, str]:
    labels = rendered.one("Deployment", SERVER)["spec"]["template"]["metadata"]["labels"]
    assert isinstance(labels, dict)
    return labels


def redis_labels(rendered: Rendered) -> dict[str, str]:
    labels = redis_deployment(rendered)["spec"]["template"]["metadata"]["labels"]
    assert isinstance(labels, dict)
    return labels


def test_component_adds_redis_in_the_overlay_namespace(rendered: Rendered) -> None:
    for kind in ("Deployment", "Service", "NetworkPolicy"):
        rendered.one(kind, REDIS)
    assert not rendered.of_kind("Secret"), "the password Secret is created in the cluster, never committed"
    namespaces = {d["metadata"].get("namespace") for d in rendered.docs if d["kind"] != "Namespace"}
    assert namespaces == {"lstm-serve"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_validate_strict(rendered: Rendered, version: str, tmp_path: Path) -> None:
    kubernetes_validate(rendered.docs, version, tmp_path)


def test_store_url_names_the_redis_service(rendered: Rendered, monkeypatch: pytest.MonkeyPatch) -> None:
    data = config_data(rendered)
    assert set(data) <= set(env_var_names())
    for name in env_var_names():
        monkeypatch.delenv(name, raising=False)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    sessions = Settings().sessions
    url = urlparse(sessions.store_url)
    assert url.scheme == "redis" and url.password is None, "no credentials in the URL"
    service = rendered.one("Service", REDIS)["spec"]
    assert url.hostname == REDIS and url.port in {p["port"] for p in service["ports"]}
    container_ports = {p["name"]: p["containerPort"] for p in redis_container(rendered)["ports"]}
    for port in service["ports"]:
        assert port["targetPort"] in container_ports
    assert all(redis_labels(rendered).get(k) == v for k, v in service["selector"].items())
    assert sessions.write_back_chunks >= 1 and sessions.store_call_budget_s >= sessions.store_op_timeout_s


def test_password_reaches_both_as_a_secret_file(rendered: Rendered) -> None:
    path = config_data(rendered)["LSTM_SERVE_SESSIONS__STORE_PASSWORD_FILE"]
    spec = pod_spec(rendered)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = [m for m in server_container(rendered)["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert len(mounts) == 1 and mounts[0].get("readOnly") is True
    secret = volumes[mounts[0]["name"]]["secret"]
    assert secret["secretName"] == SECRET
    assert any(item["path"] == path.rsplit("/", 1)[1] for item in secret["items"])
    redis_volumes = redis_deployment(rendered)["spec"]["template"]["spec"]["volumes"]
    assert any(v.get("secret", {}).get("secretName") == SECRET for v in redis_volumes)
    for doc in (rendered.one("Deployment", SERVER), redis_deployment(rendered)):
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                assert "secretKeyRef" not in env.get("valueFrom", {}), "secrets as files, not env vars"


def test_network_policies_let_only_the_server_reach_redis(rendered: Rendered) -> None:
    port = redis_container(rendered)["ports"][0]
    policy = rendered.one("NetworkPolicy", REDIS)["spec"]
    assert selects(policy["podSelector"], redis_labels(rendered))
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"} and policy.get("egress", []) == []
    (rule,) = policy["ingress"]
    assert [p["port"] for p in rule["ports"]] == [port["name"]]
    assert all("namespaceSelector" not in src and selects(src["podSelector"], server_labels(rendered))
               for src in rule["from"])
    server_policy = rendered.one("NetworkPolicy", SERVER)["spec"]
    to_redis = [
        r for r in server_policy["egress"]
        if any(selects(t.get("podSelector", {}), redis_labels(rendered)) for t in r["to"])
    ]
    assert len(to_redis) == 1 and [p["port"] for p in to_redis[0]["ports"]] == [port["containerPort"]]


def test_redis_is_hardened_and_single(rendered: Rendered) -> None:
    deployment = redis_deployment(rendered)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate", "never two Redis behind one Service"
    spec = deployment["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    container = redis_container(rendered)
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"] and ctx["runAsUser"] >= 10000
    assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in container
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    for name, request in requests.items():
        assert parse_quantity(limits[name]) >= parse_quantity(request)
    volumes = {v["name"]: v for v in spec["volumes"]}
    data = next(m for m in container["volumeMounts"] if m["mountPath"] == "/data")
    assert "emptyDir" in volumes[data["name"]] and not data.get("readOnly")
    assert "--dir /data" in " ".join(container["args"])
    assert container["image"].rsplit(":", 1)[1] not in {"latest", ""}


def test_server_pod_unchanged_but_for_the_password(rendered: Rendered) -> None:
    cpu = render(DEPLOY / "overlays" / "cpu")
    before, after = pod_spec(cpu), pod_spec(rendered)
    assert {v["name"] for v in after["volumes"]} - {v["name"] for v in before["volumes"]} == {"redis-password"}
    assert after["securityContext"] == before["securityContext"]
