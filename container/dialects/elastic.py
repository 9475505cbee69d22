"""Elasticsearch's `amazon_sagemaker` inference service with `api: elastic` (integrations.md cites the source).

Elasticsearch sends `{"input": "text" | ["text", ...], "input_type": "ingest" | "search", "task_settings": {...}}`
for `text_embedding` (and `sparse_embedding`), and `{"input", "query", "return_documents", "top_n",
"task_settings"}` for `rerank`; its parsers refuse any key they do not know, so the answers are exactly
`{"text_embedding": [{"embedding": [...]}]}`, `{"sparse_embedding": [{"is_truncated", "embedding": {token: weight}}]}`
(a sparse model: ElasticSparseEmbeddingPayload) and `{"rerank": [{"index", "relevance_score", "text"?}]}`.

`{"input"}` alone is also the OpenAI/Jina embeddings body, which searchbox answers in that shape (the `api: openai`
recipe). An `api: elastic` body is told apart by what only Elasticsearch sends: `input_type` ingest/search (every
semantic_text call) or classification/clustering (the tasks of those names), request-time `task_settings`, or
`query` beside `input`; README's recipe stores `custom_attributes: searchbox-shape=elastic` in the endpoint so that
direct `_inference` calls without an input type are answered in this shape too (dialects.chosen). `task_settings`
carries searchbox's options (`task`, `dimensions`, `truncate`, `normalized`).

A form of embeddings is answered by its renderer in `ANSWERS` (keyed by the operation of the served model's form).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from container.dialects import Decoded, Shape, fields, sparse
from container.encodings import Encoding
from container.errors import BadRequest, ValidationFailed
from model_handlers.operations.embed import EMBED
from model_handlers.operations.sparse import SPARSE
from model_handlers.types import EmbedResult, RerankRequest, RerankResult

# Elasticsearch's input types (ElasticPayload: ingest and search, or the type as given): a retrieval side, or a task
_INPUT_TYPES = {"ingest": "document", "search": "query"}
_TASKS = {"classification": "classification", "clustering": "separation"}
KEYS = frozenset({"input", "input_type", "query", "return_documents", "top_n", "task_settings"})


def _text_embedding(result: EmbedResult) -> dict[str, Any]:
    return {"text_embedding": [{"embedding": Encoding().render(vector)} for vector in result.vectors]}


def _sparse_embedding(result: EmbedResult) -> dict[str, Any]:
    """ElasticSparseEmbeddingPayload's answer: each input's weights keyed by vocabulary string. `is_truncated` is
    false: searchbox cuts over-long inputs to the model's length without tracking which were (`"truncate": false` in
    task_settings makes an over-long input a 400 instead)."""
    return {"sparse_embedding": [{"is_truncated": False, "embedding": sparse.token_weights(vector)}
                                 for vector in result.vectors]}


# The answer of each form of embeddings, by the operation that makes it.
ANSWERS: dict[str, Callable[[EmbedResult], dict[str, Any]]] = {EMBED: _text_embedding, SPARSE: _sparse_embedding}


def claims(body: Any) -> bool:
    """Only Elasticsearch sends these beside `input`: searchbox's own `input_type` is query/document."""
    return (isinstance(body, dict) and "input" in body
            and (body.get("input_type") in (*_INPUT_TYPES, *_TASKS) or "task_settings" in body
                 or ("query" in body and "documents" not in body)))


def _inputs(body: dict[str, Any]) -> tuple:
    raw = body["input"]
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ValidationFailed("`input` must be a string or a list of strings")
    return tuple(fields.embed_input(item, f"input[{i}]") for i, item in enumerate(items))


def decode(body: dict[str, Any]) -> Decoded:
    settings = fields.mapping(body.get("task_settings"), "task_settings")
    if "query" in body:
        return _rerank(body, settings)
    input_type = body.get("input_type")
    if input_type is not None and input_type not in (*_INPUT_TYPES, *_TASKS):
        raise ValidationFailed(f"`input_type` must be one of {', '.join((*_INPUT_TYPES, *_TASKS))}, "
                               f"got {input_type!r}")
    # a sparse model's answer is keyed by vocabulary string (forms without tokens ignore the option)
    options = {**settings, "input_type": _INPUT_TYPES.get(input_type), "return_tokens": True}
    if input_type in _TASKS and options.get("task") is None:
        options["task"] = _TASKS[input_type]
    request, _ = fields.embed_request(_inputs(body), options, prefix="task_settings.")

    def render(result: EmbedResult) -> dict[str, Any]:
        answer = ANSWERS.get(result.operation)
        if answer is None:
            raise BadRequest(f"Elasticsearch has no answer shape for this model's {result.operation} embeddings; "
                             f"it reads {', '.join(ANSWERS)}", code="UNSUPPORTED_OPERATION")
        return answer(result)

    return Decoded(replace(request, operation=None), render, Encoding())


def _rerank(body: dict[str, Any], settings: dict[str, Any]) -> Decoded:
    query = body["query"]
    if not isinstance(query, str):
        raise ValidationFailed("`query` must be a string")
    top_n = fields.optional_int(body.get("top_n"), "top_n")
    if top_n is not None and top_n < 1:
        raise ValidationFailed(f"`top_n` must be at least 1, got {top_n}")
    request = RerankRequest(query=fields.embed_input(query, "query"), documents=_inputs(body), top_n=top_n,
                            return_documents=fields.optional_bool(body.get("return_documents"), "return_documents",
                                                                  False))

    def render(result: RerankResult) -> dict[str, Any]:
        hits = []
        for hit in result.hits:
            item: dict[str, Any] = {"index": hit.index, "relevance_score": hit.relevance_score}
            if request.return_documents:
                item["text"] = request.documents[hit.index].text
            hits.append(item)
        return {"rerank": hits}

    return Decoded(request, render)


SHAPES = (
    Shape("elastic", "Elasticsearch amazon_sagemaker, api: elastic",
          '{"input": ["..."], "input_type": "ingest"} or {"input": ["..."], "query": "..."}', claims, decode, KEYS,
          accepts=lambda body: isinstance(body, dict) and "input" in body),
)
