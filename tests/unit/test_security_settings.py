"""Security settings, the keys file parser, the authenticator and the principal context,
without a server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from lstm_serve import auth
from lstm_serve.credentials import Authenticator, CredentialFileError, key_hash, parse_keys
from lstm_serve.errors import PermissionDenied, Unauthenticated
from lstm_serve.main import main
from lstm_serve.metrics import Metrics
from lstm_serve.settings import Settings


def test_metrics_follow_the_grpc_host_unless_set_apart() -> None:
    assert Settings.model_validate({"server": {"host": "127.0.0.1"}}).metrics_host == "127.0.0.1"
    apart = Settings.model_validate({"server": {"host": "127.0.0.1"}, "metrics": {"host": "0.0.0.0"}})
    assert apart.metrics_host == "0.0.0.0"
    assert Settings().metrics_host == "0.0.0.0"


@pytest.mark.parametrize(
    "tls",
    [{"cert_file": "c.pem"}, {"key_file": "k.pem"}, {"client_ca_file": "ca.pem"}],
)
def test_tls_files_come_in_pairs(tls: dict[str, str]) -> None:
    (problem,) = Settings.model_validate({"tls": tls}).problems()
    assert problem.startswith("tls:")
    assert not Settings.model_validate({"tls": {"cert_file": "c", "key_file": "k"}}).problems()


def test_jwks_needs_issuer_and_audience() -> None:
    (problem,) = Settings.model_validate({"auth": {"jwks_file": "jwks.json", "issuer": "i"}}).problems()
    assert "issuer and an audience" in problem
    settings = Settings.model_validate({"auth": {"jwks_file": "j", "issuer": "i", "audience": "a"}})
    assert settings.auth.enabled and not settings.problems()


def test_problems_are_refused_at_start(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.model_validate({"metrics": {"tls": True}}).problems()
    assert main(["--print-settings", "--tls-cert", "c.pem"]) == 2
    assert "tls" in capsys.readouterr().err
    # The environment and the flags together make the final settings.
    monkeypatch.setenv("LSTM_SERVE_TLS__CERT_FILE", "c.pem")
    assert main(["--print-settings", "--tls-key", "k.pem"]) == 0


def _keys(entries: list[object]) -> list[bytes]:
    return [json.dumps({"keys": entries}).encode()]


@pytest.mark.parametrize(
    ("contents", "problem"),
    [
        ([b"{not json"], "not valid JSON"),
        ([b"[]"], '{"keys"'),
        (_keys([{"sha256": "ab", "subject": "a", "models": ["*"]}]), "64 hex digits"),
        (_keys([{"sha256": "a" * 64, "models": ["*"]}]), "subject"),
        (_keys([{"sha256": "a" * 64, "subject": "s", "models": "har"}]), "models"),
        (_keys([{"sha256": "a" * 64, "subject": "s", "models": []},
                {"sha256": "A" * 64, "subject": "t", "models": []}]), "twice"),
        (_keys([{"mtls_subject": "m", "models": ["*"], "sha256": "a" * 64}]), "mtls_subject"),
    ],
)
def test_keys_file_errors_name_the_entry(contents: list[bytes], problem: str) -> None:
    with pytest.raises(CredentialFileError, match="keys") as info:
        parse_keys(contents, "keys.json")
    assert problem in str(info.value)


def test_authenticator_keys_and_mtls(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_bytes(_keys([
        {"sha256": key_hash("secret-one"), "subject": "svc-a", "models": ["har"]},
        {"mtls_subject": "gateway", "models": ["*"]},
    ])[0])
    authenticator = Authenticator(
        keys_file=str(path), jwks_file="", issuer="", audience="", leeway_s=0, metrics=Metrics()
    )
    principal = authenticator.authenticate("secret-one", [])
    assert (principal.subject, principal.method, principal.models) == ("svc-a", "api-key", frozenset({"har"}))
    assert authenticator.authenticate(None, ["other", "gateway"]).subject == "gateway"
    for bearer, peers in (("secret-two", []), (None, []), (None, ["stranger"]), ("", [])):
        with pytest.raises(Unauthenticated) as info:
            authenticator.authenticate(bearer, peers)
        assert "secret" not in str(info.value)
    with pytest.raises(Unauthenticated):
        authenticator.authenticate("secret-two", ["gateway"])  # a bad bearer is never excused by a certificate


def test_principal_context_guards_models_and_owns_sessions() -> None:
    assert auth.current() is None and auth.allowed("anything") and auth.owner() == ""
    auth.require_model("anything")
    svc = auth.Principal("svc-a", frozenset({"har"}), "api-key")
    with auth.acting_as(svc):
        assert auth.allowed("har") and not auth.allowed("kws")
        assert auth.owner() == "api-key:svc-a"
        with pytest.raises(PermissionDenied, match="svc-a"):
            auth.require_model("kws")

        async def in_a_task() -> str:
            return auth.owner()

        async def spawn() -> str:
            return await asyncio.get_running_loop().create_task(in_a_task())

        assert asyncio.run(spawn()) == "api-key:svc-a", "tasks act as the same principal"
    assert auth.current() is None
    with auth.acting_as(auth.Principal("root", frozenset({auth.ALL_MODELS}), "jwt")):
        assert auth.allowed("kws")
