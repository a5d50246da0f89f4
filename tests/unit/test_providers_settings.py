"""Provider policy and settings parsing."""

from __future__ import annotations

import pytest

from lstm_serve.main import build_parser, settings_from_args
from lstm_serve.providers import ProviderError, choose_providers
from lstm_serve.settings import Settings, env_var_names
from tests.conftest import FixtureModels

ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_auto_prefers_tensorrt_then_cuda_then_cpu() -> None:
    assert choose_providers(["auto"], ALL) == ALL
    assert choose_providers(["auto"], ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ALL[1:]
    assert choose_providers(["auto"], ["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_explicit_list_is_honoured_or_refused() -> None:
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], ALL) == ALL[1:]
    with pytest.raises(ProviderError, match="not available"):
        choose_providers(["CUDAExecutionProvider"], ["CPUExecutionProvider"])
    with pytest.raises(ProviderError, match="cannot be combined"):
        choose_providers(["auto", "CPUExecutionProvider"], ALL)


def test_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSTM_SERVE_SESSIONS__TTL_S", "7")
    monkeypatch.setenv("LSTM_SERVE_SERVER__PORT", "6000")
    monkeypatch.setenv("LSTM_SERVE_PROVIDERS__PROVIDERS", '["CPUExecutionProvider"]')
    settings = settings_from_args(build_parser().parse_args(["--port", "7000", "--no-batching"]))
    assert settings.sessions.ttl_s == 7 and settings.server.port == 7000
    assert not settings.batching.enabled and settings.providers.providers == ["CPUExecutionProvider"]


def test_every_field_is_documented() -> None:
    import ast
    import inspect

    from lstm_serve import security_settings, settings

    classes = [
        node for module in (settings, security_settings)
        for node in ast.parse(inspect.getsource(module)).body if isinstance(node, ast.ClassDef)
    ]
    assert {"Settings", "TlsSettings", "AuthSettings"} <= {cls.name for cls in classes}
    for cls in classes:
        body = cls.body
        for i, node in enumerate(body):
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            if node.target.id != "model_config":
                following = body[i + 1] if i + 1 < len(body) else None
                assert isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant), (
                    f"{cls.name}.{node.target.id} has no docstring"
                )
    assert "LSTM_SERVE_BATCHING__MAX_BATCH_SIZE" in env_var_names()
    assert Settings().server.port == 50051


def test_onnxruntime_pool_threads_sleep_unless_spinning_is_asked_for(fixture_models: FixtureModels) -> None:
    from lstm_serve.manifest import load_manifest
    from lstm_serve.runtime import ModelRuntime

    package = fixture_models.root / "lstm" / "1"
    for allow, want in ((False, "0"), (True, "1")):
        runtime = ModelRuntime(load_manifest(package), package, ["CPUExecutionProvider"], 2, 1, allow_spinning=allow)
        options = runtime._session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == want
        assert options.get_session_config_entry("session.inter_op.allow_spinning") == want
    assert Settings().providers.allow_spinning is False
