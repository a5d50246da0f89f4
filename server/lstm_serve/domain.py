"""Transport-free request and result types.

Each API's converter (e.g. :mod:`lstm_serve.transport.lstmserve_v1.convert`) turns protobuf messages into
these and back; everything below it works on these types and numpy arrays only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lstm_serve.events import Event
from lstm_serve.manifest import Manifest

InputKind = Literal["features", "audio"]
AudioEncoding = Literal["pcm16", "float32"]


@dataclass(frozen=True)
class ModelRef:
    """A model name and an optional version ("" means the highest ready one)."""

    name: str
    version: str = ""


@dataclass(frozen=True)
class ModelInfo:
    """What a client may know of one model version: a value, with no runtime handle."""

    name: str
    version: str
    ready: bool
    error: str
    manifest: Manifest | None
    """None when the package's manifest did not load."""
    providers: tuple[str, ...]
    """The execution providers in use (empty when not ready)."""
    versions: tuple[str, ...]
    """Every version of the model, oldest first."""


@dataclass(frozen=True)
class PredictInput:
    """A unary Predict call.

    ``features`` is ``[batch, max_frames, feature_dim]`` (one row for an unbatched
    request) and ``lengths`` holds each row's length in frames; frames past a row's
    length are padding and never reach the model. ``batched`` records whether the
    request had a batch axis, so the response can mirror it.
    """

    model: ModelRef
    features: np.ndarray
    lengths: np.ndarray
    batched: bool
    session_id: str = ""
    must_exist: bool = False
    end_session: bool = False
    return_state: bool = False
    initial_states: dict[str, np.ndarray] = field(default_factory=dict)
    resume_token: bytes = b""
    return_token: bool = False
    frame_offset: int | None = None
    """The session frame this call continues from (None: create or continue)."""

    @property
    def batch(self) -> int:
        """Number of sequences."""
        return int(self.features.shape[0])


@dataclass(frozen=True)
class PredictOutput:
    """The result of a Predict call.

    ``outputs`` is ``[batch, max(lengths), dim]`` for a per-frame head (rows padded
    with zeros past their length) or ``[batch, dim]`` for a sequence head.
    """

    model: ModelRef
    head: Literal["per_frame", "sequence"]
    outputs: np.ndarray
    lengths: list[int]
    batched: bool
    states: dict[str, np.ndarray] = field(default_factory=dict)
    session_id: str = ""
    frame_offset: int = 0
    resume_token: bytes = b""
    replayed: bool = False


@dataclass(frozen=True)
class AudioFormat:
    """Encoding and sample rate of a stream's audio chunks."""

    encoding: AudioEncoding
    sample_rate_hz: int


@dataclass(frozen=True)
class StreamConfig:
    """The first message of a stream."""

    model: ModelRef
    session_id: str = ""
    must_exist: bool = False
    input_kind: InputKind | None = None
    audio: AudioFormat | None = None
    frame_outputs: bool | None = None
    events: bool | None = None
    return_state: bool = False
    resume_token: bytes = b""
    token_every: int = 0


@dataclass(frozen=True)
class StreamStarted:
    """The answer to a stream's config."""

    session_id: str
    model: ModelRef
    frame_rate_hz: float
    next_sequence_number: int
    frame_offset: int
    resumed: bool
    resume_token: bytes = b""


@dataclass(frozen=True)
class Chunk:
    """One piece of stream input: feature frames or audio bytes."""

    sequence_number: int
    features: np.ndarray | None = None
    audio: bytes | None = None


@dataclass(frozen=True)
class ChunkResult:
    """The answer to one chunk."""

    sequence_number: int
    frame_offset: int
    frames: int
    outputs: np.ndarray | None = None
    events: list[Event] = field(default_factory=list)
    duplicate: bool = False
    flush: bool = False
    resume_token: bytes = b""


@dataclass(frozen=True)
class StreamFinal:
    """The answer to a stream's ``end``."""

    session_id: str
    frames: int
    chunks: int
    events: list[Event] = field(default_factory=list)
    states: dict[str, np.ndarray] = field(default_factory=dict)
    audio_seconds: float = 0.0
    resume_token: bytes = b""


@dataclass(frozen=True)
class StreamEnd:
    """The client's ``end`` message."""

    keep_session: bool = False


@dataclass(frozen=True)
class StreamDraining:
    """The server is shutting down: move the session elsewhere."""

    time_left_s: float
    resume_token: bytes
    last_sequence_number: int
    closing: bool = False


StreamMessage = StreamConfig | Chunk | StreamEnd
"""What a client sends on a stream."""

StreamReply = StreamStarted | ChunkResult | StreamFinal | StreamDraining
"""What the server answers on a stream."""
