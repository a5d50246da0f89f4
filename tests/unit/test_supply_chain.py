"""Supply chain (issue 14 item 7): requirements.lock pins every runtime dependency with
== and its hashes, the environment the tests run in has exactly the locked versions,
the dated ignores of audit-ignores.json have not expired, and ``make audit`` tells an
unaudited lock from a clean one. CI never runs pip-audit itself (the advisory sources
do not answer here)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.harness import REPO

LOCK = REPO / "requirements.lock"
IGNORES = REPO / "audit-ignores.json"
MAX_IGNORE_DAYS = 180
"""An ignore is a dated decision: renew it, with a reason, at least twice a year."""
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def locked() -> dict[str, str]:
    """Canonical name → version of every package requirements.lock pins."""
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def runtime_requirements() -> list[Requirement]:
    """pyproject.toml's runtime dependencies (not the extras)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def test_every_runtime_dependency_is_pinned_in_the_lock_within_its_range() -> None:
    pins = locked()
    for req in runtime_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not pinned in requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]}, outside pyproject's '{req.specifier}': run `make lock`"
        )


def test_every_pinned_line_is_exact_and_hashed() -> None:
    """Each requirement of the lock is ``name==version`` followed by its sha256 hashes
    (the image installs with --require-hashes)."""
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text().split("\n", 2)[-1].strip())
    requirements = [b for b in blocks if not b.startswith("#")]
    assert len(requirements) == len(locked()) >= len(runtime_requirements())
    for block in requirements:
        assert _PIN.match(block), f"not pinned with ==: {block.splitlines()[0]}"
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", block), f"no hash: {block.splitlines()[0]}"


def test_the_lock_is_closed_and_is_what_this_environment_runs() -> None:
    """Every dependency of a locked package is itself locked, and the test environment
    (``make setup`` installs with the lock as constraints) has the locked versions."""
    pins = locked()
    env = {"python_version": "3.11", "python_full_version": "3.11.11", "sys_platform": "linux",
           "platform_machine": "x86_64", "platform_system": "Linux", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    for name, version in pins.items():
        installed = metadata.version(name)
        assert installed == version, f"{name}: this environment has {installed}, requirements.lock pins {version}"
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            assert canonicalize_name(req.name) in pins, f"{name} needs {req.name}, which requirements.lock lacks"


def test_the_lock_header_says_how_to_remake_it() -> None:
    assert "make lock" in LOCK.read_text().split("\n", 3)[1]


def test_audit_ignores_are_dated_reasoned_and_not_expired() -> None:
    document = json.loads(IGNORES.read_text())
    assert set(document) == {"ignores"} and isinstance(document["ignores"], list)
    today = dt.datetime.now(dt.UTC).date()
    pins = locked()
    for entry in document["ignores"]:
        assert set(entry) == {"id", "package", "reason", "expires"}, entry
        assert re.fullmatch(r"[A-Z]+-[A-Za-z0-9-]+", entry["id"]), f"not an advisory id: {entry['id']}"
        assert canonicalize_name(entry["package"]) in pins, f"{entry['id']}: {entry['package']} is not locked"
        assert len(entry["reason"].strip()) >= 20, f"{entry['id']}: say why it does not apply"
        expires = dt.date.fromisoformat(entry["expires"])
        assert expires >= today, f"ignore {entry['id']} expired on {expires}: fix or renew it"
        assert (expires - today).days <= MAX_IGNORE_DAYS, f"{entry['id']}: expires more than {MAX_IGNORE_DAYS} days out"


# ---- make audit's verdicts, without an advisory source ------------------------------
@pytest.fixture
def audit() -> ModuleType:
    """scripts/audit.py as a module."""
    spec = importlib.util.spec_from_file_location("lstm_audit", REPO / "scripts" / "audit.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


SKIPPED = {"dependencies": [{"name": "grpcio", "skip_reason": "Dependency not found on PyPI and could not be audited"}]}
CLEAN = {"dependencies": [{"name": "grpcio", "version": "1.85.3", "vulns": []}]}
VULNERABLE = {"dependencies": [{"name": "grpcio", "version": "1.85.3",
                                "vulns": [{"id": "GHSA-xxxx-yyyy-zzzz", "fix_versions": ["1.85.4"]}]}]}
UNREACHABLE = "requests.exceptions.ConnectionError: HTTPSConnectionPool(...): Max retries exceeded"


@pytest.mark.parametrize(
    ("runs", "status", "says"),
    [
        ([(0, SKIPPED, ""), (1, None, UNREACHABLE)], 0, "NO ADVISORY SOURCE ANSWERED"),
        ([(1, None, UNREACHABLE), (1, None, UNREACHABLE)], 0, "was NOT audited"),
        ([(0, CLEAN, "")], 0, "no known vulnerabilities in 1 locked packages (source pypi"),
        ([(0, SKIPPED, ""), (0, CLEAN, "")], 0, "source osv"),
        ([(1, VULNERABLE, "")], 1, "GHSA-xxxx-yyyy-zzzz (fixed in 1.85.4)"),
        ([(2, None, "error: requirements.lock: invalid requirement")], 2, ""),
    ],
)
def test_audit_says_plainly_what_was_audited(
    audit: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    runs: list[tuple[int, dict[str, Any] | None, str]], status: int, says: str,
) -> None:
    answers = iter(runs)
    monkeypatch.setattr(audit, "run_pip_audit", lambda source, ignores: next(answers))
    assert audit.main() == status
    assert says in capsys.readouterr().out


def test_expired_ignores_are_not_applied(audit: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "ignores.json"
    path.write_text(json.dumps({"ignores": [
        {"id": "GHSA-old", "package": "grpcio", "reason": "r", "expires": "2020-01-01"},
        {"id": "GHSA-new", "package": "grpcio", "reason": "r", "expires": "2999-01-01"},
    ]}))
    active, expired = audit.load_ignores(path, dt.date(2026, 1, 1))
    assert [e["id"] for e in active] == ["GHSA-new"] and [e["id"] for e in expired] == ["GHSA-old"]
