"""SageMaker batch transform bodies (contract §4): CSV and JSON Lines, many records a request.

CSV (`text/csv`, `application/csv`), no header, column 1 an id that is echoed back; the other
columns follow the served model's kind:

- embedding models: `id,text` (multimodal: `id,text,url,bytes`, exactly one of them filled)
- rerankers: `id,query,documents,top_n` with `documents` a JSON array of strings or `{"text"}`
  objects and `top_n` optional (empty: every document)

Both quotings parse: unquoted with backslash escapes (`1,open\\, really?`) and RFC-4180 fully
quoted (`"1","with, comma"`). The answer is one compact JSON object, newline-terminated (SageMaker
concatenates the answers of a job), in the SageMaker envelope with each row's id echoed:

- embedding: `{"data": [{"id", "embedding", "usage": {"total_tokens"}}, ...], "parameters": {}}`
- reranker: `{"data": [{"id", "query_usage", "docs_usage", "results": [...]}, ...], "parameters": {}}`

JSON Lines (`application/jsonlines`, `application/jsonl`, `application/x-jsonlines`): each line
is any JSON body `/invocations` accepts, or a single record (`"text"`, `{"text", "id"}`, or an image
`{"image"}`, `{"url"}`, `{"bytes"}`), answered as the one-input envelope `{"data": [record]}`; the
answer has one JSON line per line in, same order.

A row that does not parse is a 400 naming its line; an error while running a row keeps its own
status and code, its detail prefixed with the line(s).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import orjson
from sagemaker_inference import content_types

from container.dialects import Decoded, TypedRequest, TypedResult, fields
from container.errors import BadRequest, PayloadTooLarge, SearchboxError
from container.settings import ENV_MAX_BATCH_ROWS, Settings
from model_handlers.serving_config import ModelKind
from model_handlers.types import (
    EmbeddingType, EmbedInput, EmbedRequest, EmbedResult, ImageInput, RerankRequest, RerankResult, TextInput,
)

CSV_TYPES = (content_types.CSV, "application/csv")
JSONLINES_TYPES = ("application/jsonlines", "application/jsonl", "application/x-jsonlines")
JSONLINES = JSONLINES_TYPES[0]

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_COLUMNS = {
    ModelKind.EMBEDDING: "`id,text` (multimodal models: `id,text,url,bytes`)",
    ModelKind.RERANKER: "`id,query,documents,top_n` (documents a JSON array, top_n optional)",
}
# Text per embedding request of a CSV body: about 16k tokens, one forward pass at the default token
# budget. Chunks run one after the other, so each must finish within the request timeout alone.
_CHUNK_CHARS = 64 * 1024
_QUOTING_HINT = 'quote fields that hold commas ("1","a, b") or escape them (1,a\\, b)'
# A JSON line that is an object with one of the keys fields.embed_input reads, and none that only a
# whole body has, is a single record (SageMaker's SplitType=Line hands over a file's records as they are).
_RECORD_KEYS = ("text", *fields._IMAGE_KEYS)
_BODY_KEYS = ("data", "input", "query", "documents", "parameters")


@dataclass(frozen=True)
class Records:
    """A body decoded into typed requests to run in order, and how to render their results as one body.

    Attributes:
        requests: the typed requests, each run through the handler.
        origins: where each request came from ("line 3", "lines 1-2048"), to prefix its errors; "" for none.
        render: the results (one per request, same order) to the response body.
        content_type: the response's media type.
        concurrent: run the requests side by side (small ones, so the batcher packs them together)
            rather than one after the other (large ones, each filling whole forward passes).
    """

    requests: Sequence[TypedRequest]
    origins: Sequence[str]
    render: Callable[[list[TypedResult]], bytes]
    content_type: str = content_types.JSON
    concurrent: bool = True


def decode_csv(body: bytes, kind: ModelKind, max_inputs: int, max_rows: int) -> Records:
    """CSV rows for a model of `kind`; embedding rows go to the handler in requests of at most `max_inputs`.

    Raises:
        BadRequest: a row does not parse (naming its line).
        PayloadTooLarge: more than `max_rows` rows.
    """
    text = _utf8(body)
    # The body is already bounded by the payload limit; csv's default 128 KiB field cap would
    # refuse a reranker row's long documents array.
    if csv.field_size_limit() < len(text):
        csv.field_size_limit(len(text))
    rows = _csv_rows(text, max_rows)
    if kind is ModelKind.RERANKER:
        return _rerank_records(rows)
    return _embed_records(rows, max_inputs)


def decode_jsonlines(body: bytes, decode: Callable[[Any], Decoded], max_rows: int) -> Records:
    """One JSON body a line, each decoded by the route's own `decode`; blank lines are skipped.

    Raises:
        BadRequest: a line does not parse (naming it).
        PayloadTooLarge: more than `max_rows` lines.
    """
    decoded: list[Decoded] = []
    origins: list[str] = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        if len(decoded) >= max_rows:
            raise _too_many_rows(max_rows, "lines")
        where = f"line {number}"
        try:
            decoded.append(fields.decode_body(lambda value: decode(_line_body(value)), line))
        except SearchboxError as exc:
            raise BadRequest(f"{where}: {exc.detail}", code="INVALID_JSON_LINE") from None
        origins.append(where)

    def render(results: list[TypedResult]) -> bytes:
        return b"".join(orjson.dumps(d.render(r), option=_JSON_OPTIONS) + b"\n" for d, r in zip(decoded, results))

    return Records([d.request for d in decoded], origins, render, JSONLINES)


def _line_body(value: Any) -> Any:
    """A line's JSON as a request body: a single record becomes the one-input SageMaker envelope."""
    if isinstance(value, str) or (isinstance(value, dict) and any(key in value for key in _RECORD_KEYS)
                                  and not any(key in value for key in _BODY_KEYS)):
        return {"data": [value]}
    return value


@dataclass(frozen=True)
class _Row:
    line: int
    fields: list[str]


def _utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = body.count(b"\n", 0, exc.start) + 1
        raise BadRequest(f"line {line}: the body is not valid UTF-8 (byte {exc.start}); send UTF-8 text",
                         code="INVALID_CSV") from None


def _too_many_rows(max_rows: int, what: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"the body holds more than {max_rows} {what}, the cap on one batch body "
                           f"({ENV_MAX_BATCH_ROWS}); send fewer per request (a smaller MaxPayloadInMB)",
                           code="TOO_MANY_ROWS")


def _csv_rows(text: str, max_rows: int) -> list[_Row]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=",", quotechar='"', doublequote=True,
                        escapechar="\\", strict=True)
    rows = []
    start = 1
    while True:
        try:
            fields_ = next(reader)
        except StopIteration:
            return rows
        except csv.Error as exc:
            raise BadRequest(f"line {start}: not valid CSV ({exc}); {_QUOTING_HINT}", code="INVALID_CSV") from None
        if fields_ and not (len(fields_) == 1 and not fields_[0].strip()):
            if len(rows) >= max_rows:
                raise _too_many_rows(max_rows, "rows")
            rows.append(_Row(start, fields_))
        start = reader.line_num + 1


def _row_error(row: _Row, kind: ModelKind, what: str) -> BadRequest:
    return BadRequest(f"line {row.line}: {what}; rows for this model are {_COLUMNS[kind]}", code="INVALID_CSV")


def _embed_records(rows: list[_Row], max_inputs: int) -> Records:
    ids = [row.fields[0] for row in rows]
    inputs = [_embed_input(row) for row in rows]
    requests, origins = [], []
    for chunk in _chunks(rows, max_inputs):
        requests.append(EmbedRequest(inputs=tuple(inputs[chunk])))
        first, last = rows[chunk.start].line, rows[chunk.stop - 1].line
        origins.append(f"line {first}" if first == last else f"lines {first}-{last}")

    def render(results: list[EmbedResult]) -> bytes:
        items = []
        embeddings = (pair for result in results for pair in zip(result.embeddings, result.token_counts))
        for item_id, (encoded, tokens) in zip(ids, embeddings):
            items.append({"id": item_id, "embedding": fields.render_embedding(encoded, False),
                          "usage": {"total_tokens": tokens}})
        return orjson.dumps({"data": items, "parameters": {}}, option=_JSON_OPTIONS) + b"\n"

    # One chunk after the other: each already fills the batcher, and each gets the whole request
    # timeout to itself (all chunks queued at once would have to finish within one timeout).
    return Records(requests, origins, render, concurrent=False)


def _chunks(rows: list[_Row], max_inputs: int) -> list[slice]:
    """Consecutive rows, at most `max_inputs` and about `_CHUNK_CHARS` of text each (at least one row)."""
    chunks, start, chars = [], 0, 0
    for index, row in enumerate(rows):
        if index > start and (index - start >= max_inputs or chars >= _CHUNK_CHARS):
            chunks.append(slice(start, index))
            start, chars = index, 0
        chars += sum(len(value) for value in row.fields[1:])
    if rows:
        chunks.append(slice(start, len(rows)))
    return chunks


def _embed_input(row: _Row) -> EmbedInput:
    values = row.fields
    if not 2 <= len(values) <= 4:
        raise _row_error(row, ModelKind.EMBEDDING, f"expected 2 columns, got {len(values)}; {_QUOTING_HINT}")
    if len(values) == 2:
        return TextInput(values[1])
    if _is_json_array(values[2]):
        # examples/batch/rerank.csv sent to an embedding model: say which model these rows need,
        # not that a multimodal row is malformed
        raise BadRequest(
            f"line {row.line}: this is a rerank row (id,query,documents,top_n); CSV rerank rows need a reranker "
            "model: serve a cross-encoder (SEARCHBOX_MODEL_DIR=<cross-encoder dir> serve), or send the rerank as "
            'a JSON body ({"query", "documents"}), which this embedding model answers by cosine similarity. '
            f"CSV rows for this model are {_COLUMNS[ModelKind.EMBEDDING]}", code="INVALID_CSV")
    filled = [(i, v) for i, v in enumerate(values[1:], start=1) if v != ""]
    if len(filled) != 1:
        raise _row_error(row, ModelKind.EMBEDDING,
                         f"got {len(values)} columns: {_QUOTING_HINT} (a multimodal row fills exactly one of "
                         f"text, url, bytes, here {len(filled)} are filled)")
    column, value = filled[0]
    return TextInput(value) if column == 1 else ImageInput(value)


def _is_json_array(value: str) -> bool:
    if not value.lstrip().startswith("["):
        return False
    try:
        return isinstance(orjson.loads(value), list)
    except orjson.JSONDecodeError:
        return False


def _rerank_records(rows: list[_Row]) -> Records:
    ids = [row.fields[0] for row in rows]
    requests = [_rerank_request(row) for row in rows]

    def render(results: list[RerankResult]) -> bytes:
        items = [
            {"id": item_id, "query_usage": {"total_tokens": result.query_tokens},
             "docs_usage": {"total_tokens": result.document_tokens},
             "results": [{"index": hit.index, "relevance_score": hit.relevance_score,
                          "document": {"text": request.documents[hit.index]},
                          "usage": {"total_tokens": hit.tokens}} for hit in result.hits]}
            for item_id, request, result in zip(ids, requests, results)
        ]
        return orjson.dumps({"data": items, "parameters": {}}, option=_JSON_OPTIONS) + b"\n"

    return Records(requests, [f"line {row.line}" for row in rows], render)


def _rerank_request(row: _Row) -> RerankRequest:
    values = row.fields
    if len(values) not in (3, 4):
        raise _row_error(row, ModelKind.RERANKER, f"expected 3 or 4 columns, got {len(values)}; {_QUOTING_HINT}")
    try:
        documents = orjson.loads(values[2])
    except orjson.JSONDecodeError:
        raise _row_error(row, ModelKind.RERANKER, 'column 3 (documents) is not valid JSON; send ["doc 1", "doc 2"]') \
            from None
    if not isinstance(documents, list):
        raise _row_error(row, ModelKind.RERANKER, "column 3 (documents) must be a JSON array")
    texts = []
    for index, document in enumerate(documents):
        if isinstance(document, dict) and isinstance(document.get("text"), str):
            document = document["text"]
        if not isinstance(document, str):
            raise _row_error(row, ModelKind.RERANKER,
                             f"documents[{index}] must be a string or an object with a `text` string")
        texts.append(document)
    top_n = None
    if len(values) == 4 and values[3].strip():
        raw = values[3].strip()
        if not raw.isdigit() or int(raw) < 1:
            raise _row_error(row, ModelKind.RERANKER, f"column 4 (top_n) must be a positive integer, got {raw!r}"[:200])
        top_n = int(raw)
    return RerankRequest(query=values[1], documents=tuple(texts), top_n=top_n)


# Upper bounds of one rendered value: a float32 in JSON ("-0.012345678," or "1.2345678e-05,"), a packed
# bit byte ("-128,"); and of what one answered input or document adds besides (id, usage, keys).
_FLOAT_BYTES = 15
_PACKED_BYTE_BYTES = 5
_ITEM_OVERHEAD_BYTES = 128


def estimated_response_bytes(requests: Sequence[TypedRequest], width: int | None) -> int:
    """An upper bound of the answer's size, before any work: what the response cap is checked against.

    `width` is the model's embedding width (None for rerankers, which make no vectors)."""
    total = 0
    for request in requests:
        if isinstance(request, EmbedRequest):
            dims = request.dimensions or width or 0
            per_vector = 0
            for kind in request.embedding_types:
                if kind is EmbeddingType.FLOAT:
                    per_vector += dims * _FLOAT_BYTES
                elif kind is EmbeddingType.BASE64:
                    per_vector += 4 * ((dims * 4 + 2) // 3) + 2
                else:
                    per_vector += ((dims + 7) // 8) * _PACKED_BYTE_BYTES
            total += len(request.inputs) * (per_vector + _ITEM_OVERHEAD_BYTES)
        else:
            shown = sum(len(d) for d in request.documents) if request.return_documents else 0
            total += 2 * shown + len(request.documents) * _ITEM_OVERHEAD_BYTES
    return total


_MIB = 1024 * 1024
# SageMaker refuses a job whose MaxConcurrentTransforms x MaxPayloadInMB exceeds this.
_TRANSFORM_BUDGET_MB = 100


def execution_parameters(settings: Settings, on_gpu: bool) -> dict[str, Any]:
    """`GET /execution-parameters`: what SageMaker should send, unless the job already said.

    One request's answer is about 100 times its CSV (a row of text becomes hundreds of JSON
    numbers) and must come back within the job's per-call timeout (600 s by default): 1 MB a
    request on CPU, 6 MB on GPU. A few requests in flight keep the batcher fed while others are
    parsed and rendered (2 on CPU, 4 on GPU). Values the job sets win; the ones chosen here are cut
    so that MaxConcurrentTransforms x MaxPayloadInMB stays within SageMaker's 100 MB.
    """
    body_limit_mb = max(1, settings.max_payload_bytes // _MIB)
    payload = settings.transform_max_payload_mb or min(6 if on_gpu else 1, body_limit_mb)
    concurrency = settings.transform_max_concurrent or (4 if on_gpu else 2)
    if settings.transform_max_concurrent is None:
        concurrency = max(1, min(concurrency, _TRANSFORM_BUDGET_MB // payload))
    elif settings.transform_max_payload_mb is None:
        payload = max(1, min(payload, _TRANSFORM_BUDGET_MB // concurrency))
    return {
        "MaxConcurrentTransforms": concurrency,
        "BatchStrategy": settings.transform_batch_strategy or "MULTI_RECORD",
        "MaxPayloadInMB": payload,
    }
