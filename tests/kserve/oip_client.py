"""Drives lstm-serve with the Open Inference Protocol's real clients.

It runs in .venv-triton (tritonclient and kserve pin protobuf<7), never in .venv: the
tests start it as a subprocess with one JSON command on stdin and read one JSON
answer on stdout. Arrays travel as {"b64": ..., "dtype": ..., "shape": [...]}.

Commands (``op``): ``describe``, ``infer`` (unary, in order), ``stream`` (one
ModelStreamInfer stream, every request sent before any answer is read),
``raw_infer`` (a hand-built ModelInferRequest, for wrong parameter types),
``statistics``, ``repository`` and ``kserve``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import sys
from typing import Any

import grpc
import numpy as np

if sys.argv[1:] != ["kserve"]:
    # kserve and tritonclient each register the protocol's messages in protobuf's
    # default pool, so one process may import only one of them.
    import tritonclient.grpc as triton
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    from tritonclient.utils import InferenceServerException


def decode(blob: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(blob["b64"]), dtype=blob["dtype"]).reshape(blob["shape"])


def encode(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array)
    if array.dtype == object:
        return {"list": [x.decode() if isinstance(x, bytes) else str(x) for x in array.reshape(-1)],
                "shape": list(array.shape)}
    return {"b64": base64.b64encode(array.tobytes()).decode(), "dtype": array.dtype.str, "shape": list(array.shape)}


DATATYPES = {"<f4": "FP32", "<i2": "INT16"}


def inputs_of(spec: dict[str, Any]) -> list[Any]:
    result = []
    for name, blob in spec["inputs"].items():
        array = decode(blob)
        tensor = triton.InferInput(name, list(array.shape), DATATYPES[array.dtype.str])
        tensor.set_data_from_numpy(array)
        result.append(tensor)
    return result


def options_of(spec: dict[str, Any]) -> dict[str, Any]:
    keys = ("sequence_id", "sequence_start", "sequence_end", "request_id", "priority", "timeout", "parameters")
    return {k: spec[k] for k in keys if k in spec}


def outputs_of(result: Any) -> dict[str, Any]:
    response = result.get_response()
    return {
        "id": response.id,
        "model_version": response.model_version,
        "outputs": {o.name: encode(result.as_numpy(o.name)) for o in response.outputs},
        "parameters": {k: str(v).strip() for k, v in response.parameters.items()},
    }


def failure(exc: Any) -> dict[str, Any]:
    return {"error": exc.message(), "status": exc.status()}


def op_describe(client: Any, cmd: dict[str, Any]) -> Any:
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "server": client.get_server_metadata(as_json=True),
        "models": {
            name: {
                "ready": client.is_model_ready(name),
                "metadata": client.get_model_metadata(name, as_json=True),
                "config": client.get_model_config(name, as_json=True)["config"],
            }
            for name in cmd["models"]
        },
    }


def op_model_calls(client: Any, cmd: dict[str, Any]) -> Any:
    """ModelReady, ModelMetadata and ModelConfig of one model with the given headers:
    each answer, or its status."""
    headers = cmd.get("headers")
    answers: dict[str, Any] = {}
    for name, call in (("ready", client.is_model_ready), ("metadata", client.get_model_metadata),
                       ("config", client.get_model_config)):
        try:
            answers[name] = str(call(cmd["model"], headers=headers))[:200]
        except InferenceServerException as exc:
            answers[name] = failure(exc)
    return answers


def op_infer(client: Any, cmd: dict[str, Any]) -> Any:
    answers = []
    for spec in cmd["requests"]:
        try:
            result = client.infer(
                spec["model"], inputs_of(spec), compression_algorithm=cmd.get("compression"),
                headers=cmd.get("headers"), **options_of(spec)
            )
            answers.append(outputs_of(result))
        except InferenceServerException as exc:
            answers.append(failure(exc))
    return answers


def op_stream(client: Any, cmd: dict[str, Any]) -> Any:
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(
        callback=lambda result, error: answers.put(failure(error) if error is not None else outputs_of(result)),
        stream_timeout=cmd.get("timeout", 60),
        compression_algorithm=cmd.get("compression"),
    )
    for spec in cmd["requests"]:
        client.async_stream_infer(
            spec["model"], inputs_of(spec), enable_empty_final_response=spec.get("final_flag", False),
            **options_of(spec),
        )
    collected = [answers.get(timeout=cmd.get("timeout", 60)) for _ in cmd["requests"]]
    client.stop_stream()
    return collected


def op_raw_infer(target: str, cmd: dict[str, Any]) -> Any:
    """A ModelInferRequest built by hand, with the parameters exactly as given."""
    request = service_pb2.ModelInferRequest(model_name=cmd["model"], id=cmd.get("id", ""))
    for name, blob in cmd["inputs"].items():
        array = decode(blob)
        tensor = request.inputs.add(name=name, datatype=DATATYPES[array.dtype.str], shape=array.shape)
        if cmd.get("typed"):
            tensor.contents.fp32_contents.extend(array.reshape(-1).tolist())
        else:
            request.raw_input_contents.append(array.tobytes())
    for key, (kind, value) in cmd["parameters"].items():
        setattr(request.parameters[key], kind, value)
    with grpc.insecure_channel(target) as channel:
        try:
            response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        except grpc.RpcError as exc:
            return {"status": exc.code().name, "error": exc.details()}
    outputs = {
        o.name: encode(np.frombuffer(raw, dtype="<f4").reshape(list(o.shape)))
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
        if o.datatype == "FP32"
    }
    return {"status": "OK", "id": response.id, "outputs": outputs}


def op_statistics(client: Any, cmd: dict[str, Any]) -> Any:
    return client.get_inference_statistics(cmd.get("model", ""), as_json=True)


def op_repository(client: Any, cmd: dict[str, Any]) -> Any:
    try:
        if cmd["action"] == "load":
            client.load_model(cmd["model"])
        elif cmd["action"] == "unload":
            client.unload_model(cmd["model"])
    except InferenceServerException as exc:
        return failure(exc)
    return client.get_model_repository_index(as_json=True)


async def op_kserve(target: str, cmd: dict[str, Any]) -> Any:
    """KServe's own InferenceGRPCClient, with its default retries on UNAVAILABLE."""
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    client = InferenceGRPCClient(target, timeout=cmd.get("timeout", 20))
    ready = {"server_ready": await client.is_server_ready(), "model_ready": await client.is_model_ready(cmd["model"])}
    answers: list[Any] = [ready]
    for spec in cmd["requests"]:
        inputs = []
        for name, blob in spec["inputs"].items():
            array = decode(blob)
            tensor = InferInput(name, list(array.shape), DATATYPES[array.dtype.str])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        request = InferRequest(spec["model"], inputs, request_id=spec.get("request_id"),
                               parameters=spec.get("parameters"))
        try:
            response = await client.infer(request)
            answers.append({"outputs": {o.name: encode(o.as_numpy()) for o in response.outputs}})
        except grpc.RpcError as exc:
            answers.append({"status": exc.code().name, "error": exc.details()})
    await client.close()
    return answers


def fields_of(descriptor: Any) -> dict[str, dict[str, list[Any]]]:
    """Every message under ``descriptor`` (nested too): field name -> [number, type, repeated]."""
    found: dict[str, dict[str, list[Any]]] = {}
    for message in descriptor.message_types_by_name.values() if hasattr(descriptor, "message_types_by_name") else []:
        stack = [message]
        while stack:
            m = stack.pop()
            found[m.full_name] = {f.name: [f.number, f.type, f.label == f.LABEL_REPEATED] for f in m.fields}
            stack.extend(m.nested_types)
    return found


def op_descriptors() -> Any:
    """The protocol's messages as tritonclient defines them, for a field-number check."""
    from tritonclient.grpc import model_config_pb2

    messages = {**fields_of(service_pb2.DESCRIPTOR), **fields_of(model_config_pb2.DESCRIPTOR)}
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}
    return {"messages": messages, "methods": methods}


def main() -> None:
    cmd = json.loads(sys.stdin.read())
    target = cmd["target"]
    op = cmd["op"]
    if op == "descriptors":
        result = op_descriptors()
    elif op == "raw_infer":
        result = op_raw_infer(target, cmd)
    elif op == "kserve":
        result = asyncio.run(op_kserve(target, cmd))
    else:
        with triton.InferenceServerClient(target) as client:
            result = globals()[f"op_{op}"](client, cmd)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
