"""Typed requests and results exchanged between the server and the model handlers.

The server parses every wire dialect into these frozen dataclasses; handlers never see dicts,
headers or HTTP.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Union


class EmbeddingType(str, enum.Enum):
    """How one embedding is encoded on the wire (contract §2c)."""

    FLOAT = "float"
    BASE64 = "base64"
    BINARY = "binary"
    UBINARY = "ubinary"


@dataclass(frozen=True)
class TextInput:
    text: str


@dataclass(frozen=True)
class ImageInput:
    """An image given as URL, base64 or data URI; only multimodal handlers accept it."""

    source: str


EmbedInput = Union[TextInput, ImageInput]


@dataclass(frozen=True)
class EmbedRequest:
    inputs: tuple[EmbedInput, ...]
    task: str | None = None
    dimensions: int | None = None
    normalized: bool = True
    embedding_types: tuple[EmbeddingType, ...] = (EmbeddingType.FLOAT,)
    late_chunking: bool = False
    # Cut over-long inputs to the model's max length; False turns them into an error instead.
    truncate: bool = True
    # ColBERT-style models: "query" or "document"
    input_type: str | None = None


@dataclass(frozen=True)
class EmbedResult:
    """One entry per input, in input order.

    `embeddings[i]` maps each requested type to its encoded value: a float32 numpy row for
    FLOAT, a str for BASE64, a uint8/int8 numpy row for UBINARY/BINARY.
    """

    embeddings: list[dict[EmbeddingType, Any]]
    token_counts: list[int]
    model: str

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)


@dataclass(frozen=True)
class RerankRequest:
    query: str
    documents: tuple[str, ...]
    top_n: int | None = None
    return_documents: bool = True


@dataclass(frozen=True)
class RerankHit:
    index: int
    relevance_score: float
    tokens: int


@dataclass(frozen=True)
class RerankResult:
    """Hits sorted by score (ties in input order), already cut to `top_n`."""

    hits: list[RerankHit]
    query_tokens: int
    document_tokens: int
    model: str
    documents: tuple[str, ...] = field(default=(), repr=False)

    @property
    def total_tokens(self) -> int:
        return self.query_tokens + self.document_tokens
