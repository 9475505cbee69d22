"""Jina's public embeddings API, with OpenAI's `encoding_format` accepted as a synonym (contract §2b).

The same body shape asks for multi-vectors on POST /v1/multi-vector (container/dialects/multi_vector.py); on
/invocations it asks for whichever the served model makes, and the answer takes that model's form.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from container.dialects import Decoded, fields, multi_vector
from container.encodings import schema as embedding_schema
from container.errors import ValidationFailed
from model_handlers.types import EmbedResult, Operation


def decode_embeddings(body: Any, operation: Operation | None = Operation.EMBED) -> Decoded:
    """`{"input", ...}` asking for `operation` (None: the served model's own form of embeddings)."""
    if not isinstance(body, dict) or "input" not in body:
        raise ValidationFailed('the body must be a JSON object with `input`: {"input": ["text", ...]}')
    raw = body["input"]
    if isinstance(raw, (str, dict)):
        raw = [raw]
    if not isinstance(raw, list):
        raise ValidationFailed("`input` must be a string or a list of strings or {\"text\"} objects")
    inputs = tuple(fields.embed_input(item, f"input[{i}]") for i, item in enumerate(raw))
    request, encoding = fields.embed_request(inputs, body)
    request = replace(request, operation=operation)

    def render(result: EmbedResult) -> dict[str, Any]:
        if operation is Operation.MULTI_VECTOR or any(vector.ndim == 2 for vector in result.vectors):
            return multi_vector.render(result, encoding)
        return {
            "model": result.model,
            "object": "list",
            "usage": {"total_tokens": result.total_tokens, "prompt_tokens": result.total_tokens},
            "data": [{"object": "embedding", "index": index, "embedding": encoding.render(vector)}
                     for index, vector in enumerate(result.vectors)],
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


def response_schema() -> dict[str, Any]:
    """What `decode_embeddings`'s render answers for single vectors, as a JSON Schema."""
    return list_schema("embedding", embedding_schema(), ("total_tokens", "prompt_tokens"))


def list_schema(key: str, embedding: dict[str, Any], usage: tuple[str, ...]) -> dict[str, Any]:
    """An embeddings list answer (`{"model", "object": "list", "usage", "data"}`) whose items hold `key`: the
    single-vector one here, the multi-vector one (container/dialects/multi_vector.py)."""
    return {
        "type": "object",
        "required": ["model", "object", "usage", "data"],
        "properties": {
            "model": {"type": "string"},
            "object": {"const": "list"},
            "usage": {"type": "object", "required": list(usage), "properties": {k: {"type": "integer"} for k in usage}},
            "data": {"type": "array", "items": {
                "type": "object", "required": ["object", "index", key],
                "properties": {"object": {"const": key}, "index": {"type": "integer"}, key: embedding}}},
        },
    }
