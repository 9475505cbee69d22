"""Typed requests and results exchanged between the server and the models.

The server parses every wire dialect into these frozen dataclasses; models never see dicts, headers
or HTTP. Results carry raw float32 arrays: how they go on the wire (base64, bits, keys) is the
server's business. Every request and result says which operation it is (`operation`, a name of
model_handlers/operations), so that whatever handles it reads that operation's spec instead of its type.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Mapping, Sequence, TypeVar, Union

import numpy as np

from model_handlers.errors import InvalidInput


@dataclass(frozen=True)
class TextInput:
    text: str


@dataclass(frozen=True)
class ImageInput:
    """An image given as URL, base64 or data URI; only multimodal models accept it.

    `key` is the field it came in (`image`, `url` or `bytes`), so a returned rerank document echoes what was sent.
    """

    source: str
    key: str = "image"


@dataclass(frozen=True)
class OtherInput:
    """An input of another modality (`audio`, `video`, `pdf`: newer clients send them).

    Parsed rather than refused by the parser: a model whose class says it reads the modality (`modalities`, see
    `reads`) reads it (a `pdf` as its pages: model_handlers/pdf.py), any other refuses it with 400
    UNSUPPORTED_INPUT naming the input and what the model takes, as for an image sent to a text model. `source` is
    what was sent (a URL, base64 or a data URI; empty when it was not a string), kept so that anything echoing
    inputs can render it.
    """

    kind: str
    source: str = ""


EmbedInput = Union[TextInput, ImageInput, OtherInput]

# How an input is named in a refusal: "input 3 is an image".
_MODALITY_NAMES = {"image": "an image", "audio": "an audio input", "video": "a video", "pdf": "a PDF"}


def modality(item: EmbedInput) -> str:
    """`text`, `image`, or the kind of another input (`audio`, `video`, `pdf`)."""
    if isinstance(item, TextInput):
        return "text"
    if isinstance(item, ImageInput):
        return "image"
    return item.kind


def reads(model: object, kind: str) -> bool:
    """Whether `model` reads inputs of modality `kind` ("image", "pdf"): its class lists them in `modalities`; a
    model that lists none reads text only."""
    return kind in getattr(model, "modalities", ("text",))


def counted(inputs: Sequence[EmbedInput]) -> str:
    """ "2 texts", "1 text and 1 image": the inputs of a request, by modality."""
    counts: dict[str, int] = {}
    for item in inputs:
        counts[modality(item)] = counts.get(modality(item), 0) + 1
    return " and ".join(f"{count} {name}{'s' * (count != 1)}" for name, count in counts.items())


def where(what: str, index: int) -> str:
    """How errors name an input: "input 3", "document 0", or "the query" (`what` is then "the query")."""
    return what if what == "the query" else f"{what} {index}"


def unsupported(item: EmbedInput, at: str, model_name: str, takes: str) -> InvalidInput:
    """The refusal of an input the model cannot read: 400 UNSUPPORTED_INPUT naming it and what the model takes."""
    name = _MODALITY_NAMES.get(modality(item), f"a {modality(item)} input")
    return InvalidInput(f"{at} is {name}; model {model_name} takes {takes}", code="UNSUPPORTED_INPUT")


def texts_of(inputs: Sequence[EmbedInput], model_name: str, what: str = "input") -> list[str]:
    """The texts of `inputs`, for a model that reads text only.

    Raises:
        InvalidInput: an input is not a text (an image, audio...), naming it (`what` 0, 1, ... or "the query").
    """
    texts = []
    for index, item in enumerate(inputs):
        if not isinstance(item, TextInput):
            raise unsupported(item, where(what, index), model_name, "text only")
        texts.append(item.text)
    return texts

# What `input_type` selects when no `task` is given: the retrieval task of that side; and the other way round, for
# models that read the side (a ColBERT encodes queries and documents apart) from clients that say `task`.
INPUT_TYPE_TASKS = {"query": "retrieval.query", "document": "retrieval.passage"}
TASK_INPUT_TYPES = {task: input_type for input_type, task in INPUT_TYPE_TASKS.items()}

O = TypeVar("O")


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
    # Which form of embeddings the caller asked for: "embed" (/v1/embeddings), "multi-vector" (/v1/multi-vector), or
    # None, the served model's own (the SageMaker envelope and batch transform: a client sends the same body to every
    # model); the served kind resolves None (`Kind.resolve`).
    operation: str | None = None
    # The answer has a row per page of a PDF input (the dialect renders each row's `page`); False: a PDF is refused,
    # as the answer holds one row per input (classification, other projects' bodies).
    pages: bool = False
    # A LoRA adapter the endpoint holds, for every input (the body's `adapter`, or SageMaker's adapter header);
    # it takes the place of the adapter the task selects. None: the task's (or none).
    adapter: str | None = None
    # The other forms of embeddings (operation names) asked beside `operation`, from the same forward pass (BGE-M3:
    # one pass, three forms), in their `Beside.rank` order (model_handlers/operations); a model that makes one form
    # refuses them.
    also: tuple[str, ...] = ()
    # The option sets of forms that have their own (`OperationSpec.options`: sparse's `top_k`), each read by its own
    # form only, whether asked or asked beside; other forms ignore them. Left out: that form's defaults.
    form_options: tuple[Any, ...] = ()

    def options_of(self, kind: type[O]) -> O:
        """The option set of type `kind` the request carries, else its defaults."""
        for options in self.form_options:
            if type(options) is kind:
                return options
        return kind()

    # `task` and `input_type` say the same thing in two vocabularies; these three are the one place they are read.

    def with_default_input_type(self, default: str | None) -> "EmbedRequest":
        """This request, with `default` (a whole job's input_type) when it says neither input_type nor task."""
        if self.input_type is not None or self.task is not None or default is None:
            return self
        return replace(self, input_type=default)

    @property
    def effective_task(self) -> str | None:
        """The task whose prompt or adapter applies: the one given, else the retrieval task of `input_type`."""
        return self.task if self.task is not None else INPUT_TYPE_TASKS.get(self.input_type or "")

    @property
    def effective_input_type(self) -> str | None:
        """The side an input is on: the `input_type` given, else that of a retrieval `task`; None when neither says."""
        return self.input_type if self.input_type is not None else TASK_INPUT_TYPES.get(self.task or "")


@dataclass(frozen=True)
class Origin:
    """Where a row of an embeddings answer comes from: its input's index and, for a page of a PDF, the page's number
    (1-based; None for any other input)."""

    index: int
    page: int | None = None


@dataclass(frozen=True)
class EmbedResult:
    """One float32 vector per input, in input order, already cut to `dimensions` and normalised as asked.

    A multi-vector model answers a matrix per input instead: one row per kept token. A PDF input answers a row per
    page, in page order where it stood (`origins`).
    """

    vectors: list[np.ndarray]
    token_counts: list[int]  # each row's
    model: str
    operation: str  # the form of embeddings the vectors are (the request's, resolved)
    # the other forms asked beside it (`EmbedRequest.also`): operation name -> one answer per row, in row order
    also: Mapping[str, list] = field(default_factory=dict)
    # each row's origin; empty: row i is input i's (no input answered several rows)
    origins: tuple[Origin, ...] = ()

    def origin(self, row: int) -> Origin:
        """Where row `row` comes from."""
        return self.origins[row] if self.origins else Origin(row)

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
    # A LoRA adapter for the query's and the documents' embeddings (SageMaker's adapter header), as for EmbedRequest.
    adapter: str | None = None
    # What the judge is told to look for, for rerankers whose prompt takes one (a generative reranker's system
    # message, Qwen3-Reranker's `<Instruct>`); None: the model's own default. Refused by the others.
    instruction: str | None = None

    operation: ClassVar[str] = "rerank"


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

    operation: ClassVar[str] = RerankRequest.operation

    @property
    def total_tokens(self) -> int:
        return self.query_tokens + self.document_tokens
