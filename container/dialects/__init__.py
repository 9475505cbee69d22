"""Wire dialects: each turns a body into typed requests plus a renderer for their results; and their registry.

Every operation of model_handlers/operations has one dialect module here that declares `WIRE` (a `WireOperation`):
its routes, what to send it (named in refusals), how `/invocations` tells its bodies apart, its CSV rows, the size
of its answers (a batch body's cap is checked before any work), its OpenAPI components and its words in a listing.
The embeddings forms share their bodies: `{"input"}` (public.py) and the SageMaker envelope (sagemaker.py), which
answer in the form the request asked for, or the served kind's own form when it named none.

`Decoded` is one JSON body's request; `Records` what the engine runs for any body (one JSON request, or the
many of a batch-transform CSV or JSON Lines body).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from sagemaker_inference import content_types

from container.encodings import Encoding
from container.errors import BadRequest, ValidationFailed

if TYPE_CHECKING:
    from model_handlers.pipeline import Pipeline

# A typed request of any operation (model_handlers/types.py): it has `operation`, the name of what it asks.
TypedRequest = Any
# A typed result of any operation: it has `operation` and `total_tokens`.
TypedResult = Any
JSON = content_types.JSON
# What one answered input or document adds to an answer besides its vector or text (id, usage, keys): for the
# upper bound of a batch answer's size.
ITEM_OVERHEAD_BYTES = 128

DIALECT_MODULES = (
    "container.dialects.embed",
    "container.dialects.multi_vector",
    "container.dialects.rerank",
    "container.dialects.sparse",
    "container.dialects.tokenize",
    "container.dialects.segment",
    # before classify: a train update has a `classifier_id` too, and is told apart by its examples' labels
    "container.dialects.train",
    "container.dialects.classify",
)


# Other projects' bodies (Elasticsearch, Azure AI Search, TEI, Cohere, ...): one plug-in module per caller, each
# declaring `SHAPES` (container/dialects/integrations.md says where each format is defined).
SHAPE_MODULES = (
    "container.dialects.tei",
    "container.dialects.opensearch",
    "container.dialects.cohere",
    "container.dialects.elastic",
    "container.dialects.azure_search",
)
# SageMaker hands InvokeEndpoint's CustomAttributes to the container in this header; `searchbox-shape=<id>` in it
# names the shape of the body, for callers whose bodies look like another's (Elasticsearch's `{"input"}`).
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
SHAPE_ATTRIBUTE = "searchbox-shape"
# The shape of searchbox's own bodies (the operations' `invocation`s), as ambiguity refusals name it.
SEARCHBOX = "searchbox (SageMaker envelope, embeddings or rerank API)"


@dataclass(frozen=True)
class Decoded:
    """A typed request, how to render its result in the dialect it came in, and (embeddings) in which encodings."""

    request: TypedRequest
    render: Callable[[Any], dict]
    encoding: Encoding | None = None


@dataclass(frozen=True)
class Records:
    """A body decoded into typed requests to run, and how to render their results as one body.

    Attributes:
        requests: the typed requests, each run through the model.
        origins: where each request came from ("line 3", "lines 1-2048"), to prefix its errors; "" for none.
        render: the results (one per request, same order) to the response body.
        concurrent: run the requests side by side (small ones, so the batcher packs them together)
            rather than one after the other (large ones, each filling whole forward passes).
        encodings: per request, when known: what the answer's size depends on.
        answer_types: the media types the answer may be labelled with (the Accept header chooses), the first when the
            client takes any.
    """

    requests: Sequence[TypedRequest]
    origins: Sequence[str]
    render: Callable[[list[TypedResult]], bytes]
    concurrent: bool = True
    encodings: Sequence[Encoding | None] = ()
    answer_types: Sequence[str] = (JSON,)


@dataclass(frozen=True)
class Route:
    """A POST route of an operation's public API."""

    path: str
    decode: Callable[[Any], Decoded] = field(repr=False)
    operation_id: str
    summary: str
    request_schema: str  # OpenAPI component names
    response_schema: str


@dataclass(frozen=True)
class EmbeddingForm:
    """How a form of embeddings is answered in the shared embeddings bodies (public.py, sagemaker.py).

    Attributes:
        key: an answered input's key, and its object name in a list answer ("embedding", "embeddings").
        usage: the usage keys of a list answer.
        schema: one encoded embedding, as a JSON Schema (for every encoding).
        value: one result vector, encoded as the request asked.
        beside: its key in an item of another form that asks it too from the same pass (`return_sparse`,
            `return_multivector`: BGE-M3).
        options: its own options (fields.Option), read into its operation's option set (`OperationSpec.options`)
            from every embeddings body.
        asked_beside: the flag (a fields.Option named as its operation's `Beside.option`) that asks it beside another
            form; None: it cannot be.
    """

    key: str
    usage: tuple[str, ...]
    schema: Callable[[], dict[str, Any]] = field(repr=False)
    value: Callable[[Any, Encoding], Any] = field(default=lambda vector, encoding: encoding.render(vector), repr=False)
    beside: str | None = None
    options: tuple[Any, ...] = ()
    asked_beside: Any = None

    def render_also(self, also: Mapping[str, list], index: int, encoding: Encoding) -> dict[str, Any]:
        """The other forms an item answers beside this one (`EmbedResult.also`), each under its `beside` key."""
        return {named(name).form.beside: named(name).form.value(values[index], encoding)
                for name, values in also.items()}


@dataclass(frozen=True)
class RowRequests:
    """Batch-transform CSV rows that are each one request (not one input of an embeddings request)."""

    decode: Callable[[Mapping[str, Any]], Decoded] = field(repr=False)  # a row's columns as the record's fields
    render: Callable[[Decoded, Any], dict[str, Any]] = field(repr=False)  # a row's answer, after its `id`


@dataclass(frozen=True)
class Listing:
    """How a marketplace listing's worked example words an answered sample (packaging/aws_listing.py)."""

    action: str  # "embeds {count} text{s}": what the sample request does
    usage: str  # where the answer says what it consumed
    # `section(classifiers)`: a section of its own in the listing of a product whose kind answers it, given the
    # few-shot classifiers the artifact ships (as its manifest lists them); None: it has none
    section: Callable[[Sequence[Mapping[str, Any]]], str] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class WireOperation:
    """The wire side of one operation (its model side: model_handlers/operations).

    Attributes:
        name: the operation.
        hint: what to send it, as a refusal of another operation says ('rerank: {"query": ...} to /v1/rerank, ...').
        routes: its own public routes.
        schemas: its OpenAPI components (request and answer bodies, by name).
        invocation_bodies, invocation_answers: the components of those that `/invocations` (and `/score`) take
            and answer.
        body_keys: keys only its whole bodies have (a JSON Lines line with one is a body, not a single record).
        estimate: `estimate(request, encoding, pipeline)`: an upper bound of the answer's bytes, before any work.
        listing: its words in a listing's worked example.
        invocation: `invocation(body)`: the Decoded of an `/invocations` body of this operation, None when the body
            is another's; tried in registration order, the fallback's last.
        invocation_fallback: takes the `/invocations` bodies that no other operation claims.
        form: a form of embeddings: how its answers go in the shared embeddings bodies.
        rows: CSV rows of a kind answering it are whole requests (None: each row is one input of the embeddings
            envelope).
        csv_parameters: `csv_parameters(settings)`: what every CSV row of a batch transform job asks beside its input
            when the operator's settings (container/settings.py) make the job one of this operation's (a classify job's
            labels): the row becomes one input of the envelope with these `parameters`; None when they do not.
    """

    name: str
    hint: str
    routes: tuple[Route, ...]
    schemas: Callable[[], dict[str, dict[str, Any]]] = field(repr=False)
    invocation_bodies: tuple[str, ...]
    invocation_answers: tuple[str, ...]
    body_keys: tuple[str, ...]
    estimate: Callable[[Any, "Encoding | None", "Pipeline"], int] = field(repr=False)
    listing: Listing
    invocation: Callable[[Mapping[str, Any]], Decoded | None] | None = field(default=None, repr=False)
    invocation_fallback: bool = False
    form: EmbeddingForm | None = None
    rows: RowRequests | None = None
    csv_parameters: Callable[[Any], Mapping[str, Any] | None] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Shape:
    """Another project's request body on `/invocations` and `/score`, answered in that project's own shape.

    Attributes:
        id: its short name, as `searchbox-shape=<id>` in SageMaker's CustomAttributes names it.
        name: who sends it ("Elasticsearch amazon_sagemaker, api: elastic"), as refusals name it.
        example: a body of it, as refusals show it.
        claims: `claims(body)`: whether a parsed JSON body has this shape's distinctive keys. The shapes' claims are
            disjoint on the bodies each sends; a body two of them claim is refused as ambiguous (400), never guessed.
        decode: `decode(body)`: its typed request and the renderer of the answer in this shape.
        keys: every top-level key its bodies may have. When it claims a body whose searchbox keys are all among
            them (Elasticsearch's `{"input", "input_type": "search"}`, TEI's `{"query", "texts"}`), searchbox's own
            shapes step aside; a body with a searchbox key it does not know is ambiguous.
    """

    id: str
    name: str
    example: str
    claims: Callable[[Any], bool] = field(repr=False)
    decode: Callable[[Any], Decoded] = field(repr=False)
    keys: frozenset[str] = frozenset()
    accepts: Callable[[Any], bool] | None = field(default=None, repr=False)  # when named: its bodies without
    # the markers that tell them apart (None: those it claims)


@lru_cache(maxsize=1)
def shapes() -> tuple[Shape, ...]:
    """Every other project's shape, in registration order."""
    return tuple(shape for name in SHAPE_MODULES for shape in importlib.import_module(name).SHAPES)


@lru_cache(maxsize=1)
def registered() -> tuple[WireOperation, ...]:
    """Every operation's wire side, in registration order."""
    return tuple(importlib.import_module(name).WIRE for name in DIALECT_MODULES)


def named(name: str) -> WireOperation:
    """The wire side of the operation called `name`.

    Raises:
        KeyError: no dialect declares it.
    """
    for wire in registered():
        if wire.name == name:
            return wire
    raise KeyError(f"no dialect declares operation {name!r}")


def beside_schemas() -> dict[str, dict[str, Any]]:
    """The keys an embeddings item may have beside its own form's (`EmbeddingForm.beside`), as JSON Schemas."""
    return {wire.form.beside: {**wire.form.schema(), "description": f"the input's {wire.name} embedding from the same "
                               "forward pass, when asked (return_sparse, return_multivector: BGE-M3)"}
            for wire in registered() if wire.form is not None and wire.form.beside is not None}


def decode_invocation(body: Any) -> Decoded:
    """`/invocations` and `/score`: any operation's body, in searchbox's shapes or another project's (`shapes()`),
    told apart by their keys (contract §2, §3).

    A body exactly one shape claims is decoded by it; a body several claim is refused naming them (400
    AMBIGUOUS_BODY): an answer in the wrong shape would be read wrongly or not at all by the caller.
    """
    claimants = [shape for shape in shapes() if shape.claims(body)]
    own = _native_keys(body)
    native = bool(own) and not any(own <= shape.keys for shape in claimants)
    if native and not claimants:
        return _decode_native(body)
    if len(claimants) == 1 and not native:
        return claimants[0].decode(body)
    if claimants:
        names = ([SEARCHBOX] if native else []) + [shape.name for shape in claimants]
        raise BadRequest(f"the body has the keys of several request shapes: {'; '.join(names)}. Send the keys of one "
                         "of them only", code="AMBIGUOUS_BODY")
    others = "; ".join(f"{shape.name}: {shape.example}" for shape in shapes())
    raise ValidationFailed(
        "the body must be a JSON object with `data` (SageMaker envelope: {\"data\": [{\"text\": \"...\"}]}), "
        "`input` (embeddings API: {\"input\": [\"...\"]}) "
        "or `query` and `documents` (rerank API: {\"query\": \"...\", \"documents\": [\"...\"]}); or the body of "
        f"another project: {others}"
    )


def chosen(decode: Callable[[Any], Decoded], custom_attributes: str | None) -> Callable[[Any], Decoded]:
    """The route's decoder, or the shape SageMaker's CustomAttributes name (`searchbox-shape=<id>`) for
    `/invocations`: the caller said what its bodies are, so nothing is told apart by keys."""
    named = _attribute(custom_attributes, SHAPE_ATTRIBUTE)
    if named is None or decode is not decode_invocation:
        return decode
    shape = next((shape for shape in shapes() if shape.id == named), None)
    if shape is None:
        ids = ", ".join(shape.id for shape in shapes())
        raise BadRequest(f"{CUSTOM_ATTRIBUTES_HEADER} names {SHAPE_ATTRIBUTE}={named!r}; the shapes are {ids}",
                         code="UNKNOWN_SHAPE")

    def decode_as(body: Any) -> Decoded:
        if not (shape.accepts or shape.claims)(body):
            raise ValidationFailed(f"{CUSTOM_ATTRIBUTES_HEADER} says the body is {shape.name}, which looks like "
                                   f"{shape.example}")
        return shape.decode(body)

    return decode_as


def _attribute(custom_attributes: str | None, name: str) -> str | None:
    """One `name=value` of a CustomAttributes string (pairs separated by `;` or `,`, as SageMaker's docs write)."""
    for pair in (custom_attributes or "").replace(",", ";").split(";"):
        key, _, value = pair.partition("=")
        if key.strip() == name:
            return value.strip()
    return None


def _native_keys(body: Any) -> set[str]:
    """The keys of searchbox's own bodies (the operations' `body_keys`) that a body has."""
    if not isinstance(body, dict):
        return set()
    return {key for wire in registered() for key in wire.body_keys if key in body}


def decode_own(body: Any) -> Decoded:
    """searchbox's own `/invocations` bodies only, never another project's shape: what the Vertex AI dialect's
    instances are read as (container/dialects/vertex.py)."""
    if not _native_keys(body):
        raise ValidationFailed('the body must have `data`, `input`, or `query` and `documents`')
    return _decode_native(body)


def _decode_native(body: Mapping[str, Any]) -> Decoded:
    """Each operation's `invocation` claims its own bodies (a rerank's `query` and `documents`); the embeddings
    bodies, `data` (SageMaker envelope) or `input`, ask for the form the served model makes and are tried last."""
    for wire in sorted(registered(), key=lambda wire: wire.invocation_fallback):
        decoded = wire.invocation(body) if wire.invocation is not None else None
        if decoded is not None:
            return decoded
    raise ValidationFailed('the body must have `data`, `input`, or `query` and `documents`')
