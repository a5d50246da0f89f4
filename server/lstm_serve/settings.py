"""Service configuration.

Every field can be set by a command-line flag (see ``lstm-serve --help``) or by an
environment variable with the ``LSTM_SERVE_`` prefix; nested groups use ``__``, e.g.
``LSTM_SERVE_SESSIONS__TTL_S=60``. Flags win over the environment, which wins over the
defaults documented here. Settings are parsed in the entry point only
(:func:`lstm_serve.main.main`); nothing is read at import time. The TLS and
authentication groups are declared in :mod:`lstm_serve.security_settings`.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from lstm_serve.security_settings import AuthSettings, TlsSettings

ENV_PREFIX = "LSTM_SERVE_"


class ServerSettings(BaseModel):
    """Transport and process settings."""

    host: str = "0.0.0.0"
    """Address the gRPC server binds to. Use 127.0.0.1 to accept loopback only."""

    port: int = Field(50051, ge=0, le=65535)
    """gRPC port. 0 picks a free port (tests use this)."""

    models_dir: str = "models"
    """Model repository: ``<models_dir>/<name>/<version>/{model.onnx,manifest.json}``."""

    grace_period_s: float = Field(10.0, ge=0)
    """On SIGTERM/SIGINT, how long in-flight RPCs may run before they are cancelled.
    Keep it below the pod's terminationGracePeriodSeconds."""

    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Largest request message accepted; larger ones get RESOURCE_EXHAUSTED."""

    log_level: str = "INFO"
    """Python logging level name."""

    model_control: Literal["none", "explicit", "poll"] = "none"
    """How the model repository changes while serving, as Triton's
    ``--model-control-mode``. ``none``: the models found at start; the repository
    API's load and unload are refused. ``explicit``: RepositoryModelLoad and
    RepositoryModelUnload (the Open Inference Protocol's repository extension) load,
    reload and unload models. ``poll``: the repository folder is rescanned every
    ``poll_interval_s``: new and changed versions load, removed ones unload (explicit
    load and unload are refused, as in Triton). Sessions keep the version they started on."""

    poll_interval_s: float = Field(5.0, gt=0)
    """With ``model_control=poll``: seconds between rescans of the repository folder."""
    health_port: int | None = Field(None, ge=0, le=65535)
    """A second, plaintext port that serves only ``grpc.health.v1`` (Check and Watch),
    for Kubernetes' native gRPC probes, which cannot speak TLS. Bound to ``host``; 0 picks
    a free port. Unset (the default): no such port. Keep it out of the NetworkPolicy's
    allowed ingress so that only the kubelet reaches it (docs/security.md). With
    ``workers`` > 1 give a fixed port: every worker binds it, shared."""

    workers: int = Field(1, ge=1, le=64)
    """Server processes sharing the gRPC port (SO_REUSEPORT). The kernel spreads
    connections over them; each process owns the sessions of the streams on its
    connections. Sessions are per process: a unary ``session_id`` call must reuse the
    channel (connection) that created the session. Metrics are aggregated by the parent
    process. 1 serves from this process."""


class SessionSettings(BaseModel):
    """Server-side session state."""

    ttl_s: float = Field(300.0, gt=0)
    """A session that is not attached to a stream is deleted after this many idle
    seconds. A resumed session restarts its clock."""

    max_sessions: int = Field(10_000, ge=1)
    """Cap on live sessions (attached or detached). New sessions beyond it are refused
    with RESOURCE_EXHAUSTED."""

    reap_interval_s: float = Field(1.0, gt=0)
    """How often idle sessions are looked for."""

    stream_idle_timeout_s: float = Field(0.0, ge=0)
    """Close a stream with DEADLINE_EXCEEDED when no message arrives for this long;
    its state is kept for resume. 0 disables the timeout (a paused stream is never
    cut by the server)."""

    max_chunk_frames: int = Field(3000, ge=1)
    """Largest number of feature frames in one stream chunk or one Predict sequence
    row; larger ones get RESOURCE_EXHAUSTED."""

    store_url: str = ""
    """Shared session store: ``redis://HOST:PORT/DB`` or ``rediss://`` (TLS). Any replica
    or worker then continues any session. Empty: in-memory, per process."""

    store_password_file: str = ""
    """A file holding the store's password (e.g. a mounted Secret). Empty: none, or the URL's."""

    lease_s: float = Field(10.0, gt=0)
    """With a shared store: how long a process owns a session it uses; a stream renews it
    while attached. A dead process's sessions are free after this."""

    store_op_timeout_s: float = Field(1.0, gt=0)
    """With a shared store: the longest one attempt at a store operation may take."""

    store_call_budget_s: float = Field(3.0, gt=0)
    """With a shared store: the longest one store operation may take with its retries
    (only operations that are safe to repeat are retried; a write whose outcome is
    unknown is settled by reading the version back). Past it the call gets UNAVAILABLE
    ("session store unavailable") with a retry hint."""

    store_backoff_max_s: float = Field(2.0, gt=0)
    """With a shared store: the cap of the backoff between attempts (it starts at 50 ms
    and doubles). After a failed operation the store counts as down for the current
    backoff: calls that need it get UNAVAILABLE at once, with the time left as their
    retry hint, until the next reconnect attempt."""

    store_max_connections: int = Field(8, ge=1, le=1024)
    """With a shared store: connections each process keeps to it. A call that finds them
    all busy waits for one (within ``store_op_timeout_s``) instead of opening another, so
    a burst of sessions opening at once (a start, a failover) reuses warm connections
    rather than paying a connect per call."""

    write_back_chunks: int = Field(10, ge=1)
    """With a shared store: an attached stream keeps its session in memory and writes it
    back every this many chunks, on detach, on ``end`` and at drain (a stateful Predict
    always writes through). A SIGKILL loses at most this many chunks, which the client
    resends from ``started.next_sequence_number``. 10 makes a stream of 100 ms chunks
    write once a second instead of ten times; 1 writes every chunk through. The in-memory
    store always writes through: it costs a dict assignment."""

    token_keys_file: str = ""
    """JSON key file for resume tokens (``lstm-serve keygen FILE`` writes one). The
    first key seals, every key opens. Empty: tokens are off."""

    token_ttl_s: float = Field(86_400.0, gt=0)
    """How long a resume token stays valid after it was issued."""

    max_token_bytes: int = Field(65_536, ge=256)
    """Largest resume token accepted; larger ones get INVALID_ARGUMENT."""

    max_predict_frames: int = Field(1_048_576, ge=1)
    """Most work one Predict call may ask for: batch x max_frames (padded) frames;
    more gets RESOURCE_EXHAUSTED. The default admits every request that fits a 4 MiB
    message (a 4 MiB float32 tensor holds at most 1,048,576 values), so it bounds
    the work only when ``max_message_bytes`` is raised."""


class BatchingSettings(BaseModel):
    """Cross-session dynamic batching."""

    enabled: bool = True
    """Stack the pending steps of many sessions into one onnxruntime call. Off: every
    step runs alone (the baseline)."""

    max_batch_size: int = Field(64, ge=1, le=4096)
    """Most sequences in one onnxruntime call."""

    max_delay_ms: float = Field(2.0, ge=0)
    """How long the first pending step may wait for others to join its batch. Applied
    only under load (recent batches above ~1.5 steps); a lone step runs at once."""

    max_queue: int = Field(2048, ge=1)
    """Most steps waiting per model; beyond it requests get RESOURCE_EXHAUSTED."""

    disabled_models: list[str] = Field(default_factory=list)
    """Model names that never batch, e.g. ``["vowels"]``."""


class ProviderSettings(BaseModel):
    """onnxruntime execution providers and threads."""

    providers: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["auto"])
    """``["auto"]`` takes TensorRT, then CUDA, then CPU among the providers onnxruntime
    reports. An explicit list (e.g. ``["CUDAExecutionProvider",
    "CPUExecutionProvider"]``, or the same as a comma list) is honoured in order, or
    refused at start when one is not available."""

    intra_op_threads: int = Field(1, ge=0)
    """onnxruntime intra-op threads per session; 0 lets onnxruntime decide. One leaves
    the other core to gRPC on a small machine."""

    inter_op_threads: int = Field(1, ge=0)
    """onnxruntime inter-op threads per session; 0 lets onnxruntime decide."""

    allow_spinning: bool = False
    """Let onnxruntime's pool threads spin while they wait for work (its own default).
    Off, they sleep: with more than one intra-op thread, spinning burns the cores that
    the event loops of this and the other workers need, for a small latency gain."""

    memory_arena: Literal["shrink", "on", "off"] = "shrink"
    """onnxruntime's CPU memory arena. ``shrink``: on, and every call larger than
    ``arena_shrink_frames`` gives its memory back when it ends, so large batches do
    not leave the process at their peak. ``on``: never shrinks (a few 4 MB batches can
    hold about 1 GB). ``off``: no arena (about 20 us more per small call)."""

    arena_shrink_frames: int = Field(16384, ge=1)
    """With ``memory_arena=shrink``: calls of more than this many frames (batch x
    frames) shrink the arena when they end."""

    @field_validator("providers", mode="before")
    @classmethod
    def _json_or_csv(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [item.strip() for item in value.split(",") if item.strip()]
        return value


class LimitSettings(BaseModel):
    """Admission limits. Each is off (0) by default; the per-principal ones apply only
    to authenticated callers (with authentication off there is no principal). Every
    refusal is RESOURCE_EXHAUSTED naming the limit, with a ``grpc-retry-pushback-ms``
    trailer where a retry can succeed."""

    max_streams_per_principal: int = Field(0, ge=0)
    """Streams (StreamPredict and ModelStreamInfer) one principal may have open at once
    on this replica. 0: no limit."""

    max_calls_per_principal: int = Field(0, ge=0)
    """Unary inference calls (Predict, ModelInfer, and each request of a
    ModelStreamInfer stream) one principal may have in flight at once on this
    replica. 0: no limit."""

    max_sessions_per_principal: int = Field(0, ge=0)
    """Sessions one principal may hold in use at once on this replica (attached to a
    stream or in a call). 0: no limit."""

    max_session_age_s: float = Field(0.0, ge=0)
    """Oldest a session may grow, from its creation; a step on an older one is refused
    (start a new session). Applies to every caller. 0: no limit."""

    max_chunks_per_s: float = Field(0.0, ge=0)
    """Chunks (StreamPredict) or requests (ModelStreamInfer) per second one stream may
    send, beyond a burst of one second's worth; applies to every caller, on top of the
    audio real-time factor. 0: no limit."""


class AudioSettings(BaseModel):
    """Audio streaming limits."""

    max_chunk_ms: float = Field(2000.0, gt=0)
    """Longest audio chunk accepted; longer ones get RESOURCE_EXHAUSTED."""

    max_realtime_factor: float = Field(0.0, ge=0)
    """Refuse audio arriving faster than this many times real time (after a 2 s
    allowance) with RESOURCE_EXHAUSTED. 0 disables the limit."""


class KServeV2Settings(BaseModel):
    """The Open Inference Protocol (KServe v2 / Triton) API, ``inference.GRPCInferenceService``."""

    enabled: bool = True
    """Serve the Open Inference Protocol (``inference.GRPCInferenceService``) on the
    gRPC port beside ``lstmserve.v1.Inference``."""

    max_stream_backlog: int = Field(256, ge=1)
    """Most requests of one ModelStreamInfer stream in flight at once (all its
    sequences together); beyond it a request is answered RESOURCE_EXHAUSTED in band,
    and the stream stays open."""

    max_sequence_id_bytes: int = Field(128, ge=1, le=16384)
    """Longest string ``sequence_id`` accepted, in UTF-8 bytes (Triton's limit is 128)."""
class MetricsSettings(BaseModel):
    """Prometheus metrics endpoint."""

    enabled: bool = True
    """Serve /metrics over HTTP."""

    host: str = ""
    """Address the metrics endpoint binds to. Empty (the default): the gRPC ``host``
    (``--host``), so ``--host 127.0.0.1`` keeps metrics on loopback too. Set it apart,
    e.g. ``0.0.0.0``, to let Prometheus scrape a server whose gRPC port is local."""

    tls: bool = False
    """Serve /metrics over HTTPS with the gRPC port's certificate and key (read at
    start; not reloaded). Needs ``LSTM_SERVE_TLS__CERT_FILE``; with
    ``LSTM_SERVE_TLS__CLIENT_CA_FILE`` scrapers need a client certificate too."""

    port: int = Field(9090, ge=0, le=65535)
    """Metrics port (0 picks a free port)."""


class Settings(BaseSettings):
    """All settings of one server process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    """Transport and process."""

    sessions: SessionSettings = Field(default_factory=SessionSettings)
    """Session store."""

    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    """Dynamic batching."""

    providers: ProviderSettings = Field(default_factory=ProviderSettings)
    """onnxruntime providers."""

    audio: AudioSettings = Field(default_factory=AudioSettings)
    """Audio streaming."""

    limits: LimitSettings = Field(default_factory=LimitSettings)
    """Admission limits (off by default)."""

    kserve_v2: KServeV2Settings = Field(default_factory=KServeV2Settings)
    """Open Inference Protocol API."""

    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    """Prometheus endpoint."""

    tls: TlsSettings = Field(default_factory=TlsSettings)
    """TLS and mTLS of the gRPC port."""

    auth: AuthSettings = Field(default_factory=AuthSettings)
    """Authentication and per-model authorization."""

    def problems(self) -> list[str]:
        """Contradictions between groups, which flags may still resolve, so they are
        checked on the final settings (the entry point refuses to start on any)."""
        found = []
        tls, auth = self.tls, self.auth
        if bool(tls.cert_file) != bool(tls.key_file):
            found.append("tls: give both LSTM_SERVE_TLS__CERT_FILE and _KEY_FILE (--tls-cert, --tls-key), or neither")
        if tls.client_ca_file and not tls.cert_file:
            found.append("tls: LSTM_SERVE_TLS__CLIENT_CA_FILE (mTLS) needs the certificate and key files")
        if auth.jwks_file and not (auth.issuer and auth.audience):
            found.append(
                "auth: LSTM_SERVE_AUTH__JWKS_FILE needs an issuer and an audience (--auth-issuer, --auth-audience)"
            )
        if self.metrics.tls and not self.tls.enabled:
            found.append(
                "LSTM_SERVE_METRICS__TLS needs LSTM_SERVE_TLS__CERT_FILE and _KEY_FILE (--tls-cert, --tls-key)"
            )
        return found

    @property
    def metrics_host(self) -> str:
        """Where the metrics endpoint binds: its own host, else the gRPC host."""
        return self.metrics.host or self.server.host


def env_var_names() -> list[str]:
    """Every environment variable the settings read, e.g. ``LSTM_SERVE_SERVER__PORT``."""
    names = []
    for group_name, group_field in Settings.model_fields.items():
        group_type = group_field.annotation
        assert isinstance(group_type, type) and issubclass(group_type, BaseModel)
        for field_name in group_type.model_fields:
            names.append(f"{ENV_PREFIX}{group_name.upper()}__{field_name.upper()}")
    return names
