"""Operation `embed`: one vector per input.

A kind's model prepares the request on the caller's thread (`Embedder.prepare_embed`: prompts, tokens, length
checks, late chunking's packing) and runs forward passes over many callers' items on the batcher's thread; then,
for every kind alike, each vector is cut to `dimensions` (Matryoshka) and L2-normalised when `normalized`.
The multi-vector operation runs the same way on matrices of token vectors (operations/multi_vector.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from model_handlers.batching import Timing, WorkItem
from model_handlers.deadline import Deadline
from model_handlers.errors import InvalidOption
from model_handlers.operations import OperationSpec, Runner
from model_handlers.types import EmbedRequest, EmbedResult, TextInput, counted

EMBED = "embed"


@dataclass(frozen=True)
class Prepared:
    """An embed request turned into work: the items to run and the tokens each input is billed.

    The model's output for each item is a list of per-input arrays (a packed late-chunking sequence makes
    several); concatenated in item order they are the inputs' vectors in input order.
    """

    items: Sequence[WorkItem]
    token_counts: list[int]
    # the LoRA adapters the items name: held (loaded, and never unloaded) until the request is answered
    adapters: tuple[str, ...] = ()


@runtime_checkable
class Embedder(Protocol):
    """What a kind's model has to answer embeddings."""

    def prepare_embed(self, request: EmbedRequest) -> Prepared: ...


def run(pipeline: Runner, request: EmbedRequest, deadline: Deadline, timing: Timing | None) -> EmbedResult:
    """Each input's vector (or, multi-vector, matrix of token vectors), cut to `dimensions` and normalised as asked."""
    check_dimensions(request.dimensions, pipeline.dimensions, pipeline.model_name)
    request = request.with_default_input_type(pipeline.default_input_type)
    pipeline.admit(deadline)
    prepared = pipeline.model.prepare_embed(request)
    outputs = pipeline.run_items(prepared.items, deadline, timing, prepared.adapters)
    vectors = [finish(vector, request) for output in outputs for vector in output]
    if len(vectors) != len(request.inputs):
        raise AssertionError(f"{len(vectors)} vectors for {len(request.inputs)} inputs; this is a bug")
    return EmbedResult(vectors=vectors, token_counts=prepared.token_counts, model=pipeline.model_name,
                       operation=request.operation)


def check_dimensions(dimensions: int | None, width: int | None, model_name: str) -> None:
    """`dimensions` must be within the model's width (a kind that makes no vectors is refused before this)."""
    if dimensions is None or width is None:
        return
    if not 1 <= dimensions <= width:
        raise InvalidOption(f"dimensions must be between 1 and {width} for model {model_name}, got {dimensions}",
                            code="INVALID_DIMENSIONS")


def finish(vector: np.ndarray, request: EmbedRequest) -> np.ndarray:
    """Matryoshka cut, then L2 normalisation (of each row, for a matrix of token vectors)."""
    vector = np.asarray(vector, dtype=np.float32)
    if request.dimensions is not None:
        vector = vector[..., : request.dimensions]
    if request.normalized:
        norms = np.linalg.norm(vector, axis=-1, keepdims=True)
        vector = vector / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(vector, dtype=np.float32)


def _summary(request: EmbedRequest, result: EmbedResult) -> str:
    return f"embedded {counted(request.inputs)} into {result.vectors[0].shape[-1]} dimensions"


SPEC = OperationSpec(
    name=EMBED,
    noun="single-vector embedding",
    request_type=EmbedRequest,
    model=Embedder,
    run=run,
    inputs=lambda request: len(request.inputs),
    input_word="inputs",
    # the kind's own form of embeddings: what the SageMaker envelope asks of any model
    warm_up=lambda: EmbedRequest(inputs=(TextInput("warm up the model"),)),
    summary=_summary,
    form="one vector per input",
)
