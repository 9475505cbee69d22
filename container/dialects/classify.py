"""Operation `classify` on the wire (contract §2g): POST /v1/classify, and classify bodies on /invocations.

Jina's Classifier body, `{"model"?, "input": ["text", {"text"}, {"image"}], "labels": [...]}` (or `classifier_id`
instead of `labels`), answered `{"usage": {"total_tokens"}, "data": [{"object": "classification", "index",
"prediction", "score", "predictions": [{"label", "score"}, ...]}]}`, predictions best first. On /invocations the same
body, told from an embeddings body by `labels` / `classifier_id`, or the SageMaker envelope with them in its
`parameters`: `{"data": [{"text"}, ...], "parameters": {"labels": [...]}}`, answered `{"data": [{"id", "object",
"prediction", "score", "predictions", "usage": {"total_tokens"}}], "parameters", "usage": {"total_tokens",
"label_tokens"}}`: each item's own tokens, and the body's total with the labels' (what is billed).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from container.dialects import ITEM_OVERHEAD_BYTES, Decoded, Listing, Route, WireOperation, fields
from container.errors import ValidationFailed
from model_handlers.operations.classify import CLASSIFY, MAX_LABELS, Classification, ClassifyRequest, ClassifyResult

_PUBLIC_SHAPE = '{"input": ["text", ...], "labels": ["billing", "sales", ...]}'
_SAGEMAKER_SHAPE = '{"data": [{"text": "..."}], "parameters": {"labels": ["billing", "sales", ...]}}'
_KEYS = ("labels", "classifier_id")
# What one label adds to each answered input: its text (JSON-escaped) and a score.
_PREDICTION_BYTES = 48


def labels(value: Any, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(label, str) for label in value):
        raise ValidationFailed(f"`{field}` must be a list of strings, the classes to choose from: {_PUBLIC_SHAPE}")
    return tuple(value)


OPTIONS = (
    fields.Option("labels", labels, {"type": "array", "items": {"type": "string"}},
                  f"zero-shot: the classes to choose from, 2 to {MAX_LABELS}, each embedded by the model"),
    fields.Option("classifier_id", fields.optional_str, {"type": "string"},
                  "few-shot: a classifier trained into the artifact (GET /v1/models lists them and their labels), "
                  "instead of `labels`"),
)


def _request(inputs: tuple, source: Mapping[str, Any], prefix: str) -> ClassifyRequest:
    return ClassifyRequest(inputs=inputs, **{option.name: option.parse(source, prefix) for option in OPTIONS})


def decode_public(body: Any) -> Decoded:
    inputs = fields.input_list(body, _PUBLIC_SHAPE, "`input` and `labels`", 'strings, {"text"} or {"image"} objects')
    request = _request(inputs, body, "")

    def render(result: ClassifyResult) -> dict[str, Any]:
        return {"usage": {"total_tokens": result.total_tokens},
                "data": [{"object": "classification", "index": index, **_classified(item)}
                         for index, item in enumerate(result.classifications)]}

    return Decoded(request, render)


def decode_sagemaker(body: Mapping[str, Any]) -> Decoded:
    params, inputs, ids = fields.envelope(body, _SAGEMAKER_SHAPE)
    request = _request(inputs, params, "parameters.")

    def render(result: ClassifyResult) -> dict[str, Any]:
        return {"data": [{"id": item_id, "object": "classification", **_classified(item),
                          "usage": {"total_tokens": tokens}}
                         for item_id, item, tokens in zip(ids, result.classifications, result.token_counts)],
                "parameters": params,
                "usage": {"total_tokens": result.total_tokens, "label_tokens": result.label_tokens}}

    return Decoded(request, render)


def _classified(item: Classification) -> dict[str, Any]:
    return {"prediction": item.labels[0], "score": item.scores[0],
            "predictions": [{"label": label, "score": score} for label, score in zip(item.labels, item.scores)]}


def invocation(body: Mapping[str, Any]) -> Decoded | None:
    """A classify body on /invocations: the public body with `labels` or `classifier_id`, or the SageMaker envelope
    with them in its `parameters`."""
    if "data" in body:
        params = body.get("parameters")
        return decode_sagemaker(body) if isinstance(params, dict) and any(key in params for key in _KEYS) else None
    return decode_public(body) if any(key in body for key in _KEYS) else None


def estimate(request: ClassifyRequest, encoding: Any, pipeline: Any) -> int:
    """An upper bound of the answer's bytes: every input lists every label with its score."""
    per_input = sum(2 * len(label) + _PREDICTION_BYTES for label in request.labels) + ITEM_OVERHEAD_BYTES
    return len(request.inputs) * per_input


_USAGE = {"type": "object", "required": ["total_tokens"], "properties": {"total_tokens": {"type": "integer"}}}
_PREDICTIONS = {
    "prediction": {"type": "string", "description": "the label scored highest"},
    "score": {"type": "number", "description": "its score"},
    "predictions": {"type": "array", "description": "every label, best first; the scores sum to 1",
                    "items": {"type": "object", "required": ["label", "score"],
                              "properties": {"label": {"type": "string"}, "score": {"type": "number"}}}}}


def public_request_schema() -> dict[str, Any]:
    item = fields.input_schema()
    return {"type": "object", "required": ["input"], "properties": {
        "input": {"oneOf": [item, {"type": "array", "items": item}], "description": "one input or a list"},
        "model": {"type": "string", "description": "accepted and ignored: the endpoint serves one model"},
        **{option.name: option.property_schema() for option in OPTIONS}},
        "anyOf": [{"required": [key]} for key in _KEYS]}


def public_response_schema() -> dict[str, Any]:
    item = {"type": "object", "required": ["object", "index", *_PREDICTIONS],
            "properties": {"object": {"const": "classification"}, "index": {"type": "integer"}, **_PREDICTIONS}}
    return {"type": "object", "required": ["usage", "data"], "properties": {
        "usage": {**_USAGE, "description": "input tokens plus label tokens"},
        "data": {"type": "array", "items": item}}}


def sagemaker_request_schema() -> dict[str, Any]:
    item = {**fields.input_schema(), "properties": {"id": {"type": ["string", "number"]}}}
    return {"type": "object", "required": ["data", "parameters"], "properties": {
        "data": {"oneOf": [{"type": "array", "items": item}, item]},
        "parameters": {"type": "object", "properties": {option.name: option.property_schema() for option in OPTIONS},
                       "anyOf": [{"required": [key]} for key in _KEYS],
                       "description": "`labels` (or `classifier_id`); echoed back in the answer"}}}


def sagemaker_response_schema() -> dict[str, Any]:
    item = {"type": "object", "required": ["id", "object", *_PREDICTIONS, "usage"],
            "properties": {"id": {"type": ["string", "number"]}, "object": {"const": "classification"},
                           **_PREDICTIONS, "usage": _USAGE}}
    return {"type": "object", "required": ["data", "parameters", "usage"], "properties": {
        "data": {"type": "array", "items": item}, "parameters": {"type": "object"},
        "usage": {"type": "object", "required": ["total_tokens", "label_tokens"],
                  "properties": {"total_tokens": {"type": "integer", "description": "the items' and the labels'"},
                                 "label_tokens": {"type": "integer"}}}}}


def listing_section(classifiers: Sequence[Mapping[str, Any]]) -> str:
    """A listing's words on classification: zero-shot against any labels, and each few-shot classifier the artifact
    ships (its labels, examples and held-out accuracy)."""
    lines = ["## Classification", "",
             "Any labels, zero-shot: each input is scored against labels the same model embeds (softmax of the "
             "cosines), in the envelope as `{\"data\": [{\"text\": \"...\"}], \"parameters\": {\"labels\": "
             "[\"billing\", \"sales\"]}}`; usage counts the inputs' and the labels' tokens."]
    if classifiers:
        lines += ["", "Classifiers trained into this model (`\"parameters\": {\"classifier_id\": NAME}` instead of "
                      "`labels`; usage counts the inputs' tokens):", "",
                  "| classifier | labels | examples | held-out accuracy |", "|---|---|---|---|"]
        lines += [f"| `{c['name']}` | {', '.join(c['labels'])} | {c['examples']} | {c['held_out_accuracy']:.1%} |"
                  for c in classifiers]
    lines += ["", "A batch transform job classifies its CSV rows when the model's environment sets "
                  "`SEARCHBOX_CLASSIFY_LABELS` (a JSON array) or `SEARCHBOX_CLASSIFIER` (a classifier's name).", "", ""]
    return "\n".join(lines)


def csv_parameters(settings: Any) -> dict[str, Any] | None:
    """What every CSV row of a batch transform job asks beside its input when the operator's settings make it a
    classify job: the labels, or a trained classifier (None: rows are the served kind's own)."""
    if settings.classify_labels:
        return {"labels": list(settings.classify_labels)}
    if settings.classifier:
        return {"classifier_id": settings.classifier}
    return None


WIRE = WireOperation(
    name=CLASSIFY,
    hint='classify: {"input": ["..."], "labels": ["...", "..."]} to /v1/classify or /invocations',
    routes=(Route("/v1/classify", decode_public, "classify",
                  "Zero-shot classification: each input scored against labels embedded by the same model (Jina's "
                  "Classifier API)", "ClassifyRequest", "ClassifyResponse"),),
    schemas=lambda: {"ClassifyRequest": public_request_schema(), "ClassifyResponse": public_response_schema(),
                     "SageMakerClassifyRequest": sagemaker_request_schema(),
                     "SageMakerClassifyResponse": sagemaker_response_schema()},
    invocation_bodies=("SageMakerClassifyRequest", "ClassifyRequest"),
    invocation_answers=("SageMakerClassifyResponse", "ClassifyResponse"),
    body_keys=_KEYS,
    estimate=estimate,
    listing=Listing("classifies {count} text{s}", "`usage.total_tokens` in its answer (inputs and labels)",
                    listing_section),
    invocation=invocation,
    csv_parameters=csv_parameters,
)
