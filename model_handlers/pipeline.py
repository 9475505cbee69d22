"""The one pipeline every kind runs through: admission, batching, and the operations of the registry.

A kind's model only prepares and runs: it turns a request into work items on the caller's thread
(tokenizing, checking lengths), and runs forward passes over items of many callers on the batcher's
thread, returning raw float32 arrays. The rest is here, once: the deadline and admission, the batcher,
and running each operation as its spec says (model_handlers/operations/: `dimensions` and normalisation
for embeddings, the long-document windows and order of ranking). What a kind does not offer is refused by
the server (container/engine.py), not here.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, Callable, Hashable, Protocol, TypeVar

import numpy as np

from model_handlers import batching, operations
from model_handlers.batching import Batcher, Timing, WorkItem
from model_handlers.deadline import Deadline
from model_handlers.errors import InvalidOption
from model_handlers.memory import release_free_memory
from model_handlers.options import HandlerOptions

if TYPE_CHECKING:
    from model_handlers.adapters import RowAdapters
    from model_handlers.kinds import Kind
    from model_handlers.operations import OperationSpec, Work
    from model_handlers.serving_config import ServingConfig

logger = logging.getLogger(__name__)
W = TypeVar("W", bound="Work")


class Model(Protocol):
    """What a kind's backend loader returns, whatever it answers; each operation it answers adds its own protocol
    (`OperationSpec.model`: operations/embed.py's `Embedder`, rerank.py's `Reranker`, ...)."""

    max_length: int
    width: int | None  # the length of the vectors it makes; None when it makes none (a cross-encoder)
    device: str
    # Whether two passes may run at once on its forward (Batcher lanes): it keeps nothing of a pass between calls.
    reentrant: bool

    def forward(self, items: list) -> list[list[np.ndarray]]: ...

    def calibration_item(self, length: int) -> WorkItem: ...


class Pipeline:
    """What the server calls: one model of one kind, behind one batcher.

    Args:
        kind: the model's kind (what it answers, from the registry).
        model: the loaded model.
        config: the directory's serving config.
        options: the runtime options the server read once.
        measured_as: what the cost of the model's passes depends on, for calibrating once per process
            (Batcher.calibrate); None: calibrate at every warm-up.
    """

    def __init__(self, kind: "Kind", model: Model, config: "ServingConfig", options: HandlerOptions,
                 measured_as: Hashable = None):
        self.kind = kind
        self.config = config
        self.model = model
        self.options = options
        self._measured_as = measured_as
        self.model_name = config.served_model_name
        self.max_length = model.max_length
        self.dimensions = model.width
        # The operator's choice for a whole job wins over the model directory's.
        self.default_input_type = options.default_input_type or config.default_input_type
        self._batcher: Batcher = Batcher(
            model.forward,
            max_batch_tokens=options.resolved_max_batch_tokens(model.device),
            max_batch_items=options.max_batch_items,
            name=f"{kind.name}-batcher",
            on_idle=release_free_memory,
            observer=options.observer,
            lanes=options.lanes(model.device, model.reentrant),
        )

    @property
    def forward_passes(self) -> int:
        return self._batcher.passes

    @property
    def queue_depth(self) -> int:
        """Inputs (work items) queued or running."""
        return self._batcher.pending_items

    def run(self, request: Any, deadline: Deadline | None = None, timing: Timing | None = None,
            spec: "OperationSpec | None" = None) -> Any:
        """The answer to a typed request, as its operation's spec runs it. `spec`: the request is already resolved and
        checked, and this is its operation's (the server's engine binds each request once, container/engine.py)."""
        if spec is None:
            request = self.kind.resolve(request)
            spec = self._spec(request)
        return spec.run(self, request, deadline or self.options.deadline(), timing)

    def answer_rows(self, request: Any) -> int:
        """The rows (vectors) the answer to `request` holds: one per input, or what the operation counts (a model of
        token vectors tokenizes the inputs to count them)."""
        request = self.kind.resolve(request)
        spec = self._spec(request)
        return spec.inputs(request) if spec.answer_rows is None else spec.answer_rows(self, request)

    def admit(self, deadline: Deadline) -> None:
        """Refuse at once (Overloaded) when the queued work alone would outlast `deadline` (once per request: not
        again for one the server admitted before reading its body)."""
        if not deadline.admitted:
            self._batcher.admit(deadline)

    def execute(self, prepare: Callable[[], W], deadline: Deadline, timing: Timing | None,
                expected: int | Callable[[W], int] | None = None) -> tuple[W, list[np.ndarray]]:
        """The one run template of every operation that runs the model: admission first (a refusal costs no
        tokenizing), then `prepare()` on the caller's thread, then the work's items in forward passes shared with
        other callers. Returns the work and its outputs, flattened in item order (a packed late-chunking item answers
        several): `expected` of them (`expected(work)` when it is a function: a PDF's pages are known once it is
        prepared), or one per item when None.

        Raises:
            AssertionError: the model answered another number of outputs: a bug in a kind, never a caller's error.
        """
        self.admit(deadline)
        with batching.preparing(self._batcher, deadline):
            work = prepare()
        outputs = [value for output in self.run_items(work.items, deadline, timing, work.adapters) for value in output]
        expected = len(work.items) if expected is None else expected(work) if callable(expected) else expected
        if len(outputs) != expected:
            raise AssertionError(f"the model answered {len(outputs)} outputs for {expected}; this is a bug")
        return work, outputs

    def run_items(self, items, deadline: Deadline, timing: Timing | None = None,
                  adapters: tuple[str, ...] = ()) -> list[list[np.ndarray]]:
        """The model's outputs for `items`, run in forward passes shared with other callers; the LoRA `adapters`
        they name are held (loaded, and never unloaded) until then."""
        with self._holding(adapters):
            return self._batcher.run(items, deadline, timing)

    @property
    def adapters(self) -> "RowAdapters | None":
        """The LoRA adapters the model applies per row (None: a model that holds none, e.g. on ONNX)."""
        return getattr(self.model, "adapters", None)

    def _holding(self, names: tuple[str, ...]):
        if not names:
            return contextlib.nullcontext()
        if self.adapters is None:
            raise InvalidOption(f"model {self.model_name} holds no LoRA adapters (adapters: {', '.join(names)})",
                                code="UNKNOWN_ADAPTER")
        return self.adapters.using(names)

    def warm_up(self) -> None:
        """One request through the whole pipeline, then full passes at each length to measure what they cost."""
        first = next(spec for spec in operations.registered() if self.kind.answers(spec.name))
        self.run(first.warm_up())
        self._batcher.calibrate(self.model.calibration_item, self.max_length, self._measured_as)

    def drain(self, grace_s: float) -> tuple[int, int]:
        """Stop taking work; finish the admitted work that fits in `grace_s`: (queued requests kept, refused)."""
        return self._batcher.drain(grace_s)

    def close(self) -> None:
        self._batcher.close()
        close = getattr(self.model, "close", None)
        if close is not None:
            close()
        if self.adapters is not None:  # the archives registered at run time, unpacked into private temp directories
            self.adapters.close()

    def _spec(self, request: Any) -> "OperationSpec":
        if not self.kind.answers(request.operation):
            raise AssertionError(f"kind {self.kind.name} does not answer {request.operation}: the server refuses such "
                                 "requests before they run (container/engine.py); this is a bug")
        return operations.named(request.operation)

