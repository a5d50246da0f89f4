"""The process-local handles of a session in use, and how a step's state is committed.

:class:`LiveSession` is the process-local part of a session: the lock that serializes
its steps (FIFO, so steps run in arrival order), its holds, the last committed state,
and the hydrated front-end objects. :class:`~lstm_serve.session_registry.SessionRegistry`
opens and closes them; the states themselves live in a
:class:`~lstm_serve.session_store.SessionStore`.

Write-back: on a shared store an attached stream keeps its state in memory and writes
it back every ``write_back_every`` steps (:func:`commit`), and on detach, ``end`` and
drain (:meth:`~lstm_serve.session_registry.SessionRegistry.write_back`). Between
write-backs each step first confirms the lease
(:class:`~lstm_serve.session_store.Lease`): a process that may have lost it gets
:class:`~lstm_serve.session_store.StaleState` and drops its copy, so fencing holds for
steps that write nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from lstm_serve.audio import AudioPipeline
from lstm_serve.domain import AudioFormat, ModelRef
from lstm_serve.events import KeywordSpotter
from lstm_serve.metrics import Metrics
from lstm_serve.session_store import Lease, SessionStore, StaleState
from lstm_serve.state import SessionState

OpenMode = Literal["create_or_continue", "continue", "create", "restart"]
"""How a request opens a session: ``continue`` needs it to exist (NOT_FOUND
otherwise), ``create`` needs it not to, ``restart`` replaces it with a fresh state,
``create_or_continue`` is the native API's default."""


@dataclass(eq=False)
class LiveSession:
    """The process-local handles of a session in use."""

    id: str
    state: SessionState
    """The newest state: the last committed one, or a newer one not yet written back
    (``unsaved`` steps past the store's copy; its ``version`` is still the store's)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Serializes the session's steps; asyncio's lock wakes waiters in FIFO order."""
    stream_attached: bool = False
    predict_holds: int = 0
    audio: AudioPipeline | None = None
    """Hydrated from ``state.audio``; rebuilt from it when a step fails."""
    spotter: KeywordSpotter | None = None
    """Hydrated from ``state.spotter``; rebuilt from it when a step fails."""
    audio_format: AudioFormat | None = None
    """The audio format of the stream attached, for a front-end not yet committed."""
    spot_events: bool = True
    """Whether the attached stream asked for keyword events."""
    renewal: asyncio.Task[None] | None = None
    """Renews the store lease while a stream is attached."""
    lease: Lease | None = None
    """This process's lease on the session, while it holds one."""
    write_back_every: int = 1
    """Steps per write-back: 1 writes every step through (Predict, the in-memory store);
    a stream on a shared store keeps up to this many steps in memory."""
    unsaved: int = 0
    """Steps applied to ``state`` since the store last got it."""
    fenced: bool = False
    """A write-back was refused (a newer state is in the store): this copy is dropped."""

    @property
    def model(self) -> ModelRef:
        """The model version the session is bound to."""
        return self.state.model

    @property
    def held(self) -> bool:
        """True while a stream or a Predict call uses the session."""
        return self.stream_attached or self.predict_holds > 0


async def commit(store: SessionStore, live: LiveSession, state: SessionState, metrics: Metrics | None) -> None:
    """Make ``state`` (one step past ``live.state``) the live session's state: kept in
    memory while fewer than ``write_back_every`` steps are unsaved and the lease holds,
    written back with compare-and-set otherwise."""
    if live.unsaved + 1 < live.write_back_every:
        if live.lease is not None:
            try:
                await live.lease.confirm()
            except StaleState:
                live.fenced, live.unsaved = True, 0
                raise
        live.state, live.unsaved = state, live.unsaved + 1
        return
    await save(store, live, state)
    if metrics is not None and live.write_back_every > 1:
        metrics.write_backs.labels("chunks").inc()


async def save(store: SessionStore, live: LiveSession, state: SessionState) -> None:
    """Write ``state`` to the store now, with compare-and-set; a refusal fences ``live``."""
    try:
        live.state = await store.compare_and_set(state, state.version)
    except StaleState:
        live.fenced = True
        raise
    finally:
        live.unsaved = 0

