"""Operation `train` on the wire (contract §2g, issue 37): POST /v1/train, and train bodies on /invocations.

Jina's body: `{"model"?, "input": [{"text": "...", "label": "..."} | {"image": "...", "label": "..."}, ...],
"classifier_id"?, "num_iters"? (10), "access"? ("private")}`; no `classifier_id` creates a classifier, one updates it.
Answered `{"classifier_id", "num_samples", "labels", "examples", "version", "model", "usage": {"total_tokens"}}`:
Jina's `classifier_id` and `num_samples` (this call's examples), the classifier's labels, every example it has seen,
and the version the store accepted this call as. On /invocations the same body, told apart by its examples' `label`
(or `num_iters`); a classify body has `labels` or a `classifier_id` with unlabelled inputs.
"""

from __future__ import annotations

from typing import Any, Mapping

from container.dialects import Decoded, Listing, Route, WireOperation, fields
from container.errors import ValidationFailed
from model_handlers.operations.train import ACCESS, DEFAULT_ITERS, MAX_ITERS, TRAIN, TrainRequest, TrainResult

_SHAPE = '{"input": [{"text": "...", "label": "billing"}, {"text": "...", "label": "sales"}], "num_iters": 10}'
_KEYS = ("num_iters",)


def _examples(body: Any) -> tuple[tuple, tuple[str, ...]]:
    if not isinstance(body, dict) or "input" not in body:
        raise ValidationFailed(f"the body must be a JSON object with `input`, labelled examples: {_SHAPE}")
    raw = body["input"]
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise ValidationFailed(f"`input` must be a list of labelled examples: {_SHAPE}")
    inputs, labels = [], []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("label"), str):
            raise ValidationFailed(f"input[{index}] must be an object with `text` (or `image`) and its `label`, a "
                                   f"string: {_SHAPE}")
        inputs.append(fields.embed_input({key: value for key, value in item.items() if key != "label"},
                                         f"input[{index}]"))
        labels.append(item["label"])
    return tuple(inputs), tuple(labels)


def decode_public(body: Any) -> Decoded:
    inputs, labels = _examples(body)
    num_iters = fields.optional_int(body.get("num_iters"), "num_iters")
    request = TrainRequest(inputs=inputs, labels=labels,
                           classifier_id=fields.optional_str(body.get("classifier_id"), "classifier_id"),
                           num_iters=DEFAULT_ITERS if num_iters is None else num_iters,
                           access=fields.optional_str(body.get("access"), "access") or "private")

    def render(result: TrainResult) -> dict[str, Any]:
        return {"classifier_id": result.classifier_id, "num_samples": result.num_samples,
                "labels": list(result.labels), "examples": result.examples, "version": result.version,
                "model": result.model, "usage": {"total_tokens": result.total_tokens}}

    return Decoded(request, render)


def invocation(body: Mapping[str, Any]) -> Decoded | None:
    """A train body on /invocations: `input` whose examples carry a `label`, or `num_iters`."""
    raw = body.get("input")
    labelled = isinstance(raw, list) and bool(raw) and all(isinstance(item, dict) and "label" in item for item in raw)
    return decode_public(body) if labelled or isinstance(raw, dict) and "label" in raw or "num_iters" in body else None


def _schemas() -> dict[str, dict[str, Any]]:
    example = {**fields.input_schema(), "description": "an input (`text` or `image`) with its `label`"}
    return {
        "TrainRequest": {"type": "object", "required": ["input"], "properties": {
            "input": {"type": "array", "items": {"allOf": [example, {"type": "object", "required": ["label"],
                                                                      "properties": {"label": {"type": "string"}}}]},
                      "description": "labelled examples; a new classifier's labels are those of its first call"},
            "model": {"type": "string", "description": "accepted and ignored: the endpoint serves one model"},
            "classifier_id": {"type": "string", "description": "the classifier to update; left out: create one"},
            "num_iters": {"type": "integer", "minimum": 1, "maximum": MAX_ITERS, "default": DEFAULT_ITERS,
                          "description": "passes of passive-aggressive updates over the examples"},
            "access": {"enum": list(ACCESS), "default": "private",
                       "description": "Jina's visibility: kept and listed; an endpoint has no other users"}}},
        "TrainResponse": {"type": "object", "required": ["classifier_id", "num_samples", "labels", "usage"],
                          "properties": {
                              "classifier_id": {"type": "string"}, "num_samples": {"type": "integer"},
                              "labels": {"type": "array", "items": {"type": "string"}},
                              "examples": {"type": "integer", "description": "every example it has seen"},
                              "version": {"type": "integer",
                                          "description": "the version the store accepted this call as"},
                              "model": {"type": "string"},
                              "usage": {"type": "object", "required": ["total_tokens"], "properties": {
                                  "total_tokens": {"type": "integer",
                                                   "description": "the examples' tokens times num_iters"}}}}},
    }


WIRE = WireOperation(
    name=TRAIN,
    hint=f"train: {_SHAPE} to /v1/train",
    routes=(Route("/v1/train", decode_public, "train",
                  "Few-shot classifier training (Jina's Classifier API): create a classifier from labelled examples, "
                  "or update one with new examples (classifier_id); POST /v1/classify with its classifier_id uses it",
                  "TrainRequest", "TrainResponse"),),
    schemas=_schemas,
    invocation_bodies=("TrainRequest",),
    invocation_answers=("TrainResponse",),
    body_keys=_KEYS,
    estimate=lambda request, encoding, pipeline: 1024 + 64 * len(set(request.labels)),
    listing=Listing("trains a classifier on {count} example{s}", "`usage.total_tokens` in its answer (examples' "
                    "tokens times num_iters)"),
    invocation=invocation,
)
