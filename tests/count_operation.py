"""A tiny operation, never shipped: what CONTRIBUTING.md's "Adding an operation" recipe writes, in one module that is
both the model side (`SPEC`) and the wire side (`WIRE`), for test_adding_an_operation.py to register and serve.

`count`: each text's characters and the tokens the served model reads it as (its tokenizer: the `Tokenizes` protocol
that tokenize and segment already ask for, so every kind with a tokenizer answers it, and no kind file changes).
POST /v1/count `{"input": ["..."]}` -> `{"model", "data": [{"index", "characters", "tokens"}]}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from container.dialects import ITEM_OVERHEAD_BYTES, Decoded, Listing, Route, WireOperation, fields
from model_handlers.operations import OperationSpec
from model_handlers.operations.tokenize import Tokenizes
from model_handlers.types import EmbedInput, TextInput, texts_of

COUNT = "count"
_SHAPE = '{"input": ["text", ...]}'


# --- the model side: model_handlers/operations/<op>.py ------------------------------------------------------------

@dataclass(frozen=True)
class CountRequest:
    inputs: tuple[EmbedInput, ...]
    adapter: str | None = None  # SageMaker's adapter header may name one; counting uses none

    operation: ClassVar[str] = COUNT


@dataclass(frozen=True)
class CountResult:
    characters: list[int]
    tokens: list[int]
    model: str

    operation: ClassVar[str] = COUNT

    @property
    def total_tokens(self) -> int:
        return 0  # counting runs no model: not billed


def run(pipeline: Any, request: CountRequest, deadline: Any, timing: Any) -> CountResult:
    texts = texts_of(request.inputs, pipeline.model_name)
    tokenizer = pipeline.model.text_tokenizer()
    return CountResult([len(text) for text in texts], [len(ids) for ids in tokenizer.encode(texts)],
                       pipeline.model_name)


SPEC = OperationSpec(
    name=COUNT,
    noun="count",
    request_type=CountRequest,
    model=Tokenizes,
    run=run,
    inputs=lambda request: len(request.inputs),
    input_word="inputs",
    warm_up=lambda: CountRequest(inputs=(TextInput("warm up"),)),
    summary=lambda request, result: f"counted {sum(result.characters)} characters",
    metered=False,
)


# --- the wire side: container/dialects/<op>.py ---------------------------------------------------------------------

def decode(body: Any) -> Decoded:
    return Decoded(CountRequest(inputs=fields.input_list(body, _SHAPE)), render)


def render(result: CountResult) -> dict[str, Any]:
    return {"model": result.model, "data": [{"index": index, "characters": characters, "tokens": tokens}
                                            for index, (characters, tokens)
                                            in enumerate(zip(result.characters, result.tokens))]}


def _schemas() -> dict[str, dict[str, Any]]:
    item = fields.input_schema()
    return {"CountRequest": {"type": "object", "required": ["input"], "properties": {
                "input": {"oneOf": [item, {"type": "array", "items": item}]}}},
            "CountResponse": {"type": "object", "required": ["model", "data"], "properties": {
                "model": {"type": "string"}, "data": {"type": "array", "items": {"type": "object"}}}}}


WIRE = WireOperation(
    name=COUNT,
    hint=f"count: {_SHAPE} to /v1/count",
    routes=(Route("/v1/count", decode, "count", "Each text's characters and tokens", "CountRequest",
                  "CountResponse"),),
    schemas=_schemas,
    invocation_bodies=(),
    invocation_answers=(),
    body_keys=(),
    estimate=lambda request, encoding, pipeline: len(request.inputs) * ITEM_OVERHEAD_BYTES,
    listing=Listing("counts {count} text{s}", "nothing: counting is not billed"),
)
