from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]

class InputKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INPUT_KIND_UNSPECIFIED: _ClassVar[InputKind]
    INPUT_KIND_FEATURES: _ClassVar[InputKind]
    INPUT_KIND_AUDIO: _ClassVar[InputKind]

class HeadKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEAD_KIND_UNSPECIFIED: _ClassVar[HeadKind]
    HEAD_KIND_PER_FRAME: _ClassVar[HeadKind]
    HEAD_KIND_SEQUENCE: _ClassVar[HeadKind]

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_CLASSIFICATION: _ClassVar[TaskKind]
    TASK_KIND_REGRESSION: _ClassVar[TaskKind]

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_PCM16: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_FLOAT32: _ClassVar[AudioEncoding]
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_FLOAT32: DataType
INPUT_KIND_UNSPECIFIED: InputKind
INPUT_KIND_FEATURES: InputKind
INPUT_KIND_AUDIO: InputKind
HEAD_KIND_UNSPECIFIED: HeadKind
HEAD_KIND_PER_FRAME: HeadKind
HEAD_KIND_SEQUENCE: HeadKind
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_CLASSIFICATION: TaskKind
TASK_KIND_REGRESSION: TaskKind
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
AUDIO_ENCODING_PCM16: AudioEncoding
AUDIO_ENCODING_FLOAT32: AudioEncoding

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DataType
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DataType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "tensor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: Tensor
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class StateSpec(_message.Message):
    __slots__ = ("name", "layers", "hidden")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    layers: int
    hidden: int
    def __init__(self, name: _Optional[str] = ..., layers: _Optional[int] = ..., hidden: _Optional[int] = ...) -> None: ...

class AudioFrontend(_message.Message):
    __slots__ = ("pipeline", "sample_rate_hz", "window_ms", "hop_ms", "n_fft", "n_mels")
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    WINDOW_MS_FIELD_NUMBER: _ClassVar[int]
    HOP_MS_FIELD_NUMBER: _ClassVar[int]
    N_FFT_FIELD_NUMBER: _ClassVar[int]
    N_MELS_FIELD_NUMBER: _ClassVar[int]
    pipeline: str
    sample_rate_hz: int
    window_ms: float
    hop_ms: float
    n_fft: int
    n_mels: int
    def __init__(self, pipeline: _Optional[str] = ..., sample_rate_hz: _Optional[int] = ..., window_ms: _Optional[float] = ..., hop_ms: _Optional[float] = ..., n_fft: _Optional[int] = ..., n_mels: _Optional[int] = ...) -> None: ...

class ModelMetadata(_message.Message):
    __slots__ = ("name", "version", "ready", "error", "input_kind", "feature_dim", "frame_rate_hz", "head", "task", "labels", "output_dim", "streamable", "states", "providers", "audio", "description", "provenance", "versions")
    class ProvenanceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INPUT_KIND_FIELD_NUMBER: _ClassVar[int]
    FEATURE_DIM_FIELD_NUMBER: _ClassVar[int]
    FRAME_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIM_FIELD_NUMBER: _ClassVar[int]
    STREAMABLE_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    ready: bool
    error: str
    input_kind: InputKind
    feature_dim: int
    frame_rate_hz: float
    head: HeadKind
    task: TaskKind
    labels: _containers.RepeatedScalarFieldContainer[str]
    output_dim: int
    streamable: bool
    states: _containers.RepeatedCompositeFieldContainer[StateSpec]
    providers: _containers.RepeatedScalarFieldContainer[str]
    audio: AudioFrontend
    description: str
    provenance: _containers.ScalarMap[str, str]
    versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., ready: _Optional[bool] = ..., error: _Optional[str] = ..., input_kind: _Optional[_Union[InputKind, str]] = ..., feature_dim: _Optional[int] = ..., frame_rate_hz: _Optional[float] = ..., head: _Optional[_Union[HeadKind, str]] = ..., task: _Optional[_Union[TaskKind, str]] = ..., labels: _Optional[_Iterable[str]] = ..., output_dim: _Optional[int] = ..., streamable: _Optional[bool] = ..., states: _Optional[_Iterable[_Union[StateSpec, _Mapping]]] = ..., providers: _Optional[_Iterable[str]] = ..., audio: _Optional[_Union[AudioFrontend, _Mapping]] = ..., description: _Optional[str] = ..., provenance: _Optional[_Mapping[str, str]] = ..., versions: _Optional[_Iterable[str]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelMetadata]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelMetadata, _Mapping]]] = ...) -> None: ...

class GetModelMetadataRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "features", "lengths", "session_id", "must_exist", "end_session", "return_state", "initial_states", "resume_token", "return_token", "frame_offset")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MUST_EXIST_FIELD_NUMBER: _ClassVar[int]
    END_SESSION_FIELD_NUMBER: _ClassVar[int]
    RETURN_STATE_FIELD_NUMBER: _ClassVar[int]
    INITIAL_STATES_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RETURN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FRAME_OFFSET_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    features: Tensor
    lengths: _containers.RepeatedScalarFieldContainer[int]
    session_id: str
    must_exist: bool
    end_session: bool
    return_state: bool
    initial_states: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    resume_token: bytes
    return_token: bool
    frame_offset: int
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., features: _Optional[_Union[Tensor, _Mapping]] = ..., lengths: _Optional[_Iterable[int]] = ..., session_id: _Optional[str] = ..., must_exist: _Optional[bool] = ..., end_session: _Optional[bool] = ..., return_state: _Optional[bool] = ..., initial_states: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., resume_token: _Optional[bytes] = ..., return_token: _Optional[bool] = ..., frame_offset: _Optional[int] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model", "outputs", "lengths", "states", "session_id", "frame_offset", "resume_token", "replayed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_OFFSET_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    outputs: Tensor
    lengths: _containers.RepeatedScalarFieldContainer[int]
    states: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    session_id: str
    frame_offset: int
    resume_token: bytes
    replayed: bool
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., outputs: _Optional[_Union[Tensor, _Mapping]] = ..., lengths: _Optional[_Iterable[int]] = ..., states: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., session_id: _Optional[str] = ..., frame_offset: _Optional[int] = ..., resume_token: _Optional[bytes] = ..., replayed: _Optional[bool] = ...) -> None: ...

class OutputOptions(_message.Message):
    __slots__ = ("frame_outputs", "events", "return_state")
    FRAME_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    RETURN_STATE_FIELD_NUMBER: _ClassVar[int]
    frame_outputs: bool
    events: bool
    return_state: bool
    def __init__(self, frame_outputs: _Optional[bool] = ..., events: _Optional[bool] = ..., return_state: _Optional[bool] = ...) -> None: ...

class AudioFormat(_message.Message):
    __slots__ = ("encoding", "sample_rate_hz")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    encoding: AudioEncoding
    sample_rate_hz: int
    def __init__(self, encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate_hz: _Optional[int] = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("model", "session_id", "must_exist", "input_kind", "audio", "output", "resume_token", "token_every")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MUST_EXIST_FIELD_NUMBER: _ClassVar[int]
    INPUT_KIND_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_EVERY_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    session_id: str
    must_exist: bool
    input_kind: InputKind
    audio: AudioFormat
    output: OutputOptions
    resume_token: bytes
    token_every: int
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., session_id: _Optional[str] = ..., must_exist: _Optional[bool] = ..., input_kind: _Optional[_Union[InputKind, str]] = ..., audio: _Optional[_Union[AudioFormat, _Mapping]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ..., resume_token: _Optional[bytes] = ..., token_every: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("sequence_number", "features", "audio")
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    sequence_number: int
    features: Tensor
    audio: bytes
    def __init__(self, sequence_number: _Optional[int] = ..., features: _Optional[_Union[Tensor, _Mapping]] = ..., audio: _Optional[bytes] = ...) -> None: ...

class End(_message.Message):
    __slots__ = ("keep_session",)
    KEEP_SESSION_FIELD_NUMBER: _ClassVar[int]
    keep_session: bool
    def __init__(self, keep_session: _Optional[bool] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("config", "chunk", "end")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    chunk: Chunk
    end: End
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., end: _Optional[_Union[End, _Mapping]] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ("session_id", "model", "frame_rate_hz", "next_sequence_number", "frame_offset", "resumed", "resume_token")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FRAME_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    FRAME_OFFSET_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: ModelRef
    frame_rate_hz: float
    next_sequence_number: int
    frame_offset: int
    resumed: bool
    resume_token: bytes
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., frame_rate_hz: _Optional[float] = ..., next_sequence_number: _Optional[int] = ..., frame_offset: _Optional[int] = ..., resumed: _Optional[bool] = ..., resume_token: _Optional[bytes] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("label", "start_s", "end_s", "score", "is_final")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    label: str
    start_s: float
    end_s: float
    score: float
    is_final: bool
    def __init__(self, label: _Optional[str] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., score: _Optional[float] = ..., is_final: _Optional[bool] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("sequence_number", "frame_offset", "outputs", "events", "duplicate", "frames", "flush", "resume_token")
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    FRAME_OFFSET_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    FLUSH_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sequence_number: int
    frame_offset: int
    outputs: Tensor
    events: _containers.RepeatedCompositeFieldContainer[Event]
    duplicate: bool
    frames: int
    flush: bool
    resume_token: bytes
    def __init__(self, sequence_number: _Optional[int] = ..., frame_offset: _Optional[int] = ..., outputs: _Optional[_Union[Tensor, _Mapping]] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., duplicate: _Optional[bool] = ..., frames: _Optional[int] = ..., flush: _Optional[bool] = ..., resume_token: _Optional[bytes] = ...) -> None: ...

class Final(_message.Message):
    __slots__ = ("session_id", "frames", "chunks", "events", "states", "audio_seconds", "resume_token")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    frames: int
    chunks: int
    events: _containers.RepeatedCompositeFieldContainer[Event]
    states: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    audio_seconds: float
    resume_token: bytes
    def __init__(self, session_id: _Optional[str] = ..., frames: _Optional[int] = ..., chunks: _Optional[int] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., states: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., audio_seconds: _Optional[float] = ..., resume_token: _Optional[bytes] = ...) -> None: ...

class Draining(_message.Message):
    __slots__ = ("time_left_s", "resume_token", "last_sequence_number", "closing")
    TIME_LEFT_S_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    CLOSING_FIELD_NUMBER: _ClassVar[int]
    time_left_s: float
    resume_token: bytes
    last_sequence_number: int
    closing: bool
    def __init__(self, time_left_s: _Optional[float] = ..., resume_token: _Optional[bytes] = ..., last_sequence_number: _Optional[int] = ..., closing: _Optional[bool] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("started", "result", "final", "draining")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    started: Started
    result: Result
    final: Final
    draining: Draining
    def __init__(self, started: _Optional[_Union[Started, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ..., final: _Optional[_Union[Final, _Mapping]] = ..., draining: _Optional[_Union[Draining, _Mapping]] = ...) -> None: ...
