"""Execution-provider policy for onnxruntime.

``auto`` takes TensorRT, then CUDA, then CPU, among what onnxruntime reports as
available. An explicit list is honoured in its order, or refused with a clear error
when any entry is not available.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnxruntime as ort

AUTO_PRIORITY: tuple[str, ...] = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)


class ProviderError(ValueError):
    """An explicit provider list names a provider this onnxruntime build lacks."""


def choose_providers(
    requested: Sequence[str], available: Sequence[str] | None = None
) -> list[str]:
    """Resolve the configured provider list to the providers sessions will use.

    ``requested`` is ``["auto"]`` or explicit provider names. ``available`` defaults to
    ``onnxruntime.get_available_providers()``.
    """
    have = list(available if available is not None else ort.get_available_providers())
    wanted = [p.strip() for p in requested if p.strip()]
    if not wanted or wanted == ["auto"]:
        chosen = [p for p in AUTO_PRIORITY if p in have]
        return chosen or ["CPUExecutionProvider"]
    if "auto" in wanted:
        raise ProviderError("providers: 'auto' cannot be combined with explicit providers")
    missing = [p for p in wanted if p not in have]
    if missing:
        raise ProviderError(
            f"providers: {missing} not available in this onnxruntime build; available: {have}. "
            "Install the `gpu` extra (onnxruntime-gpu) for CUDA/TensorRT, or use 'auto'."
        )
    return wanted
