"""Operation `segment` on the wire (contract §2h): POST /v1/segment, and `{"content"}` bodies on /invocations.

Jina's Segmenter body, `{"content", "tokenizer"?, "return_tokens"?, "return_chunks"?, "max_chunk_length"?, "head"?,
"tail"?}` plus `max_chunk_tokens`, answered `{"num_tokens", "tokenizer", "usage": {"tokens": 0}, "num_chunks"?,
"chunk_positions"?, "chunks"?, "tokens"?}`: chunks and their positions with `return_chunks`, tokens with
`return_tokens` (per chunk, or one list for the content, as `[text, [ids]]` runs). `tokenizer` answers the served
model's name. The same body goes to /invocations (its `content` key is no other operation's) and on JSON Lines lines.
"""

from __future__ import annotations

from typing import Any, Mapping

from container.dialects import ITEM_OVERHEAD_BYTES, Decoded, Listing, Route, WireOperation, fields
from container.errors import ValidationFailed
from model_handlers.operations.segment import DEFAULT_CHUNK_CHARACTERS, SEGMENT, SegmentRequest, SegmentResult

_SHAPE = '{"content": "...", "return_chunks": true, "max_chunk_length": 1000}'
# integers, refused below 1 by the operation (model_handlers/operations/segment.py), as `top_k` is
_POSITIVE = fields.INTEGER_SCHEMA
OPTIONS = (
    fields.Option("tokenizer", fields.optional_str, {"type": "string"},
                  "the served model's name, or left out: the endpoint tokenizes with the model's own tokenizer "
                  "(another name, such as cl100k_base, is refused: 422 UNKNOWN_TOKENIZER)"),
    fields.Option("return_tokens", fields.flag(False), fields.boolean_schema(False),
                  "answer the tokens: per chunk (or for the whole content), runs of [text, [ids]]"),
    fields.Option("return_chunks", fields.flag(False), fields.boolean_schema(False),
                  "cut the content into chunks; answer them and their positions"),
    fields.Option("max_chunk_length", fields.optional_int, _POSITIVE,
                  f"characters one chunk may hold ({DEFAULT_CHUNK_CHARACTERS} when neither limit is given)"),
    fields.Option("max_chunk_tokens", fields.optional_int, _POSITIVE,
                  "tokens one chunk may hold, the chunk read alone by the model (special tokens not counted): the "
                  "model's max_length less its special tokens keeps every chunk whole when embedded"),
    fields.Option("head", fields.optional_int, _POSITIVE, "keep the first N tokens of the content only; not with tail"),
    fields.Option("tail", fields.optional_int, _POSITIVE, "keep the last N tokens of the content only; not with head"),
)


def decode(body: Any) -> Decoded:
    if not isinstance(body, dict) or "content" not in body:
        raise ValidationFailed(f"the body must be a JSON object with `content`: {_SHAPE}")
    content = body["content"]
    if not isinstance(content, str):
        raise ValidationFailed("`content` must be a string: the text to tokenize and cut into chunks")
    request = SegmentRequest(content=content, **{option.name: option.parse(body) for option in OPTIONS})

    def render(result: SegmentResult) -> dict[str, Any]:
        answer: dict[str, Any] = {"num_tokens": result.num_tokens, "tokenizer": result.model,
                                  "usage": {"tokens": result.total_tokens}}
        if result.chunks is not None:
            answer["num_chunks"] = len(result.chunks)
            answer["chunk_positions"] = [[start, end] for start, end in result.chunks]
            answer["chunks"] = [content[start:end] for start, end in result.chunks]
        if result.tokens is not None:
            answer["tokens"] = [[[content[run.start:run.end], list(run.ids)] for run in runs]
                                for runs in result.tokens]
        return answer

    return Decoded(request, render)


def invocation(body: Mapping[str, Any]) -> Decoded | None:
    """A segment body on /invocations: it has `content`, which no other operation's body has."""
    return decode(body) if "content" in body else None


def request_schema() -> dict[str, Any]:
    return {"type": "object", "required": ["content"], "properties": {
        "content": {"type": "string", "description": "the text to tokenize and (with return_chunks) cut"},
        **{option.name: option.property_schema() for option in OPTIONS}}}


def response_schema() -> dict[str, Any]:
    run = {"type": "array", "prefixItems": [{"type": "string"}, {"type": "array", "items": {"type": "integer"}}],
           "minItems": 2, "maxItems": 2, "description": "the text some tokens cover, and their ids"}
    return {"type": "object", "required": ["num_tokens", "tokenizer", "usage"], "properties": {
        "num_tokens": {"type": "integer", "description": "the content's tokens (what head/tail keep)"},
        "tokenizer": {"type": "string", "description": "the served model, whose tokenizer counted"},
        "usage": {"type": "object", "required": ["tokens"],
                  "properties": {"tokens": {"const": 0, "description": "segmenting is not billed"}}},
        "num_chunks": {"type": "integer"},
        "chunk_positions": {"type": "array", "description": "[start, end) character offsets into content",
                            "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}},
        "chunks": {"type": "array", "items": {"type": "string"},
                   "description": "content[start:end] of each position; together exactly the content"},
        "tokens": {"type": "array", "items": {"type": "array", "items": run},
                   "description": "per chunk (one list without return_chunks)"}}}


def estimate(request: SegmentRequest, encoding: Any, pipeline: Any) -> int:
    """An upper bound of the answer's bytes: the chunks echo the content (twice: JSON escapes, six bytes a code point
    at worst), tokens at most one per UTF-8 byte, each with its text and id."""
    encoded = len(request.content.encode("utf-8", "surrogatepass"))
    chunks = 6 * len(request.content) if request.return_chunks else 0
    tokens = 32 * encoded if request.return_tokens else 0
    return chunks + tokens + ITEM_OVERHEAD_BYTES


WIRE = WireOperation(
    name=SEGMENT,
    hint='segment: {"content": "...", "return_chunks": true} to /v1/segment or /invocations',
    routes=(Route("/v1/segment", decode, "segment",
                  "Jina's Segmenter with the served model's tokenizer: token count, chunks at paragraph and sentence "
                  "boundaries, tokens; not billed", "SegmentRequest", "SegmentResponse"),),
    schemas=lambda: {"SegmentRequest": request_schema(), "SegmentResponse": response_schema()},
    invocation_bodies=("SegmentRequest",),
    invocation_answers=("SegmentResponse",),
    body_keys=("content",),
    estimate=estimate,
    listing=Listing("segments {count} text{s}", "`num_tokens` in its answer (segmenting is not billed)"),
    invocation=invocation,
)
