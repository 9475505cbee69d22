"""The one pipeline every kind runs through: admission, batching, post-processing, ranking.

A kind's model only prepares and runs: it turns a request into work items on the caller's thread
(tokenizing, checking lengths), and runs forward passes over items of many callers on the batcher's
thread, returning raw float32 arrays. Everything else is here, once: the deadline and admission, the
batcher, the `dimensions` check and cut, normalisation, and ranking (with the long-document windows of
`ranking`). What a kind does not offer is refused by the server (container/dispatch.py), not here.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from typing import Hashable, Protocol, Sequence

import numpy as np

from model_handlers.adapters import RowAdapters
from model_handlers.batching import Batcher, Timing
from model_handlers.deadline import Deadline
from model_handlers.errors import InvalidOption
from model_handlers.kinds import Kind
from model_handlers.memory import release_free_memory
from model_handlers.options import HandlerOptions
from model_handlers import ranking
from model_handlers.serving_config import ServingConfig
from model_handlers.types import EmbedRequest, EmbedResult, RerankRequest, RerankResult, TextInput

logger = logging.getLogger(__name__)


class Item(Protocol):
    """A batcher work item: its padded cost in tokens, and what it may share a forward pass with."""

    @property
    def length(self) -> int: ...

    @property
    def group(self) -> Hashable: ...


@dataclass(frozen=True)
class Prepared:
    """An embed request turned into work: the items to run and the tokens each input is billed.

    The model's output for each item is a list of per-input arrays (a packed late-chunking sequence makes
    several); concatenated in item order they are the inputs' vectors in input order.
    """

    items: Sequence[Item]
    token_counts: list[int]
    # the LoRA adapters the items name: held (loaded, and never unloaded) until the request is answered
    adapters: tuple[str, ...] = ()


class Model(Protocol):
    """What a kind's `load` returns.

    A model that answers a matrix of token vectors per input also has `vector_count(request) -> int`: the rows
    the answer to `request` holds (a batch body's response cap is checked against it before any work).
    """

    max_length: int
    width: int | None  # the length of the vectors it makes; None when it makes none (a cross-encoder)
    device: str

    def prepare_embed(self, request: EmbedRequest) -> Prepared: ...

    def prepare_rerank(self, request: RerankRequest, max_windows: int) -> ranking.RerankWork: ...

    def forward(self, items: list) -> list[list[np.ndarray]]: ...

    def calibration_item(self, length: int) -> Item: ...


class Pipeline:
    """What the server calls: one model of one kind, behind one batcher.

    Args:
        kind: the model's kind (what it answers, from the registry).
        model: the loaded model.
        config: the directory's serving config.
        options: the runtime options the server read once.
    """

    def __init__(self, kind: Kind, model: Model, config: ServingConfig, options: HandlerOptions):
        self.kind = kind
        self.config = config
        self.model_name = config.served_model_name
        self.max_length = model.max_length
        self.dimensions = model.width
        self._model = model
        self._options = options
        # The operator's choice for a whole job wins over the model directory's.
        self._default_input_type = options.default_input_type or config.default_input_type
        self._batcher: Batcher = Batcher(
            model.forward,
            max_batch_tokens=options.resolved_max_batch_tokens(model.device),
            max_batch_items=options.max_batch_items,
            name=f"{kind.name}-batcher",
            on_idle=release_free_memory,
            observer=options.observer,
        )

    @property
    def forward_passes(self) -> int:
        return self._batcher.passes

    @property
    def queue_depth(self) -> int:
        """Inputs (work items) queued or running."""
        return self._batcher.pending_items

    def embed(self, request: EmbedRequest, deadline: Deadline | None = None,
              timing: Timing | None = None) -> EmbedResult:
        """Embed each input: one vector (or, multi-vector, one matrix of token vectors) per input, cut to
        `dimensions` and normalised as asked."""
        deadline = deadline or self._options.deadline()
        self._check_dimensions(request.dimensions)
        request = self._with_default_input_type(request)
        self._batcher.admit(deadline)
        prepared = self._model.prepare_embed(request)
        with self._holding(prepared.adapters):
            outputs = self._batcher.run(prepared.items, deadline, timing)
        vectors = [self._finish(vector, request) for output in outputs for vector in output]
        if len(vectors) != len(request.inputs):
            raise AssertionError(f"{len(vectors)} vectors for {len(request.inputs)} inputs; this is a bug")
        return EmbedResult(vectors=vectors, token_counts=prepared.token_counts, model=self.model_name)

    def rerank(self, request: RerankRequest, deadline: Deadline | None = None,
               timing: Timing | None = None) -> RerankResult:
        """Score each document against the query (its best window) and rank them."""
        if not request.documents:
            return RerankResult(hits=[], query_tokens=0, document_tokens=0, model=self.model_name)
        deadline = deadline or self._options.deadline()
        self._batcher.admit(deadline)
        work = self._model.prepare_rerank(request, self._options.max_rerank_windows)
        with self._holding(work.adapters):
            outputs = [output[0] for output in self._batcher.run(work.items, deadline, timing)]
        scores = ranking.best_per_document(work, outputs, len(request.documents))
        return RerankResult(hits=ranking.rank(scores, work.document_tokens, request.top_n),
                            query_tokens=work.query_tokens, document_tokens=sum(work.document_tokens),
                            model=self.model_name)

    @property
    def adapters(self) -> RowAdapters | None:
        """The LoRA adapters the model applies per row (None: a model that holds none, e.g. on ONNX)."""
        return getattr(self._model, "adapters", None)

    def _holding(self, names: tuple[str, ...]):
        if not names:
            return contextlib.nullcontext()
        if self.adapters is None:
            raise InvalidOption(f"model {self.model_name} holds no LoRA adapters (adapters: {', '.join(names)})",
                                code="UNKNOWN_ADAPTER")
        return self.adapters.using(names)

    def vector_count(self, request: EmbedRequest) -> int:
        """How many vectors the answer to `request` holds: one per input, or one per kept token of each input
        for a model of token vectors (which tokenizes the inputs to count them)."""
        count = getattr(self._model, "vector_count", None)
        return len(request.inputs) if count is None else count(self._with_default_input_type(request))

    def admit(self, deadline: Deadline) -> None:
        """Refuse at once (Overloaded) when the queued work alone would outlast `deadline`."""
        self._batcher.admit(deadline)

    def warm_up(self) -> None:
        """One request through the whole pipeline, then full passes at each length to measure what they cost."""
        if self.kind.embedding_operation is not None:
            self.embed(EmbedRequest(inputs=(TextInput("warm up the model"),)))
        else:
            self.rerank(RerankRequest(query=TextInput("warm up the model"),
                                      documents=(TextInput("a first document"), TextInput("a second one"))))
        self._batcher.calibrate(self._model.calibration_item, self.max_length)

    def drain(self, grace_s: float) -> None:
        self._batcher.drain(grace_s)

    def close(self) -> None:
        self._batcher.close()
        close = getattr(self._model, "close", None)
        if close is not None:
            close()

    def _with_default_input_type(self, request: EmbedRequest) -> EmbedRequest:
        """The job's input_type for a request that says neither input_type nor task (a task says which side)."""
        if request.input_type is not None or request.task is not None or self._default_input_type is None:
            return request
        return replace(request, input_type=self._default_input_type)

    def _check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is None:
            return
        if self.dimensions is None:
            return  # the server refuses embeddings from a kind that makes none, naming what to send
        if not 1 <= dimensions <= self.dimensions:
            raise InvalidOption(f"dimensions must be between 1 and {self.dimensions} for model {self.model_name}, "
                                f"got {dimensions}", code="INVALID_DIMENSIONS")

    @staticmethod
    def _finish(vector: np.ndarray, request: EmbedRequest) -> np.ndarray:
        """Matryoshka cut, then L2 normalisation (of each row, for a matrix of token vectors)."""
        vector = np.asarray(vector, dtype=np.float32)
        if request.dimensions is not None:
            vector = vector[..., : request.dimensions]
        if request.normalized:
            norms = np.linalg.norm(vector, axis=-1, keepdims=True)
            vector = vector / np.maximum(norms, 1e-12)
        return np.ascontiguousarray(vector, dtype=np.float32)
