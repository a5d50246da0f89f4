"""README stays true to the code: settings, metrics, and the CI test command."""

from __future__ import annotations

from lstm_serve.metrics import Metrics
from lstm_serve.settings import env_var_names
from tests.harness import REPO

README = (REPO / "README.md").read_text()


def test_every_setting_documented() -> None:
    missing = [name for name in env_var_names() if f"`{name}`" not in README]
    assert not missing, missing


def test_every_metric_documented() -> None:
    names = {family.name for family in Metrics().registry.collect()}
    missing = [n for n in names if n not in README]
    assert not missing, missing


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in README.split("## Call it")[0]
    ci = (REPO / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci
