"""Our protos/lstmserve/kserve_v2 were written from the public specification: every
message, field number, type and method must be exactly tritonclient's, so Triton's
clients decode them unchanged."""

from __future__ import annotations

from typing import Any

from lstmserve.kserve_v2 import grpc_service_pb2, model_config_pb2
from tests.harness import ServerHandle
from tests.kserve.conftest import Oip


def _ours() -> dict[str, dict[str, list[Any]]]:
    found: dict[str, dict[str, list[Any]]] = {}
    for module in (grpc_service_pb2, model_config_pb2):
        stack = list(module.DESCRIPTOR.message_types_by_name.values())
        while stack:
            message = stack.pop()
            found[message.full_name] = {f.name: [f.number, f.type, f.is_repeated] for f in message.fields}
            stack.extend(message.nested_types)
    return found


def test_every_field_and_method_matches_tritonclient(bundled_server: ServerHandle, oip: Oip) -> None:
    theirs = oip(bundled_server, "descriptors")
    ours = _ours()
    assert len(ours) > 40
    for name, fields in ours.items():
        assert name in theirs["messages"], f"{name} is not in the specification"
        for field, spec in fields.items():
            assert theirs["messages"][name].get(field) == spec, f"{name}.{field}: ours {spec}"
    service = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        assert theirs["methods"][method.name] == [method.input_type.full_name, method.output_type.full_name]
