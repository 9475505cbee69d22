"""Google Cloud Vertex AI's prediction body on the route AIP_PREDICT_ROUTE names (README: Google Cloud Vertex AI).

`{"instances": [...], "parameters": {...}}` -> `{"predictions": [...]}`, one prediction per instance, in order
(Google's "Custom container requirements for prediction": the request and response bodies). Vertex AI's batch
prediction sends its JSON Lines input to the same route in such bodies, so the same rules hold there.

An instance is either one input of the served operation (a text, `{"text"}`, `{"image"}`, `{"pdf"}`) or one whole
request (an object with a key only searchbox's bodies have: a rerank's `{"query", "documents", "top_n"}`, a
segment's `{"content"}`). `parameters` are the request's options (task, dimensions, embedding_type, labels, ...),
the same keys as the public bodies', and `parameters.operation` may name an operation whose public route should
answer (`"tokenize"`); without it the body is read as `/invocations` reads searchbox's own bodies, never as another
project's shape.

- Inputs: the instances become one public body, `{"input": instances, **parameters}`, run as one request (the
  batcher packs them). Prediction i is the item of the answer's `data` whose `index` is i, exactly as `/invocations`
  answers that body; a PDF instance, answered a page per item, is the list of its pages' items. The rest of that
  answer (model, object, usage) is the response's `metadata`, the field Vertex AI's PredictResponse keeps for
  "request-level metadata returned by the model".
- Requests: each instance, with `parameters` under its own keys, is one request (run side by side); its prediction
  is that request's whole answer as `/invocations` gives it.

Instances of both kinds in one body are refused: there would be no one rule for their predictions.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import orjson

from container import dialects
from container.dialects import Decoded, Records, fields
from container.errors import ValidationFailed

_SHAPE = '{"instances": ["text", ...], "parameters": {...}}'
OPERATION = "operation"


def decode(body: Any) -> Records:
    """The typed requests of a Vertex AI prediction body, and how their results become `{"predictions"}`."""
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
        raise ValidationFailed(f"the body must be a JSON object with an `instances` list: {_SHAPE}")
    instances = body["instances"]
    if not instances:
        raise ValidationFailed(f"`instances` is empty: send at least one: {_SHAPE}")
    parameters = dict(fields.mapping(body.get("parameters"), "parameters"))
    read = _decoder(parameters.pop(OPERATION, None))
    whole = [_is_request(instance) for instance in instances]
    if all(whole):
        return _requests(instances, parameters, read)
    if any(whole):
        first = whole.index(True)
        raise ValidationFailed(f"instances[{first}] is a whole request but others are inputs: send inputs (texts, "
                               "{\"text\"}, {\"image\"}, {\"pdf\"}) or requests, not both, in one body")
    return _inputs(instances, parameters, read)


def _decoder(operation: Any) -> Callable[[Any], Decoded]:
    """searchbox's own `/invocations` bodies, or those of the public route of the operation `parameters` names."""
    if operation is None:
        return dialects.decode_own
    routed = {wire.name: wire.routes[0].decode for wire in dialects.registered() if wire.routes}
    if operation not in routed:
        raise ValidationFailed(f"`parameters.{OPERATION}` must be one of {', '.join(sorted(routed))}, got "
                               f"{operation!r}")
    return routed[operation]


def _is_request(instance: Any) -> bool:
    own = {key for wire in dialects.registered() for key in wire.body_keys}
    return isinstance(instance, dict) and any(key in instance for key in own)


def _inputs(instances: list, parameters: Mapping[str, Any], read: Callable[[Any], Decoded]) -> Records:
    decoded = read({**parameters, "input": instances})

    def render(results: list) -> bytes:
        answer = decoded.render(results[0])
        items = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(items, list) or not all(isinstance(item, dict) and "index" in item for item in items):
            # an answer without per-input items (a segment body's): no prediction per instance can be made of it
            raise ValidationFailed("this request's answer has no item per input; send each instance as a whole "
                                   "request object instead")
        grouped: list[list] = [[] for _ in instances]
        for item in items:
            grouped[item["index"]].append(item)
        metadata = {key: value for key, value in answer.items() if key != "data"}
        # a PDF's prediction is the list of its pages however many it has; any other input's, its one item
        predictions = [group if any("page" in item for item in group) else group[0] for group in grouped]
        return orjson.dumps({"predictions": predictions, "metadata": metadata}, option=orjson.OPT_SERIALIZE_NUMPY)

    return Records([decoded.request], [""], render, encodings=[decoded.encoding])


def _requests(instances: list, parameters: Mapping[str, Any], read: Callable[[Any], Decoded]) -> Records:
    decoded = [read({**parameters, **instance}) for instance in instances]

    def render(results: list) -> bytes:
        return orjson.dumps({"predictions": [one.render(result) for one, result in zip(decoded, results)]},
                            option=orjson.OPT_SERIALIZE_NUMPY)

    return Records([one.request for one in decoded], [f"instances[{index}]" for index in range(len(instances))],
                   render, encodings=[one.encoding for one in decoded])


def error_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The contract's error body with Vertex AI's `error` beside it (the detail, as a prediction error is read)."""
    return {"error": body.get("detail", ""), **body}
