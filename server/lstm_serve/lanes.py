"""Each ready model version's lane: its runtime, its batcher and its session step."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from lstm_serve import auth
from lstm_serve.batching import Batcher
from lstm_serve.domain import ModelRef
from lstm_serve.errors import ModelNotReady, PreconditionFailed, echo
from lstm_serve.manifest import Manifest
from lstm_serve.metrics import Metrics
from lstm_serve.repository import ModelEntry, ModelRepository
from lstm_serve.runtime import ModelRuntime
from lstm_serve.session_store import SessionStore
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
            principal=auth.owner(),
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
        self._store = store
        self._metrics = metrics
        self._lanes: dict[ModelRef, Lane] = {}
        for ref, batcher in batchers.items():
            self.add(repository.find(ref.name, ref.version), batcher)

    def add(self, entry: ModelEntry, batcher: Batcher) -> Lane | None:
        """Serve a ready version with ``batcher``; return the lane it replaces, if any."""
        runtime = entry.require_runtime()
        ref = ModelRef(entry.name, entry.version)
        replaced = self._lanes.get(ref)
        step = SessionStep(runtime.manifest, batcher, self._store, self._metrics)
        self._lanes[ref] = Lane(entry, runtime, batcher, step)
        return replaced

    def remove(self, ref: ModelRef) -> Lane | None:
        """Stop serving ``ref`` at all (its sessions included); the lane, if it had one."""
        return self._lanes.pop(ref, None)

    def __iter__(self) -> Iterator[Lane]:
        return iter(list(self._lanes.values()))

    def resolve(self, ref: ModelRef) -> Lane:
        """The lane of ``ref``: PERMISSION_DENIED for a model the caller may not use,
        NOT_FOUND for an unknown model, FAILED_PRECONDITION for one that is not ready."""
        auth.require_model(ref.name)
        entry, _ = self.repository.resolve(ref.name, ref.version)
        return self._lanes[ModelRef(entry.name, entry.version)]

    def bound(self, state: SessionState) -> Lane:
        """The lane of the version a session is bound to, even one unloaded since
        (its sessions finish on it). FAILED_PRECONDITION when that version is gone or
        its files were replaced under the session: its state would be wrong there."""
        lane = self._lanes.get(state.model)
        if lane is None:
            raise ModelNotReady(
                f"session_id: session '{echo(state.session_id)}' is bound to model '{state.model.name}' "
                f"version {state.model.version}, which is no longer loaded; start a new session"
            )
        if state.model_hash and lane.runtime.content_hash != state.model_hash:
            raise PreconditionFailed(
                f"session_id: the files of model '{state.model.name}' version {state.model.version} changed "
                f"since session '{echo(state.session_id)}' began; its state belongs to the old weights. Start "
                "a new session (load new weights as a new version to keep old sessions running)"
            )
        return lane
