"""TLS, mTLS, API keys, JWTs and session owners, against real servers with real
certificates made in the test (tests/certs.py)."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from lstm_client import LstmClient, Security, StatusError
from lstm_serve.tokens import write_key_file
from lstmserve.v1 import inference_pb2 as pb
from lstmserve.v1 import inference_pb2_grpc as pb_grpc
from tests.certs import SERVER_NAME, CertificateAuthority, JwtIssuer, write_jwks, write_keys_file
from tests.conftest import FixtureModels
from tests.harness import (
    REPO,
    ServerHandle,
    frames,
    metric_sum,
    redis_server,
    requires_redis,
    scrape,
    start_server,
    wait_until,
)

FAST_RELOAD = {"LSTM_SERVE_TLS__RELOAD_INTERVAL_S": "0.1"}
ISSUER, AUDIENCE = "https://issuer.test", "lstm-serve"
KEY_A, KEY_B = "key-a-0123456789", "key-b-0123456789"


def code_of(call: object) -> grpc.StatusCode:
    """The status code a client call (a zero-argument callable) fails with."""
    with pytest.raises(StatusError) as info:
        call()  # type: ignore[operator]
    return info.value.code


def connect(server: ServerHandle, **security: str) -> LstmClient:
    """A client of ``server`` with exactly these security options."""
    return LstmClient(server.target, timeout=5, security=Security(**security))  # type: ignore[arg-type]


# --- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tls")


@pytest.fixture(scope="module")
def tls_server(fixture_models: FixtureModels, tls_dir: Path) -> Iterator[ServerHandle]:
    """TLS only (no client certificates), a plaintext health port, metrics over HTTPS."""
    ca = CertificateAuthority("ca-1")
    ca_file = ca.write(tls_dir / "ca.crt")
    cert, key = ca.server().write(tls_dir, "server")
    security = Security(ca_file=str(ca_file), server_name=SERVER_NAME)
    env = {**FAST_RELOAD, "LSTM_SERVE_SERVER__HEALTH_PORT": "0", "LSTM_SERVE_METRICS__TLS": "true"}
    args = ["--tls-cert", str(cert), "--tls-key", str(key)]
    with start_server(fixture_models.root, args=args, env=env, security=security) as handle:
        yield handle


def test_tls_off_by_default_serves_plaintext(server: ServerHandle, tls_dir: Path) -> None:
    with connect(server) as client:
        assert client.health() == "SERVING"
    CertificateAuthority("other").write(tls_dir / "unused-ca.crt")
    with connect(server, ca_file=str(tls_dir / "unused-ca.crt")) as client:
        assert code_of(client.health) is grpc.StatusCode.UNAVAILABLE


def test_tls_on_serves_tls_only(tls_server: ServerHandle, tls_dir: Path) -> None:
    with tls_server.client() as client:
        assert client.health() == "SERVING"
        assert client.predict("lstm", frames(0, 5)).outputs[0].shape == (5, 4)
    with connect(tls_server) as plaintext:
        assert code_of(plaintext.health) is grpc.StatusCode.UNAVAILABLE
    CertificateAuthority("stranger").write(tls_dir / "stranger.crt")
    with connect(tls_server, ca_file=str(tls_dir / "stranger.crt"), server_name=SERVER_NAME) as untrusting:
        assert code_of(untrusting.health) is grpc.StatusCode.UNAVAILABLE


def test_plaintext_health_port_serves_health_only(tls_server: ServerHandle) -> None:
    """What the kubelet's native gRPC probe does: plaintext Check of "" on the health port."""
    assert tls_server.health_port > 0
    with grpc.insecure_channel(f"127.0.0.1:{tls_server.health_port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.InferenceStub(channel).ListModels(pb.ListModelsRequest(), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_container_healthcheck_uses_the_health_port_under_tls(tls_server: ServerHandle, tls_dir: Path) -> None:
    env = {
        **os.environ,
        "LSTM_SERVE_TLS__CERT_FILE": str(tls_dir / "server.crt"),
        "LSTM_SERVE_SERVER__PORT": str(tls_server.port),
    }
    script = str(REPO / "deploy" / "healthcheck.py")
    without = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=30)
    assert without.returncode == 1 and "HEALTH_PORT" in without.stderr
    env["LSTM_SERVE_SERVER__HEALTH_PORT"] = str(tls_server.health_port)
    done = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_metrics_over_https(tls_server: ServerHandle, tls_dir: Path) -> None:
    context = ssl.create_default_context(cafile=str(tls_dir / "ca.crt"))
    url = f"https://127.0.0.1:{tls_server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        assert b"lstm_serve_build_info" in response.read()


def test_certificate_reload_is_served_without_restart(fixture_models: FixtureModels, tmp_path: Path) -> None:
    old_ca = CertificateAuthority("old-ca")
    cert, key = old_ca.server().write(tmp_path, "server")
    old = Security(ca_file=str(old_ca.write(tmp_path / "old-ca.crt")), server_name=SERVER_NAME)
    args = ["--tls-cert", str(cert), "--tls-key", str(key)]
    with start_server(fixture_models.root, args=args, env=FAST_RELOAD, security=old) as handle:
        pid = handle.process.pid
        new_ca = CertificateAuthority("new-ca")
        new = Security(ca_file=str(new_ca.write(tmp_path / "new-ca.crt")), server_name=SERVER_NAME)
        issued = new_ca.server()
        # Write the key and certificate as one rename each, as Kubernetes swaps a Secret.
        for path, data in ((key, issued.key), (cert, issued.cert)):
            path.with_suffix(".tmp").write_bytes(data)
            path.with_suffix(".tmp").replace(path)

        def new_certificate_served() -> bool:
            with LstmClient(handle.target, timeout=2, security=new) as client:
                try:
                    return client.health() == "SERVING"
                except StatusError:
                    return False

        assert wait_until(new_certificate_served, timeout=10)
        with LstmClient(handle.target, timeout=2, security=old) as client:
            assert code_of(client.health) is grpc.StatusCode.UNAVAILABLE
        assert handle.process.pid == pid and handle.process.poll() is None
        assert metric_sum(scrape(handle.metrics_url), "lstm_serve_credential_reloads_total", outcome="ok") >= 1


# --- mTLS -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls(
    fixture_models: FixtureModels, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerHandle, Path]]:
    """mTLS; the keys file maps client certificate "svc-m" to model lstm; health needs a
    credential too (LSTM_SERVE_AUTH__OPEN_HEALTH=false)."""
    directory = tmp_path_factory.mktemp("mtls")
    ca = CertificateAuthority("mtls-ca")
    ca_file = ca.write(directory / "ca.crt")
    cert, key = ca.server().write(directory, "server")
    ca.issue("svc-m", client=True).write(directory, "svc-m")
    ca.issue("svc-unmapped", client=True).write(directory, "svc-unmapped")
    CertificateAuthority("rogue-ca").issue("svc-m", client=True).write(directory, "rogue")
    keys = write_keys_file(directory / "keys.json", [{"mtls_subject": "svc-m", "models": ["lstm"]}])
    args = ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(ca_file), "--auth-keys", str(keys)]
    security = Security(
        ca_file=str(ca_file), cert_file=str(directory / "svc-m.crt"), key_file=str(directory / "svc-m.key"),
        server_name=SERVER_NAME,
    )
    env = {"LSTM_SERVE_AUTH__OPEN_HEALTH": "false"}
    with start_server(fixture_models.root, args=args, env=env, security=security) as handle:
        yield handle, directory


def _client_cert(directory: Path, stem: str) -> dict[str, str]:
    return {
        "ca_file": str(directory / "ca.crt"), "server_name": SERVER_NAME,
        "cert_file": str(directory / f"{stem}.crt"), "key_file": str(directory / f"{stem}.key"),
    }


def test_mtls_without_a_client_certificate_is_refused_even_for_health(mtls: tuple[ServerHandle, Path]) -> None:
    server, directory = mtls
    with connect(server, ca_file=str(directory / "ca.crt"), server_name=SERVER_NAME) as client:
        assert code_of(client.health) is grpc.StatusCode.UNAVAILABLE


def test_mtls_with_a_certificate_of_another_ca_is_refused(mtls: tuple[ServerHandle, Path]) -> None:
    server, directory = mtls
    with connect(server, **_client_cert(directory, "rogue")) as client:
        assert code_of(client.health) is grpc.StatusCode.UNAVAILABLE


def test_mtls_identity_is_a_principal_with_its_models(mtls: tuple[ServerHandle, Path]) -> None:
    server, directory = mtls
    with connect(server, **_client_cert(directory, "svc-m")) as client:
        assert client.health() == "SERVING"
        assert client.predict("lstm", frames(1, 4)).outputs[0].shape == (4, 4)
        assert [m["name"] for m in client.list_models()] == ["lstm"]
        assert code_of(lambda: client.predict("gru", frames(1, 4))) is grpc.StatusCode.PERMISSION_DENIED


def _watch_first(security: Security, target: str) -> grpc.StatusCode | int:
    """The first status Health/Watch streams (or the code it fails with)."""
    options = security.options()
    with grpc.secure_channel(target, security.credentials(), options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        metadata = [("authorization", f"Bearer {security.token}")] if security.token else None
        try:
            return int(next(iter(stub.Watch(health_pb2.HealthCheckRequest(), timeout=5, metadata=metadata))).status)
        except grpc.RpcError as exc:
            return exc.code()


def test_closed_health_watch_needs_a_principal(mtls: tuple[ServerHandle, Path]) -> None:
    server, directory = mtls
    mapped = Security(**_client_cert(directory, "svc-m"))  # type: ignore[arg-type]
    unmapped = Security(**_client_cert(directory, "svc-unmapped"))  # type: ignore[arg-type]
    assert _watch_first(mapped, server.target) == health_pb2.HealthCheckResponse.SERVING
    assert _watch_first(unmapped, server.target) is grpc.StatusCode.UNAUTHENTICATED


def test_mtls_certificate_without_a_principal_is_unauthenticated(mtls: tuple[ServerHandle, Path]) -> None:
    server, directory = mtls
    with connect(server, **_client_cert(directory, "svc-unmapped")) as client:
        assert code_of(client.health) is grpc.StatusCode.UNAUTHENTICATED  # health is closed here
        with pytest.raises(StatusError) as info:
            client.predict("lstm", frames(1, 4))
        assert info.value.code is grpc.StatusCode.UNAUTHENTICATED and "svc-unmapped" in info.value.details


# --- API keys and JWTs -----------------------------------------------------------------


@pytest.fixture(scope="module")
def auth(fixture_models: FixtureModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """Plaintext, API keys (svc-a: every model; svc-b: lstm), a JWKS with key k1, resume tokens."""
    directory = tmp_path_factory.mktemp("auth")
    keys = write_keys_file(
        directory / "keys.json",
        [{"key": KEY_A, "subject": "svc-a", "models": ["*"]}, {"key": KEY_B, "subject": "svc-b", "models": ["lstm"]}],
    )
    issuer = JwtIssuer("k1")
    jwks = write_jwks(directory / "jwks.json", [issuer])
    write_key_file(directory / "tokens.json")
    args = [
        "--auth-keys", str(keys), "--auth-jwks", str(jwks), "--auth-issuer", ISSUER, "--auth-audience", AUDIENCE,
        "--token-keys", str(directory / "tokens.json"),
    ]
    with start_server(fixture_models.root, args=args, env=FAST_RELOAD, security=Security(token=KEY_A)) as handle:
        yield {"server": handle, "issuer": issuer, "keys": keys}


def _server(auth: dict[str, object]) -> ServerHandle:
    server = auth["server"]
    assert isinstance(server, ServerHandle)
    return server


def test_api_key_good_bad_missing_and_wrong_model(auth: dict[str, object]) -> None:
    server = _server(auth)
    with connect(server, token=KEY_A) as client:
        assert client.predict("gru", frames(2, 3)).outputs[0].shape == (3, 4)
    with connect(server, token=KEY_B) as client:
        assert client.predict("lstm", frames(2, 3)).outputs[0].shape == (3, 4)
        assert sorted(m["name"] for m in client.list_models()) == ["lstm"]
        for call in (lambda: client.predict("gru", frames(2, 3)), lambda: client.metadata("gru"),
                     lambda: client.stream("gru", [frames(2, 3)]), lambda: client.metadata("no-such-model")):
            assert code_of(call) is grpc.StatusCode.PERMISSION_DENIED
    with connect(server, token="not-a-key-secret") as client:
        with pytest.raises(StatusError) as info:
            client.list_models()
        assert info.value.code is grpc.StatusCode.UNAUTHENTICATED and "not-a-key-secret" not in info.value.details
        assert code_of(lambda: client.stream("lstm", [frames(2, 3)])) is grpc.StatusCode.UNAUTHENTICATED
    with connect(server) as client:
        assert code_of(lambda: client.predict("lstm", frames(2, 3))) is grpc.StatusCode.UNAUTHENTICATED
        assert client.health() == "SERVING", "health is open by default"
    with grpc.insecure_channel(server.target) as channel:
        assert "lstmserve.v1.Inference" in ProtoReflectionDescriptorDatabase(channel).get_services()
    samples = scrape(server.metrics_url)
    assert metric_sum(samples, "lstm_serve_auth_refusals_total", code="UNAUTHENTICATED") >= 3
    assert metric_sum(samples, "lstm_serve_auth_refusals_total", code="PERMISSION_DENIED", method="api-key") >= 4


@pytest.mark.parametrize(
    ("metadata", "accepted"),
    [
        ([("authorization", f"bearer {KEY_B}")], True),  # the scheme is case-insensitive
        ([("authorization", f"Basic {KEY_B}")], False),
        ([("authorization", KEY_B)], False),
        ([("authorization", f"Bearer {KEY_B}"), ("authorization", f"Bearer {KEY_A}")], False),
    ],
)
def test_authorization_metadata_forms(auth: dict[str, object], metadata: list[tuple[str, str]], accepted: bool) -> None:
    with grpc.insecure_channel(_server(auth).target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        try:
            reply = stub.ListModels(pb.ListModelsRequest(), timeout=5, metadata=metadata)
        except grpc.RpcError as exc:
            assert not accepted and exc.code() is grpc.StatusCode.UNAUTHENTICATED
            assert KEY_A not in (exc.details() or "") and KEY_B not in (exc.details() or "")
            return
    assert accepted and [m.name for m in reply.models] == ["lstm"]


def test_api_key_file_reload(auth: dict[str, object]) -> None:
    server, keys = _server(auth), auth["keys"]
    assert isinstance(keys, Path)
    original = keys.read_text()
    new_key = "key-c-rotated-in"
    try:
        write_keys_file(keys, [{"key": new_key, "subject": "svc-c", "models": ["gru"]},
                               {"key": KEY_A, "subject": "svc-a", "models": ["*"]}])

        def allowed(token: str) -> bool:
            with connect(server, token=token) as client:
                try:
                    return bool(client.predict("gru", frames(3, 2)).outputs)
                except StatusError:
                    return False

        assert wait_until(lambda: allowed(new_key), timeout=10)
        with connect(server, token=KEY_B) as client:
            assert code_of(client.list_models) is grpc.StatusCode.UNAUTHENTICATED, "svc-b's key was removed"
        keys.write_text("{ not json")
        assert wait_until(
            lambda: metric_sum(scrape(server.metrics_url), "lstm_serve_credential_reloads_total", outcome="failed") >= 1
        )
        assert allowed(new_key), "a broken file keeps the previous keys in use"
    finally:
        keys.write_text(original)
        assert wait_until(lambda: _lists(server, KEY_B), timeout=10), "the original keys are back"


def _lists(server: ServerHandle, token: str) -> bool:
    with connect(server, token=token) as client:
        try:
            return bool(client.list_models())
        except StatusError:
            return False


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("good", None),
        ("expired", "expired"),
        ("wrong audience", "audience"),
        ("wrong issuer", "issuer"),
        ("bad signature", "signature"),
        ("unknown kid", "kid"),
    ],
)
def test_jwt(auth: dict[str, object], case: str, expected: str | None) -> None:
    issuer = auth["issuer"]
    assert isinstance(issuer, JwtIssuer)
    claims: dict[str, Any] = {"sub": "user-1", "iss": ISSUER, "aud": AUDIENCE, "models": ["lstm"]}
    if case == "expired":
        token = issuer.token(expires_in=-120, **claims)
    elif case == "wrong audience":
        token = issuer.token(**{**claims, "aud": "someone-else"})
    elif case == "wrong issuer":
        token = issuer.token(**{**claims, "iss": "https://evil.test"})
    elif case == "bad signature":
        token = JwtIssuer("k1").token(**claims)  # same kid, another key
    elif case == "unknown kid":
        token = JwtIssuer("k9").token(**claims)
    else:
        token = issuer.token(**claims)
    with connect(_server(auth), token=token) as client:
        if expected is None:
            assert client.predict("lstm", frames(4, 3)).outputs[0].shape == (3, 4)
            assert code_of(lambda: client.predict("gru", frames(4, 3))) is grpc.StatusCode.PERMISSION_DENIED
            return
        with pytest.raises(StatusError) as info:
            client.predict("lstm", frames(4, 3))
    assert info.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert expected in info.value.details and token not in info.value.details


# --- session owners --------------------------------------------------------------------


def test_sessions_belong_to_their_principal(auth: dict[str, object]) -> None:
    server = _server(auth)
    with connect(server, token=KEY_A) as owner, connect(server, token=KEY_B) as other:
        first = owner.predict("lstm", frames(5, 10), session_id="owned-1", frame_offset=0, return_token=True)
        assert first.frame_offset == 0 and first.resume_token
        attempts = {
            "by id": lambda: other.predict("lstm", frames(5, 5), session_id="owned-1", must_exist=True),
            "a replay of the owner's call": lambda: other.predict(
                "lstm", frames(5, 10), session_id="owned-1", frame_offset=0
            ),
            "at its offset": lambda: other.predict("lstm", frames(5, 5), session_id="owned-1", frame_offset=10),
            "a stream": lambda: other.stream("lstm", [frames(5, 5)], session_id="owned-1", must_exist=True),
            "its token": lambda: other.predict("lstm", frames(5, 5), resume_token=first.resume_token),
        }
        messages = {}
        for name, attempt in attempts.items():
            with pytest.raises(StatusError) as info:
                attempt()
            assert info.value.code is grpc.StatusCode.NOT_FOUND, name
            messages[name] = info.value.details
        with pytest.raises(StatusError) as unknown:
            other.predict("lstm", frames(5, 5), session_id="never-existed", must_exist=True)
        assert messages["by id"] == unknown.value.details.replace("never-existed", "owned-1"), "ids do not leak"
        again = owner.predict("lstm", frames(5, 5), session_id="owned-1", frame_offset=10)
        assert again.frame_offset == 10 and not again.replayed


def test_cli_global_token_and_tls_options(tls_server: ServerHandle, tls_dir: Path, auth: dict[str, object]) -> None:
    cli = [sys.executable, "-m", "lstm_client.cli"]
    tls = [*cli, "--target", tls_server.target, "--tls-ca", str(tls_dir / "ca.crt"), "--tls-server-name", SERVER_NAME]
    done = subprocess.run([*tls, "health", "--json"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "SERVING"
    keyed = [*cli, "--target", _server(auth).target]
    env = {k: v for k, v in os.environ.items() if k != "LSTM_SERVE_TOKEN"}
    refused = subprocess.run([*keyed, "models"], capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    by_flag = subprocess.run([*keyed, "--token", KEY_B, "models", "--json"], capture_output=True, text=True,
                             timeout=60, cwd=REPO, env=env)
    assert by_flag.returncode == 0, by_flag.stderr
    assert [m["name"] for m in json.loads(by_flag.stdout)] == ["lstm"]
    by_env = subprocess.run([*keyed, "models", "--json"], capture_output=True, text=True, timeout=60, cwd=REPO,
                            env={**env, "LSTM_SERVE_TOKEN": KEY_B})
    assert by_env.returncode == 0 and [m["name"] for m in json.loads(by_env.stdout)] == ["lstm"]


@requires_redis
def test_a_session_leased_on_another_replica_is_unknown_to_another_principal(
    fixture_models: FixtureModels, tmp_path: Path
) -> None:
    """With Redis, the owner check comes before the lease: no lease conflict leaks the id."""
    keys = write_keys_file(
        tmp_path / "keys.json",
        [{"key": KEY_A, "subject": "svc-a", "models": ["*"]}, {"key": KEY_B, "subject": "svc-b", "models": ["*"]}],
    )
    with redis_server() as (_, port):
        env = {"LSTM_SERVE_SESSIONS__STORE_URL": f"redis://127.0.0.1:{port}/0"}
        args = ["--auth-keys", str(keys)]
        with start_server(fixture_models.root, env=env, args=args, security=Security(token=KEY_A)) as a, \
                start_server(fixture_models.root, env=env, args=args, security=Security(token=KEY_A)) as b, \
                connect(a, token=KEY_A) as owner, connect(b, token=KEY_B) as other:
            held = owner.open_stream()
            held.config(model={"name": "lstm"}, session_id="leased-by-a")
            assert held.recv().WhichOneof("message") == "started"
            with pytest.raises(StatusError) as info:
                other.predict("lstm", frames(5, 5), session_id="leased-by-a", must_exist=True)
            held.cancel()
    assert info.value.code is grpc.StatusCode.NOT_FOUND and "is unknown" in info.value.details
