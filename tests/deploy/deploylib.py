"""Helpers for the deploy checks: locating the tools, rendering overlays, PromQL names.

The validation tools live in their own virtual environment, ``<repo>/.venv-deploy``,
installed by ``scripts/setup-deploy-tools.sh``. When one is missing the tests fail (they
never skip): CI runs the setup script before pytest.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
TOOLS_VENV = REPO / ".venv-deploy"
TOOLS_BIN = TOOLS_VENV / "bin"
OVERLAYS = ("cpu", "gpu", "dev", "cpu-tls")
K8S_VERSIONS = ("1.29.0", "1.31.0", "1.33.0")
DASHBOARD = DEPLOY / "grafana" / "lstm-serve.json"
SETUP_HINT = "run scripts/setup-deploy-tools.sh (make deploy-check does) to install it"

# CRDs the manifests may use; kubernetes-validate has no schema for them, so they are
# checked against the Prometheus Operator models instead (test_deploy_schemas).
ALLOWED_CRDS: frozenset[tuple[str, str]] = frozenset(
    {
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
    }
)

Manifest = dict[str, Any]


def tool(name: str) -> Path:
    """Path of a validation tool in ``.venv-deploy/bin``; fails the test when absent."""
    path = TOOLS_BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: {SETUP_HINT}", pytrace=False)
    return path


def run_tool(
    args: list[str | Path], *, stdin: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a tool with ``.venv-deploy/bin`` first on PATH; never raises on a non-zero exit."""
    env = dict(os.environ)
    env["PATH"] = f"{TOOLS_BIN}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(a) for a in args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
        check=False,
    )


def yaml_to_docs(text: str) -> list[Manifest]:
    """Parse multi-document YAML with the tools venv's PyYAML (the project venv has none)."""
    script = (
        "import json, sys, yaml\n"
        "docs = [d for d in yaml.safe_load_all(sys.stdin) if d is not None]\n"
        "json.dump(docs, sys.stdout)\n"
    )
    result = run_tool([tool("python"), "-c", script], stdin=text)
    assert result.returncode == 0, f"YAML parse failed:\n{result.stderr}"
    docs = json.loads(result.stdout)
    assert isinstance(docs, list)
    return docs


@dataclass
class Rendered:
    """One overlay rendered by ``kubectl kustomize``."""

    name: str
    yaml: str
    docs: list[Manifest] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Manifest]:
        """Every object of ``kind``."""
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind: str, name: str | None = None) -> Manifest:
        """The single object of ``kind`` (and ``name``, when given)."""
        found = [d for d in self.of_kind(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name or ''}, found {len(found)}"
        return found[0]


def render(path: Path) -> Rendered:
    """Render a kustomization directory with ``kubectl kustomize``."""
    result = run_tool([tool("kubectl"), "kustomize", path])
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return Rendered(name=path.name, yaml=result.stdout, docs=yaml_to_docs(result.stdout))


SERVER = "lstm-serve"
"""The server's Deployment (an overlay may add others, e.g. the Redis session store)."""


def pod_spec(rendered: Rendered) -> Manifest:
    """The server Deployment's pod spec."""
    return rendered.one("Deployment", SERVER)["spec"]["template"]["spec"]


def server_container(rendered: Rendered) -> Manifest:
    """The lstm-serve container of the Deployment."""
    containers = pod_spec(rendered)["containers"]
    matching = [c for c in containers if c["name"] == "lstm-serve"]
    assert len(matching) == 1, "the Deployment must have one container named lstm-serve"
    return matching[0]


def config_data(rendered: Rendered) -> dict[str, str]:
    """The data of the ConfigMap the server container takes its environment from."""
    refs = [e["configMapRef"]["name"] for e in server_container(rendered).get("envFrom", []) if "configMapRef" in e]
    assert len(refs) == 1, "the server container must take its settings from one ConfigMap"
    data = rendered.one("ConfigMap", refs[0]).get("data", {})
    assert isinstance(data, dict)
    return data


# --- Kubernetes quantities ------------------------------------------------------------

_SUFFIXES = {
    "": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity ("500m", "1Gi", 2) as a float in base units."""
    if isinstance(value, int | float):
        return float(value)
    match = _QUANTITY.match(value.strip())
    if match is None or match.group(2) not in _SUFFIXES:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


# --- PromQL metric names --------------------------------------------------------------

_PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
     "unless", "offset", "atan2", "inf", "nan", "start", "end"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", re.DOTALL)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords, labels, strings dropped).

    Good enough for the expressions we write: selectors, aggregations with ``by``,
    ranges, binary operators, numbers and Grafana variables such as ``$__rate_interval``.
    """
    label_values = _LABEL_VALUES.match(expr)
    if label_values is not None:
        expr = label_values.group(1)
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        ident, call = match.group(1), match.group(2)
        if call or ident in _PROMQL_KEYWORDS:
            continue
        names.add(ident)
    return names


def dashboard_queries(dashboard: Manifest) -> list[str]:
    """Every PromQL query of a Grafana dashboard: panel targets and template variables."""
    queries: list[str] = []

    def walk_panels(panels: list[Manifest]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    queries.append(target["expr"])
            walk_panels(panel.get("panels", []))

    walk_panels(dashboard.get("panels", []))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if query:
            queries.append(str(query))
    return queries


def rule_expressions(rule_doc: Manifest) -> list[str]:
    """Every ``expr`` of a PrometheusRule."""
    return [
        str(rule["expr"])
        for group in rule_doc["spec"]["groups"]
        for rule in group["rules"]
    ]


def exposed_names(families: list[tuple[str, str]]) -> set[str]:
    """Sample names a scrape can carry for metric families given as ``(name, type)``.

    ``name`` is the family name as ``# TYPE`` or ``registry.collect()`` gives it; a
    counter's ``_total`` and an info's ``_info`` suffix may or may not be on it already.
    """
    names: set[str] = set()
    for name, kind in families:
        if kind == "counter":
            base = name.removesuffix("_total")
            names.update({f"{base}_total", f"{base}_created"})
        elif kind in {"histogram", "gaugehistogram"}:
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"})
        elif kind == "summary":
            names.update({name, f"{name}_sum", f"{name}_count", f"{name}_created"})
        elif kind == "info":
            names.add(f"{name.removesuffix('_info')}_info")
        else:
            names.add(name)
    return names


def scrape_families(text: str) -> list[tuple[str, str]]:
    """``(name, type)`` for each ``# TYPE`` line of a Prometheus text exposition, plus
    ``(sample_name, "sample")`` for every sample line."""
    families: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            families.append((name, kind.strip()))
        elif line and not line.startswith("#"):
            families.append((re.split(r"[{\s]", line, maxsplit=1)[0], "sample"))
    return families
