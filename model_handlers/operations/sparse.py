"""Operation `sparse`: one learned-sparse vector per input (SPLADE), what lexical-style indexes store (contract §2i).

A kind's model prepares the request as for embeddings (`Embedder.prepare_embed`) and its forward pass answers one
weight per vocabulary entry for each input; here, for every sparse kind alike, those weights become `SparseVector`s:
the entries above zero (above `min_weight` when asked), the `top_k` largest when asked, sorted by token id, and the
vocabulary strings when `return_tokens` is set (`SparseEmbedder.token_strings`). `dimensions` and normalisation do
not apply: a sparse vector's weights are its scores. Those three options are the operation's own (`SparseOptions`):
an embeddings request carries them for its sparse form, asked (/v1/sparse-embeddings, a sparse model's envelope) or
asked beside a dense vector (`return_sparse`, BGE-M3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from model_handlers.batching import Timing
from model_handlers.deadline import Deadline
from model_handlers.errors import InvalidOption
from model_handlers.operations import Beside, OperationSpec, Runner
from model_handlers.operations.embed import Embedder, run_forms
from model_handlers.types import EmbedRequest, EmbedResult, TextInput, counted

SPARSE = "sparse"


@dataclass(frozen=True)
class SparseVector:
    """The kept entries of one input's weights: token ids ascending, their weights (> 0), and (when asked) the
    vocabulary strings of those ids."""

    indices: np.ndarray  # int64
    values: np.ndarray  # float32
    tokens: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class SparseOptions:
    """What a request asks of its sparse vectors: the `top_k` largest weights, those above `min_weight`, and the
    vocabulary strings of the kept token ids."""

    top_k: int | None = None
    min_weight: float | None = None
    return_tokens: bool = False

    def check(self) -> None:
        if self.top_k is not None and self.top_k < 1:
            raise InvalidOption(f"top_k must be at least 1, got {self.top_k}")


@runtime_checkable
class SparseEmbedder(Embedder, Protocol):
    """What a kind's model has to answer sparse embeddings: its forward pass answers, per input, one weight per
    vocabulary entry."""

    def token_strings(self, indices: Sequence[int]) -> tuple[str, ...]:
        """The vocabulary strings of token ids."""


def sparsify(weights, top_k: int | None = None, min_weight: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The entries worth keeping of one input's weights (a dense vector of one weight per vocabulary entry, or a
    `SparseVector` of the entries a model kept itself): above zero (and `min_weight`), the `top_k` largest (ties: the
    lower token id first, as a stable sort keeps them), as (indices ascending, values)."""
    floor = 0.0 if min_weight is None else max(min_weight, 0.0)
    if isinstance(weights, SparseVector):
        above = weights.values > floor
        keep, values = weights.indices[above], np.asarray(weights.values[above], dtype=np.float32)
    else:
        weights = np.asarray(weights, dtype=np.float32).reshape(-1)
        keep = np.flatnonzero(weights > floor)
        values = weights[keep]
    if top_k is not None and len(keep) > top_k:
        order = np.sort(np.argsort(-values, kind="stable")[:top_k])
        keep, values = keep[order], values[order]
    return keep.astype(np.int64), values


def answer(model: SparseEmbedder, request: EmbedRequest, output) -> SparseVector:
    """One input's weights kept as the request asks, with the vocabulary strings when `return_tokens` is set."""
    options = request.options_of(SparseOptions)
    indices, values = sparsify(output, options.top_k, options.min_weight)
    return SparseVector(indices, values, model.token_strings(indices) if options.return_tokens else None)


def run(pipeline: Runner, request: EmbedRequest, deadline: Deadline, timing: Timing | None) -> EmbedResult:
    """Each input's sparse vector, kept as the request asks."""
    check_options(request)
    return run_forms(pipeline, request, deadline, timing)


def check_options(request: EmbedRequest) -> None:
    request.options_of(SparseOptions).check()
    if request.late_chunking:
        raise InvalidOption("late_chunking does not apply to sparse embeddings; leave it out")
    if request.also:
        raise InvalidOption("return_sparse and return_multivector add outputs to /v1/embeddings answers (BGE-M3); "
                            "leave them out of sparse embedding requests", code="UNSUPPORTED_OPTION")


def _summary(request: EmbedRequest, result: EmbedResult) -> str:
    return f"embedded {counted(request.inputs)} into sparse vectors of {len(result.vectors[0])} entries"


SPEC = OperationSpec(
    name=SPARSE,
    noun="sparse embedding",
    request_type=EmbedRequest,
    model=SparseEmbedder,
    run=run,
    inputs=lambda request: len(request.inputs),
    input_word="inputs",
    warm_up=lambda: EmbedRequest(inputs=(TextInput("warm up the model"),), operation=SPARSE),
    summary=_summary,
    form="one sparse vector (token ids and weights) per input",
    answer=answer,
    options=SparseOptions,
    beside=Beside("return_sparse", rank=0),
)
