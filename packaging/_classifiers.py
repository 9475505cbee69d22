"""Few-shot classifiers fitted when an artifact is built (build_artifact.py `--classifier NAME=examples.jsonl`).

Jina's cloud trains classifiers through a stateful `/v1/train`; a marketplace endpoint has many instances and no shared
state, so a seller fits them here, on the model being packaged: each example (a JSON Lines line `{"text"|"image",
"label"}`) is embedded by the staged model through the server's own engine (container/engine.py), as a
`/v1/embeddings` body with its `classification` task where it declares one, L2-normalised; scikit-learn's
LogisticRegression is fitted on a stratified 80% and scored on the other 20% (the held-out accuracy the manifest
reports, refused below the seller's floor), then fitted again on every example: that is the classifier the artifact
ships (model_handlers/classifiers.py), and the server applies it as its `predict_proba` does.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from model_handlers.classifiers import NAME, TrainedClassifier
from model_handlers.operations.classify import CLASSIFICATION_TASK
from model_handlers.types import EmbedInput, ImageInput, TextInput

HELD_OUT = 0.2
SEED = 0
# Embedded per request while fitting (the server's own input limit is larger).
_BATCH = 256
# The body limit of those requests, in MiB: 256 images in base64 are far over a served request's 6.
_BODY_MB = 1024
# Where the server takes embeddings bodies: its route's dialect decodes them.
_EMBEDDINGS_PATH = "/v1/embeddings"
FIT = ("scikit-learn LogisticRegression(C=1.0, solver='lbfgs', max_iter=1000) on the model's L2-normalised "
       "embeddings; held-out accuracy from a stratified 80/20 split (random_state=0), shipped refitted on all examples")


class ClassifierRefused(Exception):
    """A classifier cannot be built; the message names the file, the line or the figure, and what to do."""


@dataclass(frozen=True)
class Examples:
    name: str
    inputs: tuple[EmbedInput, ...]
    labels: tuple[str, ...]


def parse_option(value: str) -> tuple[str, Path]:
    """`NAME=examples.jsonl` (the --classifier option)."""
    name, sep, path = value.partition("=")
    if not sep or not NAME.fullmatch(name) or not path:
        raise ClassifierRefused(f"--classifier {value!r}: give NAME=examples.jsonl, NAME of letters, digits, '.', "
                                "'_' or '-'")
    return name, Path(path)


def read_examples(name: str, path: Path) -> Examples:
    """The labelled examples of one classifier: every label at least twice (one to fit, one to score)."""
    inputs, labels = [], []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClassifierRefused(f"classifier {name}: cannot read {path}: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ClassifierRefused(f"classifier {name}: {path} line {number} is not JSON: {exc}") from None
        label = record.get("label") if isinstance(record, dict) else None
        given = [key for key in ("text", "image") if isinstance(record, dict) and isinstance(record.get(key), str)]
        if not isinstance(label, str) or not label.strip() or len(given) != 1:
            raise ClassifierRefused(f"classifier {name}: {path} line {number} must be {{\"text\": \"...\", "
                                    "\"label\": \"...\"} (or \"image\" instead of \"text\")")
        inputs.append(TextInput(record["text"]) if given == ["text"] else ImageInput(record["image"]))
        labels.append(label)
    counts = {label: labels.count(label) for label in dict.fromkeys(labels)}
    if len(counts) < 2 or min(counts.values()) < 2:
        raise ClassifierRefused(f"classifier {name}: {path} needs at least 2 labels with at least 2 examples each "
                                f"(it has {counts or 'none'}); give more examples")
    return Examples(name, tuple(inputs), tuple(labels))


def embed(handler, inputs: tuple[EmbedInput, ...], task: str | None) -> np.ndarray:
    """The inputs' L2-normalised embeddings, as the server answers `/v1/embeddings` bodies of them: through its own
    engine, the vectors read back from base64 (their float32 bytes, exact)."""
    from container import routes
    from container.dialects import fields
    from container.engine import Engine, Incoming
    from container.settings import ENV_MAX_PAYLOAD_MB

    engine = Engine.loaded(handler, {ENV_MAX_PAYLOAD_MB: str(_BODY_MB)})
    decode = next(route.decode for route in routes.routes() if route.path == _EMBEDDINGS_PATH)
    vectors = []
    for start in range(0, len(inputs), _BATCH):
        body = {"input": [fields.render_input(item) for item in inputs[start:start + _BATCH]],
                "embedding_type": "base64", **({"task": task} if task is not None else {})}
        answer = orjson.loads(engine.answer(Incoming(decode, False, orjson.dumps(body))).body)
        vectors.extend(np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in answer["data"])
    return np.stack(vectors)


def task_of(handler) -> str | None:
    return CLASSIFICATION_TASK if CLASSIFICATION_TASK in handler.config.tasks else None


def estimator(vectors: np.ndarray, labels: tuple[str, ...]):
    """scikit-learn's LogisticRegression fitted on `vectors`."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000).fit(np.asarray(vectors, dtype=np.float64),
                                                                       np.asarray(labels))


def fit(handler, examples: Examples, min_accuracy: float = 0.0) -> TrainedClassifier:
    """The classifier the artifact ships: held-out accuracy measured, then refitted on every example.

    Raises:
        ClassifierRefused: the held-out accuracy is below `min_accuracy`, or the model cannot embed an example.
    """
    from sklearn.model_selection import train_test_split

    task = task_of(handler)
    try:
        vectors = embed(handler, examples.inputs, task)
    except Exception as exc:  # noqa: BLE001 - the model's refusal, said for this classifier
        raise ClassifierRefused(f"classifier {examples.name}: the model cannot embed its examples: "
                                f"{getattr(exc, 'detail', exc)}") from exc
    labels = np.asarray(examples.labels)
    classes = len(set(examples.labels))
    held_out = max(classes, round(HELD_OUT * len(labels)))
    if len(labels) - held_out < classes:
        raise ClassifierRefused(f"classifier {examples.name}: {len(labels)} examples of {classes} labels leave too "
                                "few to fit after holding some out; give more examples")
    train, test, train_labels, test_labels = train_test_split(vectors, labels, test_size=held_out, stratify=labels,
                                                              random_state=SEED)
    accuracy = float((estimator(train, tuple(train_labels)).predict(test) == test_labels).mean())
    if accuracy < min_accuracy:
        raise ClassifierRefused(f"classifier {examples.name}: held-out accuracy {accuracy:.3f} on {held_out} "
                                f"examples is below the floor {min_accuracy:.3f}; give more or clearer examples, "
                                "or lower --classifier-min-accuracy")
    final = estimator(vectors, examples.labels)
    return TrainedClassifier(name=examples.name, labels=tuple(str(label) for label in final.classes_),
                             weights=np.asarray(final.coef_, dtype=np.float64),
                             bias=np.asarray(final.intercept_, dtype=np.float64), task=task,
                             examples=len(labels), held_out_accuracy=accuracy, fit=FIT)


def build(staged: Path, sources: dict[str, Path], min_accuracy: float, device: str) -> list[TrainedClassifier]:
    """Fit each classifier on the staged model and write it into the staged directory."""
    from container.engine import check_operation
    from container.errors import SearchboxError
    from model_handlers import HandlerOptions, load_handler
    from model_handlers.operations.classify import ClassifyRequest

    every = [read_examples(name, path) for name, path in sources.items()]
    try:
        handler = load_handler(staged, HandlerOptions(device=device, max_batch_items=32))
    except Exception as exc:  # noqa: BLE001 - any load failure: the model would not serve, whatever the cause
        raise ClassifierRefused(f"--classifier: the model would not serve, so nothing can be fitted on it "
                                f"({type(exc).__name__}: {str(exc)[:300]})") from None
    try:
        try:  # the server's own refusal of a kind that does not classify
            check_operation(ClassifyRequest(inputs=(), classifier_id=every[0].name), handler.kind, handler.model_name)
        except SearchboxError as exc:
            raise ClassifierRefused(f"--classifier: {exc.detail}") from None
        built = [fit(handler, examples, min_accuracy) for examples in every]
    finally:
        handler.close()
    for classifier in built:
        classifier.write(staged)
    return built
