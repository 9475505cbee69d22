"""Jina's public embeddings body, with OpenAI's `encoding_format` accepted as a synonym (contract §2b, §2e).

`{"input", ...}` asks for one form of embeddings: single vectors on POST /v1/embeddings (dialects/embed.py), token
vectors on POST /v1/multi-vector (dialects/multi_vector.py); on /invocations it asks for whichever the served
model makes, and the answer takes that model's form: `{"model", "object": "list", "usage", "data": [{"object",
"index", <key>}]}` with the form's key and usage (its `EmbeddingForm`). A PDF input answers an item per page, each
with its input's `index` and its `page`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from container import dialects
from container.dialects import Decoded, fields
from model_handlers.types import EmbedResult


def decode_embeddings(body: Any, operation: str | None) -> Decoded:
    """`{"input", ...}` asking for `operation` (None: the served model's own form of embeddings)."""
    inputs = fields.input_list(body, '{"input": ["text", ...]}')
    request, encoding = fields.embed_request(inputs, body)
    request = replace(request, operation=operation, pages=True)

    def render(result: EmbedResult) -> dict[str, Any]:
        form = dialects.named(result.operation).form
        return {
            "model": result.model,
            "object": "list",
            "usage": dict.fromkeys(form.usage, result.total_tokens),
            # each item's value goes out as numpy (orjson writes it whole: no Python work per float)
            "data": [{"object": form.key, **fields.origin(result.origin(row)), form.key: form.value(vector, encoding),
                      **form.render_also(result.also, row, encoding)}
                     for row, vector in enumerate(result.vectors)],
        }

    return Decoded(request, render, encoding)


def request_schema() -> dict[str, Any]:
    """What `decode_embeddings` reads, as a JSON Schema."""
    item = fields.input_schema()
    return {
        "type": "object",
        "required": ["input"],
        "properties": {
            "input": {"oneOf": [item, {"type": "array", "items": item}], "description": "one input or a list"},
            "model": {"type": "string", "description": "accepted and ignored: the endpoint serves one model"},
            **fields.options_schema(),
        },
    }


def response_schema(form: dialects.EmbeddingForm) -> dict[str, Any]:
    """What `decode_embeddings`'s render answers for one form of embeddings, as a JSON Schema."""
    return {
        "type": "object",
        "required": ["model", "object", "usage", "data"],
        "properties": {
            "model": {"type": "string"},
            "object": {"const": "list"},
            "usage": {"type": "object", "required": list(form.usage),
                      "properties": {key: {"type": "integer"} for key in form.usage}},
            "data": {"type": "array", "items": {
                "type": "object", "required": ["object", "index", form.key],
                "properties": {"object": {"const": form.key}, "index": {"type": "integer"},
                               "page": fields.PAGE_SCHEMA, form.key: form.schema(),
                               **dialects.beside_schemas()}}},
        },
    }
