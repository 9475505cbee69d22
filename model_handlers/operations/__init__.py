"""The registry of operations: what a request can ask of a model. Each operation is one module that declares `SPEC`.

An operation says once: its name (the word a kind lists in `operations`, /v1/models shows and the wire registry
is keyed by), the typed request it runs, the protocol a kind's model implements to answer it, how the shared
pipeline runs it, how many inputs a request carries (the input limit, usage figures, metering), a small
request that warms a model up, and how the artifact check sums up an answer. A form of embeddings (one vector
per input, one per token, ...) also says what it makes: a kind may make several (BGE-M3 makes three from one
pass), and a body that does not say which form it wants (the SageMaker envelope, batch transform) asks for the
served kind's own, the first it makes in registration order.

The wire side of each operation (routes, bodies, answers, CSV rows, OpenAPI) is registered in
container/dialects/; `kinds` lists which operations each kind answers. Importing this costs no torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Protocol, Sequence

from model_handlers.batching import Timing
from model_handlers.deadline import Deadline
from model_handlers.options import HandlerOptions

# Registration order: the order /v1/models, the OpenAPI document and the route list name them in, and the
# order warm-up picks a kind's first operation by.
OPERATION_MODULES = (
    "model_handlers.operations.embed",
    "model_handlers.operations.multi_vector",
    "model_handlers.operations.rerank",
    "model_handlers.operations.sparse",
    "model_handlers.operations.tokenize",
    "model_handlers.operations.segment",
    "model_handlers.operations.classify",
)


class Runner(Protocol):
    """What an operation runs on: the shared pipeline (model_handlers/pipeline.py) of one loaded model."""

    model: Any  # the kind's model: it implements the operation's `OperationSpec.model` protocol
    options: HandlerOptions
    model_name: str
    dimensions: int | None  # the width of the vectors the model makes; None when it makes none
    default_input_type: str | None  # a whole job's input_type (the operator's, else the model directory's)
    config: Any  # the model directory's ServingConfig (the tasks it declares)

    def admit(self, deadline: Deadline) -> None:
        """Refuse at once (Overloaded) when the queued work alone would outlast `deadline`."""

    def run_items(self, items: Sequence[Any], deadline: Deadline, timing: Timing | None = None,
                  adapters: tuple[str, ...] = ()) -> list[list[Any]]:
        """The model's outputs for `items`, run in forward passes shared with other callers, holding the LoRA
        `adapters` they name."""


@dataclass(frozen=True)
class OperationSpec:
    """One operation.

    Attributes:
        name: "embed", "multi-vector", "rerank": the `operation` of its typed requests.
        noun: how a refusal names its requests ("it does not answer {noun} requests").
        request_type: the typed request (model_handlers/types.py, or the operation's own module).
        model: the protocol a kind's model implements to answer it (checked when a model loads).
        run: `run(pipeline, request, deadline, timing) -> result`, on the caller's thread.
        inputs: how many inputs a request carries (texts and images to embed, documents to rank).
        input_word: what they are called in the input limit's refusal ("inputs", "documents").
        warm_up: a small request run once before the server turns ready.
        summary: `summary(request, result)`: the artifact check's line ("embedded 2 texts into 384 dimensions").
        form: a form of embeddings says what it makes ("one vector per input"); None for other operations.
        answer_rows: `answer_rows(pipeline, request)`: the rows (vectors) the answer holds, when not one per input.
        answer: a form of embeddings: `answer(model, request, output)`, one input's model output as this form answers
            it (cut and normalised, or kept as sparse entries); also what a request answers of it beside another form
            from the same pass (`EmbedRequest.also`).
        metered: whether its answers are billed by their inputs and usage; False: they report usage 0 and bill no
            inputs (counting and cutting text runs no model), so a per-inference product bills them AWS's minimum.
    """

    name: str
    noun: str
    request_type: type
    model: type
    run: Callable[[Runner, Any, Deadline, Timing | None], Any] = field(repr=False)
    inputs: Callable[[Any], int] = field(repr=False)
    input_word: str
    warm_up: Callable[[], Any] = field(repr=False)
    summary: Callable[[Any, Any], str] = field(repr=False)
    form: str | None = None
    answer_rows: Callable[[Runner, Any], int] | None = field(default=None, repr=False)
    answer: Callable[[Any, Any, Any], Any] | None = field(default=None, repr=False)
    metered: bool = True

    @property
    def embeddings(self) -> bool:
        """Whether it is a form of embeddings (what an envelope body that names no operation may ask for)."""
        return self.form is not None


@lru_cache(maxsize=1)
def registered() -> tuple[OperationSpec, ...]:
    """Every operation, in registration order."""
    return tuple(importlib.import_module(name).SPEC for name in OPERATION_MODULES)


def names() -> tuple[str, ...]:
    return tuple(spec.name for spec in registered())


def named(name: str) -> OperationSpec:
    """The operation called `name`.

    Raises:
        KeyError: no such operation; the message lists those there are.
    """
    for spec in registered():
        if spec.name == name:
            return spec
    raise KeyError(f"unknown operation {name!r}; the operations are {', '.join(names())}")
