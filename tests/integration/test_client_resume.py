"""Resuming a kept session through the client library and the CLI: chunks are numbered
from the server's ``started``, every row of the resumed stream comes back, and the
frame offset it continued from is reported."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from lstm_client import LstmClient, StatusError
from lstm_client.client import StreamProtocolError
from lstmserve.v1 import inference_pb2 as pb
from lstmserve.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import REPO, ServerHandle, frames

CLIENT = str(Path(sys.executable).parent / "lstm-client")
ATOL = 1e-5
FIRST, SECOND, STEP = 90, 110, 10


def chunked(x: np.ndarray, step: int = STEP) -> list[np.ndarray]:
    """``x`` cut into chunks of ``step`` frames."""
    return [x[i : i + step] for i in range(0, len(x), step)]


def cli_json(server: ServerHandle, *args: str) -> Any:
    """Run ``lstm-client ... --json`` against ``server`` and parse its document."""
    done = subprocess.run(
        [CLIENT, "--target", server.target, *args, "--json"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_library_resume_returns_every_row_of_the_second_stream(bundled_server: ServerHandle) -> None:
    x = frames(21, FIRST + SECOND)
    with bundled_server.client() as client:
        whole = client.stream("har", chunked(x), session_id="resume-lib-reference").outputs
        first = client.stream("har", chunked(x[:FIRST]), session_id="resume-lib", keep_session=True)
        second = client.stream("har", chunked(x[FIRST:]), session_id="resume-lib")
    assert second.outputs.shape == (SECOND, whole.shape[1])
    np.testing.assert_allclose(second.outputs, whole[FIRST:], atol=ATOL)
    assert second.frames == SECOND and not any(r.duplicate for r in second.results)
    assert [r.sequence_number for r in second.results] == list(range(FIRST // STEP, len(x) // STEP))
    assert not first.resumed and first.frame_offset == 0 and first.outputs.shape[0] == FIRST
    assert second.resumed and second.frame_offset == FIRST == second.started.frame_offset


def test_library_first_sequence_number_is_checked_against_started(bundled_server: ServerHandle) -> None:
    x = frames(22, 40)
    with bundled_server.client() as client:
        whole = client.stream("har", chunked(x), session_id="resume-check-reference").outputs
        client.stream("har", chunked(x[:20]), session_id="resume-check", keep_session=True)
        with pytest.raises(StreamProtocolError) as info:
            client.stream("har", chunked(x[20:]), session_id="resume-check", first_sequence_number=0)
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "expects 2 next" in info.value.details
        # Refused before any chunk went out: the session still stands at frame 20.
        rest = client.stream("har", chunked(x[20:]), session_id="resume-check", first_sequence_number=2)
    assert rest.frame_offset == 20
    np.testing.assert_allclose(rest.outputs, whole[20:], atol=ATOL)


def test_cli_resume_prints_every_row_and_the_frame_offset(bundled_server: ServerHandle, tmp_path: Path) -> None:
    x = frames(23, FIRST + SECOND)
    np.save(tmp_path / "a.npy", x[:FIRST])
    np.save(tmp_path / "b.npy", x[FIRST:])
    with bundled_server.client() as client:
        whole = client.stream("har", chunked(x), session_id="resume-cli-reference").outputs
    first = cli_json(bundled_server, "stream", "har", "--input", str(tmp_path / "a.npy"),
                     "--session-id", "resume-cli", "--keep-session")
    second = cli_json(bundled_server, "stream", "har", "--input", str(tmp_path / "b.npy"),
                      "--session-id", "resume-cli")
    assert len(second["outputs"]) == SECOND
    np.testing.assert_allclose(second["outputs"], whole[FIRST:], atol=ATOL)
    assert first["frame_offset"] == 0 and not first["resumed"] and len(first["outputs"]) == FIRST
    assert second["session_id"] == "resume-cli" and second["resumed"]
    assert second["frame_offset"] == FIRST and second["frames"] == SECOND


def test_cli_wav_honours_session_id_and_keep_session(bundled_server: ServerHandle) -> None:
    demo = REPO / "demo"
    first = cli_json(bundled_server, "stream", "kws", "--wav", str(demo / "demo1.wav"),
                     "--session-id", "resume-wav", "--keep-session")
    assert first["session_id"] == "resume-wav" and not first["resumed"] and first["frame_offset"] == 0
    second = cli_json(bundled_server, "stream", "kws", "--wav", str(demo / "demo2.wav"), "--session-id", "resume-wav")
    assert second["session_id"] == "resume-wav" and second["resumed"]
    assert second["frame_offset"] == first["frames"] > 0
    with bundled_server.client() as client, pytest.raises(StatusError) as info:
        client.stream("kws", [], audio=("pcm16", 16000), session_id="resume-wav", must_exist=True)
    assert info.value.code == grpc.StatusCode.NOT_FOUND  # the second call, without --keep-session, ended it


class DuplicatingInference(pb_grpc.InferenceServicer):
    """A stand-in server that answers every chunk as a duplicate: the real one only does
    that for a wrongly numbered chunk, which the client no longer sends."""

    def StreamPredict(
        self, request_iterator: Iterator[pb.StreamRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.StreamResponse]:
        for request in request_iterator:
            kind = request.WhichOneof("message")
            if kind == "config":
                started = pb.Started(session_id="dup", model=pb.ModelRef(name="har", version="1"), frame_rate_hz=10)
                yield pb.StreamResponse(started=started)
            elif kind == "chunk":
                number = request.chunk.sequence_number
                yield pb.StreamResponse(result=pb.Result(sequence_number=number, duplicate=True))
            else:
                yield pb.StreamResponse(final=pb.Final(session_id="dup"))


def test_duplicate_result_raises_instead_of_dropping_rows() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_InferenceServicer_to_server(DuplicatingInference(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with LstmClient(f"127.0.0.1:{port}", timeout=10) as client, pytest.raises(StreamProtocolError) as info:
            client.stream("har", chunked(frames(24, 20)), timeout=10)
        assert info.value.code == grpc.StatusCode.ABORTED and "duplicate" in info.value.details
    finally:
        server.stop(grace=None)
