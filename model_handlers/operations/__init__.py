"""The registry of operations: what a request can ask of a model. Each operation is one module that declares `SPEC`.

An operation says once: its name (the word a kind lists in `operations`, /v1/models shows and the wire registry
is keyed by), the typed request it runs, the protocol a kind's model implements to answer it, how the shared
pipeline runs it, how many inputs a request carries (the input limit, usage figures, metering), a small
request that warms a model up, and how the artifact check sums up an answer. A form of embeddings (one vector
per input, one per token, ...) also says what it makes: a kind may make several (BGE-M3 makes three from one
pass), and a body that does not say which form it wants (the SageMaker envelope, batch transform) asks for the
served kind's own, the first it makes in registration order.

An operation also owns its options beyond the shared ones (`options`: sparse's `top_k`, read by that form only) and,
for a form a one-pass model makes beside another (BGE-M3), the option that asks it there (`beside`). A kind answers
the operations whose protocols its model class implements (`answered_by`); the pipeline runs the work an operation
prepares (`Runner.execute`).

The wire side of each operation (routes, bodies, answers, CSV rows, OpenAPI) is registered in
container/dialects/. Importing this costs no torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Protocol, Sequence, TypeVar

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
    "model_handlers.operations.train",
    "model_handlers.operations.classify",
)


class Runner(Protocol):
    """What an operation runs on: the shared pipeline (model_handlers/pipeline.py) of one loaded model."""

    model: Any  # the kind's model: it implements the operation's `OperationSpec.model` protocol
    options: HandlerOptions
    model_name: str
    dimensions: int | None  # the width of the vectors the model makes; None when it makes none
    max_length: int  # the most tokens one model input holds
    default_input_type: str | None  # a whole job's input_type (the operator's, else the model directory's)
    config: Any  # the model directory's ServingConfig (the tasks it declares)

    def execute(self, prepare: "Callable[[], W]", deadline: Deadline, timing: Timing | None,
                expected: "int | Callable[[W], int] | None" = None) -> "tuple[W, list[Any]]":
        """The one run template: admit, `prepare()` the work (on the caller's thread), run its items in forward passes
        shared with other callers (holding the LoRA adapters it names); the work and its outputs, flattened in item
        order, `expected` of them (a function of the work, when the work says how many; None: one per item)."""


class Work(Protocol):
    """What an operation prepares for the pipeline to run: work items, and the LoRA adapters they name (held, loaded
    and never unloaded, until they have run)."""

    items: Sequence[Any]
    adapters: tuple[str, ...]


W = TypeVar("W", bound=Work)


class Options(Protocol):
    """An operation's own option set (`OperationSpec.options`): a frozen dataclass whose defaults ask nothing."""

    def check(self) -> None:
        """Refuse (InvalidOption) values the operation cannot honour, naming the fix."""


@dataclass(frozen=True)
class Beside:
    """How a request asks a form of embeddings beside another form's answer, from the same forward pass (BGE-M3).

    Attributes:
        option: the request's option that asks it ("return_sparse"), as refusals name it.
        rank: its place among the forms asked beside (refusals name them, answers key them, in this order).
    """

    option: str
    rank: int


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
        options: its own option set (an `Options` dataclass), carried by requests it shares with other operations
            (`EmbedRequest.form_options`); None: its request type holds all it reads.
        beside: a form another form's request may ask beside its own, from the same pass; None: it cannot be.
        answered_by: `answered_by(model_class)`: whether a kind whose model is of that class answers it; None: when
            the class implements `model` (every member of the protocol).
        describe: `describe(pipeline)`: what a client should know of how the loaded model answers it (GET /v1/models
            lists it under the operation's name); None: nothing beyond the operation's name.
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
    options: type | None = None
    beside: Beside | None = None
    answered_by: Callable[[type], bool] | None = field(default=None, repr=False)
    describe: Callable[[Runner], dict[str, Any]] | None = field(default=None, repr=False)

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


def beside() -> tuple[OperationSpec, ...]:
    """The forms a request may ask beside its own, in their `Beside.rank` order."""
    return tuple(sorted((spec for spec in registered() if spec.beside is not None), key=lambda spec: spec.beside.rank))


def implements(model_class: type, protocol: type) -> bool:
    """Whether `model_class` has every member of `protocol` (and of the protocols it extends), as
    `isinstance(model, protocol)` checks a loaded model; checked on the class, before any model loads."""
    members = {name for base in protocol.__mro__ if base is not Protocol and _is_protocol(base)
               for name in (*vars(base), *getattr(base, "__annotations__", {}))
               if not name.startswith("_")}
    return all(hasattr(model_class, name) for name in members)


@lru_cache(maxsize=None)
def answered_by(model_class: type) -> frozenset[str]:
    """The operations a kind whose model is of `model_class` answers: each operation's rule (`answered_by`), else
    the protocols the class implements."""
    return frozenset(spec.name for spec in registered()
                     if (spec.answered_by or (lambda cls, spec=spec: implements(cls, spec.model)))(model_class))


def _is_protocol(base: type) -> bool:
    return bool(getattr(base, "_is_protocol", False))
