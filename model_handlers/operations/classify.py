"""Operation `classify`: zero-shot classification on the served embedding model (Jina's Classifier, contract §2g).

Inputs and labels are embedded by the model (its `classification` task where it has one; a CLIP model embeds images
and texts in one space, labels as texts), L2-normalised, and each input's scores are a softmax over its cosines with
the labels, times a scale (the inverse of a temperature): a CLIP-family model's own `logit_scale` (exp'd, as its
`logits_per_image`), else DEFAULT_SCALE, 20: the scale sentence-transformers' MultipleNegativesRankingLoss trains
embedding models with (all-MiniLM-L6-v2 among them), so the scores are the model's own training-time probabilities.

Label embeddings are kept per model in a least-recently-used cache bounded in bytes (`LabelCache`), so a stream of
requests with the same labels embeds only its inputs. Usage counts input tokens plus label tokens, cached or not
(Jina's rule).

`classifier_id` names a few-shot classifier trained into the artifact (model_handlers/classifiers.py): the inputs are
embedded with the task its examples were, normalised, and scored by its linear layer; usage counts the inputs' tokens.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar, Hashable, Protocol, runtime_checkable

import numpy as np

from model_handlers import classifier_store
from model_handlers.batching import Timing
from model_handlers.classifiers import TrainedClassifier
from model_handlers.deadline import Deadline
from model_handlers.errors import InvalidOption, ModelDirectoryError
from model_handlers.operations import OperationSpec, Runner
from model_handlers.operations.embed import EMBED, Embedder, Prepared, finish
from model_handlers.per_model import PerModel
from model_handlers.types import EmbedInput, EmbedRequest, TextInput, counted

CLASSIFY = "classify"
# The task whose prompt or adapter embeds for classification, on models that declare it (jina-embeddings-v3).
CLASSIFICATION_TASK = "classification"
# Softmax scale of cosines for models that do not carry their own (CLIP's logit_scale): sentence-transformers'
# MultipleNegativesRankingLoss default (scale=20.0, a temperature of 0.05).
DEFAULT_SCALE = 20.0
# Labels one request may name: each is a row of every input's scores.
MAX_LABELS = 256
# Bytes of label embeddings one model keeps (float32 vectors): about 43,000 labels of a 384-dimension model.
LABEL_CACHE_BYTES = 64 * 1024 * 1024


@runtime_checkable
class ZeroShotClassifier(Embedder, Protocol):
    """What a kind's model has to answer zero-shot classification: embeddings, and the scale its cosines are
    softmaxed with."""

    def classification_scale(self) -> float | None:
        """The model's own logit scale (CLIP's exp(logit_scale)); None: DEFAULT_SCALE."""


@dataclass(frozen=True)
class ClassifyRequest:
    inputs: tuple[EmbedInput, ...]
    labels: tuple[str, ...] = ()
    classifier_id: str | None = None
    # A LoRA adapter the endpoint holds, for inputs and labels alike: SageMaker's adapter header only (a classify
    # body has no `adapter` option, as Jina's classify API has none).
    adapter: str | None = None

    operation: ClassVar[str] = CLASSIFY


@dataclass(frozen=True)
class Classification:
    """One input's labels and their scores (summing to 1), best first; ties in the order the labels were given."""

    labels: tuple[str, ...]
    scores: tuple[float, ...]


@dataclass(frozen=True)
class ClassifyResult:
    classifications: list[Classification]
    token_counts: list[int]  # each input's tokens
    label_tokens: int  # the labels' tokens, counted once per request
    model: str

    operation: ClassVar[str] = CLASSIFY

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts) + self.label_tokens


class LabelCache:
    """Label embeddings of one model (normalised vectors and their token counts), least recently used first out,
    at most `capacity_bytes` of vectors. Safe across request threads."""

    def __init__(self, capacity_bytes: int = LABEL_CACHE_BYTES):
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[Hashable, tuple[np.ndarray, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> tuple[np.ndarray, int] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: Hashable, vector: np.ndarray, tokens: int) -> None:
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = (vector, tokens)
            self._bytes += vector.nbytes
            while self._bytes > self.capacity_bytes and self._entries:
                _, (evicted, _) = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes


# One cache per loaded model, gone with it.
label_cache = PerModel(LabelCache)


def trained(request: ClassifyRequest, config: Any, options: Any = None, model_name: str = "",
            model: Any = None) -> TrainedClassifier:
    """The trained classifier a request names: one trained into the artifact, or one trained on the endpoint
    (model_handlers/classifier_store.py, read at most `classifier_refresh_s` seconds stale); a stored one wins over
    the artifact's of the same name only where the operator let training overwrite those.

    Raises:
        InvalidOption: it names labels too, or a classifier neither holds (naming those the artifact holds).
    """
    if request.labels:
        raise InvalidOption("send either `labels` (zero-shot) or `classifier_id` (a classifier trained into the "
                            "artifact), not both", code="INVALID_OPTION")
    found = config.classifiers.get(request.classifier_id)
    if options is not None and (found is None or options.overwrite_artifact_classifiers) \
            and classifier_store.valid_id(request.classifier_id):
        store = classifier_store.opened(options.classifier_store)
        stored = classifier_store.readers(model).read(store, model_name, request.classifier_id,
                                                      options.classifier_refresh_s)
        if stored is not None:
            return stored.classifier()
    if found is None:
        held = ", ".join(sorted(config.classifiers))
        raise InvalidOption(f"model {config.served_model_name} holds no classifier {request.classifier_id!r}; "
                            + (f"its classifiers are {held} (GET /v1/models lists their labels)" if held else
                               "it holds none (build them in with build_artifact.py --classifier)")
                            + ", or send `labels` for zero-shot classification", code="UNKNOWN_CLASSIFIER")
    return found


def check(request: ClassifyRequest, model_name: str) -> None:
    """What a zero-shot request must hold, each refusal naming the fix."""
    if not request.labels:
        raise InvalidOption('send `labels`, the classes to choose from: {"input": [...], "labels": ["billing", '
                            '"sales"]}, or the `classifier_id` of a classifier trained into the artifact',
                            code="NO_LABELS")
    if len(request.labels) < 2:
        raise InvalidOption(f"send at least 2 labels to choose between, got {len(request.labels)}",
                            code="TOO_FEW_LABELS")
    if len(request.labels) > MAX_LABELS:
        raise InvalidOption(f"at most {MAX_LABELS} labels per request, got {len(request.labels)}: split them into "
                            "several requests or merge classes", code="TOO_MANY_LABELS")
    empty = [index for index, label in enumerate(request.labels) if not label.strip()]
    if empty:
        raise InvalidOption(f"label {empty[0]} is empty; every label must say what its class is", code="EMPTY_LABEL")
    if len(set(request.labels)) != len(request.labels):
        twice = next(label for label in request.labels if request.labels.count(label) > 1)
        raise InvalidOption(f"label {twice!r} is given twice; send each label once", code="DUPLICATE_LABEL")


@dataclass(frozen=True)
class _InputsAndLabels:
    """The work of a zero-shot request: its inputs, then the labels not in the cache, in one run."""

    inputs: Prepared
    labels: Prepared | None

    @property
    def items(self) -> list:
        return [*self.inputs.items, *(self.labels.items if self.labels else ())]

    @property
    def adapters(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.inputs.adapters, *(self.labels.adapters if self.labels else ())]))

    @property
    def label_tokens(self) -> list[int]:
        return self.labels.token_counts if self.labels else []


def run(pipeline: Runner, request: ClassifyRequest, deadline: Deadline, timing: Timing | None) -> ClassifyResult:
    """Each input's labels, scored by a softmax of the scaled cosines between its embedding and theirs; or by the
    classifier the request names."""
    if request.classifier_id is not None:
        return run_trained(pipeline, request, trained(request, pipeline.config, pipeline.options, pipeline.model_name,
                                                     pipeline.model),
                           deadline, timing)
    check(request, pipeline.model_name)
    task = CLASSIFICATION_TASK if CLASSIFICATION_TASK in pipeline.config.tasks else None
    if not request.inputs:
        return ClassifyResult([], [], 0, pipeline.model_name)
    model = pipeline.model
    cache = label_cache(model)
    keys = [(label, task, request.adapter) for label in request.labels]
    known = {key: cache.get(key) for key in keys}
    missing = [key for key, entry in known.items() if entry is None]
    embedding = EmbedRequest(inputs=request.inputs, task=task, adapter=request.adapter, operation=EMBED)
    labels = EmbedRequest(inputs=tuple(TextInput(label) for label, _, _ in missing), task=task, adapter=request.adapter,
                          operation=EMBED)

    def prepare() -> _InputsAndLabels:
        return _InputsAndLabels(model.prepare_embed(embedding), model.prepare_embed(labels) if missing else None)

    work, outputs = pipeline.execute(prepare, deadline, timing, len(request.inputs) + len(missing))
    vectors = [finish(vector, embedding) for vector in outputs]
    for key, vector, tokens in zip(missing, vectors[len(request.inputs):], work.label_tokens):
        known[key] = (vector, tokens)
        cache.put(key, vector, tokens)
    label_vectors = np.stack([known[key][0] for key in keys])
    scale = model.classification_scale() or DEFAULT_SCALE
    scores = softmax(scale * (np.stack(vectors[:len(request.inputs)]) @ label_vectors.T))
    return ClassifyResult(classifications=[ranked(request.labels, row) for row in scores],
                          token_counts=work.inputs.token_counts, label_tokens=sum(known[key][1] for key in keys),
                          model=pipeline.model_name)


def run_trained(pipeline: Runner, request: ClassifyRequest, classifier: TrainedClassifier, deadline: Deadline,
                timing: Timing | None) -> ClassifyResult:
    """Each input's labels, as the trained classifier scores its L2-normalised embedding; usage: the inputs' tokens."""
    if not request.inputs:
        return ClassifyResult([], [], 0, pipeline.model_name)
    if classifier.width != pipeline.dimensions:
        raise ModelDirectoryError(f"classifiers/{classifier.name}.json reads {classifier.width} dimensions and model "
                                  f"{pipeline.model_name} makes {pipeline.dimensions}: it was fitted on another "
                                  "model; rebuild the artifact with build_artifact.py --classifier")
    embedding = EmbedRequest(inputs=request.inputs, task=classifier.task, adapter=request.adapter, operation=EMBED)
    prepared, outputs = pipeline.execute(lambda: pipeline.model.prepare_embed(embedding), deadline, timing,
                                         len(request.inputs))
    # normalised as an embeddings answer is, so that the classifier reads the vectors it was fitted on
    vectors = np.stack([finish(vector, embedding) for vector in outputs])
    scores = classifier.probabilities(vectors)
    return ClassifyResult(classifications=[ranked(classifier.labels, row) for row in scores],
                          token_counts=prepared.token_counts, label_tokens=0, model=pipeline.model_name)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, in float64 so that the scores of a row sum to 1 within rounding."""
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def ranked(labels: tuple[str, ...], scores: np.ndarray) -> Classification:
    order = np.argsort(-scores, kind="stable")
    return Classification(tuple(labels[i] for i in order), tuple(float(scores[i]) for i in order))


def _summary(request: ClassifyRequest, result: ClassifyResult) -> str:
    first = result.classifications[0]
    against = f"classifier {request.classifier_id}" if request.classifier_id else f"{len(first.labels)} labels"
    return f"classified {counted(request.inputs)} against {against} (first: {first.labels[0]!r}, {first.scores[0]:.3f})"


SPEC = OperationSpec(
    name=CLASSIFY,
    noun="classify",
    request_type=ClassifyRequest,
    model=ZeroShotClassifier,
    run=run,
    inputs=lambda request: len(request.inputs),
    input_word="inputs",
    warm_up=lambda: ClassifyRequest(inputs=(TextInput("warm up the model"),), labels=("a greeting", "a question")),
    summary=_summary,
)
