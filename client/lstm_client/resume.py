"""Streams that survive their server: auto-resume from resume tokens.

The stream asks for a token every N chunks (and gets one in ``started``), and keeps
every chunk the newest token does not cover yet. When the server says ``draining``
(SIGTERM), or the stream breaks (a SIGKILL, a lost connection), it opens a fresh
channel to the same target, which reaches another replica, resumes there from the
newest token and resends the chunks after it. A resent chunk's result replaces
nothing: each sequence number's first result is kept, so the outputs hold every row
once, in order, and the final events are merged across attempts.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from lstm_client.client import LstmClient, StatusError, StreamResult, chunk_request, session_metadata
from lstmserve.v1 import inference_pb2 as pb

RETRIED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN}
"""Codes that mean the server or the connection went away, not that the input is bad."""


@dataclass
class _Checkpoint:
    token: bytes = b""
    covered: int = -1
    """The last sequence number the token includes."""

    def advance(self, token: bytes, covered: int) -> None:
        if token and covered >= self.covered:
            self.token, self.covered = token, covered


@dataclass
class ResumeLog:
    """What the attempts of one resumable stream saw."""

    started: pb.Started | None = None
    results: dict[int, pb.Result] = field(default_factory=dict)
    flush: pb.Result | None = None
    final: pb.Final | None = None
    resumes: int = 0


def stream_with_resume(
    connect: Callable[[], LstmClient],
    config: pb.StreamConfig,
    chunks: Sequence[np.ndarray | bytes],
    *,
    keep_session: bool,
    pace_s: float,
    retry_for_s: float,
    on_response: Any = None,
) -> StreamResult:
    """Stream ``chunks`` under ``config`` (which asks for periodic tokens), moving to
    a fresh channel on ``draining`` or a broken stream, for at most ``retry_for_s``
    seconds of retrying in all."""
    checkpoint, log = _Checkpoint(), ResumeLog()
    deadline = time.monotonic() + retry_for_s
    backoff = 0.05
    while True:
        attempt = pb.StreamConfig()
        attempt.CopyFrom(config)
        if checkpoint.token:
            attempt.resume_token = checkpoint.token
            attempt.session_id = ""
        with connect() as client:
            try:
                done = _attempt(client, attempt, chunks, checkpoint, log, keep_session, pace_s, on_response)
            except StatusError as exc:
                if exc.code not in RETRIED or time.monotonic() > deadline:
                    raise
                done = False
        if done:
            break
        if time.monotonic() > deadline:
            raise StatusError(grpc.StatusCode.UNAVAILABLE, f"gave up resuming after {retry_for_s:g} s")
        log.resumes += 1
        time.sleep(backoff)
        backoff = min(backoff * 2, 1.0)
    assert log.started is not None
    ordered = [log.results[seq] for seq in sorted(log.results)]
    if log.flush is not None:
        ordered.append(log.flush)
    started = log.started
    result = StreamResult(started.model.name, started.model.version, started.session_id, started, ordered, log.final)
    result.resumes = log.resumes
    return result


def _attempt(
    client: LstmClient,
    config: pb.StreamConfig,
    chunks: Sequence[np.ndarray | bytes],
    checkpoint: _Checkpoint,
    log: ResumeLog,
    keep_session: bool,
    pace_s: float,
    on_response: Any,
) -> bool:
    """One stream; True when it ended with ``final``, False when it must move."""
    first_number: queue.Queue[int | None] = queue.Queue(maxsize=1)

    def requests() -> Iterator[pb.StreamRequest]:
        yield pb.StreamRequest(config=config)
        first = first_number.get()
        if first is None:
            return
        next_due = time.monotonic()
        for seq in range(first, len(chunks)):
            if pace_s > 0 and seq >= len(log.results):
                delay = next_due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_due += pace_s
            yield chunk_request(seq, chunks[seq])
        yield pb.StreamRequest(end=pb.End(keep_session=keep_session))

    call = client.stub.StreamPredict(requests(), metadata=session_metadata(config.session_id))
    try:
        for response in call:
            if on_response is not None:
                on_response(response)
            kind = response.WhichOneof("message")
            if kind == "started":
                started = response.started
                if log.started is None:
                    log.started = started
                checkpoint.advance(started.resume_token, int(started.next_sequence_number) - 1)
                first_number.put(int(started.next_sequence_number))
            elif kind == "result":
                r = response.result
                checkpoint.advance(r.resume_token, int(r.sequence_number))
                if r.flush:
                    log.flush = r
                elif not r.duplicate:
                    log.results.setdefault(int(r.sequence_number), r)
            elif kind == "draining":
                d = response.draining
                checkpoint.advance(d.resume_token, int(d.last_sequence_number))
                return False
            elif kind == "final":
                log.final = response.final
        return log.final is not None
    except grpc.RpcError as exc:
        raise StatusError.from_rpc(exc) from None
    finally:
        call.cancel()
        with contextlib.suppress(queue.Full):
            first_number.put_nowait(None)
