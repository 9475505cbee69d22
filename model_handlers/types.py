"""Typed requests and results exchanged between the server and the models.

The server parses every wire dialect into these frozen dataclasses; models never see dicts, headers
or HTTP. Results carry raw float32 arrays: how they go on the wire (base64, bits, keys) is the
server's business.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from model_handlers.errors import InvalidInput


class Operation(str, enum.Enum):
    """What a request asks of a model; each kind declares the ones it answers."""

    EMBED = "embed"  # one vector per input
    MULTI_VECTOR = "multi-vector"  # one vector per token of each input (ColBERT)
    RERANK = "rerank"


# The two forms of an embedding answer. A kind answers at most one of them: that is its embedding operation.
EMBEDDINGS = (Operation.EMBED, Operation.MULTI_VECTOR)


@dataclass(frozen=True)
class TextInput:
    text: str


@dataclass(frozen=True)
class ImageInput:
    """An image given as URL, base64 or data URI; only multimodal models accept it."""

    source: str


EmbedInput = Union[TextInput, ImageInput]


def texts_of(inputs: Sequence[EmbedInput], model_name: str, what: str = "input") -> list[str]:
    """The texts of `inputs`, for a model that reads text only.

    Raises:
        InvalidInput: an input is an image, naming it (`what` 0, 1, ... or "the query").
    """
    texts = []
    for index, item in enumerate(inputs):
        if not isinstance(item, TextInput):
            where = what if what == "the query" else f"{what} {index}"
            raise InvalidInput(f"{where} is an image; model {model_name} takes text only",
                               code="UNSUPPORTED_INPUT")
        texts.append(item.text)
    return texts

# What `input_type` selects when no `task` is given: the retrieval task of that side.
INPUT_TYPE_TASKS = {"query": "retrieval.query", "document": "retrieval.passage"}


@dataclass(frozen=True)
class EmbedRequest:
    inputs: tuple[EmbedInput, ...]
    task: str | None = None
    dimensions: int | None = None
    normalized: bool = True
    late_chunking: bool = False
    # Cut over-long inputs to the model's max length; False turns them into an error instead.
    truncate: bool = True
    # "query" or "document" (Cohere's and ColBERT clients' word); without a task, it selects the retrieval task
    input_type: str | None = None
    # Which form the caller asked for: EMBED (/v1/embeddings), MULTI_VECTOR (/v1/multi-vector), or None, the
    # served model's own (the SageMaker envelope and batch transform: a client sends the same body to every model).
    operation: Operation | None = None

    @property
    def effective_task(self) -> str | None:
        return self.task if self.task is not None else INPUT_TYPE_TASKS.get(self.input_type or "")


@dataclass(frozen=True)
class EmbedResult:
    """One float32 vector per input, in input order, already cut to `dimensions` and normalised as asked.

    A multi-vector model answers a matrix per input instead: one row per kept token.
    """

    vectors: list[np.ndarray]
    token_counts: list[int]
    model: str

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)


@dataclass(frozen=True)
class RerankRequest:
    """A query and documents, each a text or (for multimodal models) an image."""

    query: EmbedInput
    documents: tuple[EmbedInput, ...]
    top_n: int | None = None
    return_documents: bool = True

    @property
    def operation(self) -> Operation:
        return Operation.RERANK


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

    @property
    def total_tokens(self) -> int:
        return self.query_tokens + self.document_tokens
