"""SageMaker batch transform bodies (contract §4): CSV and JSON Lines, many records a request.

CSV (`text/csv`, `application/csv`), no header, column 1 an id that is echoed back; the other columns
are the served kind's (its `CsvLayout` in the registry, model_handlers/kinds/__init__.py): `id,text` for text
embeddings, `id,query,documents,top_n` for rerankers (documents a JSON array), `id,text,url,bytes` for
multimodal models (one of the three filled). Each row becomes the JSON
record the SageMaker dialect parses — `{"text": ...}` an input, `{"query", "documents", "top_n"}` a rerank
request — and is decoded and answered by that dialect's own field parsers and renderers.

Both quotings parse: unquoted with backslash escapes (`1,open\\, really?`) and RFC-4180 fully
quoted (`"1","with, comma"`). The answer is one compact JSON object, newline-terminated (SageMaker
concatenates the answers of a job), in the SageMaker envelope with each row's id echoed.

JSON Lines (`application/jsonlines`, `application/jsonl`, `application/x-jsonlines`): each line
is any JSON body `/invocations` accepts, or a single record (`"text"`, `{"text", "id"}`, an image
`{"image"}`, `{"url"}`, `{"bytes"}`, or `{"audio"}`, `{"video"}`, `{"pdf"}`), answered as the one-input
envelope `{"data": [record]}`; the answer has one JSON line per line in, same order (a blank line answers `null`).

A row that does not parse is a 400 naming its line; an error while running a row keeps its own
status and code, its detail prefixed with the line(s).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import orjson

from container import dialects
from container.dialects import JSON, Decoded, Records, RowRequests, TypedResult, fields, sagemaker
from container.errors import BadRequest, PayloadTooLarge, SearchboxError
from container.settings import ENV_MAX_BATCH_ROWS
from model_handlers import kinds
from model_handlers.kinds import CsvLayout, Kind

CSV_TYPES = ("text/csv", "application/csv")
JSONLINES_TYPES = ("application/jsonlines", "application/jsonl", "application/x-jsonlines")
JSONLINES = JSONLINES_TYPES[0]

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
# Text per embedding request of a CSV body: about 16k tokens, one forward pass at the default token
# budget. Chunks run one after the other, so each must finish within the request timeout alone.
_CHUNK_CHARS = 64 * 1024
_QUOTING_HINT = 'quote fields that hold commas ("1","a, b") or escape them (1,a\\, b)'
# A JSON line that is an object with one of the keys fields.embed_input reads, and none that only a
# whole body has (`WireOperation.body_keys`), is a single record (SageMaker's SplitType=Line hands over a file's
# records as they are).
_RECORD_KEYS = ("text", *fields.IMAGE_KEYS, *fields.OTHER_KEYS)
# A CSV answer is one JSON object on one line: also a JSON Lines file of one line.
_CSV_ANSWER_TYPES = (JSON, *JSONLINES_TYPES)
# A blank line of a JSON Lines body has no request: its line out is JSON's null.
_BLANK_ANSWER = b"null\n"


def decode_csv(body: bytes, kind: Kind, max_inputs: int, max_rows: int,
               parameters: Mapping[str, Any] | None = None) -> Records:
    """CSV rows of the served `kind`; input rows go to the model in requests of at most `max_inputs`.

    `parameters`: what the job asks of every row's input beside it (a classify job's labels, `Settings.csv_parameters`):
    each row is then one input of an envelope with these `parameters`, read as /invocations reads that envelope.

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
    records = [_record(row, kind) for row in rows]
    if parameters:
        return _input_rows(rows, records, max_inputs, parameters)
    if kind.csv.per_input:
        return _input_rows(rows, records, max_inputs)
    return _request_rows(rows, records, dialects.named(kind.csv.operation).rows)


def decode_jsonlines(body: bytes, decode: Callable[[Any], Decoded], max_rows: int, first_line: int = 1) -> Records:
    """One JSON body a line, each decoded by the route's own `decode`; a blank line is answered `null`, so that the
    answer keeps one line per line in (batch transform joins its output to its input by line). `first_line`: the
    number of the body's first line, where it is a slice of a larger one (container/spooled.py).

    Raises:
        BadRequest: a line does not parse (naming it).
        PayloadTooLarge: more than `max_rows` lines.
    """
    lines = split_lines(body)
    if len(lines) > max_rows:
        raise too_many_rows(max_rows, "lines")
    decoded: list[Decoded | None] = []
    origins: list[str] = []
    for number, line in enumerate(lines, start=first_line):
        if not line.strip():
            decoded.append(None)
            continue
        where = f"line {number}"
        try:
            decoded.append(fields.decode_body(lambda value: decode(_line_body(value)), line))
        except SearchboxError as exc:
            raise BadRequest(f"{where}: {exc.detail}", code="INVALID_JSON_LINE") from None
        origins.append(where)
    answered = [d for d in decoded if d is not None]

    def render(results: list[TypedResult]) -> bytes:
        by_line = iter(zip(answered, results))
        return b"".join((_BLANK_ANSWER if d is None else _json_line(*next(by_line))) for d in decoded)

    return Records([d.request for d in answered], origins, render, encodings=[d.encoding for d in answered],
                   answer_types=answer_types(len(lines)))


def split_lines(body: bytes) -> list[bytes]:
    """A JSON Lines body's lines: the newline that ends the last line does not start another."""
    lines = body.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return lines


def _json_line(decoded: Decoded, result: TypedResult) -> bytes:
    return orjson.dumps(decoded.render(result), option=_JSON_OPTIONS) + b"\n"


def answer_types(lines: int) -> tuple[str, ...]:
    """What the answer to a JSON Lines body of `lines` lines may be labelled: one line out is also a JSON document."""
    return (*JSONLINES_TYPES, JSON) if lines == 1 else JSONLINES_TYPES


def csv_layouts() -> str:
    """Every kind's CSV row, for a document that names them: "`id,text` (multi-vector, embedding), ..."."""
    by_header: dict[str, list[Kind]] = {}
    for kind in kinds.registered():
        by_header.setdefault(kind.csv.header, []).append(kind)
    parts = []
    for header, named in by_header.items():
        notes = ", ".join(f"{column.field} a JSON array" for column in named[0].csv.columns if column.json)
        parts.append(f"`{header}` ({', '.join(kind.name for kind in named)}{'; ' + notes if notes else ''})")
    return ", ".join(parts)


def _line_body(value: Any) -> Any:
    """A line's JSON as a request body: a single record becomes the one-input SageMaker envelope."""
    body_keys = {key for wire in dialects.registered() for key in wire.body_keys}
    if isinstance(value, str) or (isinstance(value, dict) and any(key in value for key in _RECORD_KEYS)
                                  and not any(key in value for key in body_keys)):
        return {"data": [value]}
    return value


@dataclass(frozen=True)
class _Row:
    line: int
    fields: list[str]

    @property
    def id(self) -> str:
        return self.fields[0]


def _utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = body.count(b"\n", 0, exc.start) + 1
        raise BadRequest(f"line {line}: the body is not valid UTF-8 (byte {exc.start}); send UTF-8 text",
                         code="INVALID_CSV") from None


def too_many_rows(max_rows: int, what: str = "lines") -> PayloadTooLarge:
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
                raise too_many_rows(max_rows, "rows")
            rows.append(_Row(start, fields_))
        start = reader.line_num + 1


# --- a row: its columns to the JSON record the SageMaker dialect parses ------------------------------

def _record(row: _Row, kind: Kind) -> dict[str, Any]:
    """The row's columns as the JSON record of the kind's layout.

    Raises:
        BadRequest: the row has the wrong number of columns or a JSON column does not parse; the message
            names the line, the layout, and the kind whose rows this one looks like, if any.
    """
    layout = kind.csv
    problem = _layout_problem(row, layout)
    if problem:
        raise BadRequest(f"line {row.line}: {problem}; rows for this model are `{layout.header}`"
                         f"{_other_layout_hint(row, kind)}", code="INVALID_CSV")
    record: dict[str, Any] = {}
    for column, value in zip(layout.columns, row.fields[1:]):
        if value == "" and (column.optional or len(layout.columns) > 1 and layout.per_input):
            continue
        record[column.field] = orjson.loads(value) if column.json else value
    if layout.per_input and len(layout.columns) > 1 and len(record) != 1:
        names = ", ".join(column.field for column in layout.columns)
        raise BadRequest(f"line {row.line}: a row fills exactly one of {names}, here {len(record)} are filled; "
                         f"{_QUOTING_HINT}", code="INVALID_CSV")
    return record


def _layout_problem(row: _Row, layout: CsvLayout) -> str | None:
    """Why the row does not fit the layout (column count, a JSON column that is not JSON), else None."""
    least = 1 + sum(not column.optional for column in layout.columns)
    most = 1 + len(layout.columns)
    if not least <= len(row.fields) <= most:
        expected = f"{least}" if least == most else f"{least} or {most}" if most == least + 1 else f"{least}-{most}"
        return f"expected {expected} columns, got {len(row.fields)}; {_QUOTING_HINT}"
    for number, (column, value) in enumerate(zip(layout.columns, row.fields[1:]), start=2):
        if column.json and not (column.optional and value == ""):
            try:
                orjson.loads(value)
            except orjson.JSONDecodeError:
                return f"column {number} ({column.field}) is not valid JSON"
    return None


def _other_layout_hint(row: _Row, kind: Kind) -> str:
    """When the row fits another kind's layout, say which model such rows need."""
    for other in kinds.registered():
        if other.csv == kind.csv or not any(column.json for column in other.csv.columns):
            continue  # a layout of plain text columns fits any row: it tells nothing
        if _layout_problem(row, other.csv) is None:
            route = dialects.named(other.csv.operation).routes[0].path
            also = (f", or send them as JSON bodies ({route}), which this model answers too"
                    if kind.answers(other.csv.operation) else "")
            return (f". This looks like a row for {other.summary} (`{other.csv.header}`): such rows need a "
                    f"{other.name} model (SEARCHBOX_MODEL_DIR=<its directory> serve){also}")
    return ""


# --- rows to requests ------------------------------------------------------------------------------

def _input_rows(rows: list[_Row], records: list[dict[str, Any]], max_inputs: int,
                parameters: Mapping[str, Any] | None = None) -> Records:
    """Each row one input; consecutive rows go to the model in requests of up to `max_inputs` (one chunk after
    the other: each already fills the batcher and gets the whole timeout's share it needs). With `parameters`, each
    request is the envelope with them, as /invocations reads it (a classify job's labels)."""
    decoded, origins = [], []
    for chunk in _chunks(rows, max_inputs):
        body: dict[str, Any] = {"data": [{**record, "id": row.id} for row, record in zip(rows[chunk], records[chunk])]}
        if parameters:
            body["parameters"] = dict(parameters)
        first, last = rows[chunk.start].line, rows[chunk.stop - 1].line
        where = f"line {first}" if first == last else f"lines {first}-{last}"
        decoded.append(_decode_row(dialects.decode_invocation if parameters else sagemaker.decode, body, where))
        origins.append(where)

    def render(results: list[TypedResult]) -> bytes:
        items = [item for d, result in zip(decoded, results) for item in d.render(result)["data"]]
        return orjson.dumps({"data": items, "parameters": {}}, option=_JSON_OPTIONS) + b"\n"

    return Records([d.request for d in decoded], origins, render, concurrent=False,
                   encodings=[d.encoding for d in decoded], answer_types=_CSV_ANSWER_TYPES)


def _request_rows(rows: list[_Row], records: list[dict[str, Any]], requests: RowRequests) -> Records:
    """Each row one request (a rerank), as the operation's dialect reads and answers it; rows run side by side so
    the batcher packs them together."""
    decoded = [_decode_row(requests.decode, record, f"line {row.line}") for row, record in zip(rows, records)]

    def render(results: list[TypedResult]) -> bytes:
        items = [{"id": row.id, **requests.render(d, result)} for row, d, result in zip(rows, decoded, results)]
        return orjson.dumps({"data": items, "parameters": {}}, option=_JSON_OPTIONS) + b"\n"

    return Records([d.request for d in decoded], [f"line {row.line}" for row in rows], render,
                   answer_types=_CSV_ANSWER_TYPES)


def _decode_row(decode: Callable[[Any], Decoded], body: Any, where: str) -> Decoded:
    try:
        return decode(body)
    except SearchboxError as exc:
        raise BadRequest(f"{where}: {exc.detail}", code="INVALID_CSV") from None


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
