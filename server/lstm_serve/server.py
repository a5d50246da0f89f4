"""Assembles and runs one server: repository, service, gRPC, health, reflection, metrics.

Shutdown follows grpc's graceful-shutdown example: health goes NOT_SERVING, new
sessions and calls are refused with UNAVAILABLE, in-flight RPCs get
``grace_period_s`` to finish, then the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from lstm_serve import __version__
from lstm_serve.batching import build_batcher, build_batchers
from lstm_serve.credentials import Authenticator
from lstm_serve.facade import DomainFacade
from lstm_serve.metrics import Metrics, MetricsEndpoint, MetricsTls, serve_metrics
from lstm_serve.providers import choose_providers
from lstm_serve.redis_store import RedisSessionStore, SnapshotCodec
from lstm_serve.repository import ModelRepository
from lstm_serve.resume import ResumeTokens
from lstm_serve.session_store import InMemorySessionStore, SessionStore
from lstm_serve.settings import Settings
from lstm_serve.statistics import StatsBook
from lstm_serve.threads import EXECUTOR_THREAD_NAME, name_this_thread
from lstm_serve.tokens import TokenSealer, load_keys
from lstm_serve.transport import kserve_v2, lstmserve_v1
from lstm_serve.transport.api import ApiService
from lstm_serve.transport.interceptor import ErrorInterceptor
from lstm_serve.transport.tls import ServerTls
from lstm_serve.watch import WatchedFiles

log = logging.getLogger(__name__)

FINAL_SEND_GRACE_S = 1.0
"""After the drain, how long grpc may take to send the last responses."""

APIS: tuple[ApiService, ...] = (lstmserve_v1.API, kserve_v2.API)
"""Every API the gRPC port can serve, over the same domain (the Open Inference
Protocol unless ``LSTM_SERVE_KSERVE_V2__ENABLED=false``)."""

STORE_HEALTH_NAME = "lstmserve.sessions.store"
"""Health of the shared session store; stateless work stays SERVING without it."""

HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def metrics_tls(settings: Settings) -> MetricsTls | None:
    """HTTPS for /metrics when ``LSTM_SERVE_METRICS__TLS`` is on: the gRPC port's files."""
    if not settings.metrics.tls:
        return None
    tls = settings.tls
    return MetricsTls(tls.cert_file, tls.key_file, tls.client_ca_file)


def open_services(settings: Settings) -> list[str]:
    """The services that need no credential when authentication is on."""
    names = []
    if settings.auth.open_health:
        names.append(HEALTH_SERVICE)
    if settings.auth.open_reflection:
        names.append(reflection.SERVICE_NAME)
    return names


class LstmServer:
    """One running lstm-serve instance."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.port = 0
        self.metrics_port = 0
        self.health_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._watched: list[WatchedFiles[object]] = []
        self._reloader: asyncio.Task[None] | None = None
        self._health = health_aio.HealthServicer()
        self._metrics_endpoint: MetricsEndpoint | None = None
        self.domain: DomainFacade | None = None
        self._stopped = asyncio.Event()
        self._redis: RedisSessionStore | None = None
        self._apis: list[ApiService] = []

    async def start(self) -> None:
        """Load the models and start serving."""
        s = self.settings
        # Security files first: a bad one stops the start before any model loads.
        tls = ServerTls(s.tls, self.metrics) if s.tls.enabled else None
        authenticator = self._build_authenticator()
        providers = choose_providers(s.providers.providers)
        log.info("execution providers: %s", providers)
        repository = await asyncio.to_thread(
            functools.partial(
                ModelRepository.load,
                Path(s.server.models_dir),
                providers,
                s.providers.intra_op_threads,
                s.providers.inter_op_threads,
                memory_arena=s.providers.memory_arena,
                arena_shrink_frames=s.providers.arena_shrink_frames,
                allow_spinning=s.providers.allow_spinning,
            )
        )
        self.metrics.build.labels(__version__).set(1)
        self._model_gauges(repository)
        store = self._build_store(repository)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=EXECUTOR_THREAD_NAME,
                                      initializer=name_this_thread, initargs=(EXECUTOR_THREAD_NAME,))
        stats = StatsBook()
        batchers = build_batchers(repository, executor, self.metrics, s.batching, stats)
        sealer = None
        if s.sessions.token_keys_file:
            sealer = TokenSealer(load_keys(Path(s.sessions.token_keys_file)), s.sessions.max_token_bytes)
            log.info("resume tokens on (keys from %s)", s.sessions.token_keys_file)
        else:
            log.info("resume tokens off: no LSTM_SERVE_SESSIONS__TOKEN_KEYS_FILE (--token-keys)")
        tokens = ResumeTokens(sealer, s.sessions.token_ttl_s, self.metrics)
        self.domain = DomainFacade(
            repository, s, self.metrics, store=store, executor=executor, batchers=batchers, tokens=tokens,
            stats=stats, make_batcher=functools.partial(
                build_batcher, executor=executor, metrics=self.metrics, settings=s.batching, stats=stats
            ),
        )
        self.domain.on_models_changed = functools.partial(self._models_changed, repository)
        await self.domain.start()
        options = [
            ("grpc.max_receive_message_length", s.server.max_message_bytes),
            ("grpc.max_send_message_length", max(s.server.max_message_bytes, 64 * 1024 * 1024)),
            # Workers share the port; a lone server must own it, so a second one fails fast.
            ("grpc.so_reuseport", 1 if s.server.workers > 1 else 0),
        ]
        self._apis = [api for api in APIS if api is not kserve_v2.API or s.kserve_v2.enabled]
        names = [api.name for api in self._apis]
        interceptor = ErrorInterceptor(self.metrics, names, authenticator, open_services(s))
        server = grpc.aio.server(interceptors=[interceptor], options=options)
        for api in self._apis:
            api.register(self.domain, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection([*names, HEALTH_SERVICE, reflection.SERVICE_NAME], server)
        address = f"{s.server.host}:{s.server.port}"
        if tls is not None:
            self._watched.append(tls.files)
            self.port = server.add_secure_port(address, tls.credentials())
            log.info("TLS on the gRPC port%s", " with client certificates required (mTLS)" if tls.mutual else "")
        else:
            self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC to {address}")
        if s.server.health_port is not None:
            self._health_server = self._build_health_server(s.server.host, s.server.health_port, options)
        if s.metrics.enabled:
            self._metrics_endpoint = serve_metrics(
                self.metrics.registry, s.metrics_host, s.metrics.port, metrics_tls(s)
            )
            self.metrics_port = self._metrics_endpoint.port
        await server.start()
        if self._health_server is not None:
            await self._health_server.start()
        self._server = server
        if self._watched:
            self._reloader = asyncio.get_running_loop().create_task(self._reload(), name="credential-reload")
        await self._set_health(repository)
        log.info(
            "serving %d model version(s) on %s:%d (metrics on %s:%d%s)",
            sum(1 for e in repository if e.ready), s.server.host, self.port, s.metrics_host, self.metrics_port,
            f", plaintext health on :{self.health_port}" if self.health_port is not None else "",
        )

    def _model_gauges(self, repository: ModelRepository) -> None:
        for entry in repository:
            self.metrics.model_ready.labels(entry.name, entry.version).set(1 if entry.ready else 0)
            if entry.runtime is not None:
                in_use = ",".join(entry.runtime.providers)
                self.metrics.providers.labels(entry.name, entry.version, in_use).set(1)

    async def _models_changed(self, repository: ModelRepository) -> None:
        """A model was loaded or unloaded: health and the model gauges follow."""
        self._model_gauges(repository)
        await self._set_model_health(repository)
    def _build_authenticator(self) -> Authenticator | None:
        a = self.settings.auth
        if not a.enabled:
            return None
        authenticator = Authenticator(
            keys_file=a.keys_file, jwks_file=a.jwks_file, issuer=a.issuer, audience=a.audience,
            leeway_s=a.leeway_s, metrics=self.metrics,
        )
        self._watched.extend(authenticator.watched)
        if not self.settings.tls.enabled:
            log.warning("authentication is on but the gRPC port is plaintext: credentials travel in the clear")
        log.info("authentication on (%s)", ", ".join(w.name for w in authenticator.watched))
        return authenticator

    def _build_health_server(self, host: str, port: int, options: list[tuple[str, int]]) -> grpc.aio.Server:
        """A plaintext port with grpc.health.v1 only, for the kubelet's gRPC probes. It
        is open (no authentication), and its interceptor answers a request that does
        not parse with INVALID_ARGUMENT, as on the main port (grpc alone: UNKNOWN)."""
        health_server = grpc.aio.server(interceptors=[ErrorInterceptor(self.metrics, ())], options=options)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, health_server)
        self.health_port = health_server.add_insecure_port(f"{host}:{port}")
        if self.health_port == 0:
            raise OSError(f"cannot bind the health port to {host}:{port}")
        return health_server

    async def _reload(self) -> None:
        """Check the TLS and auth files for changes, off the event loop."""
        while True:
            await asyncio.sleep(self.settings.tls.reload_interval_s)
            for watched in self._watched:
                await asyncio.to_thread(watched.refresh)

    def _build_store(self, repository: ModelRepository) -> SessionStore:
        sessions = self.settings.sessions
        if not sessions.store_url:
            return InMemorySessionStore(sessions.ttl_s, sessions.max_sessions, self.metrics)
        password = None
        if sessions.store_password_file:
            password = Path(sessions.store_password_file).read_text().strip()
        store = RedisSessionStore(
            sessions.store_url, SnapshotCodec(repository, sessions.ttl_s), self.metrics,
            ttl_s=sessions.ttl_s, max_sessions=sessions.max_sessions, lease_s=sessions.lease_s,
            op_timeout_s=sessions.store_op_timeout_s, call_budget_s=sessions.store_call_budget_s,
            backoff_max_s=sessions.store_backoff_max_s, password=password,
            max_connections=sessions.store_max_connections,
        )
        log.info("session store: %s", sessions.store_url.split("@")[-1])
        self._redis = store
        return store

    async def _set_model_health(self, repository: ModelRepository) -> None:
        for name in repository.entries:
            serving = any(e.ready for e in repository.entries[name].values())
            await self._health.set(f"models/{name}", SERVING if serving else NOT_SERVING)
        for entry in repository:
            for health_name in entry.health_names:
                await self._health.set(health_name, SERVING if entry.ready else NOT_SERVING)

    async def _set_health(self, repository: ModelRepository) -> None:
        await self._set_model_health(repository)
        for api in self._apis:
            await self._health.set(api.name, SERVING)
        await self._health.set("", SERVING)
        if self._redis is not None:
            serving = await self._redis.ping()
            await self._health.set(STORE_HEALTH_NAME, SERVING if serving else NOT_SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop: NOT_SERVING, refuse new work, let in-flight work finish."""
        if self._server is None or self.domain is None:
            return
        grace = self.settings.server.grace_period_s if grace is None else grace
        log.info("draining: health NOT_SERVING, new calls refused, grace period %.1f s", grace)
        await self._health.enter_graceful_shutdown()
        self.domain.begin_drain(grace)
        if not await self.domain.wait_idle(grace):
            closing = self.domain.close_open_streams()
            log.warning("grace period over: %d stream(s) got a last token and UNAVAILABLE", closing)
            if not await self.domain.wait_idle(FINAL_SEND_GRACE_S):
                log.warning("calls still in flight after the grace; cancelling them")
        await self._server.stop(FINAL_SEND_GRACE_S)
        if self._health_server is not None:
            await self._health_server.stop(0)
        if self._reloader is not None:
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader
        await self.domain.close()
        if self._redis is not None:
            await self._redis.close()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.close()
        self._server = None
        self._stopped.set()
        log.info("stopped")

    async def wait_stopped(self) -> None:
        """Return once :meth:`stop` has finished."""
        await self._stopped.wait()
