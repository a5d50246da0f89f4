"""Every Prometheus metric of the service, declared once.

Each server instance owns a fresh :class:`~prometheus_client.CollectorRegistry`, so
tests that start several servers in one process do not leak series into each other.
With ``--workers N`` the values live in prometheus-client's multiprocess files
(``PROMETHEUS_MULTIPROC_DIR``) and the parent process serves their aggregate; gauges
declare how they aggregate, and info-style series are gauges set to 1 (the
multiprocess mode supports no Info metric).
Names carry unit suffixes and share one label vocabulary: ``model``, ``version``,
``method``, ``code``, ``reason``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector

PREFIX = "lstm_serve"

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
)
"""Latency buckets, 0.5 ms to 2 s."""

BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
"""Batch-size buckets, 1 to 512."""

LAG_BUCKETS_S: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
"""Stream lag buckets: how far a stream's results trail real time."""

TOKEN_BYTES_BUCKETS: tuple[float, ...] = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
"""Resume token sizes: a GRU's few hundred bytes to the 64 KiB default limit."""

RTF_BUCKETS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
"""Real-time-factor buckets: compute seconds per second of audio."""


class Metrics:
    """The service's metrics, bound to one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.rpc_latency = Histogram(
            f"{PREFIX}_rpc_duration_seconds",
            "Time from receiving a unary RPC to sending its response, or the life of a stream.",
            ["method", "code"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.errors = Counter(
            f"{PREFIX}_errors_total",
            "RPCs that ended with a non-OK status, by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time a step waited in the batcher before its onnxruntime call started.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.compute = Histogram(
            f"{PREFIX}_compute_seconds",
            "Duration of one onnxruntime call (one batch).",
            ["model", "version"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "Sequences stacked into one onnxruntime call.",
            ["model", "version"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.frames = Counter(
            f"{PREFIX}_frames_total",
            "Input frames run through a model.",
            ["model", "version"],
            registry=r,
        )
        self.chunk_latency = Histogram(
            f"{PREFIX}_chunk_latency_seconds",
            "Time from a stream chunk's arrival to its result being sent.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.sessions_active = Gauge(
            f"{PREFIX}_sessions_active",
            "Sessions attached to an open stream or a running Predict call.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.sessions_stored = Gauge(
            f"{PREFIX}_sessions_stored",
            "Sessions whose state is held in the store (attached or detached).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.sessions_created = Counter(
            f"{PREFIX}_sessions_created_total",
            "Sessions created.",
            ["model", "version"],
            registry=r,
        )
        self.sessions_ended = Counter(
            f"{PREFIX}_sessions_ended_total",
            "Sessions removed from the store, by reason: ended (client end), "
            "expired (idle TTL), evicted (shutdown), restarted.",
            ["reason"],
            registry=r,
        )
        self.sessions_rejected = Counter(
            f"{PREFIX}_sessions_rejected_total",
            "Sessions refused, by reason: cap (session cap reached), conflict (held or bound elsewhere).",
            ["reason"],
            registry=r,
        )
        self.tokens_issued = Counter(
            f"{PREFIX}_resume_tokens_issued_total",
            "Resume tokens sealed and sent to clients.",
            ["model", "version"],
            registry=r,
        )
        self.token_bytes = Histogram(
            f"{PREFIX}_resume_token_bytes",
            "Size of the resume tokens sent.",
            ["model", "version"],
            buckets=TOKEN_BYTES_BUCKETS,
            registry=r,
        )
        self.resumes = Counter(
            f"{PREFIX}_session_resumes_total",
            "Sessions continued, by source (memory: a state this process's store held; token: a "
            "resume token) and outcome (ok, refused).",
            ["source", "outcome"],
            registry=r,
        )
        self.draining_handoffs = Counter(
            f"{PREFIX}_draining_handoffs_total",
            "Draining messages sent to open streams at shutdown (each with a resume token when "
            "the server has token keys), by whether the grace was over (closing).",
            ["model", "version", "closing"],
            registry=r,
        )
        self.store_latency = Histogram(
            f"{PREFIX}_store_op_seconds",
            "Duration of one shared session store operation, by op.",
            ["op"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.store_errors = Counter(
            f"{PREFIX}_store_errors_total",
            "Shared session store operations that failed or timed out, by op and kind.",
            ["op", "kind"],
            registry=r,
        )
        self.lease_conflicts = Counter(
            f"{PREFIX}_lease_conflicts_total",
            "Sessions refused because another replica holds their lease.",
            registry=r,
        )
        self.fencing_rejections = Counter(
            f"{PREFIX}_fencing_rejections_total",
            "Writes refused because the stored version had moved on (a stale writer).",
            registry=r,
        )
        self.credential_reloads = Counter(
            f"{PREFIX}_credential_reloads_total",
            "Security files reloaded after they changed on disk, by file (tls, auth_keys, jwks) "
            "and outcome (ok, or failed: the previous content stays in use).",
            ["file", "outcome"],
            registry=r,
        )
        self.auth_refusals = Counter(
            f"{PREFIX}_auth_refusals_total",
            "Calls refused by authentication or authorization, by code (UNAUTHENTICATED, "
            "PERMISSION_DENIED) and the credential's method (api-key, jwt, mtls, none).",
            ["code", "method"],
            registry=r,
        )
        self.write_backs = Counter(
            f"{PREFIX}_store_write_backs_total",
            "Stream states kept in memory and written back to the shared store, by reason: "
            "chunks (every LSTM_SERVE_SESSIONS__WRITE_BACK_CHUNKS), detach, drain.",
            ["reason"],
            registry=r,
        )
        self.stream_lag = Histogram(
            f"{PREFIX}_stream_lag_seconds",
            "How far an audio stream trails real time after each chunk: wall time since its "
            "first chunk minus the audio processed so far, or 0 when it is ahead.",
            ["model", "version"],
            buckets=LAG_BUCKETS_S,
            registry=r,
        )
        self.realtime_factor = Histogram(
            f"{PREFIX}_realtime_factor",
            "Server time spent per chunk divided by the chunk's audio duration.",
            ["model", "version"],
            buckets=RTF_BUCKETS,
            registry=r,
        )
        self.audio_seconds = Counter(
            f"{PREFIX}_audio_seconds_total",
            "Seconds of audio processed.",
            ["model", "version"],
            registry=r,
        )
        self.model_ready = Gauge(
            f"{PREFIX}_model_ready",
            "1 when a model version loaded and serves, 0 when its package is broken.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.providers = Gauge(
            f"{PREFIX}_model_providers_info",
            "Always 1; the providers label lists the execution providers onnxruntime uses "
            "for each model version.",
            ["model", "version", "providers"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.build = Gauge(
            f"{PREFIX}_build_info", "Always 1; the version label is the server version.", ["version"],
            registry=r, multiprocess_mode="livemax",
        )


@dataclass
class MetricsEndpoint:
    """A running /metrics HTTP endpoint."""

    port: int
    _server: object
    _thread: threading.Thread

    def close(self) -> None:
        """Stop serving."""
        shutdown = getattr(self._server, "shutdown", None)
        if callable(shutdown):
            shutdown()
        server_close = getattr(self._server, "server_close", None)
        if callable(server_close):
            server_close()


@dataclass(frozen=True)
class MetricsTls:
    """HTTPS for the metrics endpoint: the server's certificate and key, and a client
    CA when scrapers must present a certificate."""

    cert_file: str
    key_file: str
    client_ca_file: str = ""


def serve_metrics(
    registry: CollectorRegistry, host: str, port: int, tls: MetricsTls | None = None
) -> MetricsEndpoint:
    """Serve ``registry`` on ``http://host:port/metrics`` (``https://`` with ``tls``)
    from a daemon thread."""
    if tls is None:
        server, thread = start_http_server(port, addr=host, registry=registry)
    else:
        server, thread = start_http_server(
            port, addr=host, registry=registry, certfile=tls.cert_file, keyfile=tls.key_file,
            client_cafile=tls.client_ca_file or None, client_auth_required=bool(tls.client_ca_file),
        )
    bound_port = server.server_address[1]
    return MetricsEndpoint(port=int(bound_port), _server=server, _thread=thread)


def multiprocess_registry(directory: str) -> CollectorRegistry:
    """A registry that aggregates the metric files every worker writes in ``directory``."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return registry
