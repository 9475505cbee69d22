"""Jina's public embeddings API, with OpenAI's `encoding_format` accepted as a synonym (contract §2b)."""

from __future__ import annotations

from typing import Any

from container.dialects import Decoded, fields
from container.errors import ValidationFailed
from model_handlers.types import EmbedResult


def decode_embeddings(body: Any) -> Decoded:
    if not isinstance(body, dict) or "input" not in body:
        raise ValidationFailed('the body must be a JSON object with `input`: {"input": ["text", ...]}')
    raw = body["input"]
    if isinstance(raw, (str, dict)):
        raw = [raw]
    if not isinstance(raw, list):
        raise ValidationFailed("`input` must be a string or a list of strings or {\"text\"} objects")
    inputs = tuple(fields.embed_input(item, f"input[{i}]") for i, item in enumerate(raw))
    request, encoding = fields.embed_request(inputs, body)

    def render(result: EmbedResult) -> dict[str, Any]:
        return {
            "model": result.model,
            "object": "list",
            "usage": {"total_tokens": result.total_tokens, "prompt_tokens": result.total_tokens},
            "data": [{"object": "embedding", "index": index, "embedding": encoding.render(vector)}
                     for index, vector in enumerate(result.vectors)],
        }

    return Decoded(request, render, encoding)
