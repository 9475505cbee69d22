"""Jina's public multi-vector API (contract §2e): POST /v1/multi-vector.

`{"model", "input", "input_type": "query" | "document", "dimensions", "embedding_type"}` ->
`{"model", "object": "list", "usage": {"total_tokens"}, "data": [{"object": "embeddings", "index",
"embeddings": [[...], ...]}]}`: one row per kept token of each input, each row cut to `dimensions`, normalised
and encoded on its own (base64 per row, bits packed per row). The body's fields are the embeddings API's;
a model of single vectors refuses it, naming the route it answers (container/dispatch.py).
"""

from __future__ import annotations

from typing import Any

from container.dialects import Decoded
from container.encodings import Encoding, schema as embedding_schema
from model_handlers.types import EmbedResult, Operation


def decode(body: Any) -> Decoded:
    from container.dialects import public

    return public.decode_embeddings(body, Operation.MULTI_VECTOR)


def render(result: EmbedResult, encoding: Encoding) -> dict[str, Any]:
    """The answer; each input's matrix goes out as numpy (orjson writes it whole: no Python work per float)."""
    return {
        "model": result.model,
        "object": "list",
        "usage": {"total_tokens": result.total_tokens},
        "data": [{"object": "embeddings", "index": index, "embeddings": encoding.render(matrix)}
                 for index, matrix in enumerate(result.vectors)],
    }


def response_schema() -> dict[str, Any]:
    """What `render` answers, as a JSON Schema."""
    from container.dialects import public

    return public.list_schema("embeddings", embedding_schema(matrix=True), ("total_tokens",))
