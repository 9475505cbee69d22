"""Rerank bodies (contract §3): the SageMaker envelope of `jina-sagemaker` and Jina's public rerank API.

SageMaker: `{"data": {"query", "documents", "top_n", "return_documents"}, "parameters": {...}}`, `data`
also as a one-element list; answered `{"data": [{"query_usage", "docs_usage", "results"}], "parameters"}`.
Public: `{"model", "query", "documents", "top_n", "return_documents"}`; answered
`{"model", "object": "list", "usage": {"total_tokens"}, "results": [{"index", "relevance_score", "document"?}]}`.
Documents (and the query) are bare strings or `{"text"}` objects, or images for models that read them; `top_n`
missing means all; `return_documents` defaults to true. Operation `rerank` on the wire: its `WIRE` is at the end.
"""

from __future__ import annotations

from typing import Any, Mapping

from container.dialects import ITEM_OVERHEAD_BYTES, Decoded, Listing, Route, RowRequests, WireOperation, fields
from container.errors import ValidationFailed
from model_handlers.operations.rerank import RERANK
from model_handlers.types import RerankHit, RerankRequest, RerankResult

_SAGEMAKER_SHAPE = '{"data": {"query": "...", "documents": ["...", {"text": "..."}], "top_n": 3}}'
_PUBLIC_SHAPE = '{"query": "...", "documents": ["...", {"text": "..."}], "top_n": 3, "return_documents": true}'
_KEYS = ("query", "documents")


def _top_n(value: Any, field: str) -> int | None:
    top_n = fields.optional_int(value, field)
    if top_n is not None and top_n < 1:
        raise ValidationFailed(f"`{field}` must be at least 1 (leave it out to get every document), got {top_n}")
    return top_n


OPTIONS = (
    fields.Option("top_n", _top_n, {"oneOf": [
        {"type": "integer", "minimum": 1, "maximum": fields.INTEGER_BOUND},
        # at most 18 digits, not all zeros
        {"type": "string", "pattern": "^\\s*[+]?(?=[0-9]{1,18}\\s*$)0*[1-9][0-9]*\\s*$"}]},
        "answer the best N documents only; all when left out"),
    fields.Option("return_documents", fields.flag(True), fields.boolean_schema(True),
                  "echo each returned document (as sent) beside its score"),
    fields.Option("instruction", fields.optional_str, {"type": "string"},
                  "what the judge looks for, for rerankers whose prompt takes an instruction (generative and "
                  "listwise ones); the model's own default when left out; refused by the others"),
)


def request_schema() -> dict[str, Any]:
    """A rerank request (the public body, or SageMaker's `data`) as a JSON Schema: what `_request` reads."""
    item = fields.input_schema()
    return {
        "type": "object",
        "required": list(_KEYS),
        "properties": {
            "query": {**item, "description": "what the documents are ranked against"},
            "documents": {"type": "array", "items": item, "description": "the documents to rank"},
            **{option.name: option.property_schema() for option in OPTIONS},
        },
    }


def is_sagemaker_rerank(data: Any) -> bool:
    """Whether a SageMaker `data` value is a rerank request: an object (or a list whose first item is one)
    with `query` or `documents`, which no embedding input has."""
    if isinstance(data, list) and data:
        data = data[0]
    return isinstance(data, dict) and any(key in data for key in _KEYS)


def is_public_rerank(body: Any) -> bool:
    return isinstance(body, dict) and "input" not in body and any(key in body for key in _KEYS)


def decode_sagemaker(body: Mapping[str, Any], prefix: str = "data.") -> Decoded:
    """The SageMaker rerank envelope; `prefix` names `data`'s fields in errors (CSV rows name none)."""
    data = body.get("data")
    if isinstance(data, list):
        if len(data) != 1:
            raise ValidationFailed(
                f"`data` holds {len(data)} rerank requests; send one per body: {_SAGEMAKER_SHAPE}")
        data = data[0]
    request = _request(fields.mapping(data, "data"), prefix, _SAGEMAKER_SHAPE)
    parameters = dict(fields.echoed(fields.mapping(body.get("parameters"), "parameters"), "parameters"))

    def render(result: RerankResult) -> dict[str, Any]:
        return {"data": [render_item(request, result)], "parameters": parameters}

    return Decoded(request, render)


def render_item(request: RerankRequest, result: RerankResult) -> dict[str, Any]:
    """One answered rerank of the SageMaker envelope (batch-transform CSV rows add their `id`)."""
    return {
        "query_usage": {"total_tokens": result.query_tokens},
        "docs_usage": {"total_tokens": result.document_tokens},
        "results": [_hit(request, hit, with_usage=True) for hit in result.hits],
    }


def decode_public(body: Any) -> Decoded:
    if not isinstance(body, dict):
        raise ValidationFailed(f"the body must be a JSON object: {_PUBLIC_SHAPE}")
    request = _request(body, "", _PUBLIC_SHAPE)

    def render(result: RerankResult) -> dict[str, Any]:
        return {
            "model": result.model,
            "object": "list",
            "usage": {"total_tokens": result.total_tokens},
            "results": [_hit(request, hit, with_usage=False) for hit in result.hits],
        }

    return Decoded(request, render)


def _request(source: Mapping[str, Any], prefix: str, shape: str) -> RerankRequest:
    for key in _KEYS:
        if key not in source or source[key] is None:
            raise ValidationFailed(f"`{prefix}{key}` is missing; a rerank body looks like {shape}")
    query = fields.embed_input(source["query"], f"{prefix}query")
    documents = source["documents"]
    if not isinstance(documents, list):
        raise ValidationFailed(f"`{prefix}documents` must be a list of strings or {{\"text\"}} objects")
    return RerankRequest(
        query=query,
        documents=tuple(fields.embed_input(item, f"{prefix}documents[{i}]") for i, item in enumerate(documents)),
        **{option.name: option.parse(source, prefix) for option in OPTIONS},
    )


def _hit(request: RerankRequest, hit: RerankHit, *, with_usage: bool) -> dict[str, Any]:
    item: dict[str, Any] = {"index": hit.index, "relevance_score": hit.relevance_score}
    if request.return_documents:
        item["document"] = fields.render_input(request.documents[hit.index])
    if with_usage:
        item["usage"] = {"total_tokens": hit.tokens}
    return item


_USAGE = {"type": "object", "required": ["total_tokens"], "properties": {"total_tokens": {"type": "integer"}}}


def _hit_schema(with_usage: bool) -> dict[str, Any]:
    properties = {"index": {"type": "integer", "description": "the document's place in the request"},
                  "relevance_score": {"type": "number"},
                  "document": {**fields.input_schema(), "description": "as sent, when `return_documents`"}}
    if with_usage:
        properties["usage"] = _USAGE
    return {"type": "object", "required": ["index", "relevance_score", *(["usage"] if with_usage else [])],
            "properties": properties}


def public_request_schema() -> dict[str, Any]:
    """What `decode_public` reads, as a JSON Schema."""
    schema = request_schema()
    schema["properties"]["model"] = {"type": "string",
                                     "description": "accepted and ignored: the endpoint serves one model"}
    return schema


def sagemaker_request_schema() -> dict[str, Any]:
    """What `decode_sagemaker` reads, as a JSON Schema."""
    one = request_schema()
    return {"type": "object", "required": ["data"],
            "properties": {"data": {"oneOf": [one, {"type": "array", "items": one, "minItems": 1, "maxItems": 1}]},
                           "parameters": {"type": "object", "description": "echoed back in the answer"}}}


def sagemaker_response_schema() -> dict[str, Any]:
    """What `render_item` answers (in the envelope), as a JSON Schema."""
    item = {"type": "object", "required": ["query_usage", "docs_usage", "results"],
            "properties": {"query_usage": _USAGE, "docs_usage": _USAGE,
                           "results": {"type": "array", "items": _hit_schema(with_usage=True)}}}
    return {"type": "object", "required": ["data", "parameters"],
            "properties": {"data": {"type": "array", "items": item, "minItems": 1, "maxItems": 1},
                           "parameters": {"type": "object"}}}


def public_response_schema() -> dict[str, Any]:
    """What `decode_public`'s render answers, as a JSON Schema."""
    return {"type": "object", "required": ["model", "object", "usage", "results"],
            "properties": {"model": {"type": "string"}, "object": {"const": "list"}, "usage": _USAGE,
                           "results": {"type": "array", "items": _hit_schema(with_usage=False)}}}


def invocation(body: Mapping[str, Any]) -> Decoded | None:
    """A rerank body on /invocations: SageMaker's (`data` holding `query`/`documents`, as an object or a one-element
    list) or the public API's (`query`/`documents` and neither `data` nor `input`)."""
    if "data" in body:
        return decode_sagemaker(body) if is_sagemaker_rerank(body["data"]) else None
    return decode_public(body) if is_public_rerank(body) else None


def estimate(request: RerankRequest, encoding: Any, pipeline: Any) -> int:
    """An upper bound of a rerank answer's bytes: the documents it echoes (twice: JSON escapes), and what each adds."""
    shown = (sum(len(value) for document in request.documents for value in fields.render_input(document).values())
             if request.return_documents else 0)
    return 2 * shown + len(request.documents) * ITEM_OVERHEAD_BYTES


WIRE = WireOperation(
    name=RERANK,
    hint=('rerank: {"query": "...", "documents": ["..."]} to /v1/rerank, or '
          '{"data": {"query": "...", "documents": ["..."]}} to /invocations'),
    routes=(Route("/v1/rerank", decode_public, "rerank",
                  "Documents ranked against a query (rerankers, ColBERT and multimodal models)",
                  "RerankRequest", "RerankResponse"),),
    schemas=lambda: {"RerankRequest": public_request_schema(), "RerankResponse": public_response_schema(),
                     "SageMakerRerankRequest": sagemaker_request_schema(),
                     "SageMakerRerankResponse": sagemaker_response_schema()},
    invocation_bodies=("SageMakerRerankRequest", "RerankRequest"),
    invocation_answers=("SageMakerRerankResponse", "RerankResponse"),
    body_keys=("query", "documents"),
    estimate=estimate,
    listing=Listing("reranks {count} document{s}", "`query_usage` and `docs_usage` in its answer"),
    invocation=invocation,
    # a CSV row is one request in the SageMaker envelope's `data`, answered with its id in front
    rows=RowRequests(decode=lambda record: decode_sagemaker({"data": record}, prefix=""),
                     render=lambda decoded, result: render_item(decoded.request, result)),
)
