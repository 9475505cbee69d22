"""The SageMaker envelope that the `jina-sagemaker` client sends (contract §2a), and its answer.

`{"data": [items] | item, "parameters": {...}}` -> `{"data": [{"id", "embedding", "usage"}], "parameters"}`;
a multi-vector model answers each item's token vectors under `embeddings` instead (contract §2e): the client
sends the same envelope to every model, so it asks for the served model's own form.
Batch-transform CSV rows are decoded through here too (container/dialects/batch_transform.py), so every
SageMaker embedding answer is rendered by `render_item`.
"""

from __future__ import annotations

import uuid
from typing import Any

from container.dialects import Decoded, fields
from container.encodings import Encoding, schema as embedding_schema
from container.errors import ValidationFailed
from model_handlers.types import EmbedResult


def decode(body: dict[str, Any]) -> Decoded:
    params = fields.echoed(fields.mapping(body.get("parameters"), "parameters"), "parameters")
    data = body["data"]
    items = data if isinstance(data, list) else [data]
    if not isinstance(data, (list, dict)):
        raise ValidationFailed("`data` must be a list of inputs or one input object")
    inputs, ids = [], []
    for index, item in enumerate(items):
        inputs.append(fields.embed_input(item, f"data[{index}]"))
        given = fields.item_id(item.get("id"), f"data[{index}].id") if isinstance(item, dict) else None
        ids.append(given if given is not None else uuid.uuid4().hex)
    request, encoding = fields.embed_request(tuple(inputs), params, prefix="parameters.")

    def render(result: EmbedResult) -> dict[str, Any]:
        return {"data": [render_item(item_id, vector, tokens, encoding)
                         for item_id, vector, tokens in zip(ids, result.vectors, result.token_counts)],
                "parameters": params}

    return Decoded(request, render, encoding)


def render_item(item_id: Any, vector, tokens: int, encoding: Encoding) -> dict[str, Any]:
    """One answered input: a vector under `embedding`, or a multi-vector model's matrix (one row per token) under
    `embeddings`."""
    key = "embedding" if getattr(vector, "ndim", 1) == 1 else "embeddings"
    return {"id": item_id, key: encoding.render(vector), "usage": {"total_tokens": tokens}}


_ID = {"type": ["string", "number"], "description": "echoed back as sent; a random hex id when none is given"}
_USAGE = {"type": "object", "required": ["total_tokens"], "properties": {"total_tokens": {"type": "integer"}}}


def request_schema() -> dict[str, Any]:
    """What `decode` reads, as a JSON Schema."""
    item = {**fields.input_schema(), "properties": {"id": _ID}}
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {"oneOf": [{"type": "array", "items": item}, item], "description": "the inputs, or one"},
            "parameters": {"type": "object", "properties": fields.options_schema(),
                           "description": "the options; echoed back in the answer"},
        },
    }


def response_schema() -> dict[str, Any]:
    """What `render_item` answers (in the envelope), as a JSON Schema: `embedding`, or `embeddings` for a
    multi-vector model."""
    vector = {"type": "object", "required": ["id", "embedding", "usage"],
              "properties": {"id": _ID, "embedding": embedding_schema(), "usage": _USAGE}}
    matrix = {"type": "object", "required": ["id", "embeddings", "usage"],
              "properties": {"id": _ID, "embeddings": embedding_schema(matrix=True), "usage": _USAGE}}
    return {
        "type": "object",
        "required": ["data", "parameters"],
        "properties": {"data": {"type": "array", "items": {"oneOf": [vector, matrix]}},
                       "parameters": {"type": "object"}},
    }
