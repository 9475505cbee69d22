"""OpenSearch ML Commons SageMaker connectors' bodies on /invocations (integrations.md cites the blueprints).

A connector's `request_body` is a template over `parameters.texts` (what `connector.pre_process.default.embedding`
makes of a neural query or ingest pipeline's texts). The blueprints write it two ways, both answered with the list
of vectors `connector.post_process.default.embedding` reads (`[[...], ...]`, one per text, in order):

- `${parameters.texts}`: the bare JSON list `["text", ...]` (also SageMaker JumpStart's JSON list);
- `{"texts": ${parameters.texts}, "content_type": "query" | "passage"}` (the asymmetric-embedding standard
  blueprint): `content_type` selects searchbox's retrieval side.

`{"texts"}` with Cohere's keys (`input_type`, `embedding_types`, `model`) is Cohere's body (dialects/cohere.py).
"""

from __future__ import annotations

from typing import Any

from container.dialects import Decoded, Shape, fields
from container.encodings import Encoding
from container.errors import ValidationFailed
from model_handlers.operations.embed import EMBED
from model_handlers.types import EmbedRequest, EmbedResult

_CONTENT_TYPES = {"query": "query", "passage": "document", "document": "document"}
KEYS = frozenset({"texts", "content_type"})


def _texts(raw: Any, field: str) -> tuple:
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise ValidationFailed(f"`{field}` must be a list of strings")
    return tuple(fields.embed_input(item, f"{field}[{i}]") for i, item in enumerate(raw))


def _vectors(result: EmbedResult) -> list[Any]:
    return [Encoding().render(vector) for vector in result.vectors]


def decode_list(body: list[Any]) -> Decoded:
    return Decoded(EmbedRequest(inputs=_texts(body, "body"), operation=EMBED), _vectors, Encoding())


def decode_texts(body: dict[str, Any]) -> Decoded:
    content_type = body.get("content_type")
    if content_type is not None and content_type not in _CONTENT_TYPES:
        raise ValidationFailed(f"`content_type` must be one of {', '.join(_CONTENT_TYPES)}, got {content_type!r}")
    request = EmbedRequest(inputs=_texts(body["texts"], "texts"), input_type=_CONTENT_TYPES.get(content_type),
                           operation=EMBED)
    return Decoded(request, _vectors, Encoding())


def claims_texts(body: Any) -> bool:
    """`{"texts"}` with no key beyond OpenSearch's (Cohere's body carries its own keys)."""
    return isinstance(body, dict) and "texts" in body and set(body) <= KEYS


SHAPES = (
    Shape("texts-list", "a JSON list of texts (OpenSearch connector, JumpStart)", '["...", "..."]',
          lambda body: isinstance(body, list), decode_list),
    Shape("opensearch-texts", "OpenSearch connector texts", '{"texts": ["..."], "content_type": "query"}',
          claims_texts, decode_texts, KEYS),
)
