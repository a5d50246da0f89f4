"""Tensor conversion shared by every API's converter: packed little-endian bytes with
an explicit shape, checked before anything iterates or allocates."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from lstm_serve.errors import InvalidInput, echo
from lstmserve.v1 import inference_pb2 as pb

FLOAT32 = np.dtype("<f4")


@functools.cache
def _defined(enum: Any) -> frozenset[int]:
    return frozenset(enum.values())


def known_enum(enum: Any, value: int, field: str) -> int:
    """Refuse an enum value the proto does not define (proto3 keeps unknown ints)."""
    if value not in _defined(enum):
        raise InvalidInput(
            f"{field}: unknown value {value}; expected one of {', '.join(enum.keys())}"
        )
    return value


def check_shape(
    shape: list[int], field: str, ranks: tuple[int, ...], dtype: np.dtype, nbytes: int, type_name: str = ""
) -> None:
    """Check a client's declared shape before anything iterates or allocates, in
    this order: rank, the sign of each dimension, zero size, then element count
    against the byte length."""
    rank = len(shape)
    if rank not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        raise InvalidInput(f"{field}.shape: rank {rank} {echo(shape[:8])}; expected rank {expected}")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{field}.shape: negative dimension in {echo(shape)}")
    if 0 in shape:
        raise InvalidInput(
            f"{field}.shape: zero-size (empty) tensor {echo(shape)}; every dimension must be at least 1"
        )
    count = math.prod(shape)
    if count * dtype.itemsize != nbytes:
        raise InvalidInput(
            f"{field}: shape {echo(shape)} needs {echo(count * dtype.itemsize)} bytes of "
            f"{type_name or dtype.name}, got {nbytes} bytes"
        )


def to_array(tensor: pb.Tensor, field: str, ranks: tuple[int, ...]) -> np.ndarray:
    """Decode a Tensor into a read-only float32 array, never trusting the client
    (the dtype first, then :func:`check_shape`)."""
    dtype = known_enum(pb.DataType, tensor.dtype, f"{field}.dtype")
    if dtype not in (pb.DATA_TYPE_UNSPECIFIED, pb.DATA_TYPE_FLOAT32):
        raise InvalidInput(f"{field}.dtype: only FLOAT32 is supported")
    shape = list(tensor.shape)
    check_shape(shape, field, ranks, FLOAT32, len(tensor.data))
    return np.frombuffer(tensor.data, dtype=FLOAT32).reshape(shape)


def to_tensor(array: np.ndarray) -> pb.Tensor:
    """Encode an array as a packed little-endian float32 Tensor."""
    data = np.ascontiguousarray(array, dtype=FLOAT32)
    return pb.Tensor(shape=data.shape, dtype=pb.DATA_TYPE_FLOAT32, data=data.tobytes())
