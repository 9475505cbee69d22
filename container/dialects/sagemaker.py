"""The SageMaker envelope that the `jina-sagemaker` client sends for embeddings (contract §2a, §2e), and its answer.

`{"data": [items] | item, "parameters": {...}}` -> `{"data": [{"id", <key>, "usage"}], "parameters"}`: the client
sends the same envelope to every model, so it asks for the served model's own form of embeddings, and each item
is answered under that form's key (`embedding` for a vector, `embeddings` for a multi-vector model's token
vectors); a PDF input answers an item per page, each with the input's id and its `page`. Batch-transform CSV rows
of embeddings are decoded through here too (container/dialects/batch_transform.py), so every SageMaker embedding
answer is rendered by `render_item`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from container import dialects
from container.dialects import Decoded, fields
from container.encodings import Encoding
from model_handlers.types import EmbedResult


def decode(body: dict[str, Any]) -> Decoded:
    params, inputs, ids = fields.envelope(body)
    request, encoding = fields.embed_request(inputs, params, prefix="parameters.")
    request = replace(request, pages=True)

    def render(result: EmbedResult) -> dict[str, Any]:
        return {"data": render_items(ids, result, encoding), "parameters": params}

    return Decoded(request, render, encoding)


def render_items(ids, result: EmbedResult, encoding: Encoding) -> list[dict[str, Any]]:
    """The answered inputs: each under its form's key, with its id and usage; a PDF's pages each with its id and
    `page`."""
    form = dialects.named(result.operation).form
    items = []
    for row, (vector, tokens) in enumerate(zip(result.vectors, result.token_counts)):
        origin = result.origin(row)
        page = {} if origin.page is None else {"page": origin.page}
        items.append({"id": ids[origin.index], **page, form.key: form.value(vector, encoding),
                      **form.render_also(result.also, row, encoding), "usage": {"total_tokens": tokens}})
    return items


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
              "properties": {"id": _ID, "page": fields.PAGE_SCHEMA, wire.form.key: wire.form.schema(),
                             **dialects.beside_schemas(),
                             "usage": _USAGE}}
             for wire in dialects.registered() if wire.form is not None]
    return {
        "type": "object",
        "required": ["data", "parameters"],
        "properties": {"data": {"type": "array", "items": {"anyOf": items}},
                       "parameters": {"type": "object"}},
    }
