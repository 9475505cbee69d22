"""Operation `train`: few-shot classifiers trained on the endpoint (Jina's `POST /v1/train`, contract §2g; issue 37).

A call without `classifier_id` creates a classifier from its examples (each `{"text"|"image", "label"}`); a call with
one updates it with new examples only, as Jina's classifier learns: online, by passive-aggressive updates. Here that
is scikit-learn's `SGDClassifier(loss="hinge", penalty=None, learning_rate="pa1", eta0=1.0)` (what the deprecated
`PassiveAggressiveClassifier` is), `partial_fit` `num_iters` times on the call's examples, in the order sent
(`shuffle=False`: the same calls always give the same classifier), over the served model's embeddings computed as
classify computes them (the model's `classification` task where it declares one, the request's adapter, L2-normalised).

The label set is fixed by the creating call (2 to `max_classes` labels): `partial_fit` learns over the classes it is
given first, so an update naming a label the classifier does not have is refused by name (UNKNOWN_LABEL), naming the
fix (create a classifier with every label). Jina's page says labels may be added over time; here they may not.

The classifier is kept in the store every instance shares (model_handlers/classifier_store.py). An update reads the
stored version, applies its examples and writes conditionally; if another instance wrote in between it re-reads and
re-applies its examples to the newer version, so no acknowledged update is lost. A creation first claims a place
among the endpoint's `max_classifiers` in the store (`classifier_store.claim`), so the limit holds across instances
creating at once. Usage: the examples' tokens times `num_iters` (Jina's rule); a refused call runs nothing and costs
nothing.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from model_handlers import classifier_store
from model_handlers.batching import Timing
from model_handlers.classifiers import TrainedClassifier
from model_handlers.deadline import Deadline
from model_handlers.errors import InvalidOption, Overloaded
from model_handlers.operations import OperationSpec, Runner
from model_handlers.operations.classify import CLASSIFICATION_TASK, ZeroShotClassifier
from model_handlers.operations.embed import EMBED, finish
from model_handlers.types import EmbedInput, EmbedRequest, TextInput, counted

TRAIN = "train"
# Jina's default: "Default of 10 typically works well" (its Classifier API's training iterations, 1 to 1000).
DEFAULT_ITERS = 10
MAX_ITERS = 1000
# Conditional writes one call tries before it gives up (503, retry): each loss means another instance's update won.
MAX_ATTEMPTS = 64
# Seconds a creation's claim on a place outlives its call's budget before it expires (the instance died): clocks apart.
CLAIM_MARGIN_S = 60.0
ACCESS = ("private", "public")


@dataclass(frozen=True)
class TrainRequest:
    inputs: tuple[EmbedInput, ...]
    labels: tuple[str, ...]  # one per input
    classifier_id: str | None = None
    num_iters: int = DEFAULT_ITERS
    # Jina's visibility; an endpoint has no other users, so it is kept and listed, and changes nothing
    access: str = "private"
    adapter: str | None = None  # SageMaker's adapter header, as classify takes it

    operation: ClassVar[str] = TRAIN


@dataclass(frozen=True)
class TrainResult:
    classifier_id: str
    labels: tuple[str, ...]
    num_samples: int  # this call's examples
    examples: int  # every example the classifier has seen
    version: int  # the version the store accepted this call as (1: created)
    created: bool
    num_iters: int
    token_counts: list[int]
    model: str

    operation: ClassVar[str] = TRAIN

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts) * self.num_iters


def learner(stored: classifier_store.Stored | None) -> Any:
    """scikit-learn's passive-aggressive learner, at `stored`'s state (None: untrained)."""
    from sklearn.linear_model import SGDClassifier

    model = SGDClassifier(loss="hinge", penalty=None, learning_rate="pa1", eta0=1.0, shuffle=False, random_state=0)
    if stored is not None:
        model.coef_ = stored.coef.copy()
        model.intercept_ = stored.intercept.copy()
        model.classes_ = np.asarray(stored.labels)
        model.t_ = stored.t
        model.n_features_in_ = stored.width
    return model


def check(request: TrainRequest, options: Any, model_name: str) -> None:
    """What a call must hold before anything runs, each refusal by name."""
    if not request.inputs:
        raise InvalidOption('send at least one example: {"input": [{"text": "...", "label": "..."}, ...]}',
                            code="NO_EXAMPLES")
    if len(request.inputs) > options.max_train_examples:
        raise InvalidOption(f"at most {options.max_train_examples} examples per call, got {len(request.inputs)}: "
                            "send them in several calls with the classifier_id", code="TOO_MANY_EXAMPLES")
    if not 1 <= request.num_iters <= MAX_ITERS:
        raise InvalidOption(f"num_iters must be between 1 and {MAX_ITERS}, got {request.num_iters}",
                            code="INVALID_NUM_ITERS")
    if request.access not in ACCESS:
        raise InvalidOption(f"access must be one of {', '.join(ACCESS)}, got {request.access!r}", code="INVALID_ACCESS")
    empty = [index for index, label in enumerate(request.labels) if not label.strip()]
    if empty:
        raise InvalidOption(f"input {empty[0]}'s label is empty; every example needs its class", code="EMPTY_LABEL")
    if request.classifier_id is not None and not classifier_store.valid_id(request.classifier_id):
        raise InvalidOption(f"classifier_id {request.classifier_id!r}: letters, digits, '.', '_' or '-' (64 at most)",
                            code="UNKNOWN_CLASSIFIER")


def _labels_fit(request: TrainRequest, labels: tuple[str, ...], classifier_id: str) -> None:
    unknown = sorted(set(request.labels) - set(labels))
    if unknown:
        raise InvalidOption(f"classifier {classifier_id} has the labels {', '.join(labels)}; {unknown[0]!r} is not one "
                            "of them: a classifier's labels are those it was created with (train a new classifier "
                            "with every label)", code="UNKNOWN_LABEL")


def _new_labels(request: TrainRequest, options: Any) -> tuple[str, ...]:
    labels = tuple(sorted(set(request.labels)))
    if len(labels) < 2:
        raise InvalidOption(f"a new classifier needs examples of at least 2 labels, got {len(labels)}: "
                            f"{', '.join(labels)}", code="TOO_FEW_CLASSES")
    if len(labels) > options.max_classes:
        raise InvalidOption(f"at most {options.max_classes} classes per classifier, got {len(labels)}",
                            code="TOO_MANY_CLASSES")
    return labels


def from_artifact(classifier: TrainedClassifier, model_name: str) -> classifier_store.Stored:
    """A classifier of the artifact as the starting state of an update (the operator allowed overwriting it): its rows
    in sorted-label order, as scikit-learn keeps its classes; for two labels the one row scores the second label."""
    order = sorted(range(len(classifier.labels)), key=lambda i: classifier.labels[i])
    coef, intercept = classifier.weights, classifier.bias
    if len(order) == 2:
        sign = 1.0 if order == [0, 1] else -1.0
        coef, intercept = sign * coef, sign * intercept
    else:
        coef, intercept = coef[order], intercept[order]
    return classifier_store.Stored(id=classifier.name, labels=tuple(classifier.labels[i] for i in order),
                                   coef=np.array(coef, dtype=np.float64), intercept=np.array(intercept, np.float64),
                                   t=1.0, examples=classifier.examples, version=0, updated_at=0.0, task=classifier.task,
                                   model=model_name)


def run(pipeline: Runner, request: TrainRequest, deadline: Deadline, timing: Timing | None) -> TrainResult:
    options, name = pipeline.options, pipeline.model_name
    check(request, options, name)
    store = classifier_store.opened(options.classifier_store)
    shipped = pipeline.config.classifiers.get(request.classifier_id) if request.classifier_id else None
    if shipped is not None and not options.overwrite_artifact_classifiers:
        raise InvalidOption(f"classifier {request.classifier_id} was trained into the artifact and cannot be "
                            "overwritten (the operator may allow it: SEARCHBOX_CLASSIFIER_OVERWRITE); train a new "
                            "classifier (no classifier_id)", code="ARTIFACT_CLASSIFIER")
    task = CLASSIFICATION_TASK if CLASSIFICATION_TASK in pipeline.config.tasks else None
    if request.classifier_id is None:
        labels = _new_labels(request, options)
        classifier_id = uuid.uuid4().hex
        # a place among the endpoint's classifiers is claimed in the store first, so the limit holds across instances
        claimed = classifier_store.claim(store, name, classifier_id, options.max_classifiers,
                                         options.request_timeout_s + CLAIM_MARGIN_S)
        if claimed is None:
            raise Overloaded("many classifiers are being created at once; retry", code="TRAIN_CONFLICT")
        if not claimed:
            raise InvalidOption(f"this endpoint holds {options.max_classifiers} classifiers, its most (model {name}); "
                                "delete one (DELETE /v1/classifiers/{id}) or update one with its classifier_id",
                                code="TOO_MANY_CLASSIFIERS")
        try:
            return _learn(pipeline, request, deadline, timing, store, classifier_id, None, labels, task)
        finally:
            classifier_store.release(store, name, classifier_id)
    classifier_id = request.classifier_id
    first = store.read(name, classifier_id) or (from_artifact(shipped, name) if shipped is not None else None)
    if first is None:
        raise InvalidOption(f"model {name} holds no classifier {classifier_id!r} (GET /v1/models lists them); "
                            "leave classifier_id out to create one", code="UNKNOWN_CLASSIFIER")
    _labels_fit(request, first.labels, classifier_id)
    return _learn(pipeline, request, deadline, timing, store, classifier_id, shipped, first.labels, first.task)


def _learn(pipeline: Runner, request: TrainRequest, deadline: Deadline, timing: Timing | None, store: Any,
           classifier_id: str, shipped: TrainedClassifier | None, labels: tuple[str, ...], task: str | None
           ) -> TrainResult:
    """Embed the call's examples and apply them to the stored classifier (none yet: `request` creates it), written
    conditionally: re-read and re-applied while another call's write wins."""
    name, created = pipeline.model_name, request.classifier_id is None
    embedding = EmbedRequest(inputs=request.inputs, task=task, adapter=request.adapter, operation=EMBED)
    prepared, outputs = pipeline.execute(lambda: pipeline.model.prepare_embed(embedding), deadline, timing,
                                         len(request.inputs))
    vectors = np.stack([finish(vector, embedding) for vector in outputs]).astype(np.float64)
    targets = np.asarray(request.labels)
    for _ in range(MAX_ATTEMPTS):
        current = None if created else (store.read(name, classifier_id)
                                        or (from_artifact(shipped, name) if shipped is not None else None))
        if not created and current is None:
            raise InvalidOption(f"classifier {classifier_id} was deleted while this call trained it",
                                code="UNKNOWN_CLASSIFIER")
        if current is not None and current.width != vectors.shape[1]:
            raise InvalidOption(f"classifier {classifier_id} reads {current.width} dimensions and model {name} makes "
                                f"{vectors.shape[1]}: it was trained on another model", code="UNKNOWN_CLASSIFIER")
        classes = np.asarray(current.labels if current is not None else labels)
        model = learner(current)
        for _ in range(request.num_iters):
            model.partial_fit(vectors, targets, classes=classes)
        version = (current.version if current is not None else 0) + 1
        updated = classifier_store.Stored(
            id=classifier_id, labels=tuple(str(label) for label in model.classes_),
            coef=np.asarray(model.coef_, dtype=np.float64), intercept=np.asarray(model.intercept_, dtype=np.float64),
            t=float(model.t_), examples=(current.examples if current is not None else 0) + len(request.inputs),
            version=version, updated_at=time.time(), task=task if current is None else current.task, model=name,
            access=request.access)
        expected = None if current is None or current.version == 0 else current.version
        if store.put(updated, expected):
            return TrainResult(classifier_id=classifier_id, labels=updated.labels, num_samples=len(request.inputs),
                               examples=updated.examples, version=version, created=created,
                               num_iters=request.num_iters, token_counts=prepared.token_counts, model=name)
        if deadline.expired():
            break
    raise Overloaded(f"classifier {classifier_id} is being updated by many calls at once; retry", code="TRAIN_CONFLICT")


def describe(pipeline: Runner) -> dict[str, Any]:
    """What /v1/models says of training: the classifiers trained on the endpoint, and the limits."""
    options = pipeline.options
    try:
        listed: Any = [stored.describe() for stored in
                       classifier_store.opened(options.classifier_store).listed(pipeline.model_name)]
        unreadable = None
    except classifier_store.StoreError as exc:  # the model card still answers; training names the error itself
        listed, unreadable = None, exc.detail
    return {"classifiers": listed, **({"store_error": unreadable} if unreadable else {}),
            "max_classes": options.max_classes, "max_classifiers": options.max_classifiers,
            "max_examples": options.max_train_examples, "default_num_iters": DEFAULT_ITERS}


def _summary(request: TrainRequest, result: TrainResult) -> str:
    return (f"trained classifier {result.classifier_id} on {counted(request.inputs)} ({', '.join(result.labels)}), "
            f"version {result.version}")


SPEC = OperationSpec(
    name=TRAIN,
    noun="train",
    request_type=TrainRequest,
    model=ZeroShotClassifier,
    run=run,
    inputs=lambda request: len(request.inputs),
    input_word="examples",
    # never run: warm-up runs a kind's first operation (embed or classify come before)
    warm_up=lambda: TrainRequest(inputs=(TextInput("warm up"), TextInput("the model")), labels=("a", "b")),
    summary=_summary,
    describe=describe,
)
