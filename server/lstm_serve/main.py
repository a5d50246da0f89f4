"""``lstm-serve``: the server's command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from lstm_serve import __version__
from lstm_serve.credentials import CredentialFileError
from lstm_serve.process import configure_logging, run_workers, serve
from lstm_serve.providers import ProviderError
from lstm_serve.settings import Settings
from lstm_serve.tokens import KeyFileError, load_keys, write_key_file

DESCRIPTION = """\
Serve recurrent sequence models (LSTM, GRU) over gRPC with per-session state.

Every model package under --models (<name>/<version>/{model.onnx,manifest.json}) is
loaded at start; a broken package is reported and marked NOT_SERVING while the rest
serve. Every option can also be set with an environment variable; flags win.

examples:
  lstm-serve                                   # bundled models on :50051, metrics on :9090
  lstm-serve --models ./models --port 6000
  lstm-serve --no-batching                     # the baseline for benchmarks
  lstm-serve --workers 2                       # two processes share the port
  LSTM_SERVE_SESSIONS__TTL_S=60 lstm-serve     # expire idle sessions after a minute
  lstm-serve --print-settings                  # the effective settings as JSON
  lstm-serve --model-control poll              # pick up new model versions from --models as they appear
  lstm-serve keygen keys.json && lstm-serve --token-keys keys.json   # resume tokens on
  lstm-serve --port 0 --metrics-port 0 --port-file ports.json   # any free ports; read them back
  lstm-serve --tls-cert tls.crt --tls-key tls.key               # TLS (reloaded when the files change)
  lstm-serve --tls-cert tls.crt --tls-key tls.key --tls-client-ca ca.crt   # mTLS
  lstm-serve --auth-keys keys.json                              # API keys (sha256 hashes), see docs/security.md
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each flag names its environment variable."""
    p = argparse.ArgumentParser(
        prog="lstm-serve",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", help="bind address [LSTM_SERVE_SERVER__HOST, default 0.0.0.0]")
    p.add_argument("--port", type=int, help="gRPC port, 0 = any free [LSTM_SERVE_SERVER__PORT, default 50051]")
    p.add_argument("--metrics-port", type=int, help="Prometheus port [LSTM_SERVE_METRICS__PORT, default 9090]")
    p.add_argument("--no-metrics", action="store_true", help="do not serve /metrics [LSTM_SERVE_METRICS__ENABLED]")
    p.add_argument("--models", help="model repository folder [LSTM_SERVE_SERVER__MODELS_DIR, default models]")
    p.add_argument(
        "--providers",
        help="'auto' or a comma list, e.g. CUDAExecutionProvider,CPUExecutionProvider "
        "[LSTM_SERVE_PROVIDERS__PROVIDERS, default auto]",
    )
    p.add_argument("--no-batching", action="store_true", help="run every step alone [LSTM_SERVE_BATCHING__ENABLED]")
    p.add_argument("--max-batch-size", type=int, help="[LSTM_SERVE_BATCHING__MAX_BATCH_SIZE, default 64]")
    p.add_argument("--max-delay-ms", type=float, help="[LSTM_SERVE_BATCHING__MAX_DELAY_MS, default 2]")
    p.add_argument(
        "--session-ttl",
        type=float,
        help="idle seconds before a detached session expires [LSTM_SERVE_SESSIONS__TTL_S, default 300]",
    )
    p.add_argument("--max-sessions", type=int, help="session cap [LSTM_SERVE_SESSIONS__MAX_SESSIONS, default 10000]")
    p.add_argument(
        "--session-store",
        metavar="URL",
        help="shared session store, redis://HOST:PORT/DB or rediss:// "
        "[LSTM_SERVE_SESSIONS__STORE_URL, default: in memory, per process]",
    )
    p.add_argument(
        "--write-back-chunks",
        type=int,
        metavar="N",
        help="with a shared store, a stream writes its session back every N chunks "
        "[LSTM_SERVE_SESSIONS__WRITE_BACK_CHUNKS, default 10]",
    )
    p.add_argument(
        "--token-keys",
        metavar="FILE",
        help="resume-token key file; `lstm-serve keygen FILE` writes one "
        "[LSTM_SERVE_SESSIONS__TOKEN_KEYS_FILE, default: tokens off]",
    )
    p.add_argument(
        "--model-control",
        choices=["none", "explicit", "poll"],
        help="repository changes while serving: none, explicit (the v2 RepositoryModelLoad/Unload RPCs) or "
        "poll (also rescan the folder) [LSTM_SERVE_SERVER__MODEL_CONTROL, default none]",
    )
    p.add_argument(
        "--poll-interval", type=float,
        help="seconds between repository rescans with --model-control poll "
        "[LSTM_SERVE_SERVER__POLL_INTERVAL_S, default 5]",
    )
    p.add_argument("--metrics-host", help="metrics bind address [LSTM_SERVE_METRICS__HOST, default: --host]")
    p.add_argument(
        "--health-port",
        type=int,
        help="plaintext port serving only grpc.health.v1, for Kubernetes probes under TLS; 0 = any free "
        "[LSTM_SERVE_SERVER__HEALTH_PORT, default: none]",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain [LSTM_SERVE_TLS__CERT_FILE]")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key [LSTM_SERVE_TLS__KEY_FILE]")
    p.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="PEM CA: require client certificates it signed (mTLS) [LSTM_SERVE_TLS__CLIENT_CA_FILE]",
    )
    p.add_argument(
        "--auth-keys", metavar="FILE", help="API key hashes and mTLS identities [LSTM_SERVE_AUTH__KEYS_FILE]"
    )
    p.add_argument("--auth-jwks", metavar="FILE", help="JWKS that JWTs are checked with [LSTM_SERVE_AUTH__JWKS_FILE]")
    p.add_argument("--auth-issuer", help="required JWT iss [LSTM_SERVE_AUTH__ISSUER]")
    p.add_argument("--auth-audience", help="required JWT aud [LSTM_SERVE_AUTH__AUDIENCE]")
    p.add_argument("--grace", type=float, help="drain grace, seconds [LSTM_SERVE_SERVER__GRACE_PERIOD_S, default 10]")
    p.add_argument("--log-level", help="[LSTM_SERVE_SERVER__LOG_LEVEL, default INFO]")
    p.add_argument(
        "--workers", type=int, help="server processes sharing the port [LSTM_SERVE_SERVER__WORKERS, default 1]"
    )
    p.add_argument(
        "--port-file",
        metavar="PATH",
        help='[flag only] once the ports are bound, write them to PATH as one JSON line {"port": N, '
        '"metrics_port": M} (M is null without metrics; "health_port" is added with --health-port); '
        "use with --port 0 --metrics-port 0. A regular "
        "file is replaced atomically; a pipe (e.g. /dev/fd/N) gets the line. With --workers the parent "
        "writes it once the workers are started. Ready means health SERVING, not this file",
    )
    p.add_argument("--print-settings", action="store_true", help="print the effective settings as JSON and exit")
    p.add_argument("--version", action="version", version=f"lstm-serve {__version__}")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment settings with the flags given on the command line on top."""
    base = Settings().model_dump()
    overrides: dict[tuple[str, str], Any] = {
        ("server", "host"): args.host,
        ("server", "port"): args.port,
        ("server", "models_dir"): args.models,
        ("server", "grace_period_s"): args.grace,
        ("server", "log_level"): args.log_level,
        ("server", "workers"): args.workers,
        ("server", "model_control"): args.model_control,
        ("server", "poll_interval_s"): args.poll_interval,
        ("server", "health_port"): args.health_port,
        ("metrics", "port"): args.metrics_port,
        ("metrics", "host"): args.metrics_host,
        ("tls", "cert_file"): args.tls_cert,
        ("tls", "key_file"): args.tls_key,
        ("tls", "client_ca_file"): args.tls_client_ca,
        ("auth", "keys_file"): args.auth_keys,
        ("auth", "jwks_file"): args.auth_jwks,
        ("auth", "issuer"): args.auth_issuer,
        ("auth", "audience"): args.auth_audience,
        ("metrics", "enabled"): False if args.no_metrics else None,
        ("providers", "providers"): args.providers.split(",") if args.providers else None,
        ("batching", "enabled"): False if args.no_batching else None,
        ("batching", "max_batch_size"): args.max_batch_size,
        ("batching", "max_delay_ms"): args.max_delay_ms,
        ("sessions", "ttl_s"): args.session_ttl,
        ("sessions", "max_sessions"): args.max_sessions,
        ("sessions", "token_keys_file"): args.token_keys,
        ("sessions", "store_url"): args.session_store,
        ("sessions", "write_back_chunks"): args.write_back_chunks,
    }
    for (group, field), value in overrides.items():
        if value is not None:
            base[group][field] = value
    return Settings.model_validate(base)


def keygen(argv: list[str]) -> int:
    """``lstm-serve keygen FILE``: write a new resume-token key file."""
    p = argparse.ArgumentParser(
        prog="lstm-serve keygen",
        description="Write a new resume-token key file with one random 256-bit key (mode 0600). To rotate, "
        "put the new key first in the serving file and keep the old one until its tokens have expired "
        "(LSTM_SERVE_SESSIONS__TOKEN_TTL_S).",
    )
    p.add_argument("file", help="where to write the key file (must not exist)")
    p.add_argument("--key-id", default="k1", help="the key's id, carried in every token it seals [default k1]")
    args = p.parse_args(argv)
    try:
        write_key_file(Path(args.file), args.key_id)
    except OSError as exc:
        print(f"lstm-serve keygen: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.file} (key id {args.key_id})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lstm-serve`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keygen"]:
        return keygen(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except (ValidationError, SettingsError) as exc:
        print(f"lstm-serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    for problem in settings.problems():
        print(f"lstm-serve: invalid settings: {problem}", file=sys.stderr)
        return 2
    if args.print_settings:
        print(json.dumps(settings.model_dump(), indent=2))
        return 0
    if settings.sessions.token_keys_file:
        try:
            load_keys(Path(settings.sessions.token_keys_file))
        except KeyFileError as exc:
            print(f"lstm-serve: {exc}", file=sys.stderr)
            return 2
    configure_logging(settings)
    if settings.server.workers > 1:
        return run_workers(settings, args.port_file)
    try:
        asyncio.run(serve(settings, args.port_file))
    except (ProviderError, CredentialFileError) as exc:
        print(f"lstm-serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"lstm-serve: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
