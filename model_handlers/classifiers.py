"""Few-shot classifiers trained into an artifact (issue 24): a linear layer over the model's L2-normalised embeddings.

Jina's cloud trains classifiers through a stateful `POST /v1/train`; an endpoint of many instances shares no state, so
here they are fitted when the artifact is built (packaging/build_artifact.py `--classifier NAME=examples.jsonl`,
scikit-learn's LogisticRegression) and shipped in it, one file each: `classifiers/<name>.json` =
`{"format": 1, "labels", "weights", "bias", "task", "examples", "held_out_accuracy", "fit"}`. `weights` holds a row
per label, or one row for two labels (a binary logistic: the second label's log-odds), as scikit-learn's `coef_` does;
`probabilities` is its `predict_proba`. Read with the serving config, without torch; a malformed file stops `serve`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from model_handlers.errors import ModelDirectoryError

DIRECTORY = "classifiers"
FORMAT = 1
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class TrainedClassifier:
    name: str
    labels: tuple[str, ...]
    weights: np.ndarray  # float64, (labels, width), or (1, width) for two labels
    bias: np.ndarray  # float64, (rows of weights,)
    task: str | None = None  # the task the examples were embedded with (the model's `classification`, if any)
    examples: int = 0
    held_out_accuracy: float | None = None
    fit: str = ""

    @property
    def width(self) -> int:
        return int(self.weights.shape[1])

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """Each row's probability of each label (rows of L2-normalised embeddings), as LogisticRegression's
        predict_proba: the logistic of the one row's score for two labels, else the softmax of the scores."""
        scores = np.asarray(vectors, dtype=np.float64) @ self.weights.T + self.bias
        if self.weights.shape[0] == 1:
            positive = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            return np.column_stack([1.0 - positive, positive])
        exp = np.exp(scores - scores.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "labels": list(self.labels), "weights": self.weights.tolist(),
                "bias": self.bias.tolist(), "task": self.task, "examples": self.examples,
                "held_out_accuracy": self.held_out_accuracy, "fit": self.fit}

    def write(self, model_dir: Path) -> Path:
        path = Path(model_dir) / DIRECTORY / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        # repr-exact floats: the served classifier computes what was fitted, to the last bit
        path.write_text(json.dumps(self.to_json()) + "\n", encoding="utf-8")
        return path

    def describe(self) -> dict[str, Any]:
        """What /v1/models and the manifest say of it."""
        return {"name": self.name, "labels": list(self.labels), "examples": self.examples,
                "held_out_accuracy": self.held_out_accuracy}


def read_classifiers(model_dir: Path) -> Mapping[str, TrainedClassifier]:
    """The classifiers in `model_dir`/classifiers/, by name.

    Raises:
        ModelDirectoryError: a file that is not a classifier, naming it and what is wrong.
    """
    folder = Path(model_dir) / DIRECTORY
    if not folder.is_dir():
        return {}
    found = {}
    for path in sorted(folder.glob("*.json")):
        found[path.stem] = _read(path)
    return found


def _read(path: Path) -> TrainedClassifier:
    where = f"{DIRECTORY}/{path.name}"
    if not NAME.fullmatch(path.stem):
        raise ModelDirectoryError(f"{where}: a classifier's name is letters, digits, '.', '_' or '-' (64 at most)")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        labels = tuple(value["labels"])
        weights = np.asarray(value["weights"], dtype=np.float64)
        bias = np.asarray(value["bias"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelDirectoryError(f"{where} is not a classifier: {exc}") from None
    if value.get("format") != FORMAT:
        raise ModelDirectoryError(f"{where}: format must be {FORMAT}, not {value.get('format')!r}")
    rows = 1 if len(labels) == 2 else len(labels)
    if (len(labels) < 2 or not all(isinstance(label, str) for label in labels) or len(set(labels)) != len(labels)
            or len(weights.shape) != 2 or weights.shape[0] != rows or bias.shape != (rows,)
            or not np.isfinite(weights).all() or not np.isfinite(bias).all()):
        raise ModelDirectoryError(f"{where}: needs 2 or more distinct labels, weights of one row per label (one row "
                                  "for two labels) and a bias per row, all finite")
    task = value.get("task")
    return TrainedClassifier(name=path.stem, labels=labels, weights=weights, bias=bias,
                             task=task if isinstance(task, str) else None, examples=int(value.get("examples") or 0),
                             held_out_accuracy=value.get("held_out_accuracy"), fit=str(value.get("fit") or ""))
