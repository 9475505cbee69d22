"""The registry of model kinds: each kind is one module that declares a `KIND`; this is the one list of them.

A kind says once what it is: its name, how to recognise a model directory of its own, the class of its models
(the operations it answers follow from the protocols that class implements), its batch-transform CSV row, how to
load a model on each backend it runs on, (optionally) how to read settings of its own from the directory, and (if it
can) how to export it to ONNX. Loading, serving-config detection, batch transform, the catalog, the model package,
the listing and the artifact builder all read this registry instead of branching on kind names. What a buyer sends a
kind and gets (the listing's samples) is wire text, kept with the listing (packaging/_samples.py); the files a kind
reads go through model_handlers/model_files.py and its length through model_handlers/lengths.py.

Importing this module (and the kind modules) costs no torch: `serve` detects kinds in the gunicorn
master. A kind's `load` imports its heavy libraries when it is called.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

from model_handlers import operations
from model_handlers.model_files import read_list, read_object

# Registration order is detection order: the first kind whose `recognizes` says yes serves the directory,
# so a catch-all kind comes last.
KIND_MODULES = (
    "model_handlers.kinds.multi_vector",
    "model_handlers.kinds.cross_encoder",
    "model_handlers.kinds.listwise_reranker",
    "model_handlers.kinds.generative_reranker",
    # before multimodal, whose test for remote-code dual encoders would claim jina-embeddings-v4's config
    "model_handlers.kinds.vl_embedding",
    # before multimodal, likewise (jina-reranker-m0's config holds text_config and vision_config too)
    "model_handlers.kinds.vl_reranker",
    "model_handlers.kinds.multimodal",
    "model_handlers.kinds.sparse",
    "model_handlers.kinds.bge_m3",
    "model_handlers.kinds.text_embedding",
)


@dataclass(frozen=True)
class ModelFiles:
    """What detection may look at in a model directory, read once: no weights are loaded."""

    directory: Path
    config: Mapping[str, Any]  # config.json
    modules: tuple[Mapping[str, Any], ...]  # modules.json (sentence-transformers)
    sentence_transformers: Mapping[str, Any] = field(default_factory=dict)  # config_sentence_transformers.json

    @classmethod
    def read(cls, directory: Path) -> "ModelFiles":
        """The detection files of `directory` (those absent read as empty).

        Raises:
            ModelDirectoryError: one of them is not valid JSON (model_handlers/model_files.py's policy).
        """
        return cls(directory, read_object(directory / "config.json"), tuple(read_list(directory / "modules.json")),
                   read_object(directory / "config_sentence_transformers.json"))

    @property
    def architectures(self) -> tuple[str, ...]:
        return tuple(str(a) for a in self.config.get("architectures") or ())


@dataclass(frozen=True)
class CsvColumn:
    """One batch-transform CSV column after the id: the JSON field it fills, and whether it holds JSON itself."""

    field: str
    json: bool = False
    optional: bool = False  # may be left out at the end of a row or left empty


@dataclass(frozen=True)
class CsvLayout:
    """A CSV row of this kind: the columns after the id, and what a row is.

    `operation` a form of embeddings ("embed", "multi-vector"): each row is one input (columns that are empty are
    left out; exactly one must be filled); rows of a body are sent in requests of up to the input limit. Another
    operation ("rerank"): each row is one request, as its dialect reads it (container/dialects/).
    """

    operation: str
    columns: tuple[CsvColumn, ...]

    @property
    def per_input(self) -> bool:
        """Whether each row is one input of an embedding request (else one request of its own)."""
        return operations.named(self.operation).embeddings

    @property
    def header(self) -> str:
        return ",".join(["id", *(column.field for column in self.columns)])


@dataclass(frozen=True)
class Kind:
    name: str
    summary: str  # what the model does, in a buyer's words: "text embeddings"
    recognizes: Callable[[ModelFiles], bool]
    # the class of the models it loads: it answers the operations whose protocols the class implements (`operations`)
    model: type
    csv: CsvLayout
    # How to load a model on each backend it runs on ("torch", "onnx"): `load(model_dir, config, options)` (a
    # ServingConfig and HandlerOptions) returns a `pipeline.Model` that also implements the protocol of each operation
    # it answers. The backend is chosen once, by model_handlers/loading.py; the model never asks which one it runs on.
    backends: Mapping[str, Callable[[Path, Any, Any], Any]] = field(repr=False)
    # packaging time: writes the model's ONNX graph (model dir, .onnx path); None: the kind serves on torch only
    onnx_export: Callable[[Path, Path], None] | None = field(default=None, repr=False)
    # Settings of this kind's own, from its checkpoint files and `searchbox.json` (the parsed object), read
    # without torch when the serving config is read, so `serve` refuses a bad value before any worker starts.
    # The model finds what it returns in `ServingConfig.kind_settings`. Raises ModelDirectoryError.
    read_settings: Callable[[Path, Mapping[str, Any]], Any] | None = field(default=None, repr=False)
    # Forms of embeddings that a request asking them beside the kind's own single vectors gets instead of those
    # (jina-embeddings-v4's `return_multivector`: Jina's API answers it with the token vectors alone, under
    # `embeddings`); any other kind answers them beside (BGE-M3).
    instead: frozenset[str] = frozenset()
    # the graph files a served ONNX file name stands for (onnx_file -> files in the directory), where the export writes
    # more than one (a dual encoder's two towers); None: the file itself. Packaging quantizes each.
    onnx_graphs: Callable[[str], tuple[str, ...]] | None = field(default=None, repr=False)

    @property
    def operations(self) -> frozenset[str]:
        """The names of model_handlers/operations it answers: derived from its model class, never listed by hand."""
        return operations.answered_by(self.model)

    def answers(self, operation: str | None) -> bool:
        return operation in self.operations

    @property
    def embedding_operation(self) -> str | None:
        """The form of embeddings a body that names none gets (the SageMaker envelope): the kind's own, the first form
        it makes in operations registration order (a BGE-M3 makes three: its own is `embed`); None when it makes none.
        """
        return next((spec.name for spec in operations.registered() if spec.embeddings and self.answers(spec.name)),
                    None)

    def asked(self, operation: str | None) -> str:
        """What a request asks of this kind: its `operation`, or (None: a body that does not say which form of
        embeddings it wants) the kind's own embeddings, else the first form there is (which the kind refuses)."""
        return (operation or self.embedding_operation
                or next(spec.name for spec in operations.registered() if spec.embeddings))

    def resolve(self, request: Any) -> Any:
        """`request` naming what it asks of this kind (`asked`): a typed request's `operation`, filled in; its own
        single vectors replaced by a form asked beside them that this kind answers `instead`."""
        if request.operation is None:
            request = dataclasses.replace(request, operation=self.asked(None))
        # only single-vector requests ask forms beside theirs (`EmbedRequest.also`)
        also = getattr(request, "also", ())
        replacing = [name for name in also if name in self.instead]
        if replacing:
            request = dataclasses.replace(request, operation=replacing[0],
                                          also=tuple(name for name in also if name != replacing[0]))
        return request


@lru_cache(maxsize=1)
def registered() -> tuple[Kind, ...]:
    """Every kind, in detection order.

    Raises:
        KeyError: a kind's CSV rows name an operation the operations registry does not have.
    """
    every = tuple(importlib.import_module(name).KIND for name in KIND_MODULES)
    for kind in every:
        operations.named(kind.csv.operation)
    return every


def names() -> tuple[str, ...]:
    return tuple(kind.name for kind in registered())


def named(name: str) -> Kind:
    """The kind called `name`.

    Raises:
        KeyError: no such kind; the message lists the kinds there are.
    """
    for kind in registered():
        if kind.name == name:
            return kind
    raise KeyError(f"unknown kind {name!r}; choose one of {', '.join(names())}")


def detect(files: ModelFiles) -> Kind:
    """The first registered kind that recognises the directory (the last one is a catch-all)."""
    for kind in registered():
        if kind.recognizes(files):
            return kind
    return registered()[-1]
