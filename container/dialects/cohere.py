"""Cohere's v2 embed body on /invocations, as Cohere's SDK sends it to a model hosted on SageMaker or Azure.

`{"texts", "input_type", "embedding_types", "model", "truncate", "output_dimension"}` ->
`{"id", "response_type": "embeddings_by_type", "embeddings": {<type>: [...]}, "texts", "meta": {"api_version",
"billed_units": {"input_tokens"}}}`. `input_type` selects searchbox's retrieval side (`search_query`,
`search_document`) or task (`classification`, `clustering`: the models' `classification` and `separation`);
`output_dimension` is `dimensions`; `truncate` NONE refuses long inputs, END cuts them. Cohere's rerank body
(`{"query", "documents", "top_n"}`) is searchbox's own rerank API, whose answer Cohere's SDK reads as is.
"""

from __future__ import annotations

import uuid
from typing import Any

from container.dialects import Decoded, Shape, fields
from container.encodings import EmbeddingType, Encoding
from container.errors import ValidationFailed
from model_handlers.operations.embed import EMBED
from model_handlers.types import EmbedRequest, EmbedResult

_INPUT_TYPES = {"search_query": ("query", None), "search_document": ("document", None),
                "classification": (None, "classification"), "clustering": (None, "separation")}
_TRUNCATE = {"NONE": False, "END": True}
KEYS = frozenset({"texts", "input_type", "embedding_types", "model", "truncate", "output_dimension", "max_tokens"})


def claims(body: Any) -> bool:
    """`texts` with one of Cohere's own keys (OpenSearch's `{"texts"}` has none; TEI's rerank has `query`)."""
    return (isinstance(body, dict) and "texts" in body and "query" not in body
            and any(key in body for key in KEYS - {"texts"}))


def decode(body: dict[str, Any]) -> Decoded:
    texts = body["texts"]
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise ValidationFailed("`texts` must be a list of strings")
    input_type = fields.choice(body.get("input_type"), "input_type", _INPUT_TYPES)
    side, task = _INPUT_TYPES.get(input_type, (None, None))
    truncate = fields.choice(body.get("truncate"), "truncate", _TRUNCATE,
                             "END")
    types = body.get("embedding_types") or ["float"]
    supported = [t.value for t in EmbeddingType]
    if not isinstance(types, list) or any(t not in supported for t in types):
        raise ValidationFailed(f"`embedding_types` must be a list of {', '.join(supported)}, got {types!r}")
    encoding = Encoding(tuple(EmbeddingType(t) for t in dict.fromkeys(types)), keyed=True)
    request = EmbedRequest(
        inputs=tuple(fields.embed_input(text, f"texts[{i}]") for i, text in enumerate(texts)),
        task=task, input_type=side, truncate=_TRUNCATE[truncate],
        dimensions=fields.optional_int(body.get("output_dimension"), "output_dimension"), operation=EMBED,
    )

    def render(result: EmbedResult) -> dict[str, Any]:
        rendered = [encoding.render(vector) for vector in result.vectors]
        return {
            "id": uuid.uuid4().hex,
            "response_type": "embeddings_by_type",
            "embeddings": {t.value: [item[t.value] for item in rendered] for t in encoding.types},
            "texts": texts,
            "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": result.total_tokens}},
        }

    return Decoded(request, render, encoding)


SHAPES = (
    Shape("cohere-embed", "Cohere v2 embed",
          '{"texts": ["..."], "input_type": "search_document", "embedding_types": ["float"]}', claims, decode, KEYS),
)
