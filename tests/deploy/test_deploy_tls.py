"""The tls and mtls components: they render and validate, and a real server configured
as the rendered manifests configure it answers the kubelet's probe, in plaintext, on
the health port, while its gRPC port speaks TLS only."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lstm_client import LstmClient, Security, StatusError
from tests.certs import SERVER_NAME, CertificateAuthority
from tests.deploy.deploylib import DEPLOY, K8S_VERSIONS, Rendered, config_data, render, server_container
from tests.deploy.test_deploy_render import kubernetes_validate
from tests.harness import REPO, start_server


@pytest.fixture(scope="module")
def with_mtls(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """deploy/overlays/cpu-tls with the mtls component on top."""
    overlay = tmp_path_factory.mktemp("with-mtls")
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources:\n  - {os.path.relpath(DEPLOY / 'overlays' / 'cpu-tls', overlay)}\n"
        f"components:\n  - {os.path.relpath(DEPLOY / 'components' / 'mtls', overlay)}\n"
    )
    return render(overlay)


def test_mtls_component_renders_and_validates(with_mtls: Rendered, tmp_path: Path) -> None:
    data = config_data(with_mtls)
    assert data["LSTM_SERVE_TLS__CLIENT_CA_FILE"] == "/etc/lstm-serve/tls/ca.crt"
    mounts = {m["mountPath"] for m in server_container(with_mtls)["volumeMounts"]}
    assert "/etc/lstm-serve/tls" in mounts
    for version in K8S_VERSIONS:
        kubernetes_validate(with_mtls.docs, version, tmp_path)


def test_probe_under_mtls_as_the_manifests_configure_it(with_mtls: Rendered, tmp_path: Path) -> None:
    """Start the server with the rendered settings (TLS files swapped for test ones,
    ports for free ones) and probe it the way the rendered probe spec says."""
    data = config_data(with_mtls)
    ca = CertificateAuthority("cluster-ca")
    files = {
        "LSTM_SERVE_TLS__CERT_FILE": ca.server().write(tmp_path, "tls")[0],
        "LSTM_SERVE_TLS__KEY_FILE": tmp_path / "tls.key",
        "LSTM_SERVE_TLS__CLIENT_CA_FILE": ca.write(tmp_path / "ca.crt"),
    }
    client_cert, client_key = ca.issue("probe-test", client=True).write(tmp_path, "client")
    env = {k: v for k, v in data.items() if k.startswith(("LSTM_SERVE_TLS__", "LSTM_SERVE_SERVER__HEALTH"))}
    assert set(files) <= set(env), "the manifests configure TLS and mTLS"
    env.update({k: str(v) for k, v in files.items()})
    env["LSTM_SERVE_SERVER__HEALTH_PORT"] = "0"
    security = Security(
        ca_file=str(files["LSTM_SERVE_TLS__CLIENT_CA_FILE"]), cert_file=str(client_cert), key_file=str(client_key),
        server_name=SERVER_NAME,
    )
    probe = server_container(with_mtls)["readinessProbe"]["grpc"]
    with start_server(REPO / "models", env=env, security=security) as server:
        assert server.health_port > 0
        with grpc.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
            request = health_pb2.HealthCheckRequest(service=probe.get("service", ""))
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=probe.get("timeoutSeconds", 2))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with LstmClient(server.target, timeout=3) as plaintext, pytest.raises(StatusError) as info:
            plaintext.health()
        assert info.value.code is grpc.StatusCode.UNAVAILABLE, "the gRPC port speaks TLS only"
