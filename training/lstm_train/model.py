"""The recurrent network that every recipe trains and exports.

Its ``forward(x, *states)`` returns ``(y, *new_states)`` with the states explicit, so
the ONNX graph takes and returns them as tensors and the server can keep them per
session. Normalization and the output activation live inside the module, so the
exported graph is the whole model and parity checks cover them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn


@dataclass(frozen=True)
class NetConfig:
    """Architecture of a :class:`RecurrentNet`."""

    input_dim: int
    output_dim: int
    hidden: int = 64
    layers: int = 1
    cell: Literal["lstm", "gru"] = "lstm"
    bidirectional: bool = False
    head: Literal["per_frame", "sequence"] = "per_frame"
    #: sequence head of a bidirectional net: ``mean`` over time, ``last`` (the final
    #: output of each direction: the forward one at the last frame, the backward one at
    #: the first), or ``attention`` (a learned weighted sum over time:
    #: ``softmax_t(v . tanh(W o_t))``)
    pooling: Literal["mean", "last", "attention"] = "mean"
    activation: Literal["softmax", "none"] = "softmax"
    dropout: float = 0.0
    #: forecaster: ``y[t]`` holds the next ``forecast_steps`` input frames, step-major
    #: (``[k, input_dim]`` flattened), as ``x[t]`` plus a learned increment in input
    #: units; needs a per-frame head, ``activation="none"`` and
    #: ``output_dim == forecast_steps * input_dim``
    forecast_steps: int = 0
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready copy."""
        return asdict(self)

    @property
    def state_names(self) -> list[str]:
        """``["h", "c"]`` for an LSTM, ``["h"]`` for a GRU."""
        return ["h", "c"] if self.cell == "lstm" else ["h"]

    @property
    def state_layers(self) -> int:
        """The states' first axis: layers times directions."""
        return self.layers * (2 if self.bidirectional else 1)


class RecurrentNet(nn.Module):
    """Normalize, run an LSTM or GRU, project, and apply the output activation.

    - per-frame head: ``y`` is ``[batch, time, output_dim]``;
    - sequence head: ``y`` is ``[batch, output_dim]``: the last frame for a
      unidirectional net, the time-mean of the outputs for a bidirectional one,
      with ``pooling="last"`` each direction's final output, or with
      ``pooling="attention"`` an attention-weighted sum over time.
    """

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        mean = torch.tensor(config.mean or [0.0] * config.input_dim, dtype=torch.float32)
        std = torch.tensor(config.std or [1.0] * config.input_dim, dtype=torch.float32)
        self.register_buffer("mean", mean)
        self.register_buffer("inv_std", 1.0 / std.clamp_min(1e-6))
        rnn_cls = nn.LSTM if config.cell == "lstm" else nn.GRU
        self.rnn = rnn_cls(
            config.input_dim,
            config.hidden,
            num_layers=config.layers,
            batch_first=True,
            bidirectional=config.bidirectional,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        if config.forecast_steps and (
            config.head != "per_frame"
            or config.activation != "none"
            or config.output_dim != config.forecast_steps * config.input_dim
        ):
            raise ValueError("forecast_steps needs a per_frame head, activation 'none' and "
                             "output_dim == forecast_steps * input_dim")
        width = config.hidden * (2 if config.bidirectional else 1)
        self.proj = nn.Linear(width, config.output_dim)
        if config.pooling != "mean" and config.head != "sequence":
            raise ValueError(f"{config.pooling} pooling needs a sequence head")
        if config.pooling == "attention":
            self.attn = nn.Sequential(nn.Linear(width, width // 2), nn.Tanh(),
                                      nn.Linear(width // 2, 1, bias=False))

    def zero_states(self, batch: int) -> list[torch.Tensor]:
        """Zero initial states, one per state name."""
        shape = (self.config.state_layers, batch, self.config.hidden)
        return [torch.zeros(shape) for _ in self.config.state_names]

    def logits(self, x: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Pre-activation outputs and new states (what the training loss uses)."""
        raw = x
        x = (x - self.mean) * self.inv_std
        if self.config.cell == "lstm":
            seq, (h, c) = self.rnn(x, (states[0], states[1]))
            new_states: tuple[torch.Tensor, ...] = (h, c)
        else:
            seq, h = self.rnn(x, states[0])
            new_states = (h,)
        if self.config.head == "sequence":
            if self.config.pooling == "attention":
                weights = torch.softmax(self.attn(seq), dim=1)  # [batch, time, 1]
                pooled = (weights * seq).sum(dim=1)
            elif self.config.pooling == "last" and self.config.bidirectional:
                hidden = self.config.hidden
                pooled = torch.cat([seq[:, -1, :hidden], seq[:, 0, hidden:]], dim=-1)
            else:
                pooled = seq.mean(dim=1) if self.config.bidirectional else seq[:, -1, :]
            return (self.proj(pooled), *new_states)
        out = self.proj(seq)
        if self.config.forecast_steps:
            # a residual forecast: the last frame plus an increment in normalized units
            steps = out.unflatten(-1, (self.config.forecast_steps, self.config.input_dim))
            out = (steps / self.inv_std + raw.unsqueeze(-2)).flatten(-2)
        return (out, *new_states)

    def forward(self, x: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Outputs after the activation, then the new states."""
        out, *new_states = self.logits(x, *states)
        if self.config.activation == "softmax":
            out = torch.softmax(out, dim=-1)
        return (out, *new_states)
