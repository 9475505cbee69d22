"""Wire encodings of one embedding (contract §2c)."""

from __future__ import annotations

import base64
from typing import Any, Iterable

import numpy as np

from model_handlers.types import EmbeddingType


def encode_embedding(vector: np.ndarray, types: Iterable[EmbeddingType]) -> dict[EmbeddingType, Any]:
    """Encode one final (already cut and normalised) float vector in each requested type.

    float: the float32 row itself; base64: its little-endian float32 bytes; ubinary: sign bits
    (value > 0 -> 1) packed MSB-first, one uint8 per 8 dimensions; binary: those bytes minus 128.
    """
    vector = np.ascontiguousarray(vector, dtype=np.float32)
    encoded: dict[EmbeddingType, Any] = {}
    for kind in types:
        if kind is EmbeddingType.FLOAT:
            encoded[kind] = vector
        elif kind is EmbeddingType.BASE64:
            encoded[kind] = base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
        elif kind is EmbeddingType.UBINARY:
            encoded[kind] = np.packbits(vector > 0)
        elif kind is EmbeddingType.BINARY:
            encoded[kind] = (np.packbits(vector > 0).astype(np.int16) - 128).astype(np.int8)
        else:  # pragma: no cover - EmbeddingType is closed
            raise AssertionError(f"unknown embedding type {kind}; this is a bug")
    return encoded
