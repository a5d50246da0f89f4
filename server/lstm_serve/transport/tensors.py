"""Tensor conversion shared by every API's converter: packed little-endian bytes with
an explicit shape, checked before anything iterates or allocates."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lstm_serve.errors import InvalidInput, echo
from lstmserve.v1 import inference_pb2 as pb

FLOAT32 = np.dtype("<f4")


def known_enum(enum: Any, value: int, field: str) -> int:
    """Refuse an enum value the proto does not define (proto3 keeps unknown ints)."""
    if value not in enum.values():
        raise InvalidInput(
            f"{field}: unknown value {value}; expected one of {', '.join(enum.keys())}"
        )
    return value


def to_array(tensor: pb.Tensor, field: str, ranks: tuple[int, ...]) -> np.ndarray:
    """Decode a Tensor into a read-only float32 array, never trusting the client.

    The checks run before anything iterates or allocates, in this order: dtype, rank,
    the sign of each dimension, zero size, then element count against byte length.
    """
    dtype = known_enum(pb.DataType, tensor.dtype, f"{field}.dtype")
    if dtype not in (pb.DATA_TYPE_UNSPECIFIED, pb.DATA_TYPE_FLOAT32):
        raise InvalidInput(f"{field}.dtype: only FLOAT32 is supported")
    rank = len(tensor.shape)
    if rank not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        raise InvalidInput(
            f"{field}.shape: rank {rank} {echo(list(tensor.shape[:8]))}; expected rank {expected}"
        )
    shape = list(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{field}.shape: negative dimension in {echo(shape)}")
    if 0 in shape:
        raise InvalidInput(
            f"{field}.shape: zero-size (empty) tensor {echo(shape)}; every dimension must be at least 1"
        )
    count = math.prod(shape)
    if count * FLOAT32.itemsize != len(tensor.data):
        raise InvalidInput(
            f"{field}: shape {echo(shape)} needs {echo(count * FLOAT32.itemsize)} bytes of float32, got "
            f"{len(tensor.data)} bytes"
        )
    return np.frombuffer(tensor.data, dtype=FLOAT32).reshape(shape)


def to_tensor(array: np.ndarray) -> pb.Tensor:
    """Encode an array as a packed little-endian float32 Tensor."""
    data = np.ascontiguousarray(array, dtype=FLOAT32)
    return pb.Tensor(shape=data.shape, dtype=pb.DATA_TYPE_FLOAT32, data=data.tobytes())
