"""Operation `tokenize` on the wire: POST /v1/tokenize.

`{"model"?, "input": "..." | ["...", {"text"}], "return_tokens": false}` -> `{"model", "object": "list", "usage":
{"total_tokens": 0}, "max_length", "data": [{"object": "tokenization", "index", "num_tokens", "tokens"?, "ids"?}]}`:
each text's token count as the served model reads it (special tokens included, before truncation at `max_length`),
and with `return_tokens` its vocabulary strings and ids. Not billed. Its body is an embeddings body on /invocations
(`input`), so it has a route of its own only; a SageMaker caller counts with a segment body (`content`).
"""

from __future__ import annotations

from typing import Any

from container.dialects import ITEM_OVERHEAD_BYTES, Decoded, Listing, Route, WireOperation, fields
from model_handlers.operations.tokenize import TOKENIZE, TokenizeRequest, TokenizeResult

_SHAPE = '{"input": ["text", ...], "return_tokens": true}'
# What one token adds to an answer with return_tokens: its string (a few characters, JSON-escaped) and its id.
_TOKEN_BYTES = 32
RETURN_TOKENS = fields.Option("return_tokens", fields.flag(False), fields.boolean_schema(False),
                              "answer each text's tokens (vocabulary strings) and ids, special tokens included")


def decode(body: Any) -> Decoded:
    request = TokenizeRequest(inputs=fields.input_list(body, _SHAPE), return_tokens=RETURN_TOKENS.parse(body))
    return Decoded(request, render)


def render(result: TokenizeResult) -> dict[str, Any]:
    data = []
    for index, item in enumerate(result.items):
        answer: dict[str, Any] = {"object": "tokenization", "index": index, "num_tokens": len(item.ids)}
        if item.tokens is not None:
            answer["tokens"] = list(item.tokens)
            answer["ids"] = item.ids
        data.append(answer)
    return {"model": result.model, "object": "list", "usage": {"total_tokens": result.total_tokens},
            "max_length": result.max_length, "data": data}


def request_schema() -> dict[str, Any]:
    item = fields.input_schema()
    return {"type": "object", "required": ["input"], "properties": {
        "input": {"oneOf": [item, {"type": "array", "items": item}], "description": "one text or a list"},
        "model": {"type": "string", "description": "accepted and ignored: the endpoint serves one model"},
        RETURN_TOKENS.name: RETURN_TOKENS.property_schema()}}


def response_schema() -> dict[str, Any]:
    item = {"type": "object", "required": ["object", "index", "num_tokens"], "properties": {
        "object": {"const": "tokenization"}, "index": {"type": "integer"},
        "num_tokens": {"type": "integer", "description": "the text's tokens and the special tokens around it"},
        "tokens": {"type": "array", "items": {"type": "string"}, "description": "with return_tokens"},
        "ids": {"type": "array", "items": {"type": "integer"}, "description": "with return_tokens"}}}
    return {"type": "object", "required": ["model", "object", "usage", "max_length", "data"], "properties": {
        "model": {"type": "string"}, "object": {"const": "list"},
        "usage": {"type": "object", "required": ["total_tokens"],
                  "properties": {"total_tokens": {"const": 0, "description": "tokenizing is not billed"}}},
        "max_length": {"type": "integer", "description": "tokens one model input holds; embeddings truncate (or "
                                                         "refuse) a longer text"},
        "data": {"type": "array", "items": item}}}


def estimate(request: TokenizeRequest, encoding: Any, pipeline: Any) -> int:
    """An upper bound of the answer's bytes: with tokens, at most one per UTF-8 byte of the text (a byte-level BPE)
    and the special ones."""
    encoded = sum(len(value.encode("utf-8", "surrogatepass")) for item in request.inputs
                  for value in fields.render_input(item).values())
    per_token = _TOKEN_BYTES if request.return_tokens else 0
    return (encoded + 8 * len(request.inputs)) * per_token + len(request.inputs) * ITEM_OVERHEAD_BYTES


WIRE = WireOperation(
    name=TOKENIZE,
    hint='tokenize: {"input": ["..."], "return_tokens": true} to /v1/tokenize',
    routes=(Route("/v1/tokenize", decode, "tokenize",
                  "Each text's tokens as the served model counts them (special tokens included); not billed",
                  "TokenizeRequest", "TokenizeResponse"),),
    schemas=lambda: {"TokenizeRequest": request_schema(), "TokenizeResponse": response_schema()},
    invocation_bodies=(),
    invocation_answers=(),
    body_keys=(),
    estimate=estimate,
    listing=Listing("tokenizes {count} text{s}", "`num_tokens` of each item (tokenizing is not billed)"),
)
