"""What a session *is*: an immutable, versioned value.

:class:`SessionState` is what a store keeps and what a resume token will seal. It
holds no process handles (locks, holds, clocks or live objects): those belong to
:class:`lstm_serve.sessions.LiveSession`. Every field is a value; arrays are
read-only, so a state can be shared between a store, a step and a snapshot without
copies and without anyone changing it behind the others' backs.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_serve.audio import AudioPipelineState
from lstm_serve.domain import ModelRef
from lstm_serve.events import Event, SpotterState

SCHEMA_VERSION = 1
"""Bumped whenever a field's meaning changes, so an old snapshot is refused, never
misread."""


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch: the one clock processes agree on."""
    return time.time_ns() // 1_000_000


def read_only(array: np.ndarray) -> np.ndarray:
    """``array`` as a read-only float32 value (a copy unless it already is one)."""
    if not array.flags.writeable and array.dtype == np.float32:
        return array
    out = np.array(array, dtype=np.float32, copy=True)
    out.flags.writeable = False
    return out


@dataclass(frozen=True)
class SessionState:
    """One session between two steps."""

    session_id: str
    model: ModelRef
    """The model version the session is bound to for its whole life."""
    model_hash: str
    """Content hash of that version's ``model.onnx``: a state never continues on
    other weights under the same name."""
    states: tuple[np.ndarray, ...]
    """Every recurrent state tensor, ``[layers, 1, hidden]``, in manifest order."""
    next_sequence_number: int = 0
    frame_offset: int = 0
    """Frames processed so far."""
    previous_offset: int | None = None
    """Where the last step started: a Predict retried at this offset is a replay."""
    audio: AudioPipelineState | None = None
    """The audio front-end (decoder, resampler, log-mel framer) of an audio session."""
    spotter: SpotterState | None = None
    """The keyword event detector, when events are on."""
    final_events: tuple[Event, ...] = ()
    """Every final event of the session so far."""
    principal: str = ""
    """The owning principal (empty until authentication is on)."""
    created_ms: int = dataclasses.field(default_factory=now_ms)
    updated_ms: int = dataclasses.field(default_factory=now_ms)
    version: int = 0
    """The store's version of this state: every commit compares it and adds one."""
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "states", tuple(read_only(s) for s in self.states))

    def advanced(self, **changes: Any) -> SessionState:
        """A copy with ``changes`` and a fresh ``updated_ms``.

        It runs once or twice per step (the step, then the store's version), so it
        copies the fields instead of going through ``dataclasses.replace`` and
        ``__init__`` (about ten times slower), and keeps the one invariant
        ``__post_init__`` keeps: read-only float32 states."""
        unknown = changes.keys() - _FIELDS
        if unknown:
            raise TypeError(f"SessionState has no field(s) {sorted(unknown)}")
        copy = object.__new__(SessionState)
        fields = copy.__dict__
        fields.update(self.__dict__)
        fields.update(changes)
        fields["updated_ms"] = now_ms()
        if "states" in changes:
            fields["states"] = tuple(read_only(s) for s in changes["states"])
        return copy


_FIELDS = frozenset(f.name for f in dataclasses.fields(SessionState))
