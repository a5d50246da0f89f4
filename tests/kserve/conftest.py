"""The Open Inference Protocol tests drive lstm-serve with tritonclient, kserve and
perf_analyzer from .venv-triton (`make client-venvs`), never from .venv."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tests.harness import REPO, ServerHandle

CLIENT_PYTHON = REPO / ".venv-triton" / "bin" / "python"
DRIVER = REPO / "tests" / "kserve" / "oip_client.py"

Oip = Callable[..., Any]


def encode(array: np.ndarray) -> dict[str, Any]:
    """An array as the driver takes it."""
    array = np.ascontiguousarray(array)
    return {"b64": base64.b64encode(array.tobytes()).decode(), "dtype": array.dtype.str, "shape": list(array.shape)}


def decode(blob: dict[str, Any]) -> np.ndarray:
    """An array as the driver returns it."""
    if "list" in blob:
        return np.array(blob["list"], dtype=object).reshape(blob["shape"])
    return np.frombuffer(base64.b64decode(blob["b64"]), dtype=blob["dtype"]).reshape(blob["shape"])


def run_driver(server: ServerHandle, op: str, **cmd: Any) -> Any:
    """Run one driver command against ``server``; its JSON answer."""
    if not CLIENT_PYTHON.exists():
        pytest.fail(f"{CLIENT_PYTHON} is missing: run `make client-venvs` (make test does)")
    payload = json.dumps({"op": op, "target": f"127.0.0.1:{server.port}", **cmd})
    argv = [str(CLIENT_PYTHON), str(DRIVER), *(["kserve"] if op == "kserve" else [])]
    done = subprocess.run(argv, input=payload, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise AssertionError(f"driver {op} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


@pytest.fixture
def oip() -> Oip:
    """``oip(server, op, **command)``: the driver's answer."""
    return run_driver
