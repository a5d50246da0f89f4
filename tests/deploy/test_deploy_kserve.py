"""deploy/kserve: the ServingRuntime and the example InferenceService.

Three layers, because no validator knows KServe's kinds: the pinned subset schema in
``tests/deploy/schemas/kserve.schema.json`` (jsonschema, in .venv-deploy) for the KServe
fields; ``kubernetes-validate --strict`` and checkov for the Pod that KServe builds from
the two objects (containers, volumes, probes and security contexts are core types); and
semantic checks against the server's own CLI and the kustomize base.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lstm_serve.main import build_parser, settings_from_args
from lstm_serve.settings import env_var_names
from tests.deploy.deploylib import (
    DEPLOY,
    K8S_VERSIONS,
    Manifest,
    Rendered,
    pod_spec,
    render,
    run_tool,
    server_container,
    tool,
    yaml_to_docs,
)
from tests.deploy.test_deploy_render import kubernetes_validate
from tests.deploy.test_deploy_semantics import selects

KSERVE = DEPLOY / "kserve"
SCHEMA = Path(__file__).parent / "schemas" / "kserve.schema.json"
MODEL_MOUNT = "/mnt/models"  # where KServe mounts the storageUri (DefaultModelLocalMountPath)
KSERVE_CONTAINER = "kserve-container"  # the container KServe merges the model spec into
PVC_VOLUME = "kserve-pvc-source"  # the volume name KServe gives a pvc:// storageUri
ISVC_POD_LABEL = "serving.kserve.io/inferenceservice"  # KServe's pod label: the InferenceService name
KSERVE_KINDS = {"ServingRuntime", "InferenceService"}
NAMESPACE = "lstm-serve-kserve"  # any; the manifests leave it to kubectl apply -n
DEPLOYMENT_MODES_RAW = {"RawDeployment", "Standard"}  # Standard is the 0.16+ name
FLAG_SETTINGS = {  # base config.env keys that the runtime passes as flags instead
    "LSTM_SERVE_SERVER__PORT": "--port",
    "LSTM_SERVE_SERVER__MODELS_DIR": "--models",
    "LSTM_SERVE_METRICS__PORT": "--metrics-port",
}

# Runs in .venv-deploy: each document against $defs[kind] of the pinned schema.
SCHEMA_CHECK = r"""
import json, sys
from jsonschema import Draft202012Validator

schema = json.load(open(sys.argv[1]))
Draft202012Validator.check_schema(schema)
problems = []
for doc in json.load(sys.stdin):
    kind = doc.get("kind")
    name = f'{kind}/{(doc.get("metadata") or {}).get("name")}'
    if kind not in schema["$defs"]:
        problems.append(f"{name}: no schema for kind {kind!r}")
        continue
    validator = Draft202012Validator({"$ref": f"#/$defs/{kind}", "$defs": schema["$defs"]})
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        path = "/" + "/".join(str(p) for p in error.absolute_path)
        problems.append(f"{name} {path}: {error.message}")
json.dump(problems, sys.stdout)
"""


def schema_problems(docs: list[Manifest]) -> list[str]:
    """What the pinned KServe schema finds wrong in ``docs``."""
    result = run_tool([tool("python"), "-c", SCHEMA_CHECK, SCHEMA], stdin=json.dumps(docs))
    assert result.returncode == 0, f"KServe schema check crashed:\n{result.stderr}"
    problems = json.loads(result.stdout)
    assert isinstance(problems, list)
    return [str(p) for p in problems]


@pytest.fixture(scope="module")
def kserve() -> Rendered:
    """``kubectl kustomize deploy/kserve``, parsed."""
    return render(KSERVE)


@pytest.fixture(scope="module")
def runtime(kserve: Rendered) -> Manifest:
    return kserve.one("ServingRuntime")


@pytest.fixture(scope="module")
def isvc(kserve: Rendered) -> Manifest:
    return kserve.one("InferenceService")


@pytest.fixture(scope="module")
def container(runtime: Manifest) -> Manifest:
    containers = runtime["spec"]["containers"]
    assert [c["name"] for c in containers] == [KSERVE_CONTAINER], "one container, named kserve-container"
    found: Manifest = containers[0]
    return found


@pytest.fixture(scope="module")
def cpu_overlay() -> Rendered:
    return render(DEPLOY / "overlays" / "cpu")


def flag_value(args: list[str], flag: str) -> str:
    """The value after ``flag`` in a container's args (``--flag value`` form)."""
    assert args.count(flag) == 1, f"{flag} must appear once in {args}"
    return args[args.index(flag) + 1]


def kserve_pod(runtime: Manifest, isvc: Manifest) -> Manifest:
    """The Pod KServe's Standard mode builds from the runtime and the InferenceService.

    The runtime's containers and volumes, the predictor's pod-level fields, and the
    storageUri: a ``pvc://NAME/PATH`` is mounted read-only at /mnt/models with subPath
    PATH (KServe's storage initializer injector); KServe's pod label naming the
    InferenceService. The environment and other labels KServe adds are left out; they do
    not change what is validated.
    """
    predictor = isvc["spec"]["predictor"]
    containers = json.loads(json.dumps(runtime["spec"]["containers"]))
    volumes = json.loads(json.dumps(runtime["spec"].get("volumes", [])))
    uri = predictor["model"]["storageUri"]
    assert uri.startswith("pvc://"), "the example uses a PVC, mounted without an init container"
    claim, _, sub_path = uri.removeprefix("pvc://").partition("/")
    volumes.append({"name": PVC_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    main = next(c for c in containers if c["name"] == KSERVE_CONTAINER)
    main.setdefault("volumeMounts", []).append(
        {"name": PVC_VOLUME, "mountPath": MODEL_MOUNT, "subPath": sub_path, "readOnly": True}
    )
    spec: Manifest = {"containers": containers, "volumes": volumes}
    for key in (
        "securityContext", "automountServiceAccountToken", "enableServiceLinks",
        "terminationGracePeriodSeconds", "serviceAccountName",
    ):
        if key in predictor:
            spec[key] = predictor[key]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{isvc['metadata']['name']}-predictor",
            "namespace": NAMESPACE,
            "labels": {ISVC_POD_LABEL: isvc["metadata"]["name"], "component": "predictor"},
            # The runtime's justified checkov skips, for the scan of this Pod.
            "annotations": dict(runtime["metadata"].get("annotations") or {}),
        },
        "spec": spec,
    }


def core_objects(kserve: Rendered, runtime: Manifest, isvc: Manifest) -> list[Manifest]:
    """The Pod KServe builds and the rendered core objects, in one namespace."""
    core = [json.loads(json.dumps(d)) for d in kserve.docs if d["kind"] not in KSERVE_KINDS]
    for doc in core:
        doc["metadata"]["namespace"] = NAMESPACE
    return [kserve_pod(runtime, isvc), *core]


# --- schemas ---------------------------------------------------------------------------


def test_kustomization_renders_runtime_isvc_and_policy(kserve: Rendered) -> None:
    kinds = sorted((d["apiVersion"], d["kind"]) for d in kserve.docs)
    assert kinds == [
        ("networking.k8s.io/v1", "NetworkPolicy"),
        ("serving.kserve.io/v1alpha1", "ServingRuntime"),
        ("serving.kserve.io/v1beta1", "InferenceService"),
    ]
    for doc in kserve.docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "lstm-serve"
        assert "namespace" not in doc["metadata"], "the namespace is chosen at apply time (-n)"


def test_files_match_the_rendered_objects(kserve: Rendered) -> None:
    """``kubectl apply -f`` on a file and ``-k`` on the folder give the same specs."""
    for path in sorted(KSERVE.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        (doc,) = yaml_to_docs(path.read_text())
        rendered = kserve.one(doc["kind"], doc["metadata"]["name"])
        assert rendered["spec"] == doc["spec"], path.name


def test_kserve_objects_match_pinned_schema(kserve: Rendered) -> None:
    assert schema_problems([d for d in kserve.docs if d["kind"] in KSERVE_KINDS]) == []


def test_schema_catches_mistakes(runtime: Manifest, isvc: Manifest) -> None:
    """A misspelt field, an unknown protocol, a missing container, a bad URI and mode fail."""
    bad_runtime = json.loads(json.dumps(runtime))
    bad_runtime["metadata"]["name"] = "typo-runtime"
    bad_runtime["spec"]["protocolVersion"] = ["grpc-v2"]  # protocolVersions, misspelt
    bad_runtime["spec"]["supportedModelFormats"][0]["priority"] = 0
    no_containers = json.loads(json.dumps(runtime))
    no_containers["metadata"]["name"] = "no-containers"
    del no_containers["spec"]["containers"]
    wrong_protocol = json.loads(json.dumps(runtime))
    wrong_protocol["metadata"]["name"] = "wrong-protocol"
    wrong_protocol["spec"]["protocolVersions"] = ["grpc-v3"]
    bad_isvc = json.loads(json.dumps(isvc))
    bad_isvc["metadata"]["name"] = "1-bad-isvc"  # must start with a letter (DNS-1035)
    bad_isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Raw"
    bad_isvc["spec"]["predictor"]["model"]["storageUri"] = "/mnt/local"
    bad_isvc["spec"]["predictor"]["model"]["protocol"] = "grpc-v2"
    problems = "\n".join(schema_problems([bad_runtime, no_containers, wrong_protocol, bad_isvc]))
    assert "typo-runtime /spec: Additional properties" in problems and "'protocolVersion'" in problems
    assert "typo-runtime /spec/supportedModelFormats/0/priority" in problems
    assert "no-containers /spec: 'containers' is a required property" in problems
    assert "wrong-protocol /spec/protocolVersions/0: 'grpc-v3' is not one of" in problems
    for path in (
        "/metadata/name", "/metadata/annotations/serving.kserve.io/deploymentMode",
        "/spec/predictor/model/storageUri", "/spec/predictor/model: Additional properties",
    ):
        assert f"1-bad-isvc {path}" in problems, (path, problems)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_pass_kubernetes_validate(
    kserve: Rendered, runtime: Manifest, isvc: Manifest, version: str, tmp_path: Path
) -> None:
    """The NetworkPolicy, and the Pod's containers, volumes and security contexts (strict)."""
    kubernetes_validate(core_objects(kserve, runtime, isvc), version, tmp_path)


def test_core_objects_pass_checkov(kserve: Rendered, runtime: Manifest, isvc: Manifest, tmp_path: Path) -> None:
    """checkov skips KServe's kinds, so scan the Pod they become (with the runtime's
    justified skips) beside the NetworkPolicy that selects it."""
    for i, doc in enumerate(core_objects(kserve, runtime, isvc)):
        (tmp_path / f"{i:02d}-{doc['kind']}.json").write_text(json.dumps(doc))
    result = run_tool(
        [tool("checkov"), "--framework", "kubernetes", "-d", tmp_path, "--skip-download",
         "--quiet", "--output", "json"],
        timeout=600,
    )
    assert result.stdout.strip(), f"checkov printed nothing:\n{result.stderr}"
    report = json.loads(result.stdout)
    failed = [f"{c['check_id']} {c['check_name']}" for c in report["results"].get("failed_checks", [])]
    assert report["summary"]["failed"] == 0 and not failed, "\n".join(failed)
    assert report["summary"]["passed"] >= 40, report["summary"]


# --- semantics ---------------------------------------------------------------------------


def test_runtime_serves_the_open_inference_protocol_over_grpc(runtime: Manifest, isvc: Manifest) -> None:
    versions = runtime["spec"]["protocolVersions"]
    assert "grpc-v2" in versions and set(versions) <= {"v2", "grpc-v2"}
    model = isvc["spec"]["predictor"]["model"]
    # KServe picks the lowest listed version (v2, REST) unless told; we have no REST.
    assert model["protocolVersion"] == "grpc-v2"


def test_isvc_selects_this_runtime_and_format(runtime: Manifest, isvc: Manifest) -> None:
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert ("onnx", None) not in formats and all(name != "onnx" for name, _ in formats), (
        "lstm-serve needs its manifest: it must not claim plain ONNX models"
    )
    assert runtime["spec"].get("multiModel", False) is False


def test_raw_deployment_mode(isvc: Manifest) -> None:
    mode = isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    assert mode in DEPLOYMENT_MODES_RAW, "Serverless caps streams at the revision timeout"


def test_models_at_kserve_mount_and_grpc_port_named_h2c(container: Manifest) -> None:
    args = container["args"]
    assert flag_value(args, "--models") == MODEL_MOUNT
    ports = container["ports"]
    assert ports[0]["name"] == "h2c", "KServe's Service maps port 80 to the first port; Knative needs h2c"
    assert ports[0]["containerPort"] == int(flag_value(args, "--port")) == 50051
    named = {p["name"]: p["containerPort"] for p in ports}
    assert named.get("metrics") == int(flag_value(args, "--metrics-port")) == 9090
    assert all(m["mountPath"] != MODEL_MOUNT for m in container.get("volumeMounts", [])), (
        "KServe mounts /mnt/models itself"
    )


def test_args_parse_with_the_server_cli(container: Manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's own parser and settings take the runtime's args and env."""
    for name in env_var_names():
        monkeypatch.delenv(name, raising=False)
    known = set(env_var_names())
    for env in container["env"]:
        assert env["name"] in known, f"not a setting: {env['name']}"
        monkeypatch.setenv(env["name"], env["value"])
    settings = settings_from_args(build_parser().parse_args(container["args"]))
    assert settings.server.models_dir == MODEL_MOUNT
    assert settings.server.port == container["ports"][0]["containerPort"]
    assert settings.metrics.enabled and settings.metrics.port == 9090
    assert settings.kserve_v2.enabled, "the runtime exists to serve inference.GRPCInferenceService"
    assert settings.providers.providers == ["CPUExecutionProvider"]


def test_settings_match_the_kustomize_base(container: Manifest, cpu_overlay: Rendered) -> None:
    """Same settings as the cpu overlay's ConfigMap: flags for the three that are flags."""
    base_container = server_container(cpu_overlay)
    (ref,) = [e["configMapRef"]["name"] for e in base_container["envFrom"]]
    base = dict(cpu_overlay.one("ConfigMap", ref)["data"])
    env = {e["name"]: e["value"] for e in container["env"]}
    args = container["args"]
    for key, flag in FLAG_SETTINGS.items():
        assert key not in env, f"{key} is passed as {flag}"
        base.pop(key)
    assert flag_value(args, "--port") == "50051" and flag_value(args, "--metrics-port") == "9090"
    extra = {k: v for k, v in env.items() if k not in base}
    assert extra == {"LSTM_SERVE_KSERVE_V2__ENABLED": "true"}
    assert {k: v for k, v in env.items() if k in base} == base


def test_container_matches_the_kustomize_base(container: Manifest, cpu_overlay: Rendered) -> None:
    base = server_container(cpu_overlay)
    assert container["image"] == base["image"] == "ghcr.io/lstm-serve/lstm-serve:0.1.0"
    assert container["imagePullPolicy"] == base["imagePullPolicy"]
    for key in ("resources", "securityContext", "lifecycle", "startupProbe", "readinessProbe", "livenessProbe"):
        assert container[key] == base[key], key
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == container["ports"][0]["containerPort"], probe
        assert container[probe]["grpc"].get("service", "") == "", probe


def test_network_policy_selects_the_pod_and_its_ports(
    kserve: Rendered, runtime: Manifest, isvc: Manifest, cpu_overlay: Rendered
) -> None:
    pod = kserve_pod(runtime, isvc)
    policy = kserve.one("NetworkPolicy")["spec"]
    assert selects(policy["podSelector"], pod["metadata"]["labels"])
    assert policy["podSelector"]["matchLabels"] == {ISVC_POD_LABEL: isvc["metadata"]["name"]}
    named = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    allowed = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert allowed == {"h2c", "metrics"} and allowed <= named
    base = cpu_overlay.one("NetworkPolicy")["spec"]
    rename = {"grpc": "h2c"}
    for ours, theirs in zip(policy["ingress"], base["ingress"], strict=True):
        assert ours["from"] == theirs["from"]
        assert [{**p, "port": rename.get(p["port"], p["port"])} for p in theirs["ports"]] == ours["ports"]
    assert policy["egress"] == base["egress"] and policy["policyTypes"] == base["policyTypes"]


def test_base_selectors_leave_kserve_pods_alone(kserve: Rendered, isvc: Manifest, cpu_overlay: Rendered) -> None:
    """Beside the base in one namespace, no base Service, PDB or policy picks up the KServe
    pods (which may carry the InferenceService's labels as well as KServe's own)."""
    labels = {**isvc["metadata"]["labels"], ISVC_POD_LABEL: isvc["metadata"]["name"]}
    for service in cpu_overlay.of_kind("Service"):
        selector = service["spec"]["selector"]
        assert not all(labels.get(k) == v for k, v in selector.items()), service["metadata"]["name"]
    assert not selects(cpu_overlay.one("PodDisruptionBudget")["spec"]["selector"], labels)
    assert not selects(cpu_overlay.one("NetworkPolicy")["spec"]["podSelector"], labels)
    for doc in kserve.docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/component"] == "kserve-predictor"


def test_pod_is_hardened_like_the_base(runtime: Manifest, isvc: Manifest, cpu_overlay: Rendered) -> None:
    pod = kserve_pod(runtime, isvc)["spec"]
    base = pod_spec(cpu_overlay)
    assert pod["securityContext"] == base["securityContext"]
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    ctx = pod["containers"][0]["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
    assert ctx["runAsNonRoot"] is True and ctx["capabilities"]["drop"] == ["ALL"]
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "/tmp must be a writable emptyDir"
    assert mounts[MODEL_MOUNT]["readOnly"] is True


def test_shutdown_and_scaling_match_the_base(container: Manifest, isvc: Manifest, cpu_overlay: Rendered) -> None:
    predictor = isvc["spec"]["predictor"]
    pre_stop_s = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    grace_s = float({e["name"]: e["value"] for e in container["env"]}["LSTM_SERVE_SERVER__GRACE_PERIOD_S"])
    assert predictor["terminationGracePeriodSeconds"] >= pre_stop_s + grace_s + 5
    assert predictor["deploymentStrategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = cpu_overlay.one("HorizontalPodAutoscaler")["spec"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    (cpu,) = [m["resource"] for m in hpa["metrics"] if m["type"] == "Resource"]
    assert predictor["scaleMetric"] == cpu["name"] == "cpu"
    assert predictor["scaleTarget"] == cpu["target"]["averageUtilization"]
