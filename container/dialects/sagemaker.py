"""The SageMaker envelope that the `jina-sagemaker` client sends for embeddings (contract §2a, §2e), and its answer.

`{"data": [items] | item, "parameters": {...}}` -> `{"data": [{"id", <key>, "usage"}], "parameters"}`: the client
sends the same envelope to every model, so it asks for the served model's own form of embeddings, and each item
is answered under that form's key (`embedding` for a vector, `embeddings` for a multi-vector model's token
vectors). Batch-transform CSV rows of embeddings are decoded through here too (container/dialects/batch_transform.py),
so every SageMaker embedding answer is rendered by `render_item`.
"""

from __future__ import annotations

from typing import Any

from container import dialects
from container.dialects import Decoded, fields
from container.encodings import Encoding
from model_handlers.types import EmbedResult


def decode(body: dict[str, Any]) -> Decoded:
    params, inputs, ids = fields.envelope(body)
    request, encoding = fields.embed_request(inputs, params, prefix="parameters.")

    def render(result: EmbedResult) -> dict[str, Any]:
        return {"data": render_items(ids, result, encoding), "parameters": params}

    return Decoded(request, render, encoding)


def render_items(ids, result: EmbedResult, encoding: Encoding) -> list[dict[str, Any]]:
    """The answered inputs: each under its form's key, with its id and usage."""
    form = dialects.named(result.operation).form
    return [{"id": item_id, form.key: form.value(vector, encoding), **form.render_also(result.also, index, encoding),
             "usage": {"total_tokens": tokens}}
            for index, (item_id, vector, tokens) in enumerate(zip(ids, result.vectors, result.token_counts))]


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
    """What `render_items` answers (in the envelope), as a JSON Schema: an item of any form of embeddings (anyOf: a
    BGE-M3 item asked `return_sparse` holds the keys of two forms)."""
    items = [{"type": "object", "required": ["id", wire.form.key, "usage"],
              "properties": {"id": _ID, wire.form.key: wire.form.schema(), **dialects.beside_schemas(),
                             "usage": _USAGE}}
             for wire in dialects.registered() if wire.form is not None]
    return {
        "type": "object",
        "required": ["data", "parameters"],
        "properties": {"data": {"type": "array", "items": {"anyOf": items}},
                       "parameters": {"type": "object"}},
    }
