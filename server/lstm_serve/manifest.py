"""Model package manifest: schema, loading and validation against the ONNX graph.

A model package is ``<repo>/<name>/<version>/`` holding ``model.onnx`` and
``manifest.json``. The manifest is the contract between training and serving; see
docs/model-package.md for a field-by-field description. :func:`load_manifest` checks
the JSON against the schema below, and :func:`check_against_graph` checks it against
the graph's real inputs and outputs (names, ranks, dtypes, fixed dimensions).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lstm_serve.errors import ManifestError

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Normalization(_Strict):
    """Per-feature statistics the graph applies as ``(x - mean) / std``."""

    mean: list[float]
    std: list[float]
    applied_in: Literal["graph"] = "graph"


class InputSpec(_Strict):
    """The model's input tensor ``[batch, time, feature_dim]``."""

    name: str = "x"
    feature_dim: int = Field(gt=0)
    frame_rate_hz: float = Field(gt=0)
    dtype: Literal["float32"] = "float32"
    normalization: Normalization | None = None


class LogMelFrontend(_Strict):
    """Server-side streaming log-mel features (``lstm_serve.features``)."""

    kind: Literal["audio"] = "audio"
    pipeline: Literal["logmel"] = "logmel"
    sample_rate_hz: int = Field(gt=0)
    window_ms: float = Field(gt=0)
    hop_ms: float = Field(gt=0)
    n_fft: int = Field(gt=0)
    n_mels: int = Field(gt=0)
    log_floor: float = Field(gt=0)
    f_min_hz: float = Field(0.0, ge=0)
    f_max_hz: float | None = None
    preemphasis: float = Field(0.0, ge=0, lt=1)


class FeatureFrontend(_Strict):
    """Clients send feature frames directly."""

    kind: Literal["features"] = "features"


class KeywordPostprocess(_Strict):
    """Turns per-frame posteriors into keyword events."""

    kind: Literal["keyword_events"] = "keyword_events"
    smoothing_frames: int = Field(ge=1)
    threshold: float = Field(gt=0, le=1)
    refractory_s: float = Field(ge=0)
    background_labels: list[str] = Field(default_factory=list)
    min_frames: int = Field(1, ge=1)


class OutputSpec(_Strict):
    """The model's output tensor."""

    name: str = "y"
    head: Literal["per_frame", "sequence"]
    task: Literal["classification", "regression"] = "classification"
    dim: int = Field(gt=0)
    labels: list[str] = Field(default_factory=list)
    activation: Literal["softmax", "none"] = "softmax"
    postprocess: KeywordPostprocess | None = None

    @model_validator(mode="after")
    def _labels_match(self) -> OutputSpec:
        if self.task == "classification" and len(self.labels) != self.dim:
            raise ValueError(f"labels has {len(self.labels)} entries, expected dim={self.dim}")
        return self


class StatePair(_Strict):
    """One recurrent state: graph input ``input`` and output ``output``, both shaped
    ``[layers, batch, hidden]`` (batch axis 1)."""

    name: str
    input: str
    output: str
    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    dtype: Literal["float32"] = "float32"


class Provenance(_Strict):
    """Where the weights came from and how well they do."""

    model_config = ConfigDict(extra="allow", frozen=True)

    dataset: str = ""
    seed: int | None = None
    test_accuracy: float | None = None
    exporter: str = ""
    opset: int | None = None
    parity: dict[str, float] = Field(default_factory=dict)


class Manifest(_Strict):
    """The whole manifest."""

    schema_version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    version: str = Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z_.-]*$")
    description: str = ""
    architecture: str = ""
    input: InputSpec
    frontend: LogMelFrontend | FeatureFrontend = Field(discriminator="kind")
    output: OutputSpec
    states: list[StatePair] = Field(min_length=1)
    causal: bool
    provenance: Provenance = Field(default_factory=Provenance)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [s.name for s in self.states]
        if len(set(names)) != len(names):
            raise ValueError(f"states: duplicate state names {names}")
        if isinstance(self.frontend, LogMelFrontend) and self.frontend.n_mels != self.input.feature_dim:
            raise ValueError(
                f"frontend.n_mels={self.frontend.n_mels} must equal input.feature_dim="
                f"{self.input.feature_dim}"
            )
        norm = self.input.normalization
        if norm is not None and not (
            len(norm.mean) == len(norm.std) == self.input.feature_dim
        ):
            raise ValueError("input.normalization: mean and std need feature_dim entries each")
        if self.output.postprocess is not None and self.output.head != "per_frame":
            raise ValueError("output.postprocess needs a per_frame head")
        return self

    @property
    def input_kind(self) -> Literal["features", "audio"]:
        """``audio`` when the server runs a feature front-end, else ``features``."""
        return "audio" if isinstance(self.frontend, LogMelFrontend) else "features"

    @property
    def streamable(self) -> bool:
        """Causal models stream; bidirectional ones serve whole sequences only."""
        return self.causal


def _field_path(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc) or "(root)"


def load_manifest(package_dir: Path) -> Manifest:
    """Read and validate ``package_dir/manifest.json``.

    Raises :class:`ManifestError` naming the file and the field at fault.
    """
    path = package_dir / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(str(path), "(file)", "missing; a package needs manifest.json")
    try:
        raw: Any = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(str(path), "(file)", f"not valid JSON: {exc}") from exc
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ManifestError(str(path), _field_path(first["loc"]), first["msg"]) from exc
    if manifest.version != package_dir.name:
        raise ManifestError(
            str(path), "version", f"'{manifest.version}' differs from the folder name "
            f"'{package_dir.name}'"
        )
    if manifest.name != package_dir.parent.name:
        raise ManifestError(
            str(path), "name", f"'{manifest.name}' differs from the folder name "
            f"'{package_dir.parent.name}'"
        )
    return manifest


class GraphArg(Protocol):
    """What onnxruntime's ``NodeArg`` offers: a name, a shape and a type string."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> Sequence[int | str | None]: ...

    @property
    def type(self) -> str: ...


def _check_arg(
    path: str,
    field: str,
    args: dict[str, GraphArg],
    name: str,
    expected: Sequence[int | None],
) -> None:
    arg = args.get(name)
    if arg is None:
        raise ManifestError(path, field, f"graph has no tensor '{name}'; it has {sorted(args)}")
    if arg.type != "tensor(float)":
        raise ManifestError(path, field, f"'{name}' is {arg.type}, expected tensor(float)")
    shape = list(arg.shape)
    if len(shape) != len(expected):
        raise ManifestError(
            path, field, f"'{name}' has rank {len(shape)} {shape}, expected rank {len(expected)}"
        )
    for axis, (got, want) in enumerate(zip(shape, expected, strict=True)):
        if want is not None and isinstance(got, int) and got != want:
            raise ManifestError(
                path, field, f"'{name}' axis {axis} is {got}, the manifest says {want}"
            )


def check_against_graph(
    manifest: Manifest,
    package_dir: Path,
    inputs: Sequence[GraphArg],
    outputs: Sequence[GraphArg],
) -> None:
    """Check the manifest against the graph's real inputs and outputs.

    Every manifest tensor must exist with the right rank, dtype and fixed dimensions,
    and the graph must have no input the manifest does not describe (an undescribed
    state would silently start from garbage).
    """
    path = str(package_dir / MANIFEST_FILE)
    ins = {a.name: a for a in inputs}
    outs = {a.name: a for a in outputs}
    _check_arg(path, "input.name", ins, manifest.input.name, [None, None, manifest.input.feature_dim])
    if manifest.output.head == "per_frame":
        _check_arg(path, "output.name", outs, manifest.output.name, [None, None, manifest.output.dim])
    else:
        _check_arg(path, "output.name", outs, manifest.output.name, [None, manifest.output.dim])
    for i, state in enumerate(manifest.states):
        expected = [state.layers, None, state.hidden]
        _check_arg(path, f"states.{i}.input", ins, state.input, expected)
        _check_arg(path, f"states.{i}.output", outs, state.output, expected)
    described = {manifest.input.name, *(s.input for s in manifest.states)}
    extra = sorted(set(ins) - described)
    if extra:
        raise ManifestError(path, "states", f"graph inputs {extra} are not described")
