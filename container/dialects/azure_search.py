"""Azure AI Search's custom Web API skill and AML skill body on /score and /invocations (integrations.md cites it).

`{"values": [{"recordId", "data": {"text", "task"?, "dimensions"?, "input_type"?}}]}` ->
`{"values": [{"recordId", "data": {"embedding": [...]}, "errors": [], "warnings": []}]}`, a record for every record
sent, in order. As the skill interface asks, a record that cannot be embedded (no `text`, a wrong option) is
answered inside the 200 with `errors: [{"message"}]` and empty `data`, and the others are embedded; only a body that
is not this shape at all, or whose every record is wrong, is an HTTP error. searchbox's options ride in each
record's `data` (a skill input mapped to a constant or a field); the records of one call must agree on them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from container.dialects import Decoded, Shape, fields
from container.encodings import Encoding
from container.errors import SearchboxError, ValidationFailed
from model_handlers.operations.embed import EMBED
from model_handlers.types import EmbedRequest, EmbedResult

KEYS = frozenset({"values"})


def _record(record: Any, index: int) -> tuple[Any, Any]:
    """A record's id and its request of one input (or the message of its error)."""
    if not isinstance(record, dict):
        return None, f"values[{index}] must be an object with `recordId` and `data`"
    record_id = record.get("recordId")
    if not isinstance(record_id, (str, int, float)) or isinstance(record_id, bool):
        return None, f"values[{index}].recordId must be a string"
    data = record.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        return record_id, "`data.text` must be a string"
    options = {key: value for key, value in data.items() if key != "text"}
    try:
        request, _ = fields.embed_request((fields.embed_input(data["text"], "data.text"),), options, prefix="data.")
    except SearchboxError as exc:
        return record_id, exc.detail
    return record_id, request


def decode(body: dict[str, Any]) -> Decoded:
    values = body["values"]
    if not isinstance(values, list):
        raise ValidationFailed('`values` must be a list of {"recordId", "data": {"text"}} records')
    records = [_record(record, index) for index, record in enumerate(values)]
    valid = [(i, request) for i, (_, request) in enumerate(records) if not isinstance(request, str)]
    if not values:
        valid = [(-1, EmbedRequest(inputs=()))]
    elif not valid:
        raise ValidationFailed("no record can be embedded: "
                               + "; ".join(f"record {rid!r}: {error}" for rid, error in records[:5]))
    first = valid[0][1]
    errors = {i: error for i, (_, error) in enumerate(records) if isinstance(error, str)}
    embedded = []
    for i, request in valid:
        if replace(request, inputs=first.inputs) != first:
            errors[i] = "the records of one call must have the same options in `data` as the first"
        else:
            embedded.append(i)
    request = replace(first, inputs=tuple(records[i][1].inputs[0] for i in embedded if i >= 0), operation=EMBED)

    def render(result: EmbedResult) -> dict[str, Any]:
        vectors = dict(zip(embedded, result.vectors))
        answered = []
        for i, (record_id, _) in enumerate(records):
            if i in vectors:
                answered.append({"recordId": record_id, "data": {"embedding": Encoding().render(vectors[i])},
                                 "errors": [], "warnings": []})
            else:
                answered.append({"recordId": record_id, "data": {}, "errors": [{"message": errors[i]}],
                                 "warnings": []})
        return {"values": answered}

    return Decoded(request, render, Encoding())


SHAPES = (
    Shape("azure-search", "Azure AI Search custom skill",
          '{"values": [{"recordId": "1", "data": {"text": "..."}}]}',
          lambda body: isinstance(body, dict) and "values" in body, decode, KEYS),
)
