"""Audit the locked runtime dependencies (requirements.lock) with pip-audit, and say
plainly what was and was not audited.

pip-audit asks an advisory source about each pinned package: the PyPI JSON API
(``pypi``), then OSV (``osv``) when PyPI does not answer. Where neither answers (the
machines here reach only the package indexes, not the advisory APIs), pip-audit itself
would either fail with a connection error or skip every package and still print "No
known vulnerabilities found"; this script says instead that the lock was NOT audited.

Ignores come from audit-ignores.json (``{"ignores": [{"id", "package", "reason",
"expires"}]}``). An ignore past its ``expires`` date is not applied, and is reported.

Exit status: 0 when no vulnerability is found (clean, or no source answered: the
message says which); 1 when a vulnerability that is not ignored is found; 2 when
pip-audit fails for another reason (for instance an unreadable lock).

Usage: scripts/audit.sh (``make audit``), which runs this with .venv-audit's Python.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
IGNORES = ROOT / "audit-ignores.json"
SOURCES = ("pypi", "osv")
NO_ANSWER = (
    "ConnectionError", "NameResolutionError", "Max retries exceeded", "Failed to resolve", "timed out",
    "ServiceError", "Temporary failure in name resolution", "Connection refused", "SSLError",
)
"""What pip-audit's error output says when an advisory source cannot be reached."""


def load_ignores(path: Path, today: dt.date) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(ignores in force, expired ignores) of the ignore file."""
    entries = json.loads(path.read_text())["ignores"] if path.exists() else []
    active = [e for e in entries if dt.date.fromisoformat(e["expires"]) >= today]
    expired = [e for e in entries if dt.date.fromisoformat(e["expires"]) < today]
    return active, expired


def run_pip_audit(source: str, ignores: list[dict[str, Any]]) -> tuple[int, dict[str, Any] | None, str]:
    """pip-audit on the lock with one source: exit status, JSON report (when it wrote
    one) and its error output."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            sys.executable, "-m", "pip_audit", "--requirement", str(LOCK), "--require-hashes", "--disable-pip",
            "--vulnerability-service", source, "--format", "json", "--output", str(report),
            "--progress-spinner", "off", "--timeout", "20",
        ]
        for entry in ignores:
            cmd += ["--ignore-vuln", entry["id"]]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        data = json.loads(report.read_text()) if report.exists() and report.stat().st_size else None
    return done.returncode, data, done.stderr


def classify(data: dict[str, Any] | None, stderr: str) -> str:
    """What one pip-audit run tells: ``answered`` (the source judged at least one
    package), ``no-answer`` (it could not be reached, or it knew none of the packages)
    or ``failed`` (pip-audit failed for another reason)."""
    deps = (data or {}).get("dependencies", [])
    if data is not None and any(not d.get("skip_reason") for d in deps):
        return "answered"
    if data is not None or any(marker in stderr for marker in NO_ANSWER):
        return "no-answer"
    return "failed"


def main() -> int:
    """Run the audit; see the module docstring for the exit status."""
    today = dt.datetime.now(dt.UTC).date()
    active, expired = load_ignores(IGNORES, today)
    for entry in expired:
        print(f"audit: ignore {entry['id']} ({entry.get('package', '?')}) expired on {entry['expires']}; "
              "it is NOT applied. Fix the dependency or renew the ignore with a new reason.")
    unanswered = []
    for source in SOURCES:
        code, data, stderr = run_pip_audit(source, active)
        verdict = classify(data, stderr)
        if verdict == "failed":
            print(f"audit: pip-audit failed (source {source}, exit {code}):\n{stderr[-3000:]}", file=sys.stderr)
            return 2
        deps = (data or {}).get("dependencies", [])
        skipped = [d for d in deps if d.get("skip_reason")]
        if verdict == "no-answer":
            lines = stderr.strip().splitlines()
            reason = skipped[0]["skip_reason"] if skipped else (lines[-1][:300] if lines else "no report")
            unanswered.append(f"{source}: {reason}")
            continue
        vulnerable = [d for d in deps if d.get("vulns")]
        audited = len(deps) - len(skipped)
        for dep in skipped:
            print(f"audit: {dep['name']} was NOT audited ({source}): {dep['skip_reason']}")
        if vulnerable:
            for dep in vulnerable:
                for vuln in dep["vulns"]:
                    fixes = ", ".join(vuln.get("fix_versions") or []) or "none yet"
                    print(f"audit: {dep['name']}=={dep['version']}: {vuln['id']} (fixed in {fixes})")
            print(f"audit: {sum(len(d['vulns']) for d in vulnerable)} known vulnerabilities in "
                  f"{len(vulnerable)} of {audited} audited packages (source {source}); fix them in "
                  "pyproject.toml and `make lock`, or add a dated ignore to audit-ignores.json")
            return 1
        print(f"audit: no known vulnerabilities in {audited} locked packages (source {source}, "
              f"{len(active)} ignores in force)")
        return 0
    print("audit: NO ADVISORY SOURCE ANSWERED; requirements.lock was NOT audited.")
    for line in unanswered:
        print(f"  {line}")
    print("  Run `make audit` where the PyPI JSON API or the OSV API can be reached.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
