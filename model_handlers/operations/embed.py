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

from model_handlers import operations
from model_handlers.batching import Timing, WorkItem
from model_handlers.deadline import Deadline
from model_handlers.errors import InvalidOption
from model_handlers.operations import OperationSpec, Runner
from model_handlers.types import EmbedRequest, EmbedResult, Origin, TextInput, counted, modality, reads

EMBED = "embed"


@dataclass(frozen=True)
class Prepared:
    """An embed request turned into work: the items to run and the tokens each input is billed.

    The model's output for each item is a list of per-input arrays (a packed late-chunking sequence makes
    several); concatenated in item order they are the inputs' vectors in input order.
    """

    items: Sequence[WorkItem]
    token_counts: list[int]  # each row's: an input's, or each page's of a PDF input
    # the LoRA adapters the items name: held (loaded, and never unloaded) until the request is answered
    adapters: tuple[str, ...] = ()
    # each output row's origin, when an input makes several (a PDF: a row per page); empty: one row per input
    origins: tuple[Origin, ...] = ()

    def rows(self, inputs: int) -> int:
        """The output rows the model answers for a request of `inputs` inputs."""
        return len(self.origins) if self.origins else inputs


@runtime_checkable
class Embedder(Protocol):
    """What a kind's model has to answer embeddings."""

    def prepare_embed(self, request: EmbedRequest) -> Prepared: ...


@runtime_checkable
class OnePassForms(Protocol):
    """A model whose one forward pass makes several forms of embeddings (BGE-M3: dense, sparse, token vectors).

    When a request asks for others beside its own (`EmbedRequest.also`), `prepare_embed` makes items that answer
    all of them, and each input's output is then a mapping of operation name to that form's output.
    """

    def forms_of_one_pass(self) -> frozenset[str]:
        """The forms (operation names) one pass makes."""


def run(pipeline: Runner, request: EmbedRequest, deadline: Deadline, timing: Timing | None) -> EmbedResult:
    """Each input's vector (or, multi-vector, matrix of token vectors), cut to `dimensions` and normalised as asked;
    and what the request asks beside it from the same pass (`also`)."""
    check_dimensions(request.dimensions, pipeline.dimensions, pipeline.model_name)
    check_also(request, pipeline.model, pipeline.model_name)
    return run_forms(pipeline, request, deadline, timing)


def run_forms(pipeline: Runner, request: EmbedRequest, deadline: Deadline, timing: Timing | None) -> EmbedResult:
    """Any form of embeddings, checked: each input's output as its form answers it (`OperationSpec.answer`), and as
    each form asked beside it answers its part of the same pass."""
    request = request.with_default_input_type(pipeline.default_input_type)
    prepared, outputs = pipeline.execute(lambda: pipeline.model.prepare_embed(request), deadline, timing,
                                         lambda prepared: prepared.rows(len(request.inputs)))
    answers = {name: [operations.named(name).answer(pipeline.model, request, output[name] if request.also else output)
                      for output in outputs]
               for name in (request.operation, *request.also)}
    return EmbedResult(vectors=answers.pop(request.operation), token_counts=prepared.token_counts,
                       model=pipeline.model_name, operation=request.operation, also=answers,
                       origins=tuple(prepared.origins))


def check_also(request: EmbedRequest, model: object, model_name: str) -> None:
    """Other forms beside the asked one come only from a model whose one pass makes them all (BGE-M3); each is
    checked as its own requests are (its option set's `check`: sparse's `top_k`)."""
    if not request.also:
        return
    options = " and ".join(operations.named(name).beside.option for name in request.also)
    makes = model.forms_of_one_pass() if isinstance(model, OnePassForms) else frozenset()
    if request.operation not in makes or not set(request.also) <= makes:
        raise InvalidOption(f"{options} needs a model whose one forward pass also makes those outputs (BGE-M3); model "
                            f"{model_name} does not: leave {options} out, and ask /v1/sparse-embeddings or "
                            "/v1/multi-vector of a model that makes them", code="UNSUPPORTED_OPTION")
    for name in request.also:
        own = operations.named(name).options
        if own is not None:
            request.options_of(own).check()


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


def makes_single_vectors(model_class: type) -> bool:
    """Single vectors are what an embedder makes unless another form of embeddings describes its model (token vectors,
    sparse weights: their protocols extend `Embedder`); a model whose one pass makes several forms makes them too."""
    if not operations.implements(model_class, Embedder):
        return False
    return operations.implements(model_class, OnePassForms) or not any(
        spec.embeddings and spec.name != EMBED and operations.implements(model_class, spec.model)
        for spec in operations.registered())


def answer_rows(pipeline: Runner, request: EmbedRequest) -> int:
    """At most the rows of the answer: one per input, or, where the model reads PDFs, as many as a PDF may have pages
    (an upper bound, known before any PDF is opened: the answer's size is bounded before the model runs)."""
    if not request.pages or not reads(pipeline.model, "pdf"):
        return len(request.inputs)
    pdfs = sum(modality(item) == "pdf" for item in request.inputs)
    return len(request.inputs) + pdfs * (pipeline.options.images.pdf_max_pages - 1)


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
    answer=lambda model, request, output: finish(output, request),
    answered_by=makes_single_vectors,
    answer_rows=answer_rows,
)
