"""SessionState.advanced: the per-step copy keeps every invariant of the value."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lstm_serve.domain import ModelRef
from lstm_serve.state import SessionState


def _state() -> SessionState:
    return SessionState("s", ModelRef("reference", "1"), "hash", (np.zeros((2, 1, 4), np.float32),), created_ms=5,
                        updated_ms=5)


def test_advanced_equals_a_replace_with_a_fresh_clock() -> None:
    state = _state()
    new_states = (np.ones((2, 1, 4), np.float64),)
    got = state.advanced(states=new_states, frame_offset=10, next_sequence_number=1, version=3)
    want = dataclasses.replace(state, states=new_states, frame_offset=10, next_sequence_number=1, version=3,
                               updated_ms=got.updated_ms)
    assert got.updated_ms > state.updated_ms
    for name in (f.name for f in dataclasses.fields(SessionState) if f.name != "states"):
        assert getattr(got, name) == getattr(want, name), name
    (array,) = got.states
    assert array.dtype == np.float32 and not array.flags.writeable
    np.testing.assert_array_equal(array, want.states[0])
    assert state.frame_offset == 0 and state.states[0].sum() == 0, "the original is untouched"


def test_advanced_refuses_a_field_the_state_does_not_have() -> None:
    with pytest.raises(TypeError, match="frames_done"):
        _state().advanced(frames_done=3)


def test_advanced_states_that_are_already_values_are_not_copied() -> None:
    state = _state()
    assert state.advanced(frame_offset=1).states[0] is state.states[0]
