"""Each ready model version's lane: its runtime, its batcher and its session step."""

from __future__ import annotations

from dataclasses import dataclass

from lstm_serve.batching import Batcher
from lstm_serve.domain import ModelRef
from lstm_serve.manifest import Manifest
from lstm_serve.metrics import Metrics
from lstm_serve.repository import ModelEntry, ModelRepository
from lstm_serve.runtime import ModelRuntime
from lstm_serve.sessions import SessionStore
from lstm_serve.state import SessionState
from lstm_serve.step import SessionStep


@dataclass(frozen=True)
class Lane:
    """What serves one model version."""

    entry: ModelEntry
    runtime: ModelRuntime
    batcher: Batcher
    step: SessionStep

    @property
    def manifest(self) -> Manifest:
        """The version's manifest."""
        return self.runtime.manifest

    @property
    def ref(self) -> ModelRef:
        """The resolved name and version."""
        return ModelRef(self.entry.name, self.entry.version)

    def fresh_state(self, session_id: str) -> SessionState:
        """The state of a new session of this version."""
        return SessionState(
            session_id=session_id,
            model=self.ref,
            model_hash=self.runtime.content_hash,
            states=tuple(self.runtime.zero_states(1)),
        )


class Lanes:
    """Finds the lane of a model reference."""

    def __init__(
        self,
        repository: ModelRepository,
        batchers: dict[ModelRef, Batcher],
        store: SessionStore,
        metrics: Metrics | None = None,
    ) -> None:
        self.repository = repository
        self._lanes: dict[ModelRef, Lane] = {}
        for ref, batcher in batchers.items():
            entry = repository.find(ref.name, ref.version)
            runtime = entry.require_runtime()
            self._lanes[ref] = Lane(entry, runtime, batcher, SessionStep(runtime.manifest, batcher, store, metrics))

    def resolve(self, ref: ModelRef) -> Lane:
        """The lane of ``ref``: NOT_FOUND for an unknown model, FAILED_PRECONDITION for
        one that is not ready."""
        entry, _ = self.repository.resolve(ref.name, ref.version)
        return self._lanes[ModelRef(entry.name, entry.version)]
