from lstmserve.v1 import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionSnapshot(_message.Message):
    __slots__ = ("schema_version", "session_id", "principal", "model", "model_hash", "input_kind", "audio", "next_sequence_number", "frame_offset", "store_version", "states", "audio_pipeline", "spotter", "final_events", "created_ms", "updated_ms", "expires_ms")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    INPUT_KIND_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    FRAME_OFFSET_FIELD_NUMBER: _ClassVar[int]
    STORE_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    AUDIO_PIPELINE_FIELD_NUMBER: _ClassVar[int]
    SPOTTER_FIELD_NUMBER: _ClassVar[int]
    FINAL_EVENTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_MS_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    session_id: str
    principal: str
    model: _inference_pb2.ModelRef
    model_hash: str
    input_kind: _inference_pb2.InputKind
    audio: _inference_pb2.AudioFormat
    next_sequence_number: int
    frame_offset: int
    store_version: int
    states: _containers.RepeatedCompositeFieldContainer[_inference_pb2.NamedTensor]
    audio_pipeline: AudioPipelineSnapshot
    spotter: SpotterSnapshot
    final_events: _containers.RepeatedCompositeFieldContainer[SnapshotEvent]
    created_ms: int
    updated_ms: int
    expires_ms: int
    def __init__(self, schema_version: _Optional[int] = ..., session_id: _Optional[str] = ..., principal: _Optional[str] = ..., model: _Optional[_Union[_inference_pb2.ModelRef, _Mapping]] = ..., model_hash: _Optional[str] = ..., input_kind: _Optional[_Union[_inference_pb2.InputKind, str]] = ..., audio: _Optional[_Union[_inference_pb2.AudioFormat, _Mapping]] = ..., next_sequence_number: _Optional[int] = ..., frame_offset: _Optional[int] = ..., store_version: _Optional[int] = ..., states: _Optional[_Iterable[_Union[_inference_pb2.NamedTensor, _Mapping]]] = ..., audio_pipeline: _Optional[_Union[AudioPipelineSnapshot, _Mapping]] = ..., spotter: _Optional[_Union[SpotterSnapshot, _Mapping]] = ..., final_events: _Optional[_Iterable[_Union[SnapshotEvent, _Mapping]]] = ..., created_ms: _Optional[int] = ..., updated_ms: _Optional[int] = ..., expires_ms: _Optional[int] = ...) -> None: ...

class AudioPipelineSnapshot(_message.Message):
    __slots__ = ("pending_bytes", "samples_decoded", "resampler", "logmel")
    PENDING_BYTES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_DECODED_FIELD_NUMBER: _ClassVar[int]
    RESAMPLER_FIELD_NUMBER: _ClassVar[int]
    LOGMEL_FIELD_NUMBER: _ClassVar[int]
    pending_bytes: bytes
    samples_decoded: int
    resampler: ResamplerSnapshot
    logmel: LogMelSnapshot
    def __init__(self, pending_bytes: _Optional[bytes] = ..., samples_decoded: _Optional[int] = ..., resampler: _Optional[_Union[ResamplerSnapshot, _Mapping]] = ..., logmel: _Optional[_Union[LogMelSnapshot, _Mapping]] = ...) -> None: ...

class ResamplerSnapshot(_message.Message):
    __slots__ = ("in_rate", "out_rate", "history", "history_start", "samples_in", "samples_out", "flushed")
    IN_RATE_FIELD_NUMBER: _ClassVar[int]
    OUT_RATE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    HISTORY_START_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_IN_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_OUT_FIELD_NUMBER: _ClassVar[int]
    FLUSHED_FIELD_NUMBER: _ClassVar[int]
    in_rate: int
    out_rate: int
    history: _containers.RepeatedScalarFieldContainer[float]
    history_start: int
    samples_in: int
    samples_out: int
    flushed: bool
    def __init__(self, in_rate: _Optional[int] = ..., out_rate: _Optional[int] = ..., history: _Optional[_Iterable[float]] = ..., history_start: _Optional[int] = ..., samples_in: _Optional[int] = ..., samples_out: _Optional[int] = ..., flushed: _Optional[bool] = ...) -> None: ...

class LogMelSnapshot(_message.Message):
    __slots__ = ("previous_sample", "buffered", "frames", "samples_in", "flushed")
    PREVIOUS_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    BUFFERED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_IN_FIELD_NUMBER: _ClassVar[int]
    FLUSHED_FIELD_NUMBER: _ClassVar[int]
    previous_sample: float
    buffered: _containers.RepeatedScalarFieldContainer[float]
    frames: int
    samples_in: int
    flushed: bool
    def __init__(self, previous_sample: _Optional[float] = ..., buffered: _Optional[_Iterable[float]] = ..., frames: _Optional[int] = ..., samples_in: _Optional[int] = ..., flushed: _Optional[bool] = ...) -> None: ...

class SpotterSnapshot(_message.Message):
    __slots__ = ("history", "history_rows", "frame", "blocked_until", "open")
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ROWS_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    history: _containers.RepeatedScalarFieldContainer[float]
    history_rows: int
    frame: int
    blocked_until: int
    open: OpenDetection
    def __init__(self, history: _Optional[_Iterable[float]] = ..., history_rows: _Optional[int] = ..., frame: _Optional[int] = ..., blocked_until: _Optional[int] = ..., open: _Optional[_Union[OpenDetection, _Mapping]] = ...) -> None: ...

class OpenDetection(_message.Message):
    __slots__ = ("label", "first_frame", "last_frame", "peak")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    LAST_FRAME_FIELD_NUMBER: _ClassVar[int]
    PEAK_FIELD_NUMBER: _ClassVar[int]
    label: int
    first_frame: int
    last_frame: int
    peak: float
    def __init__(self, label: _Optional[int] = ..., first_frame: _Optional[int] = ..., last_frame: _Optional[int] = ..., peak: _Optional[float] = ...) -> None: ...

class SnapshotEvent(_message.Message):
    __slots__ = ("label", "start_s", "end_s", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    start_s: float
    end_s: float
    score: float
    def __init__(self, label: _Optional[str] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., score: _Optional[float] = ...) -> None: ...
