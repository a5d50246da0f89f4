"""The stateless peer's model: an MLServer custom runtime that serves a streaming LSTM
ONNX the way a stateless server must, with the recurrent state on the wire.

Each ``ModelInfer`` carries one chunk of feature frames and, beside it, every state
input (``h0``, ``c0``, ... as the model package's manifest names them); the reply
carries the per-frame output and every new state (``hN``, ``cN``, ...), which the
client sends back with its next chunk. The server keeps nothing between calls.

It runs in ``.venv-peer`` (MLServer and onnxruntime only: nothing of lstm-serve is
importable there). ``scripts/lstm_bench/peer.py`` writes the model-settings.json that
names it, with these ``parameters``:

- ``uri``: the ``model.onnx`` to load (absolute);
- ``extra``: ``{"input": "x", "output": "y", "states": [["h0", "hN"], ["c0", "cN"]]}``,
  the tensor names from the manifest (input name, output name, state input/output pairs).

onnxruntime runs on the CPU provider with one intra-op and one inter-op thread and
spinning off, as lstm-serve's runtime does by default.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class StatelessLstm(MLModel):
    """One ONNX LSTM; every call is given its state and returns the next one."""

    async def load(self) -> bool:
        parameters = self.settings.parameters
        extra: dict[str, Any] = dict(parameters.extra or {})
        self._input: str = extra["input"]
        self._output: str = extra["output"]
        self._states: list[tuple[str, str]] = [(pair[0], pair[1]) for pair in extra["states"]]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self._session = ort.InferenceSession(await get_model_uri(self.settings), options,
                                             providers=["CPUExecutionProvider"])
        self._fetch = [self._output, *(out for _, out in self._states)]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        given = {tensor.name: tensor for tensor in payload.inputs}
        wanted = [self._input, *(name for name, _ in self._states)]
        missing = [name for name in wanted if name not in given]
        if missing:
            raise InferenceError(f"missing input(s) {missing}: every call carries {wanted}")
        feeds = {name: NumpyCodec.decode_input(given[name]).astype(np.float32, copy=False) for name in wanted}
        results = self._session.run(self._fetch, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name, value) for name, value in zip(self._fetch, results, strict=True)],
        )
