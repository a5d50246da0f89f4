"""A synchronous client for the lstm-serve gRPC API.

Arrays travel as packed little-endian float32 bytes (see ``Tensor`` in the proto).
Errors surface as :class:`StatusError`, carrying the gRPC status code name.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lstmserve.v1 import inference_pb2 as pb
from lstmserve.v1 import inference_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
FLOAT32 = np.dtype("<f4")
_HEADS = {pb.HEAD_KIND_PER_FRAME: "per_frame", pb.HEAD_KIND_SEQUENCE: "sequence"}
_TASKS = {pb.TASK_KIND_CLASSIFICATION: "classification", pb.TASK_KIND_REGRESSION: "regression"}
_KINDS = {pb.INPUT_KIND_FEATURES: "features", pb.INPUT_KIND_AUDIO: "audio"}
ENCODINGS = {"pcm16": pb.AUDIO_ENCODING_PCM16, "float32": pb.AUDIO_ENCODING_FLOAT32}


class StatusError(RuntimeError):
    """A call ended with a non-OK gRPC status."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: dict[str, str] | None = None) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.trailers = trailers or {}
        """The status's trailing metadata, e.g. ``grpc-retry-pushback-ms``."""

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> StatusError:
        """Wrap a grpc error."""
        trailing = getattr(error, "trailing_metadata", None)
        pairs = (trailing() if callable(trailing) else None) or ()
        trailers = {str(k): v for k, v in pairs if isinstance(v, str)}
        return cls(error.code(), error.details() or "", trailers)


class StreamProtocolError(StatusError):
    """The server's stream answers contradict what this client expects of the session.

    Raised on the client side (the stream is cancelled first, so the session is detached
    with the state of its last processed chunk, as after a disconnect). ``code`` is
    FAILED_PRECONDITION when ``first_sequence_number`` disagrees with ``started`` and
    ABORTED when the server answered a chunk as a duplicate.
    """


SESSION_HEADER = "x-session-id"
"""Request metadata that carries the session id, so that proxies (Envoy, Istio) can
route a session's calls to one replica by hashing it. The body stays authoritative."""

MAX_SESSION_HEADER_BYTES = 1024


def session_metadata(session_id: str) -> tuple[tuple[str, str], ...]:
    """The routing header for ``session_id`` (none for long or non-ASCII ids)."""
    if not session_id or len(session_id) > MAX_SESSION_HEADER_BYTES or not session_id.isascii():
        return ()
    return ((SESSION_HEADER, session_id),)


def chunk_request(sequence_number: int, chunk: np.ndarray | bytes) -> pb.StreamRequest:
    """One stream chunk: feature frames (an array) or audio (bytes)."""
    msg = pb.Chunk(sequence_number=sequence_number)
    if isinstance(chunk, bytes):
        msg.audio = chunk
    else:
        msg.features.CopyFrom(to_tensor(chunk))
    return pb.StreamRequest(chunk=msg)


def to_tensor(array: np.ndarray) -> pb.Tensor:
    """Pack an array as a float32 Tensor."""
    data = np.ascontiguousarray(array, dtype=FLOAT32)
    return pb.Tensor(shape=data.shape, dtype=pb.DATA_TYPE_FLOAT32, data=data.tobytes())


def to_array(tensor: pb.Tensor) -> np.ndarray:
    """Unpack a float32 Tensor."""
    return np.frombuffer(tensor.data, dtype=FLOAT32).reshape(list(tensor.shape))


def metadata_dict(meta: pb.ModelMetadata) -> dict[str, Any]:
    """A JSON-ready view of ModelMetadata."""
    out: dict[str, Any] = {
        "name": meta.name,
        "version": meta.version,
        "ready": meta.ready,
        "input_kind": _KINDS.get(meta.input_kind, "unspecified"),
        "feature_dim": meta.feature_dim,
        "frame_rate_hz": meta.frame_rate_hz,
        "head": _HEADS.get(meta.head, "unspecified"),
        "task": _TASKS.get(meta.task, "unspecified"),
        "labels": list(meta.labels),
        "output_dim": meta.output_dim,
        "streamable": meta.streamable,
        "states": [{"name": s.name, "layers": s.layers, "hidden": s.hidden} for s in meta.states],
        "providers": list(meta.providers),
        "versions": list(meta.versions),
        "description": meta.description,
        "provenance": dict(meta.provenance),
    }
    if meta.error:
        out["error"] = meta.error
    if meta.HasField("audio"):
        a = meta.audio
        out["audio"] = {
            "pipeline": a.pipeline, "sample_rate_hz": a.sample_rate_hz, "window_ms": a.window_ms,
            "hop_ms": a.hop_ms, "n_fft": a.n_fft, "n_mels": a.n_mels,
        }
    return out


def event_dict(event: pb.Event) -> dict[str, Any]:
    """A JSON-ready view of an Event."""
    return {
        "label": event.label,
        "start_s": round(event.start_s, 4),
        "end_s": round(event.end_s, 4),
        "score": round(float(event.score), 4),
        "is_final": event.is_final,
    }


@dataclass
class PredictResult:
    """A Predict answer: per-sequence outputs cut to their lengths."""

    model: str
    version: str
    outputs: list[np.ndarray]
    states: dict[str, np.ndarray] = field(default_factory=dict)
    session_id: str = ""
    frame_offset: int = 0
    resume_token: bytes = b""
    """The session after this call, sealed (with ``return_token``)."""
    replayed: bool = False
    """The server answered a retry of a call it had applied: nothing advanced."""


@dataclass
class StreamResult:
    """Everything one stream returned."""

    model: str
    version: str
    session_id: str
    started: pb.Started
    results: list[pb.Result] = field(default_factory=list)
    final: pb.Final | None = None
    resumes: int = 0
    """How many times an auto-resuming stream moved to a fresh channel."""

    @property
    def resume_token(self) -> bytes:
        """The newest token the server sent (``final``, a result, or ``started``)."""
        if self.final is not None and self.final.resume_token:
            return bytes(self.final.resume_token)
        for result in reversed(self.results):
            if result.resume_token:
                return bytes(result.resume_token)
        return bytes(self.started.resume_token)

    @property
    def frame_offset(self) -> int:
        """Frames the session had processed before this stream (0 for a new session)."""
        return int(self.started.frame_offset)

    @property
    def resumed(self) -> bool:
        """Whether this stream continued an existing session."""
        return bool(self.started.resumed)

    @property
    def outputs(self) -> np.ndarray:
        """Per-frame outputs of this stream's chunks, concatenated in order.

        Rows start at session frame :attr:`frame_offset`.
        """
        rows = [to_array(r.outputs) for r in self.results if r.HasField("outputs") and not r.duplicate]
        return np.concatenate(rows) if rows else np.zeros((0, 0), dtype=FLOAT32)

    @property
    def frames(self) -> int:
        """Feature frames the stream processed."""
        return sum(r.frames for r in self.results)

    @property
    def events(self) -> list[pb.Event]:
        """Final events (from ``final`` when one stream ended normally; merged from
        every attempt's results when the stream resumed elsewhere)."""
        if self.final is not None and not self.resumes:
            return list(self.final.events)
        return [e for r in self.results for e in r.events if e.is_final]


class StreamCall:
    """A bidirectional stream you feed message by message (for tests and tools).

    Messages are queued to a request iterator that gRPC drains on its own thread,
    so sending and receiving run concurrently.
    """

    _CLOSE = object()

    def __init__(self, stub: pb_grpc.InferenceStub, timeout: float | None = None) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        self._call = stub.StreamPredict(self._requests(), timeout=timeout)

    def _requests(self) -> Iterator[pb.StreamRequest]:
        while True:
            item = self._queue.get()
            if item is self._CLOSE:
                return
            yield item

    def send(self, request: pb.StreamRequest) -> None:
        """Queue one request."""
        self._queue.put(request)

    def config(self, **kwargs: Any) -> None:
        """Send a config (keyword arguments of StreamConfig)."""
        self.send(pb.StreamRequest(config=pb.StreamConfig(**kwargs)))

    def chunk(self, sequence_number: int, features: np.ndarray | None = None, audio: bytes | None = None) -> None:
        """Send one chunk of features or audio."""
        chunk = pb.Chunk(sequence_number=sequence_number)
        if features is not None:
            chunk.features.CopyFrom(to_tensor(features))
        if audio is not None:
            chunk.audio = audio
        self.send(pb.StreamRequest(chunk=chunk))

    def end(self, keep_session: bool = False) -> None:
        """Send ``end``."""
        self.send(pb.StreamRequest(end=pb.End(keep_session=keep_session)))

    def close(self) -> None:
        """Half-close: no more requests."""
        self._queue.put(self._CLOSE)

    def cancel(self) -> None:
        """Cancel the call (as a client that goes away)."""
        self._call.cancel()

    def recv(self) -> pb.StreamResponse:
        """The next response; raises :class:`StatusError` when the stream failed."""
        try:
            return next(self._call)
        except grpc.RpcError as exc:
            raise StatusError.from_rpc(exc) from None

    def responses(self) -> Iterator[pb.StreamResponse]:
        """The remaining responses."""
        try:
            yield from self._call
        except grpc.RpcError as exc:
            raise StatusError.from_rpc(exc) from None


TOKEN_ENV = "LSTM_SERVE_TOKEN"
"""Where the CLI takes the bearer token from when ``--token`` is not given."""


@dataclass(frozen=True)
class Security:
    """How a client proves itself and checks the server: TLS (with ``ca_file``, or the
    system's roots when only ``tls`` is set), a client certificate for mTLS, and a
    bearer token (an API key or a JWT) sent as ``authorization: Bearer <token>``."""

    tls: bool = False
    ca_file: str | None = None
    """PEM CA certificates the server's certificate must chain to (implies TLS)."""
    cert_file: str | None = None
    """PEM client certificate chain for mTLS (implies TLS; needs ``key_file``)."""
    key_file: str | None = None
    server_name: str | None = None
    """The name the server's certificate must carry, when it is not the target's host."""
    token: str | None = None

    @property
    def uses_tls(self) -> bool:
        """True when the channel speaks TLS."""
        return self.tls or bool(self.ca_file or self.cert_file)

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel's TLS credentials (read from the files now)."""
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("give both a client certificate and its key (--tls-cert, --tls-key), or neither")

        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))

    def options(self) -> list[tuple[str, Any]]:
        """Channel options: the expected server name."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name and self.uses_tls else []


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call of a channel."""

    def __init__(self, token: str) -> None:
        self._entry = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> _CallDetails:
        return _CallDetails(
            details.method, details.timeout, [*(details.metadata or ()), self._entry], details.credentials,
            getattr(details, "wait_for_ready", None), getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class LstmClient:
    """Client for one lstm-serve endpoint."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        timeout: float | None = 30.0,
        max_message_bytes: int = 64 << 20,
        options: Sequence[tuple[str, Any]] = (),
        security: Security | None = None,
    ) -> None:
        """Connect to ``target``, in plaintext unless ``security`` asks for TLS.

        ``options`` are extra grpc channel options, e.g. for client-side balancing over
        a headless Service: ``target="dns:///lstm-serve-headless:50051",
        options=[("grpc.lb_policy_name", "round_robin")]``.
        """
        self.target = target
        self.timeout = timeout
        self._max_message_bytes = max_message_bytes
        self._options = tuple(options)
        self.security = security or Security()
        channel_options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            *self.security.options(),
            *options,
        ]
        if self.security.uses_tls:
            self.channel = grpc.secure_channel(target, self.security.credentials(), options=channel_options)
        else:
            self.channel = grpc.insecure_channel(target, options=channel_options)
        token = self.security.token
        calls = grpc.intercept_channel(self.channel, _Bearer(token)) if token else self.channel
        self.stub = pb_grpc.InferenceStub(calls)
        self._health = health_pb2_grpc.HealthStub(calls)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def reconnect(self) -> LstmClient:
        """A new client on a fresh channel to the same target (it may reach another replica)."""
        return LstmClient(self.target, self.timeout, self._max_message_bytes, self._options, self.security)

    def __enter__(self) -> LstmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self, method: Any, request: Any, timeout: float | None = None, metadata: Sequence[tuple[str, str]] = ()
    ) -> Any:
        try:
            return method(request, timeout=timeout if timeout is not None else self.timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise StatusError.from_rpc(exc) from None

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The health status name (``SERVING``, ``NOT_SERVING``, …) of ``service``."""
        response = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def wait_ready(self, timeout: float = 30.0, service: str = "") -> None:
        """Block until the health service reports SERVING, or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise TimeoutError(f"{self.target} not reachable within {timeout:g} s") from None
        while True:
            try:
                if self.health(service, timeout=max(0.1, deadline - time.monotonic())) == "SERVING":
                    return
            except StatusError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.target} not SERVING within {timeout:g} s")
            time.sleep(0.05)

    def list_models(self) -> list[dict[str, Any]]:
        """Metadata of every model version."""
        return [metadata_dict(m) for m in self._call(self.stub.ListModels, pb.ListModelsRequest()).models]

    def metadata(self, name: str, version: str = "") -> dict[str, Any]:
        """Metadata of one model version."""
        request = pb.GetModelMetadataRequest(model=pb.ModelRef(name=name, version=version))
        return metadata_dict(self._call(self.stub.GetModelMetadata, request))

    def predict(
        self,
        name: str,
        sequences: np.ndarray | Sequence[np.ndarray],
        *,
        version: str = "",
        session_id: str = "",
        must_exist: bool = False,
        end_session: bool = False,
        return_state: bool = False,
        initial_states: dict[str, np.ndarray] | None = None,
        resume_token: bytes = b"",
        return_token: bool = False,
        frame_offset: int | None = None,
        timeout: float | None = None,
    ) -> PredictResult:
        """Predict one sequence (``[T, F]`` array) or a batch (``[N, T, F]`` or a list).

        A list of arrays of different lengths is padded and sent with per-sequence
        lengths. Outputs come back one per sequence, cut to its length. A
        ``resume_token`` continues the session it seals, on any replica with the same
        token keys; ``return_token`` asks for the session's next token. ``frame_offset``
        makes the call safe to retry: 0 creates the session, N continues it only at
        frame N, and a retry of the previous call is answered again (``replayed``).
        """
        request = pb.PredictRequest(
            model=pb.ModelRef(name=name, version=version),
            session_id=session_id,
            must_exist=must_exist,
            end_session=end_session,
            return_state=return_state,
            resume_token=resume_token,
            return_token=return_token,
        )
        if frame_offset is not None:
            request.frame_offset = frame_offset
        if isinstance(sequences, np.ndarray):
            request.features.CopyFrom(to_tensor(sequences))
        else:
            seqs = [np.asarray(s, dtype=FLOAT32) for s in sequences]
            longest = max(s.shape[0] for s in seqs)
            padded = np.zeros((len(seqs), longest, seqs[0].shape[1]), dtype=FLOAT32)
            for i, s in enumerate(seqs):
                padded[i, : s.shape[0]] = s
            request.features.CopyFrom(to_tensor(padded))
            request.lengths.extend(s.shape[0] for s in seqs)
        for state_name, value in (initial_states or {}).items():
            request.initial_states.append(pb.NamedTensor(name=state_name, tensor=to_tensor(value)))
        response = self._call(self.stub.Predict, request, timeout, session_metadata(session_id))
        out = to_array(response.outputs)
        batched = isinstance(sequences, list | tuple) or (isinstance(sequences, np.ndarray) and sequences.ndim == 3)
        rows = list(out) if batched else [out]
        if len(rows) and rows[0].ndim == 2:
            rows = [r[:length] for r, length in zip(rows, response.lengths, strict=True)]
        return PredictResult(
            model=response.model.name,
            version=response.model.version,
            outputs=rows,
            states={s.name: to_array(s.tensor) for s in response.states},
            session_id=response.session_id,
            frame_offset=response.frame_offset,
            resume_token=response.resume_token,
            replayed=response.replayed,
        )

    def open_stream(self, timeout: float | None = None) -> StreamCall:
        """A raw bidirectional stream; see :class:`StreamCall`."""
        return StreamCall(self.stub, timeout=timeout)

    def stream(
        self,
        name: str,
        chunks: Iterable[np.ndarray | bytes],
        *,
        version: str = "",
        session_id: str = "",
        must_exist: bool = False,
        audio: tuple[str, int] | None = None,
        frame_outputs: bool | None = None,
        keep_session: bool = False,
        return_state: bool = False,
        first_sequence_number: int | None = None,
        resume_token: bytes = b"",
        token_every: int = 0,
        auto_resume: bool = False,
        retry_for_s: float = 20.0,
        pace_s: float = 0.0,
        on_response: Any = None,
        timeout: float | None = None,
    ) -> StreamResult:
        """Stream feature chunks (arrays) or audio chunks (bytes) and collect results.

        ``audio`` is ``(encoding, sample_rate_hz)`` for audio streams. ``pace_s`` > 0
        waits that long between chunks (real-time pacing) while responses are
        received concurrently; ``on_response`` is called with each response as it
        arrives. ``resume_token`` resumes the session it seals (on any replica with
        the same token keys); ``token_every`` > 0 asks for a token in ``started`` and
        every N-th result (:attr:`StreamResult.resume_token` is the newest).

        No chunk is sent before the server's ``started`` arrives; chunks are then
        numbered from ``started.next_sequence_number``, so resuming a session
        (``session_id`` of a stream that ended with ``keep_session`` or was cut off)
        continues where it stopped. ``result.frame_offset`` and ``result.resumed`` say
        where the stream started, and ``result.outputs`` holds this stream's rows only.

        ``first_sequence_number`` is a check, not an override: any other number than
        the server's would be a duplicate (its rows dropped) or a gap (refused). Leave
        it ``None`` to follow the server; give it when you track the session's position
        yourself, and the stream is cancelled before any chunk is sent, with
        :class:`StreamProtocolError` (FAILED_PRECONDITION), when the server expects a
        different number. A ``duplicate`` result, which this numbering should never
        draw, cancels the stream and raises :class:`StreamProtocolError` (ABORTED)
        instead of silently losing that chunk's rows.

        ``auto_resume`` (needs a server with token keys) asks for a token every
        ``token_every`` chunks (10 by default) and, on ``draining`` or a broken stream,
        resumes on a fresh channel to the same target from the newest token, resending
        the chunks after it, for up to ``retry_for_s`` seconds; ``result.resumes`` counts
        the moves. See :mod:`lstm_client.resume`.
        """
        config = pb.StreamConfig(
            model=pb.ModelRef(name=name, version=version), session_id=session_id, must_exist=must_exist,
            resume_token=resume_token, token_every=token_every,
        )
        if audio is not None:
            config.input_kind = pb.INPUT_KIND_AUDIO
            config.audio.CopyFrom(pb.AudioFormat(encoding=ENCODINGS[audio[0]], sample_rate_hz=audio[1]))
        if frame_outputs is not None:
            config.output.frame_outputs = frame_outputs
        config.output.return_state = return_state
        if auto_resume:
            from lstm_client.resume import stream_with_resume

            config.token_every = token_every or 10
            return stream_with_resume(
                self.reconnect, config, list(chunks), keep_session=keep_session, pace_s=pace_s,
                retry_for_s=retry_for_s, on_response=on_response,
            )
        # gRPC drains requests() on its own thread; the response loop hands it the first
        # sequence number, or None when the stream is over before it started.
        first_number: queue.Queue[int | None] = queue.Queue(maxsize=1)

        def requests() -> Iterator[pb.StreamRequest]:
            yield pb.StreamRequest(config=config)
            first = first_number.get()
            if first is None:
                return
            next_due = time.monotonic()
            for seq, chunk in enumerate(chunks, start=first):
                if pace_s > 0:
                    delay = next_due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    next_due += pace_s
                yield chunk_request(seq, chunk)
            yield pb.StreamRequest(end=pb.End(keep_session=keep_session))

        result: StreamResult | None = None
        call = self.stub.StreamPredict(requests(), timeout=timeout, metadata=session_metadata(session_id))
        try:
            for response in call:
                if on_response is not None:
                    on_response(response)
                kind = response.WhichOneof("message")
                if kind == "started":
                    started = response.started
                    result = StreamResult(started.model.name, started.model.version, started.session_id, started)
                    expected = started.next_sequence_number
                    if first_sequence_number is not None and first_sequence_number != expected:
                        raise StreamProtocolError(
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"first_sequence_number is {first_sequence_number} but session {started.session_id!r} "
                            f"expects {expected} next (frame offset {started.frame_offset}); "
                            "pass first_sequence_number=None to continue where the session stands",
                        )
                    first_number.put(expected)
                elif kind == "result":
                    assert result is not None
                    if response.result.duplicate:
                        raise StreamProtocolError(
                            grpc.StatusCode.ABORTED,
                            f"session {result.session_id!r} had already processed chunk "
                            f"{response.result.sequence_number} (the server answered it as a duplicate), so its "
                            "rows would be missing from this stream's result; the stream was cancelled",
                        )
                    result.results.append(response.result)
                elif kind == "final":
                    assert result is not None
                    result.final = response.final
        except grpc.RpcError as exc:
            raise StatusError.from_rpc(exc) from None
        finally:
            # Cancelling a finished call is a no-op; cancelling one we bail out of
            # detaches the session server-side instead of leaving the call open.
            call.cancel()
            with contextlib.suppress(queue.Full):
                first_number.put_nowait(None)
        if result is None:
            raise StatusError(grpc.StatusCode.UNKNOWN, "stream closed before it started")
        return result

