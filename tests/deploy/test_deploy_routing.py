"""The optional routing configs in deploy/routing: each parses, validates against a
schema (the cloudcoil Istio model for the DestinationRule; small pinned JSON schemas in
tests/deploy/schemas, written from the upstream API references, for Envoy, the Gateway
API, Envoy Gateway and the gRPC service config), and hashes on the header the client
sends, towards the Service and port the manifests define. The service config also runs
on a real channel: tests/integration/test_routing.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lstm_client.client import SESSION_HEADER
from lstmserve.v1 import inference_pb2
from tests.deploy.deploylib import DEPLOY, Manifest, Rendered, render, run_tool, tool, yaml_to_docs
from tests.deploy.test_deploy_schemas import crd_problems

ROUTING = DEPLOY / "routing"
SCHEMAS = Path(__file__).parent / "schemas"
INFERENCE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name

VALIDATE = r"""
import json, sys
import jsonschema
schema, doc = json.load(sys.stdin)
validator = jsonschema.Draft202012Validator(schema)
json.dump(sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)), sys.stdout)
"""


def schema_errors(schema: str, doc: Any) -> list[str]:
    """What the pinned JSON schema ``schema`` finds wrong with ``doc`` (jsonschema in .venv-deploy)."""
    pinned = json.loads((SCHEMAS / schema).read_text())
    result = run_tool([tool("python"), "-c", VALIDATE], stdin=json.dumps([pinned, doc]))
    assert result.returncode == 0, result.stderr
    errors = json.loads(result.stdout)
    assert isinstance(errors, list)
    return [str(e) for e in errors]


@pytest.fixture(scope="module")
def base() -> Rendered:
    return render(DEPLOY / "base")


def service_port(base: Rendered, name: str) -> int:
    ports = {p["name"]: p["port"] for p in base.one("Service", name)["spec"]["ports"]}
    return int(ports["grpc"])


def fqdn(base: Rendered, name: str) -> str:
    service = base.one("Service", name)["metadata"]
    return f"{service['name']}.{service['namespace']}.svc.cluster.local"


def one_doc(path: Path) -> Manifest:
    (doc,) = yaml_to_docs(path.read_text())
    return doc


def test_every_routing_file_is_tested() -> None:
    assert sorted(p.name for p in ROUTING.iterdir()) == [
        "envoy.yaml", "gateway-grpcroute.yaml", "grpc-service-config.json", "istio-destinationrule.yaml",
    ]


def test_envoy_hashes_inference_calls_on_the_session_header(base: Rendered) -> None:
    config = one_doc(ROUTING / "envoy.yaml")
    assert schema_errors("envoy-bootstrap-subset.json", config) == []
    (cluster,) = config["static_resources"]["clusters"]
    assert cluster["lb_policy"] == "RING_HASH"
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"], "gRPC needs HTTP/2 upstream"
    assert any("grpc_health_check" in check for check in cluster["health_checks"])
    (address,) = [
        e["endpoint"]["address"]["socket_address"]
        for group in cluster["load_assignment"]["endpoints"] for e in group["lb_endpoints"]
    ]
    assert cluster["type"] == "STRICT_DNS", "resolve every pod behind the headless Service"
    headless = "lstm-serve-headless"
    assert address == {"address": fqdn(base, headless), "port_value": service_port(base, headless)}
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = [r for vh in hcm["route_config"]["virtual_hosts"] for r in vh["routes"]]
    inference = [r for r in routes if r["match"].get("prefix") == f"/{INFERENCE}/"]
    assert len(inference) == 1 and routes.index(inference[0]) == 0, "the Inference route comes first"
    route = inference[0]["route"]
    assert route["cluster"] == cluster["name"]
    assert route["hash_policy"] == [{"header": {"header_name": SESSION_HEADER}}]
    assert route["timeout"] == "0s", "a stream must not be cut by the route timeout"
    assert {r["route"]["cluster"] for r in routes} == {cluster["name"]}


def test_pinned_envoy_schema_catches_a_misspelt_field() -> None:
    config = one_doc(ROUTING / "envoy.yaml")
    config["static_resources"]["clusters"][0]["lb_polcy"] = config["static_resources"]["clusters"][0].pop("lb_policy")
    assert any("lb_polcy" in e for e in schema_errors("envoy-bootstrap-subset.json", config))


def test_istio_destination_rule_hashes_on_the_session_header(base: Rendered) -> None:
    rule = one_doc(ROUTING / "istio-destinationrule.yaml")
    assert crd_problems([rule]) == []
    assert rule["apiVersion"] == "networking.istio.io/v1"
    assert rule["spec"]["host"] == fqdn(base, "lstm-serve")
    assert rule["metadata"]["namespace"] == base.one("Service", "lstm-serve")["metadata"]["namespace"]
    assert rule["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"]["httpHeaderName"] == SESSION_HEADER
    # Istio picks the protocol from the port name: HTTP/2, balanced per call.
    assert "grpc" in {p["name"] for p in base.one("Service", "lstm-serve")["spec"]["ports"]}


def test_istio_check_catches_a_misspelt_field() -> None:
    rule = one_doc(ROUTING / "istio-destinationrule.yaml")
    hashing = rule["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"]
    hashing["httpHeadrName"] = hashing.pop("httpHeaderName")
    assert any("httpHeadrName" in p for p in crd_problems([rule]))


def test_gateway_api_route_and_hash_policy(base: Rendered) -> None:
    route, policy = yaml_to_docs((ROUTING / "gateway-grpcroute.yaml").read_text())
    assert schema_errors("gateway-api-grpcroute-v1.json", route) == []
    assert schema_errors("envoy-gateway-backendtrafficpolicy-subset.json", policy) == []
    services = {m["method"]["service"] for rule in route["spec"]["rules"] for m in rule["matches"]}
    assert services == {INFERENCE, "grpc.health.v1.Health"}
    backends = [b for rule in route["spec"]["rules"] for b in rule["backendRefs"]]
    port = service_port(base, "lstm-serve")
    assert backends == [{"group": "", "kind": "Service", "name": "lstm-serve", "port": port}]
    namespace = base.one("Service", "lstm-serve")["metadata"]["namespace"]
    assert route["metadata"]["namespace"] == policy["metadata"]["namespace"] == namespace
    (target,) = policy["spec"]["targetRefs"]
    assert (target["kind"], target["name"]) == ("GRPCRoute", route["metadata"]["name"])
    balancer = policy["spec"]["loadBalancer"]
    assert balancer["type"] == "ConsistentHash"
    assert balancer["consistentHash"] == {"type": "Header", "header": {"name": SESSION_HEADER}}


def test_grpc_service_config_hashes_on_the_session_header() -> None:
    config = json.loads((ROUTING / "grpc-service-config.json").read_text())
    assert schema_errors("grpc-service-config-subset.json", config) == []
    (policy,) = config["loadBalancingConfig"]
    assert policy["ring_hash_experimental"]["requestHashHeader"] == SESSION_HEADER
    for method in config["methodConfig"]:
        for name in method["name"]:
            service = inference_pb2.DESCRIPTOR.pool.FindServiceByName(name["service"])
            assert name.get("method", "") == "" or service.FindMethodByName(name["method"]) is not None
        assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
