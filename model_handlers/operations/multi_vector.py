"""Operation `multi-vector`: one vector per token of each input (ColBERT late interaction).

Run as embeddings are (operations/embed.py): `dimensions` and normalisation apply to each token vector. The
answer holds as many rows as the inputs keep tokens, which only the model can count (`TokenEmbedder.vector_count`):
a batch body's answer cap is checked against that before any work.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from model_handlers.operations import Beside, OperationSpec, Runner
from model_handlers.operations.embed import Embedder, finish, run
from model_handlers.types import EmbedRequest, EmbedResult, TextInput, counted

MULTI_VECTOR = "multi-vector"


@runtime_checkable
class TokenEmbedder(Embedder, Protocol):
    """What a kind's model has to answer token vectors."""

    def vector_count(self, request: EmbedRequest) -> int:
        """The token vectors the answer to `request` holds."""


def _answer_rows(pipeline: Runner, request: EmbedRequest) -> int:
    return pipeline.model.vector_count(request.with_default_input_type(pipeline.default_input_type))


def _summary(request: EmbedRequest, result: EmbedResult) -> str:
    first = result.vectors[0]
    return (f"embedded {counted(request.inputs)} into {first.shape[0]} token vectors of {first.shape[-1]} "
            "dimensions")


SPEC = OperationSpec(
    name=MULTI_VECTOR,
    noun="multi-vector embedding",
    request_type=EmbedRequest,
    model=TokenEmbedder,
    run=run,
    inputs=lambda request: len(request.inputs),
    input_word="inputs",
    warm_up=lambda: EmbedRequest(inputs=(TextInput("warm up the model"),), operation=MULTI_VECTOR),
    summary=_summary,
    form="one vector per token of each input",
    answer_rows=_answer_rows,
    answer=lambda model, request, output: finish(output, request),
    beside=Beside("return_multivector", rank=1),
)
