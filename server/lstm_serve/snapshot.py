"""The wire form of a :class:`~lstm_serve.state.SessionState`: ``lstmserve.v1.SessionSnapshot``
(``protos/lstmserve/v1/session.proto``), the one encoding that resume tokens seal and
shared stores keep.

Decoding trusts nothing: the bytes may come from a client (inside a token that did
open, but from a server with other code or other weights) or from a store another
version wrote. Every field is checked against the bound model's manifest, and a
snapshot that does not fit is refused with the field at fault.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from google.protobuf.message import DecodeError

from lstm_serve.audio import BYTES_PER_SAMPLE, MAX_SAMPLE_RATE_HZ, AudioPipelineState
from lstm_serve.domain import AudioFormat, ModelRef
from lstm_serve.errors import InvalidInput, PreconditionFailed, echo
from lstm_serve.events import Event, SpotterState
from lstm_serve.features import DecoderState, LogMelState, window_hop
from lstm_serve.manifest import LogMelFrontend, Manifest
from lstm_serve.resampling import ResamplerState
from lstm_serve.state import SCHEMA_VERSION, SessionState
from lstmserve.v1 import inference_pb2 as ipb
from lstmserve.v1 import session_pb2 as spb

MAX_FINAL_EVENTS = 100_000
"""Most final events a snapshot may carry."""

_ENCODINGS = {"pcm16": ipb.AUDIO_ENCODING_PCM16, "float32": ipb.AUDIO_ENCODING_FLOAT32}
_ENCODINGS_BACK = {v: k for k, v in _ENCODINGS.items()}


def encode(state: SessionState, manifest: Manifest, expires_ms: int) -> bytes:
    """``state`` as SessionSnapshot bytes."""
    snap = spb.SessionSnapshot(
        schema_version=state.schema,
        session_id=state.session_id,
        principal=state.principal,
        model=ipb.ModelRef(name=state.model.name, version=state.model.version),
        model_hash=state.model_hash,
        input_kind=ipb.INPUT_KIND_AUDIO if manifest.input_kind == "audio" else ipb.INPUT_KIND_FEATURES,
        next_sequence_number=state.next_sequence_number,
        frame_offset=state.frame_offset,
        store_version=state.version,
        created_ms=state.created_ms,
        updated_ms=state.updated_ms,
        expires_ms=expires_ms,
    )
    for spec, tensor in zip(manifest.states, state.states, strict=True):
        snap.states.add(
            name=spec.name,
            tensor=ipb.Tensor(
                shape=list(tensor.shape), dtype=ipb.DATA_TYPE_FLOAT32, data=tensor.astype("<f4").tobytes()
            ),
        )
    if state.audio is not None:
        audio = state.audio
        fmt = audio.format
        snap.audio.CopyFrom(ipb.AudioFormat(encoding=_ENCODINGS[fmt.encoding], sample_rate_hz=fmt.sample_rate_hz))
        pipe = snap.audio_pipeline
        pipe.pending_bytes = audio.decoder.pending
        pipe.samples_decoded = audio.decoder.samples_decoded
        if audio.resampler is not None:
            r = audio.resampler
            pipe.resampler.CopyFrom(
                spb.ResamplerSnapshot(
                    in_rate=r.in_rate, out_rate=r.out_rate, history=r.history.tolist(),
                    history_start=r.history_start, samples_in=r.samples_in, samples_out=r.samples_out,
                    flushed=r.flushed,
                )
            )
        m = audio.logmel
        pipe.logmel.CopyFrom(
            spb.LogMelSnapshot(
                previous_sample=m.previous_sample, buffered=m.buffered.tolist(), frames=m.frames,
                samples_in=m.samples_in, flushed=m.flushed,
            )
        )
    if state.spotter is not None:
        sp = state.spotter
        snap.spotter.CopyFrom(
            spb.SpotterSnapshot(
                history=sp.history.ravel().tolist(), history_rows=sp.history.shape[0], frame=sp.frame,
                blocked_until=sp.blocked_until,
            )
        )
        if sp.open is not None:
            label, first, last, peak = sp.open
            snap.spotter.open.CopyFrom(spb.OpenDetection(label=label, first_frame=first, last_frame=last, peak=peak))
    for event in state.final_events:
        snap.final_events.add(label=event.label, start_s=event.start_s, end_s=event.end_s, score=event.score)
    return snap.SerializeToString()


def decode(data: bytes, manifest: Manifest, model_hash: str, field: str) -> tuple[SessionState, int]:
    """Validated SessionState from snapshot bytes, and the snapshot's expiry (ms)."""
    return _validated(_parse(data, field), manifest, model_hash, field)


def decode_bound(
    data: bytes, resolve: Callable[[ModelRef], tuple[Manifest, str]], field: str
) -> tuple[SessionState, int]:
    """Like :func:`decode`, for a snapshot whose model is not known beforehand (a
    stored session): ``resolve`` gives the manifest and weights hash of the model
    version the snapshot names."""
    snap = _parse(data, field)
    manifest, model_hash = resolve(ModelRef(snap.model.name, snap.model.version))
    return _validated(snap, manifest, model_hash, field)


def _parse(data: bytes, field: str) -> spb.SessionSnapshot:
    try:
        snap = spb.SessionSnapshot.FromString(data)
    except DecodeError:
        raise InvalidInput(f"{field}: not a valid session snapshot") from None
    if snap.schema_version != SCHEMA_VERSION:
        raise InvalidInput(
            f"{field}: snapshot schema version {snap.schema_version} is not supported (this server "
            f"reads version {SCHEMA_VERSION}); start a new session"
        )
    return snap


def _validated(
    snap: spb.SessionSnapshot, manifest: Manifest, model_hash: str, field: str
) -> tuple[SessionState, int]:
    ref = ModelRef(snap.model.name, snap.model.version)
    if ref != ModelRef(manifest.name, manifest.version) or snap.model_hash != model_hash:
        raise PreconditionFailed(
            f"{field}: the token is for model '{echo(ref.name)}' version {echo(ref.version)} "
            f"(weights {echo(snap.model_hash, 12)}), not '{manifest.name}' version {manifest.version} "
            f"(weights {model_hash[:12]}); resume it where that version is served"
        )
    states = _states(snap, manifest, field)
    audio = _audio(snap, manifest, field)
    spotter = _spotter(snap, manifest, field)
    if len(snap.final_events) > MAX_FINAL_EVENTS:
        raise InvalidInput(f"{field}: {len(snap.final_events)} final events exceed {MAX_FINAL_EVENTS}")
    labels = set(manifest.output.labels)
    events = []
    for e in snap.final_events:
        if e.label not in labels:
            raise InvalidInput(f"{field}: final event label '{echo(e.label)}' is not one of the model's labels")
        events.append(Event(e.label, e.start_s, e.end_s, e.score, True))
    state = SessionState(
        session_id=snap.session_id,
        model=ref,
        model_hash=snap.model_hash,
        states=states,
        next_sequence_number=snap.next_sequence_number,
        frame_offset=snap.frame_offset,
        audio=audio,
        spotter=spotter,
        final_events=tuple(events),
        principal=snap.principal,
        created_ms=snap.created_ms,
        updated_ms=snap.updated_ms,
        version=snap.store_version,
    )
    return state, snap.expires_ms


def _states(snap: spb.SessionSnapshot, manifest: Manifest, field: str) -> tuple[np.ndarray, ...]:
    names = [s.name for s in snap.states]
    if names != [s.name for s in manifest.states]:
        raise InvalidInput(
            f"{field}: state tensors {echo(names)} do not match the model's {[s.name for s in manifest.states]}"
        )
    states = []
    for spec, named in zip(manifest.states, snap.states, strict=True):
        shape = list(named.tensor.shape)
        if shape != [spec.layers, 1, spec.hidden] or len(named.tensor.data) != 4 * spec.layers * spec.hidden:
            raise InvalidInput(
                f"{field}: state '{spec.name}' has shape {echo(shape)} ({len(named.tensor.data)} bytes); the "
                f"model needs [{spec.layers}, 1, {spec.hidden}] float32"
            )
        array = np.frombuffer(named.tensor.data, "<f4").reshape(shape)
        if not np.isfinite(array).all():
            raise InvalidInput(f"{field}: state '{spec.name}' contains NaN or Inf")
        states.append(array)
    return tuple(states)


def _audio(snap: spb.SessionSnapshot, manifest: Manifest, field: str) -> AudioPipelineState | None:
    frontend = manifest.frontend
    if not snap.HasField("audio_pipeline"):
        return None
    if not isinstance(frontend, LogMelFrontend):
        raise InvalidInput(f"{field}: an audio front-end state for model '{manifest.name}', which takes features")
    encoding = _ENCODINGS_BACK.get(snap.audio.encoding)
    rate = snap.audio.sample_rate_hz
    if encoding is None or not 0 < rate <= MAX_SAMPLE_RATE_HZ:
        raise InvalidInput(f"{field}: audio format {snap.audio.encoding}/{rate} is not valid")
    pipe = snap.audio_pipeline
    if len(pipe.pending_bytes) >= BYTES_PER_SAMPLE[encoding]:
        raise InvalidInput(f"{field}: {len(pipe.pending_bytes)} pending bytes exceed one {encoding} sample")
    resampler = None
    if pipe.HasField("resampler"):
        r = pipe.resampler
        if (r.in_rate, r.out_rate) != (rate, frontend.sample_rate_hz) or len(r.history) > 4 * 2**20:
            raise InvalidInput(f"{field}: resampler state {r.in_rate}->{r.out_rate} Hz does not fit the stream")
        resampler = ResamplerState(
            r.in_rate, r.out_rate, _frozen(r.history), r.history_start, r.samples_in, r.samples_out, r.flushed
        )
    elif rate != frontend.sample_rate_hz:
        raise InvalidInput(f"{field}: a {rate} Hz stream needs resampler state")
    win, _ = window_hop(frontend)
    m = pipe.logmel
    if len(m.buffered) >= win + 1 or not np.isfinite(m.previous_sample):
        raise InvalidInput(f"{field}: log-mel state holds {len(m.buffered)} samples; a window is {win}")
    logmel = LogMelState(m.previous_sample, _frozen(m.buffered), m.frames, m.samples_in, m.flushed)
    decoder = DecoderState(encoding, pipe.pending_bytes, pipe.samples_decoded)  # type: ignore[arg-type]
    return AudioPipelineState(AudioFormat(encoding, rate), decoder, resampler, logmel)  # type: ignore[arg-type]


def _spotter(snap: spb.SessionSnapshot, manifest: Manifest, field: str) -> SpotterState | None:
    post = manifest.output.postprocess
    if not snap.HasField("spotter"):
        return None
    if post is None:
        raise InvalidInput(f"{field}: event detector state for model '{manifest.name}', which has no events")
    sp = snap.spotter
    width = len(manifest.output.labels)
    if sp.history_rows >= post.smoothing_frames + 1 or len(sp.history) != sp.history_rows * width:
        raise InvalidInput(f"{field}: event detector history of {sp.history_rows} rows does not fit the model")
    opened = None
    if sp.HasField("open"):
        o = sp.open
        if o.label >= width or o.first_frame > o.last_frame:
            raise InvalidInput(f"{field}: open detection {o.label} is not valid for the model")
        opened = (int(o.label), int(o.first_frame), int(o.last_frame), float(o.peak))
    history = _frozen(sp.history).reshape(sp.history_rows, width)
    return SpotterState(history, sp.frame, sp.blocked_until, opened)


def _frozen(values: object) -> np.ndarray:
    array = np.array(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise InvalidInput("resume_token: front-end state contains NaN or Inf")
    array.flags.writeable = False
    return array
