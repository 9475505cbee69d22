"""Generated requests for every route the server has, and the one rule every answer keeps.

Shared by the hypothesis fuzz (tests/test_fuzz.py, in-process, every model kind) and `make soak`'s generated
phase (bench/soak.py, the same bodies against real servers). Routes come from the route table
(container/routes.py), so an operation added there is fuzzed without touching this file; bodies mix the contract's
keys (every dialect's and integration shape's) with hostile values: huge and non-ASCII numbers, deep nesting, odd
unicode, wrong types, so that most of them get past the JSON parser into the dialects.
"""

from __future__ import annotations

from dataclasses import dataclass

import re

import orjson
from hypothesis import strategies as st

from container import dialects, routes
from container.engine import ADAPTER_HEADER

ERROR_KEYS = {"detail", "code", "request_id"}
# the contract's keys (§1-§2i), the integration shapes' (TEI, Cohere, OpenSearch, Elasticsearch, Azure AI Search)
# and those of the operations on their way (classify, segment)
KEYS = ["data", "input", "query", "documents", "parameters", "top_n", "dimensions", "embedding_type",
        "encoding_format", "normalized", "task", "late_chunking", "truncate", "return_documents", "input_type",
        "text", "image", "url", "bytes", "id", "model", "inputs", "texts", "embedding_types", "return_tokens",
        "text_docs", "input_text", "values", "recordId", "labels", "classifier_id", "content", "return_chunks",
        "max_chunk_length", "head", "tail", "tokenizer", "adapter", "name", "src", "preload", "pin", "prompt_name"]

texts = st.text(max_size=40) | st.sampled_from(["", " ", "²", "①", "+-5", "1e400", "NaN", "\x00", "\ud7ff",
                                                  "9" * 30, "retrieval.query", "float", "base64", "ubinary",
                                                  "binary", "int8", "query", "document", "classification"])
numbers = (st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False, allow_infinity=False)
           | st.sampled_from([0, -1, 1, 2, 3, 384, 385, 2048, 2049, 10**18]))
scalars = st.none() | st.booleans() | numbers | texts
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(KEYS) | texts, inner, max_size=4), max_leaves=12)
# the contract's shapes, with any value where a value goes
inputs = st.lists(texts | st.fixed_dictionaries({"text": texts}) | st.fixed_dictionaries({"image": texts})
                  | st.fixed_dictionaries({"text": values, "id": values}) | values, max_size=6)
shaped = st.one_of(
    st.fixed_dictionaries({"data": inputs | values}, optional={"parameters": st.dictionaries(
        st.sampled_from(KEYS), values, max_size=4)}),
    st.fixed_dictionaries({"input": inputs | texts | values}, optional={k: values for k in KEYS[5:15]}),
    st.fixed_dictionaries({"query": texts | values, "documents": inputs | values},
                          optional={"top_n": values, "return_documents": values}),
    st.fixed_dictionaries({"data": st.fixed_dictionaries({"query": texts | values, "documents": inputs},
                                                         optional={"top_n": values})}),
    st.fixed_dictionaries({"inputs": inputs | texts | values}, optional={k: values for k in ("truncate", "normalize", "prompt_name", "truncation_direction")}),
    st.fixed_dictionaries({"texts": inputs | values}, optional={"input_type": values, "embedding_types": values}),
    st.fixed_dictionaries({"values": st.lists(st.fixed_dictionaries({"recordId": values, "data": values}),
                                              max_size=3)}),
    st.dictionaries(st.sampled_from(KEYS), values, max_size=6),
    values,
)


def _dumps(body) -> bytes:
    try:
        return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return b"{}"


json_bodies = shaped.map(_dumps)
csv_bodies = st.lists(st.lists(st.text(alphabet=st.sampled_from('ab,"\\\n\r 1{}[]'), max_size=12), max_size=5),
                      max_size=6).map(lambda rows: "\n".join(",".join(row) for row in rows).encode())
jsonl_bodies = st.lists(json_bodies | st.binary(max_size=20), max_size=5).map(lambda lines: b"\n".join(lines))
bodies = json_bodies | csv_bodies | jsonl_bodies | st.binary(max_size=300)
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/csv",
                                 "application/csv", "application/jsonlines", "application/x-jsonlines",
                                 "text/plain", "", "application/vnd.api+json", "multipart/form-data"])
_SHAPES = [f"searchbox-shape={shape.id}" for shape in dialects.shapes()]
headers = st.fixed_dictionaries({}, optional={
    dialects.CUSTOM_ATTRIBUTES_HEADER: st.sampled_from(_SHAPES) | texts.filter(str.isprintable),
    ADAPTER_HEADER: st.sampled_from(["retrieval.query", "nope", "__base__"]) | texts.filter(str.isprintable),
    "Accept": st.sampled_from(["application/json", "application/jsonlines", "text/csv", "*/*", "image/png"]),
}).map(lambda found: {name: value.replace("\r", "").replace("\n", "").strip() for name, value in found.items()})


def _paths(route: routes.Route):
    if "<" not in route.path:
        return st.just((route.method, route.path))
    return st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/?#%"), min_size=1,
                   max_size=12).map(lambda name: (route.method, re.sub(r"\{\w+\}", lambda _: name, route.template)))


# every route of the table, a wrong method on one, and a path the server does not have
paths = st.one_of(*[_paths(route) for route in routes.routes()],
                  st.sampled_from([("PUT", "/invocations"), ("GET", "/v1/embeddings"), ("POST", "/nowhere")]))


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    content_type: str
    headers: dict
    body: bytes


requests = st.builds(lambda route, content_type, extra, body: Request(route[0], route[1], content_type, extra, body),
                     paths, content_types, headers, bodies)


def broken_rule(status: int, request_id: str | None, media_type: str, body: bytes) -> str | None:
    """Why an answer breaks the server's promise (None: it keeps it): a 2xx in the route's format or the contract's
    JSON error, never a 5xx but a 503 refusal, never a stack trace, always a request id."""
    if status >= 500 and status != 503:
        return f"HTTP {status}: {body[:300]!r}"
    if b"Traceback" in body:
        return f"a stack trace in an HTTP {status}"
    if not request_id:
        return f"no X-Request-Id on an HTTP {status}"
    try:
        if status >= 400:
            error = orjson.loads(body)
            if set(error) != ERROR_KEYS or error["request_id"] != request_id:
                return f"HTTP {status} is not the contract's error: {body[:300]!r}"
            if len(error["detail"]) >= 2000:
                return "an error echoes a whole input back"
        elif media_type == "application/jsonlines":
            for line in body.splitlines():
                orjson.loads(line)  # each line JSON (a line of no texts answers `[]`)
        elif media_type == "application/json":
            orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"HTTP {status} {media_type} is not JSON: {body[:300]!r}"
    return None
