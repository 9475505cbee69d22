"""Wire encodings of embeddings (contract §2c): how a float32 vector (or a matrix of token vectors) goes out.

float: the float32 values (orjson writes numpy arrays directly, no per-float Python work); base64: the
little-endian float32 bytes; ubinary: sign bits (value > 0 -> 1) packed MSB-first, one uint8 per 8
dimensions; binary: those bytes minus 128. A matrix is encoded row by row (one base64 string, one
packed row per token vector). A list of types answers a dict keyed by type.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass
from typing import Any

import numpy as np


class EmbeddingType(str, enum.Enum):
    FLOAT = "float"
    BASE64 = "base64"
    BINARY = "binary"
    UBINARY = "ubinary"


@dataclass(frozen=True)
class Encoding:
    """The encodings a request asked for, and whether it asked with a list (then the answer is keyed by type)."""

    types: tuple[EmbeddingType, ...] = (EmbeddingType.FLOAT,)
    keyed: bool = False

    def render(self, vector: np.ndarray) -> Any:
        """One embedding (a vector, or a matrix of token vectors) as the request asked."""
        if self.keyed:
            return {type_.value: encode(vector, type_) for type_ in self.types}
        return encode(vector, self.types[0])


def encode(vector: np.ndarray, type_: EmbeddingType) -> Any:
    vector = np.ascontiguousarray(vector, dtype=np.float32)
    if type_ is EmbeddingType.FLOAT:
        return vector
    if type_ is EmbeddingType.BASE64:
        if vector.ndim == 1:
            return _base64(vector)
        return [_base64(row) for row in vector]
    packed = np.packbits(vector > 0, axis=-1)
    if type_ is EmbeddingType.UBINARY:
        return packed
    if type_ is EmbeddingType.BINARY:
        return (packed.astype(np.int16) - 128).astype(np.int8)
    raise AssertionError(f"unknown embedding type {type_}; this is a bug")


# Upper bounds of one rendered value: a float32 in JSON (orjson writes 1e-6 <= |x| < 1e-5 in decimals:
# "-0.0000012345678,"), a packed bit byte ("-128,"); and a vector's own brackets and separators ("[...]," or
# "\"...\",") in every encoding.
_FLOAT_BYTES = 17
_PACKED_BYTE_BYTES = 5
_VECTOR_OVERHEAD_BYTES = 4


def vector_bytes(dims: int, encoding: Encoding | None) -> int:
    """An upper bound of one `dims`-wide vector rendered in every type `encoding` asks (float when None)."""
    total = _VECTOR_OVERHEAD_BYTES
    for type_ in (encoding.types if encoding else (EmbeddingType.FLOAT,)):
        if type_ is EmbeddingType.FLOAT:
            total += dims * _FLOAT_BYTES
        elif type_ is EmbeddingType.BASE64:
            total += 4 * ((dims * 4 + 2) // 3) + 2
        else:
            total += ((dims + 7) // 8) * _PACKED_BYTE_BYTES
    return total


def schema(matrix: bool = False) -> dict[str, Any]:
    """An encoded embedding as a JSON Schema: one type's value, or (a list of types asked) an object keyed by type.
    `matrix`: a multi-vector input's token vectors, each encoded on its own."""
    rows = {
        EmbeddingType.FLOAT: {"type": "array", "items": {"type": "number"}},
        EmbeddingType.BASE64: {"type": "string", "contentEncoding": "base64",
                               "description": "little-endian float32 bytes"},
        EmbeddingType.BINARY: {"type": "array", "items": {"type": "integer", "minimum": -128, "maximum": 127},
                               "description": "sign bits packed MSB-first, minus 128"},
        EmbeddingType.UBINARY: {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255},
                                "description": "sign bits packed MSB-first"},
    }
    if matrix:
        rows = {type_: {"type": "array", "items": row} for type_, row in rows.items()}
    keyed = {"type": "object", "minProperties": 1, "additionalProperties": False,
             "properties": {type_.value: row for type_, row in rows.items()}}
    return {"anyOf": [*rows.values(), keyed]}


def _base64(row: np.ndarray) -> str:
    return base64.b64encode(row.astype("<f4", copy=False).tobytes()).decode("ascii")
