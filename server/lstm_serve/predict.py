"""The Predict use case: whole sequences, a batch of them, or one that continues a
session through the session step."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections import OrderedDict

import numpy as np

from lstm_serve import auth, stacking
from lstm_serve.admission import Admission
from lstm_serve.batching import Batcher
from lstm_serve.domain import PredictInput, PredictOutput
from lstm_serve.errors import (
    InvalidInput,
    OffsetMismatch,
    Overloaded,
    PreconditionFailed,
    ServeError,
    SessionNotFound,
    echo,
)
from lstm_serve.lanes import Lane, Lanes
from lstm_serve.manifest import Manifest
from lstm_serve.resume import ResumeTokens
from lstm_serve.runtime import ModelRuntime
from lstm_serve.session_registry import SessionRegistry
from lstm_serve.settings import SessionSettings

REPLAYS_KEPT = 256
"""Results of recent offset-stating calls kept for replay (the retry of a call whose
answer was lost)."""

PREDICT_RUNS_IN_FLIGHT = 8
"""Runs of one batched Predict that wait in the batcher at once: enough to fill its
calls, few enough that one large request never fills the shared queue."""


def check_frames(frames: np.ndarray, manifest: Manifest, field: str, max_frames: int) -> None:
    """Validate a ``[frames, feature_dim]`` array against the manifest."""
    if frames.ndim != 2:
        raise InvalidInput(f"{field}: expected shape [frames, {manifest.input.feature_dim}], got {list(frames.shape)}")
    if frames.shape[1] != manifest.input.feature_dim:
        raise InvalidInput(
            f"{field}: model '{manifest.name}' expects feature_dim {manifest.input.feature_dim}, "
            f"got {frames.shape[1]}"
        )
    if frames.shape[0] == 0:
        raise InvalidInput(f"{field}: empty; send at least one frame")
    if frames.shape[0] > max_frames:
        raise Overloaded(
            f"{field}: {frames.shape[0]} frames exceed the limit of {max_frames} per chunk or "
            "sequence (LSTM_SERVE_SESSIONS__MAX_CHUNK_FRAMES); split it"
        )
    if not np.isfinite(frames).all():
        bad = np.argwhere(~np.isfinite(frames))[0]
        raise InvalidInput(f"{field}: non-finite value (NaN or Inf) at frame {bad[0]}, feature {bad[1]}")


def check_rows(request: PredictInput, manifest: Manifest, max_frames: int) -> None:
    """Validate a Predict batch against the manifest, in whole-array operations (a
    legal batch may hold a hundred thousand rows)."""
    features, lengths = request.features, request.lengths

    def field(i: int) -> str:
        return f"features[{i}]" if request.batched else "features"

    if features.shape[2] != manifest.input.feature_dim:
        raise InvalidInput(
            f"features: model '{manifest.name}' expects feature_dim {manifest.input.feature_dim}, "
            f"got {features.shape[2]}"
        )
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise InvalidInput(f"{field(int(empty[0]))}: empty (length 0); send at least one frame")
    longest = int(np.argmax(lengths))
    if lengths[longest] > max_frames:
        raise Overloaded(
            f"{field(longest)}: {lengths[longest]} frames exceed the limit of {max_frames} per chunk or "
            "sequence (LSTM_SERVE_SESSIONS__MAX_CHUNK_FRAMES); split it"
        )
    if not np.isfinite(features).all():
        # padding past a row's length may hold anything: only a bad value inside counts
        finite = np.isfinite(features).all(axis=2)
        bad = np.argwhere(~finite & (np.arange(features.shape[1]) < lengths[:, np.newaxis]))
        if bad.size:
            row, frame = (int(v) for v in bad[0])
            feature = int(np.flatnonzero(~np.isfinite(features[row, frame]))[0])
            raise InvalidInput(
                f"{field(row)}: non-finite value (NaN or Inf) at frame {frame}, feature {feature}"
            )


class PredictUseCase:
    """Runs Predict calls."""

    def __init__(
        self,
        lanes: Lanes,
        sessions: SessionRegistry,
        admission: Admission,
        tokens: ResumeTokens,
        limits: SessionSettings,
    ) -> None:
        self._lanes = lanes
        self._tokens = tokens
        self._replays: OrderedDict[tuple[str, str, int], tuple[int, PredictOutput]] = OrderedDict()
        """Recent results of calls that stated a frame offset, for their retries, by
        owner, session id and offset: a replay is only ever the caller's own."""
        self._sessions = sessions
        self._admission = admission
        self._limits = limits

    async def predict(self, request: PredictInput) -> PredictOutput:
        """Run whole sequences, optionally continuing a session."""
        with self._admission.admitted():
            return await self._predict(request)

    async def _predict(self, request: PredictInput) -> PredictOutput:
        lane = self._lanes.resolve(request.model)
        runtime, batcher, manifest, ref = lane.runtime, lane.batcher, lane.manifest, lane.ref
        if manifest.input_kind == "audio":
            raise PreconditionFailed(
                f"model '{manifest.name}' takes audio; send it with StreamPredict "
                "(config.input_kind AUDIO)"
            )
        limits = self._limits
        batch, max_frames = request.features.shape[:2]
        if batch * max_frames > limits.max_predict_frames:
            raise Overloaded(
                f"features: {batch} x {max_frames} frames exceed the limit of "
                f"{limits.max_predict_frames} frames per call "
                "(LSTM_SERVE_SESSIONS__MAX_PREDICT_FRAMES); split the batch"
            )
        check_rows(request, manifest, limits.max_chunk_frames)
        if request.session_id or request.resume_token:
            return await self._predict_session(request, lane)
        if request.return_token:
            raise InvalidInput("return_token: needs session_id or resume_token; a stateless call has no session")
        states = self._initial_states(request, runtime)
        if batch == 1:
            outputs, final = await batcher.submit_rows(
                request.features[:, : int(request.lengths[0])], states
            )
        else:
            outputs, final = await self._predict_runs(request, runtime, batcher, states)
        lengths = request.lengths.tolist() if manifest.output.head == "per_frame" else [1] * batch
        final_states = (
            {spec.name: st for spec, st in zip(manifest.states, final, strict=True)}
            if request.return_state
            else {}
        )
        return PredictOutput(ref, manifest.output.head, outputs, lengths, request.batched, final_states)

    async def _predict_runs(
        self, request: PredictInput, runtime: ModelRuntime, batcher: Batcher, states: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Run a batch as runs of same-length rows, at most ``max_batch_size`` each, and
        put the results back in request order."""
        manifest = runtime.manifest
        lengths = request.lengths
        batch = request.batch
        order = np.argsort(lengths, kind="stable")
        edges = [0, *(np.flatnonzero(np.diff(lengths[order])) + 1).tolist(), batch]
        size = batcher.max_batch_size
        runs = [order[i : min(i + size, b)] for a, b in itertools.pairwise(edges) for i in range(a, b, size)]
        dim = manifest.output.dim
        per_frame = manifest.output.head == "per_frame"
        outputs = np.zeros((batch, int(lengths.max()), dim) if per_frame else (batch, dim), np.float32)
        final = [np.zeros_like(s) for s in states]
        pending = iter(runs)

        async def worker() -> None:
            for rows in pending:
                frames = int(lengths[rows[0]])
                out, new_states = await batcher.submit_rows(
                    request.features[rows, :frames], stacking.take(states, rows)
                )
                if per_frame:
                    outputs[rows, :frames] = out
                else:
                    outputs[rows] = out
                stacking.put(final, rows, new_states)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(PREDICT_RUNS_IN_FLIGHT, len(runs))):
                    group.create_task(worker())
        except ExceptionGroup as failed:
            # The first run's refusal (a full queue, a drain) is the call's status.
            raise failed.exceptions[0] from None
        return outputs, final

    def _initial_states(self, request: PredictInput, runtime: ModelRuntime) -> list[np.ndarray]:
        zeros = runtime.zero_states(request.batch)
        if not request.initial_states:
            return zeros
        specs = runtime.manifest.states
        unknown = sorted(set(request.initial_states) - {s.name for s in specs})
        if unknown:
            raise InvalidInput(
                f"initial_states: unknown state(s) {echo(unknown)}; model states are {[s.name for s in specs]}"
            )
        states = []
        for spec, zero in zip(specs, zeros, strict=True):
            given = request.initial_states.get(spec.name)
            if given is None:
                states.append(zero)
                continue
            if given.shape != zero.shape:
                raise InvalidInput(
                    f"initial_states['{spec.name}']: expected shape {list(zero.shape)} "
                    f"[layers, batch, hidden], got {list(given.shape)}"
                )
            if not np.isfinite(given).all():
                raise InvalidInput(f"initial_states['{spec.name}']: contains NaN or Inf")
            states.append(np.ascontiguousarray(given, dtype=np.float32))
        return states

    async def _predict_session(self, request: PredictInput, lane: Lane) -> PredictOutput:
        manifest = lane.manifest
        if request.batch != 1:
            raise InvalidInput(
                f"session_id: a session continues one sequence; got a batch of {request.batch}"
            )
        if request.initial_states:
            raise InvalidInput("initial_states: not allowed with session_id; the session holds the state")
        if not manifest.causal:
            raise PreconditionFailed(
                f"session_id: model '{manifest.name}' is not causal (bidirectional); it serves "
                "whole sequences only, without sessions"
            )
        frames = request.features[0, : int(request.lengths[0])]
        stated = request.frame_offset
        restore = self._tokens.resume(request.resume_token, request.session_id, lane)
        if restore is not None and stated is not None and stated != restore.frame_offset:
            raise PreconditionFailed(
                f"frame_offset: the call continues from frame {stated}, but the token stands at frame "
                f"{restore.frame_offset}; send the token of frame {stated}"
            )
        if request.return_token:
            self._tokens.require("return_token")
        session_id = restore.session_id if restore is not None else request.session_id
        continuing = request.must_exist or (stated is not None and stated > 0 and restore is None)
        try:
            live, _ = await self._sessions.open(
                session_id, lane.fresh_state, requested_version=request.model.version,
                mode="continue" if continuing else "create_or_continue", stream=False, restore=restore,
                model=lane.ref,
            )
        except SessionNotFound as missing:
            if stated is None:
                raise
            return self._replay(session_id, stated, frames.shape[0], missing)
        try:
            lane = self._lanes.bound(live.state)
            manifest = lane.manifest
            try:
                out = await lane.step.run(live, sequence_number=None, features=frames, frame_offset=stated)
            except OffsetMismatch as exc:
                return self._replay(live.id, exc.stated, frames.shape[0], exc)
            states = live.state.states
            token = self._tokens.seal(live.state, lane) if request.return_token else b""
        finally:
            await self._sessions.close(live, stream=False, delete=request.end_session)
        final_states = (
            {s.name: st for s, st in zip(manifest.states, states, strict=True)} if request.return_state else {}
        )
        assert out.outputs is not None
        outputs = out.outputs[np.newaxis] if manifest.output.head == "per_frame" else out.outputs
        lengths = [out.frames] if manifest.output.head == "per_frame" else [1]
        result = PredictOutput(
            lane.ref, manifest.output.head, outputs, lengths, request.batched, final_states, live.id,
            out.frame_offset, token,
        )
        if stated is not None:
            self._replays[(auth.owner(), live.id, stated)] = (int(frames.shape[0]), result)
            while len(self._replays) > REPLAYS_KEPT:
                self._replays.popitem(last=False)
        return result

    def _replay(self, session_id: str, stated: int, frames: int, refusal: ServeError) -> PredictOutput:
        """The result of the call at ``stated`` again, when this is its retry (the
        session moved on from there, or the call ended it); else ``refusal``."""
        kept = self._replays.get((auth.owner(), session_id, stated))
        moved_on = not isinstance(refusal, OffsetMismatch) or refusal.previous == stated
        if kept is not None and moved_on and kept[0] == frames:
            return dataclasses.replace(kept[1], replayed=True)
        raise refusal
