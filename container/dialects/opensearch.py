"""OpenSearch ML Commons SageMaker connectors' bodies on /invocations (integrations.md cites the blueprints).

A connector's `request_body` is a template over `parameters.texts` (what `connector.pre_process.default.embedding`
makes of a neural query or ingest pipeline's texts). The blueprints write it two ways, both answered with the list
of vectors `connector.post_process.default.embedding` reads (`[[...], ...]`, one per text, in order):

- `${parameters.texts}`: the bare JSON list `["text", ...]` (also SageMaker JumpStart's JSON list);
- `{"texts": ${parameters.texts}, "content_type": "query" | "passage"}` (the asymmetric-embedding standard
  blueprint): `content_type` selects searchbox's retrieval side.

A sparse (SPLADE) model answers the same bodies as ml-commons' neural-sparse SageMaker handler does
(docs/model_serving_framework/deploy_sparse_model_to_SageMaker.ipynb, commit 950f0560: its connector sends
`{"texts": ${parameters.input}, "sparse_embedding_format": "word" | "token_id"}`, or the bare list): a list with one
`{token: weight}` object per text, keyed by vocabulary string, or by token id as a string for `token_id`.

`{"texts"}` with Cohere's keys (`input_type`, `embedding_types`, `model`) is Cohere's body (dialects/cohere.py).
"""

from __future__ import annotations

from typing import Any, Callable

from container.dialects import Decoded, Shape, fields, sparse
from container.encodings import Encoding
from container.errors import BadRequest, ValidationFailed
from model_handlers.operations.embed import EMBED
from model_handlers.operations.sparse import SPARSE, SparseOptions
from model_handlers.types import EmbedRequest, EmbedResult

_CONTENT_TYPES = {"query": "query", "passage": "document", "document": "document"}
_SPARSE_FORMATS = ("word", "token_id")
KEYS = frozenset({"texts", "content_type", "sparse_embedding_format"})


def _texts(raw: Any, field: str) -> tuple:
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise ValidationFailed(f"`{field}` must be a list of strings")
    return tuple(fields.embed_input(item, f"{field}[{i}]") for i, item in enumerate(raw))


def _vectors(result: EmbedResult, sparse_format: str) -> list[Any]:
    return [Encoding().render(vector) for vector in result.vectors]


def _token_weights(result: EmbedResult, sparse_format: str) -> list[dict[str, float]]:
    if sparse_format == "token_id":
        return [{str(index): float(value) for index, value in zip(vector.indices, vector.values)}
                for vector in result.vectors]
    return [sparse.token_weights(vector) for vector in result.vectors]


# The list post_process reads, by the form of the served model's embeddings: a vector per text, or a
# `{token: weight}` object per text.
ANSWERS: dict[str, Callable[[EmbedResult, str], list[Any]]] = {EMBED: _vectors, SPARSE: _token_weights}


def _answer(sparse_format: str) -> Callable[[EmbedResult], list[Any]]:
    def render(result: EmbedResult) -> list[Any]:
        answer = ANSWERS.get(result.operation)
        if answer is None:
            raise BadRequest(f"OpenSearch's connectors read no answer of this model's {result.operation} embeddings; "
                             f"they read {', '.join(ANSWERS)}", code="UNSUPPORTED_OPERATION")
        return answer(result, sparse_format)

    return render


def _request(inputs: tuple, input_type: str | None = None) -> EmbedRequest:
    # the served model's own form (EMBED or SPARSE); forms without tokens ignore return_tokens
    return EmbedRequest(inputs=inputs, input_type=input_type, form_options=(SparseOptions(return_tokens=True),),
                        operation=None)


def decode_list(body: list[Any]) -> Decoded:
    return Decoded(_request(_texts(body, "body")), _answer("word"), Encoding())


def decode_texts(body: dict[str, Any]) -> Decoded:
    content_type = fields.choice(body.get("content_type"), "content_type", _CONTENT_TYPES)
    sparse_format = fields.choice(body.get("sparse_embedding_format"), "sparse_embedding_format", _SPARSE_FORMATS,
                                  "word")
    request = _request(_texts(body["texts"], "texts"), _CONTENT_TYPES.get(content_type))
    return Decoded(request, _answer(sparse_format), Encoding())


def claims_texts(body: Any) -> bool:
    """`{"texts"}` with no key beyond OpenSearch's (Cohere's body carries its own keys)."""
    return isinstance(body, dict) and "texts" in body and set(body) <= KEYS


SHAPES = (
    Shape("texts-list", "a JSON list of texts (OpenSearch connector, JumpStart)", '["...", "..."]',
          lambda body: isinstance(body, list), decode_list),
    Shape("opensearch-texts", "OpenSearch connector texts", '{"texts": ["..."], "content_type": "query"}',
          claims_texts, decode_texts, KEYS),
)
