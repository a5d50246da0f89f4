"""A stateless onnxruntime wrapper for one model version.

The runtime holds no per-session data: callers pass the recurrent states in and get
the new states back (stacked along :data:`lstm_serve.stacking.STATE_BATCH_AXIS`), so many sessions can share
one call. It is only ever called from the batcher's executor thread, never from the
event loop.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from lstm_serve import stacking
from lstm_serve.manifest import MODEL_FILE, Manifest, check_against_graph

log = logging.getLogger(__name__)

MemoryArena = Literal["shrink", "on", "off"]


class ModelRuntime:
    """One loaded ONNX graph plus its manifest."""

    def __init__(
        self,
        manifest: Manifest,
        package_dir: Path,
        providers: list[str],
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        *,
        memory_arena: MemoryArena = "shrink",
        arena_shrink_frames: int = 16384,
        allow_spinning: bool = False,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        spinning = "1" if allow_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
        options.enable_cpu_mem_arena = memory_arena != "off"
        # The arena keeps the peak of every call it has served: a few legal 4 MB batches
        # would hold about 1 GB. Shrinking after large calls only keeps the arena's speed
        # for the small per-chunk calls (about 20 us a call on this CPU) and its memory
        # bounded.
        self._shrink_above = arena_shrink_frames if memory_arena == "shrink" else None
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        options.log_severity_level = 3
        self.manifest = manifest
        self.package_dir = package_dir
        graph = (package_dir / MODEL_FILE).read_bytes()
        self.content_hash = hashlib.sha256(graph).hexdigest()
        """sha256 of ``model.onnx``: a session's state is bound to these weights."""
        self._session = ort.InferenceSession(graph, options, providers=providers)
        check_against_graph(
            manifest, package_dir, self._session.get_inputs(), self._session.get_outputs()
        )
        self.providers: list[str] = list(self._session.get_providers())
        self._state_inputs = [s.input for s in manifest.states]
        self._output_names = [manifest.output.name, *(s.output for s in manifest.states)]

    def zero_states(self, batch: int = 1) -> list[np.ndarray]:
        """Zero states for ``batch`` sequences, in manifest order."""
        return stacking.zeros([(s.layers, s.hidden) for s in self.manifest.states], batch)

    def run(
        self, x: np.ndarray, states: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Run ``x`` (``[batch, time, feature_dim]``) from ``states``.

        Returns the outputs and the new states, in manifest order.
        """
        feeds = {self.manifest.input.name: x}
        feeds.update(zip(self._state_inputs, states, strict=True))
        shrink = self._shrink_above is not None and x.shape[0] * x.shape[1] > self._shrink_above
        results = self._session.run(self._output_names, feeds, self._shrink if shrink else None)
        return np.asarray(results[0]), [np.asarray(r) for r in results[1:]]
