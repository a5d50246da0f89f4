"""The Open Inference Protocol's description of the server and its models: server and
model metadata, Triton's model configuration derived from a manifest and the settings,
the repository index and the statistics (the read-only half of the converter; requests
and responses are in :mod:`lstm_serve.transport.kserve_v2.convert`)."""

from __future__ import annotations

import json

from lstm_serve import __version__
from lstm_serve.domain import ModelInfo, ModelRef
from lstm_serve.manifest import LogMelFrontend, Manifest
from lstm_serve.repository import ModelEntry
from lstm_serve.settings import Settings
from lstm_serve.statistics import Duration, ModelStats
from lstm_serve.transport.kserve_v2.convert import EVENTS_OUTPUT, emits_events, input_name, require_manifest
from lstmserve.kserve_v2 import grpc_service_pb2 as pb
from lstmserve.kserve_v2 import model_config_pb2 as mc

SERVER_NAME = "lstm-serve"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ("model_configuration", "model_repository", "parameters", "sequence", "statistics")
"""The protocol extensions served, as ServerMetadata reports them."""


def _input_type(manifest: Manifest) -> tuple[str, list[int]]:
    if manifest.input_kind == "audio":
        return "INT16", [-1]
    return "FP32", [-1, manifest.input.feature_dim]


def _output_dims(manifest: Manifest) -> list[int]:
    dim = manifest.output.dim
    return [-1, dim] if manifest.output.head == "per_frame" else [dim]


def server_metadata() -> pb.ServerMetadataResponse:
    """Name, version and the extensions served."""
    return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)


def model_metadata(info: ModelInfo) -> pb.ModelMetadataResponse:
    """Inputs and outputs, with -1 for the batch axis and every dynamic dimension."""
    manifest = require_manifest(info)
    datatype, dims = _input_type(manifest)
    meta = pb.ModelMetadataResponse(name=info.name, versions=info.versions, platform=PLATFORM)
    meta.inputs.add(name=input_name(manifest), datatype=datatype, shape=[-1, *dims])
    meta.outputs.add(name=manifest.output.name, datatype="FP32", shape=[-1, *_output_dims(manifest)])
    if emits_events(manifest):
        meta.outputs.add(name=EVENTS_OUTPUT, datatype="BYTES", shape=[-1, -1])
    return meta


def model_config(info: ModelInfo, settings: Settings) -> pb.ModelConfigResponse:
    """Triton's model configuration, derived from the manifest and the settings."""
    manifest = require_manifest(info)
    batching = settings.batching
    max_batch = batching.max_batch_size if batching.enabled and info.name not in batching.disabled_models else 1
    delay_us = int(batching.max_delay_ms * 1000)
    config = mc.ModelConfig(
        name=info.name, platform=PLATFORM, backend="onnxruntime", max_batch_size=max_batch,
        default_model_filename="model.onnx",
    )
    datatype, dims = _input_type(manifest)
    config.input.add(name=input_name(manifest), data_type=mc.DataType.Value(f"TYPE_{datatype}"), dims=dims)
    config.output.add(name=manifest.output.name, data_type=mc.TYPE_FP32, dims=_output_dims(manifest))
    if emits_events(manifest):
        config.output.add(name=EVENTS_OUTPUT, data_type=mc.TYPE_STRING, dims=[-1])
    gpu = any(p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for p in info.providers)
    config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU)
    if manifest.causal:
        seq = config.sequence_batching
        seq.max_sequence_idle_microseconds = int(settings.sessions.ttl_s * 1e6)
        seq.oldest.max_candidate_sequences = settings.sessions.max_sessions
        seq.oldest.max_queue_delay_microseconds = delay_us
        seq.oldest.preserve_ordering = True
        for pair in manifest.states:
            state = seq.state.add(
                input_name=pair.input, output_name=pair.output, data_type=mc.TYPE_FP32, dims=[pair.layers, pair.hidden]
            )
            state.initial_state.add(data_type=mc.TYPE_FP32, dims=[pair.layers, pair.hidden], zero_data=True,
                                    name=f"{pair.name}_zero")
    else:
        config.dynamic_batching.max_queue_delay_microseconds = delay_us
    config.model_transaction_policy.decoupled = False
    parameters = {
        "lstm_serve.version": info.version,
        "lstm_serve.head": manifest.output.head,
        "lstm_serve.task": manifest.output.task,
        "lstm_serve.labels": json.dumps(manifest.output.labels),
        "lstm_serve.frame_rate_hz": f"{manifest.input.frame_rate_hz:g}",
        "lstm_serve.states": json.dumps([s.name for s in manifest.states]),
        "lstm_serve.state_batch_axis": "1",
    }
    if isinstance(manifest.frontend, LogMelFrontend):
        parameters["lstm_serve.sample_rate_hz"] = str(manifest.frontend.sample_rate_hz)
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return pb.ModelConfigResponse(config=config)


def repository_index(entries: list[ModelEntry], ready_only: bool) -> pb.RepositoryIndexResponse:
    """Every model version and its state."""
    response = pb.RepositoryIndexResponse()
    for entry in entries:
        if ready_only and not entry.ready:
            continue
        response.models.add(name=entry.name, version=entry.version, state=entry.state, reason=entry.reason)
    return response


def _duration(target: pb.StatisticDuration, source: Duration) -> None:
    target.count, target.ns = source.count, source.ns


def model_statistics(items: list[tuple[ModelRef, ModelStats]]) -> pb.ModelStatisticsResponse:
    """Cumulative counts and durations per model version."""
    response = pb.ModelStatisticsResponse()
    for ref, stats in items:
        out = response.model_stats.add(
            name=ref.name, version=ref.version, last_inference=stats.last_inference_ms,
            inference_count=stats.inference_count, execution_count=stats.execution_count,
        )
        inference = out.inference_stats
        for name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
            _duration(getattr(inference, name), getattr(stats, name))
        for size in sorted(stats.batches):
            batch = out.batch_stats.add(batch_size=size)
            _duration(batch.compute_infer, stats.batches[size].compute_infer)
    return response
