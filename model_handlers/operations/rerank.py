"""Operation `rerank`: documents scored against a query and ranked.

A kind's model turns the request into model inputs and says how their outputs become scores
(`Reranker.prepare_rerank` -> `ranking.RerankWork`: a cross-encoder's pairs, or the query and each window for
cosine or MaxSim); every kind's answer then follows the rules of `ranking`: a document keeps its best window's
score, hits sorted by score with ties in input order, cut to `top_n`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from model_handlers import ranking
from model_handlers.batching import Timing
from model_handlers.deadline import Deadline
from model_handlers.errors import InvalidOption
from model_handlers.operations import OperationSpec, Runner
from model_handlers.types import RerankRequest, RerankResult, TextInput

RERANK = RerankRequest.operation


@runtime_checkable
class Reranker(Protocol):
    """What a kind's model has to answer rerank requests."""

    # how it scores, in a buyer's words (/v1/models says it)
    rerank_scoring: str

    def prepare_rerank(self, request: RerankRequest, max_windows: int) -> ranking.RerankWork: ...


def takes_instruction(model: Any) -> bool:
    """Whether a reranker's scores read a request's `instruction` (its model, or its model class, says so:
    `takes_instruction = True`); the others refuse one."""
    return bool(getattr(model, "takes_instruction", False))


def run(pipeline: Runner, request: RerankRequest, deadline: Deadline, timing: Timing | None) -> RerankResult:
    """Score each document against the query (its best window) and rank them."""
    if request.instruction is not None and not takes_instruction(pipeline.model):
        raise InvalidOption(f"model {pipeline.model_name} takes no `instruction`: its scores come from the query and "
                            "the documents alone; leave `instruction` out")
    if not request.documents:
        return RerankResult(hits=[], query_tokens=0, document_tokens=0, model=pipeline.model_name)
    windows = pipeline.options.max_rerank_windows
    work, outputs = pipeline.execute(lambda: pipeline.model.prepare_rerank(request, windows), deadline, timing)
    scores = ranking.best_per_document(work, outputs, len(request.documents))
    return RerankResult(hits=ranking.rank(scores, work.document_tokens, request.top_n),
                        query_tokens=work.query_tokens, document_tokens=sum(work.document_tokens),
                        model=pipeline.model_name)


def describe(pipeline: Runner) -> dict[str, Any]:
    """How the model reranks: how it scores, whether a request's `instruction` reaches it and what it is told when none
    is sent (None: the model's prompt template's own default, or no instruction at all), the model inputs a request's
    documents may make and the tokens each holds."""
    model = pipeline.model
    instructed = takes_instruction(model)
    return {"scoring": model.rerank_scoring, "takes_instruction": instructed,
            "default_instruction": getattr(model, "default_instruction", None) if instructed else None,
            "max_windows": pipeline.options.max_rerank_windows, "max_tokens_per_model_input": pipeline.max_length}


def _summary(request: RerankRequest, result: RerankResult) -> str:
    scores = ", ".join(f"{hit.relevance_score:.3f}" for hit in result.hits)
    return f"reranked {len(request.documents)} documents (scores {scores})"


SPEC = OperationSpec(
    name=RERANK,
    noun="rerank",
    request_type=RerankRequest,
    model=Reranker,
    run=run,
    inputs=lambda request: len(request.documents),
    input_word="documents",
    warm_up=lambda: RerankRequest(query=TextInput("warm up the model"),
                                  documents=(TextInput("a first document"), TextInput("a second one"))),
    summary=_summary,
    describe=describe,
)
