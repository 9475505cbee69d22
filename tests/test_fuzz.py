"""Property-based fuzzing of every route and content type: whatever arrives, the answer is a 2xx in the
route's format or the contract's JSON error, never a 500, never a stack trace.

Bodies mix the contract's keys with hostile values (huge and non-ASCII numbers, deep nesting, odd unicode,
wrong types) so that most examples get past the JSON parser into the dialects. Through `create_app` and
Flask's test client on the real embedded model. `make test` runs a quick slice; `make soak` a long one
(SEARCHBOX_FUZZ_EXAMPLES).
"""

from __future__ import annotations

import os

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("SEARCHBOX_FUZZ_EXAMPLES", "150"))
ERROR_KEYS = {"detail", "code", "request_id"}
KEYS = ["data", "input", "query", "documents", "parameters", "top_n", "dimensions", "embedding_type",
        "encoding_format", "normalized", "task", "late_chunking", "truncate", "return_documents", "input_type",
        "text", "image", "url", "bytes", "id", "model"]

texts = st.text(max_size=40) | st.sampled_from(["", " ", "²", "①", "+-5", "1e400", "NaN", "\x00", "\ud7ff",
                                                  "9" * 30, "retrieval.query", "float", "base64", "ubinary"])
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
    st.fixed_dictionaries({"input": inputs | texts | values}, optional={k: values for k in KEYS[5:14]}),
    st.fixed_dictionaries({"query": texts | values, "documents": inputs | values},
                          optional={"top_n": values, "return_documents": values}),
    st.fixed_dictionaries({"data": st.fixed_dictionaries({"query": texts | values, "documents": inputs},
                                                         optional={"top_n": values})}),
    values,
)
json_bodies = shaped.map(lambda body: orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
                         if _dumpable(body) else b"{}")
csv_bodies = st.lists(st.lists(st.text(alphabet=st.sampled_from('ab,"\\\n\r 1{}[]'), max_size=12), max_size=5),
                      max_size=6).map(lambda rows: "\n".join(",".join(row) for row in rows).encode())
jsonl_bodies = st.lists(json_bodies | st.binary(max_size=20), max_size=5).map(lambda lines: b"\n".join(lines))
bodies = json_bodies | csv_bodies | jsonl_bodies | st.binary(max_size=300)
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/csv",
                                 "application/csv", "application/jsonlines", "application/x-jsonlines",
                                 "text/plain", "", "application/vnd.api+json", "multipart/form-data"])
routes = st.sampled_from([("POST", "/invocations"), ("POST", "/score"), ("POST", "/v1/embeddings"),
                          ("POST", "/v1/multi-vector"), ("POST", "/v1/rerank"), ("GET", "/ping"),
                          ("GET", "/execution-parameters"), ("PUT", "/invocations"), ("GET", "/v1/embeddings"),
                          ("POST", "/nowhere")])


def _dumpable(body) -> bool:
    try:
        orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
        return True
    except orjson.JSONEncodeError:
        return False


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(route=routes, content_type=content_types, body=bodies)
def test_every_answer_is_the_routes_format_or_the_contracts_error(client, route, content_type, body):
    method, path = route
    response = client.open(path, method=method, data=body, content_type=content_type or None)
    assert response.status_code < 500 or response.status_code == 503, (response.status_code, response.data[:300])
    assert "Traceback" not in response.get_data(as_text=True)
    assert response.headers.get("X-Request-Id")
    if response.status_code >= 400:
        error = orjson.loads(response.data)
        assert set(error) == ERROR_KEYS and error["request_id"] == response.headers["X-Request-Id"]
        assert len(error["detail"]) < 2000  # an error never echoes a whole input back
    elif response.mimetype == "application/jsonlines":
        for line in response.data.splitlines():
            orjson.loads(line)  # each line JSON (a line of no texts answers `[]`)
    else:
        orjson.loads(response.data)
