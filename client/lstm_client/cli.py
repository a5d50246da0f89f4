"""``lstm-client``: call an lstm-serve endpoint from the shell."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lstm_client.client import (
    DEFAULT_TARGET,
    TOKEN_ENV,
    LstmClient,
    Security,
    StatusError,
    StreamResult,
    event_dict,
)
from lstm_client.wav import WavError, read_wav
from lstmserve.v1 import inference_pb2 as pb

DESCRIPTION = f"""\
Call an lstm-serve endpoint.

Feature input is float32 .npy/.npz:
  [T, F] .npy          one sequence
  [N, T, F] .npy       a batch of N equal-length sequences (predict only)
  .npz seq_0..seq_N-1  a batch of sequences of varying length (predict only)

examples:
  lstm-client health
  lstm-client models --json
  lstm-client metadata har
  lstm-client predict har --input walk.npy --json
  lstm-client stream har --input walk.npy --chunk-frames 10
  lstm-client stream kws --wav demo/demo1.wav --realtime
  lstm-client --target H:P --tls-ca ca.pem --token K health     # TLS and an API key or JWT
  lstm-client --tls-ca ca.pem --tls-cert me.pem --tls-key me.key models   # mTLS

--target defaults to {DEFAULT_TARGET}. Connection options (--target, --timeout, --tls-*,
--token) come before the command; the token may also come from {TOKEN_ENV}. With --json
each command prints exactly one JSON document on stdout. Errors go to stderr as
'error: STATUS: message' with exit code 1.
"""


class UsageError(Exception):
    """Bad command-line input (exit code 2)."""


def load_features(path: Path) -> tuple[list[np.ndarray], bool]:
    """Sequences from a .npy or .npz file, and whether the file held a batch."""
    if not path.is_file():
        raise UsageError(f"--input: {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path) as archive:
            keys = sorted((k for k in archive.files if k.startswith("seq_")), key=lambda k: int(k[4:]))
            if not keys:
                raise UsageError(f"--input: {path} holds no arrays named seq_0 ... seq_N-1")
            seqs = [np.asarray(archive[k], dtype=np.float32) for k in keys]
        if any(s.ndim != 2 for s in seqs):
            raise UsageError("--input: every seq_i must be a [T, F] array")
        return seqs, True
    array = np.load(path)
    if array.ndim == 2:
        return [array.astype(np.float32)], False
    if array.ndim == 3:
        return [a.astype(np.float32) for a in array], True
    raise UsageError(f"--input: expected a [T, F] or [N, T, F] array, got shape {list(array.shape)}")


def _emit(args: argparse.Namespace, document: Any, text: str) -> None:
    print(json.dumps(document) if args.json else text)


def cmd_health(client: LstmClient, args: argparse.Namespace) -> int:
    """Print the health status of the server or one service name."""
    status = client.health(args.service)
    _emit(args, {"service": args.service, "status": status}, status)
    return 0 if status == "SERVING" else 3


def cmd_models(client: LstmClient, args: argparse.Namespace) -> int:
    """List model versions."""
    models = client.list_models()
    lines = [
        f"{m['name']:<12} {m['version']:<6} {'ready' if m['ready'] else 'BROKEN':<7} {m['input_kind']:<9} "
        f"dim={m['feature_dim']:<4} {m['head']:<10} {'streamable' if m['streamable'] else 'whole-sequence'}"
        + (f"  {m['error']}" if m.get("error") else "")
        for m in models
    ]
    _emit(args, models, "\n".join(lines) or "(no models)")
    return 0


def cmd_metadata(client: LstmClient, args: argparse.Namespace) -> int:
    """Show one model's metadata."""
    meta = client.metadata(args.name, args.version)
    _emit(args, meta, json.dumps(meta, indent=2))
    return 0


def _rows(outputs: list[np.ndarray], batched: bool) -> Any:
    lists = [o.tolist() for o in outputs]
    return lists if batched else lists[0]


def _describe_row(row: np.ndarray, meta: dict[str, Any]) -> str:
    """One output row for people: the top class of a classifier, the first values
    (with their labels) of a regression head."""
    labels = list(meta.get("labels", []))
    if meta.get("task") == "regression":
        shown = ", ".join(
            f"{labels[j] if j < len(labels) else j}={row[j]:.3g}" for j in range(min(6, row.size))
        )
        more = f", ... ({row.size} values; --json for all)" if row.size > 6 else ""
        return f"[{shown}{more}]"
    top = int(np.argmax(row))
    name = labels[top] if top < len(labels) else str(top)
    return f"top class {name} ({row[top]:.3f})"


def cmd_predict(client: LstmClient, args: argparse.Namespace) -> int:
    """Run Predict on a feature file."""
    seqs, batched = load_features(Path(args.input))
    payload: np.ndarray | list[np.ndarray] = seqs if batched else seqs[0]
    result = client.predict(
        args.name, payload, version=args.version, session_id=args.session_id or "", end_session=args.end_session,
        frame_offset=args.frame_offset, resume_token=_token_in(args), return_token=bool(args.token_out),
    )
    _token_out(args, result.resume_token)
    document: dict[str, Any] = {
        "model": result.model, "version": result.version, "outputs": _rows(result.outputs, batched)
    }
    if result.session_id:
        document["session_id"] = result.session_id
        document["frame_offset"] = result.frame_offset
        document["replayed"] = result.replayed
    text_lines = [f"model {result.model} version {result.version}"]
    meta = client.metadata(result.model, result.version) if not args.json else {}
    for i, out in enumerate(result.outputs):
        last = out[-1] if out.ndim == 2 else out
        rows = out.shape[0] if out.ndim == 2 else 1
        text_lines.append(f"sequence {i}: {rows} row(s), last row {_describe_row(last, meta)}")
    _emit(args, document, "\n".join(text_lines))
    return 0


def cmd_stream(client: LstmClient, args: argparse.Namespace) -> int:
    """Stream a feature file in chunks, or a WAV file as audio."""
    if (args.input is None) == (args.wav is None):
        raise UsageError("stream: give exactly one of --input FILE.npy or --wav FILE.wav")
    if args.wav is not None:
        return _stream_audio(client, args)
    seqs, batched = load_features(Path(args.input))
    if batched:
        raise UsageError("stream: --input must hold one [T, F] sequence")
    frames = seqs[0]
    step = args.chunk_frames
    chunks = [frames[i : i + step] for i in range(0, len(frames), step)]
    meta = client.metadata(args.name, args.version)
    pace = step / meta["frame_rate_hz"] if args.realtime and meta["frame_rate_hz"] else 0.0
    result = client.stream(
        args.name, chunks, version=args.version, session_id=args.session_id or "", pace_s=pace,
        keep_session=args.keep_session, **_resume_options(args),
    )
    _token_out(args, result.resume_token)
    outputs = result.outputs
    document = {
        "model": result.model, "version": result.version, "session_id": result.session_id,
        "resumed": result.resumed, "frame_offset": result.frame_offset,
        "outputs": outputs.tolist(), "frames": result.frames, "resumes": result.resumes,
    }
    _emit(args, document, f"session {result.session_id}{_resumed_note(result)}: {result.frames} frames in "
          f"{len(chunks)} chunks, output shape {list(outputs.shape)}")
    return 0


def _resume_options(args: argparse.Namespace) -> dict[str, Any]:
    # --token-out needs a token at the end: with keep_session the server puts one in final.
    return {
        "resume_token": _token_in(args),
        "token_every": args.token_every,
        "auto_resume": args.auto_resume,
        "retry_for_s": args.timeout,
    }


def _resumed_note(result: StreamResult) -> str:
    # Without it a resumed stream's text output reads like a fresh one.
    return f" (resumed at frame {result.frame_offset})" if result.resumed else ""


def _stream_audio(client: LstmClient, args: argparse.Namespace) -> int:
    try:
        wav = read_wav(Path(args.wav))
    except WavError as exc:
        raise UsageError(str(exc)) from exc
    chunks = wav.chunks(args.chunk_ms)
    started = time.monotonic()

    def show(response: pb.StreamResponse) -> None:
        if args.json or response.WhichOneof("message") != "result":
            return
        for event in response.result.events:
            if event.is_final:
                print(f"{event.start_s:6.2f}s  {event.label:<8} {event.score:.2f}", flush=True)

    result = client.stream(
        args.name, chunks, version=args.version, audio=(wav.encoding, wav.sample_rate_hz),
        pace_s=args.chunk_ms / 1000 if args.realtime else 0.0, on_response=show,
        session_id=args.session_id or "", keep_session=args.keep_session, **_resume_options(args),
    )
    _token_out(args, result.resume_token)
    elapsed = time.monotonic() - started
    events = [event_dict(e) for e in result.events]
    for e in events:
        e.pop("is_final", None)
    document = {
        "model": result.model, "version": result.version, "session_id": result.session_id,
        "resumed": result.resumed, "frame_offset": result.frame_offset, "events": events,
        "frames": result.frames, "audio_seconds": round(wav.seconds, 3), "elapsed_s": round(elapsed, 3),
        "resumes": result.resumes,
    }
    summary = (f"{len(events)} event(s), {result.frames} frames{_resumed_note(result)}, "
               f"{wav.seconds:.2f} s of audio in {elapsed:.2f} s")
    _emit(args, document, summary)
    return 0


def add_token_flags(p: argparse.ArgumentParser) -> None:
    """--token-in and --token-out (they may name the same file: read first, then replaced)."""
    p.add_argument("--token-in", metavar="FILE", help="continue the session sealed in this resume-token file")
    p.add_argument("--token-out", metavar="FILE", help="write the session's resume token after the call here")


def _token_in(args: argparse.Namespace) -> bytes:
    if not args.token_in:
        return b""
    try:
        return Path(args.token_in).read_bytes()
    except OSError as exc:
        raise UsageError(f"--token-in: {exc}") from exc


def _token_out(args: argparse.Namespace, token: bytes) -> None:
    if not args.token_out:
        return
    if not token:
        raise UsageError("--token-out: the server sent no resume token (does it have token keys?)")
    Path(args.token_out).write_bytes(token)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(
        prog="lstm-client", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default=DEFAULT_TARGET, help=f"server HOST:PORT (default {DEFAULT_TARGET})")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-call deadline in seconds (default 60)")
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    parser.add_argument("--tls-ca", metavar="FILE", help="use TLS; the server's certificate must chain to this PEM CA")
    parser.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM) for mTLS; needs --tls-key")
    parser.add_argument("--tls-key", metavar="FILE", help="the client certificate's private key (PEM)")
    parser.add_argument("--tls-server-name", metavar="NAME",
                        help="the name the server's certificate must carry, when it is not the target's host")
    parser.add_argument("--token", help=f"API key or JWT, sent as 'authorization: Bearer ...' (default ${TOKEN_ENV})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
        return p

    p = add("health", "health status of the server ('' service) or of one service name, e.g. models/har")
    p.add_argument("service", nargs="?", default="", help="health service name (default: the whole server)")
    p.set_defaults(func=cmd_health)
    p = add("models", "list every model version with its input kind, dimension and head")
    p.set_defaults(func=cmd_models)
    p = add("metadata", "everything a client needs to call one model")
    p.add_argument("name")
    p.add_argument("--version", default="", help="model version (default: the highest ready one)")
    p.set_defaults(func=cmd_metadata)
    p = add("predict", "run whole sequences through Predict")
    p.add_argument("name")
    p.add_argument("--input", required=True, help=".npy [T,F] or [N,T,F], or .npz with seq_0..seq_N-1")
    p.add_argument("--version", default="")
    p.add_argument("--session-id", help="continue (or create) this server-side session")
    p.add_argument("--end-session", action="store_true", help="delete the session after this call")
    p.add_argument("--frame-offset", type=int, help="the session frame this call continues from: 0 starts the "
                   "session, N continues it only at N, and a retry of the previous call is replayed "
                   '("replayed": true); safe to retry')
    add_token_flags(p)
    p.set_defaults(func=cmd_predict)
    p = add("stream", "stream a feature file in chunks, or a WAV file as audio, through StreamPredict")
    p.add_argument("name")
    p.add_argument("--input", help="a [T, F] float32 .npy of feature frames")
    p.add_argument("--wav", help="a WAV file (mono/stereo, 8-48 kHz, 16-bit or float) for audio models")
    p.add_argument("--chunk-frames", type=int, default=10, help="feature frames per chunk (default 10)")
    p.add_argument("--chunk-ms", type=float, default=100.0, help="audio milliseconds per chunk (default 100)")
    p.add_argument("--realtime", action="store_true", help="pace chunks at wall-clock speed")
    p.add_argument("--version", default="")
    p.add_argument("--session-id", help="resume (or create) this session; a resumed stream continues at the "
                   "session's next chunk and frame (frame_offset in --json)")
    p.add_argument("--keep-session", action="store_true", help="keep the session's state after the stream "
                   "(for --input and --wav), so a later call with the same --session-id resumes it")
    p.add_argument("--auto-resume", action="store_true", help="survive the server: on draining or a broken "
                   "stream, resume on a fresh channel (another replica) from the newest token and resend "
                   "the chunks after it; needs a server with token keys")
    p.add_argument("--token-every", type=int, default=0, metavar="N",
                   help="ask for a resume token every N chunks (default 10 with --auto-resume, else none)")
    add_token_flags(p)
    p.set_defaults(func=cmd_stream)
    from lstm_client.bench import add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lstm-client`` console script."""
    args = build_parser().parse_args(argv)
    security = Security(
        tls=args.tls, ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key,
        server_name=args.tls_server_name, token=args.token or os.environ.get(TOKEN_ENV) or None,
    )
    try:
        connected = LstmClient(args.target, timeout=args.timeout, security=security)
    except (ValueError, OSError) as exc:
        print(f"error: TLS files: {exc}", file=sys.stderr)
        return 2
    try:
        with connected as client:
            return int(args.func(client, args))
    except StatusError as exc:
        print(f"error: {exc.code.name}: {exc.details}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
