"""Bad input never reaches a 500: integers, ids, echoed parameters, byte-order marks, batch caps.

Through `create_app` and Flask's test client on the real embedded model (no server start needed)."""

from __future__ import annotations

import time

import orjson
import pytest

from helpers import Answer, assert_error, serving


def post(client, path, body, content_type="application/json", **headers):
    data = body if isinstance(body, (bytes, str)) else orjson.dumps(body)
    return Answer(client.post(path, data=data, content_type=content_type, headers=headers))


@pytest.mark.parametrize("value", ["²", "①", "+-5", "5" * 4301, "1e3", " ", "0x10", "١٢", True, [1], {"a": 1}, 1.5])
@pytest.mark.parametrize("field", ["dimensions", "top_n"])
def test_integers_are_ascii_digits_only_and_never_a_500(client, field, value):
    body = ({"input": ["x"], "dimensions": value} if field == "dimensions"
            else {"query": "q", "documents": ["a", "b"], "top_n": value})
    detail = assert_error(post(client, "/v1/embeddings" if field == "dimensions" else "/v1/rerank", body),
                          422, "VALIDATION_ERROR")["detail"]
    assert f"`{field}` must be an integer" in detail and len(detail) < 200


@pytest.mark.parametrize("value, expected", [("16", 16), ("+16", 16), (" 16 ", 16), (16.0, 16)])
def test_numeric_strings_and_whole_floats_still_work(client, value, expected):
    response = post(client, "/invocations", {"data": [{"text": "x"}], "parameters": {"dimensions": value}})
    assert response.status_code == 200
    assert len(response.json()["data"][0]["embedding"]) == expected


@pytest.mark.parametrize("raw_id, echoed", [
    (b"18446744073709551616", b"18446744073709551616"),  # beyond 64 bits: orjson would read a float
    (b"-9223372036854775809", b"-9223372036854775809"),
    (b"1.50", b"1.50"),
    (b"12345678901234567890123456789", b"12345678901234567890123456789"),
    (b"7", b"7"),
    (b'"doc-1"', b'"doc-1"'),
])
def test_ids_are_echoed_exactly_as_sent(client, raw_id, echoed):
    body = b'{"data": [{"text": "hello", "id": ' + raw_id + b'}]}'
    response = post(client, "/invocations", body)
    assert response.status_code == 200, response.content
    assert b'"id":' + echoed + b"," in response.content


@pytest.mark.parametrize("raw_id", [b"{}", b"[1]", b"true", b"[" * 300 + b"]" * 300, b'{"a": ' * 200 + b"1" + b"}" * 200])
def test_ids_that_are_not_strings_or_numbers_are_refused_before_any_work(client, runtime, raw_id):
    passes = runtime.handler.forward_passes
    response = post(client, "/invocations", b'{"data": [{"text": "hello", "id": ' + raw_id + b'}]}')
    if raw_id.count(b"[") > 250 or raw_id.count(b"{") > 250:
        assert response.status_code in (400, 422)  # orjson refuses very deep nesting itself
    else:
        assert_error(response, 422, "VALIDATION_ERROR")
    assert runtime.handler.forward_passes == passes


def test_parameters_that_cannot_be_echoed_are_refused_before_any_work(client, runtime):
    passes = runtime.handler.forward_passes
    nested = b'{"data": [{"text": "x"}], "parameters": {"deep": ' + b"[" * 260 + b"]" * 260 + b"}}"
    assert_error(post(client, "/invocations", nested), 422, "VALIDATION_ERROR")
    assert runtime.handler.forward_passes == passes


def test_a_json_body_may_start_with_a_byte_order_mark(client):
    response = post(client, "/v1/embeddings", b'\xef\xbb\xbf{"input": ["hello"]}')
    assert response.status_code == 200 and len(response.json()["data"]) == 1


def test_too_many_csv_rows_is_a_413_naming_the_cap(client, runtime, monkeypatch):
    rows = "".join(f"{i},x\n" for i in range(50_001)).encode()
    passes = runtime.handler.forward_passes
    body = assert_error(post(client, "/invocations", rows, "text/csv"), 413, "TOO_MANY_ROWS")
    assert "50000" in body["detail"] and "SEARCHBOX_MAX_BATCH_ROWS" in body["detail"]
    lines = b"".join(b'{"text": "x"}\n' for _ in range(50_001))
    assert_error(post(client, "/invocations", lines, "application/jsonlines"), 413, "TOO_MANY_ROWS")
    assert runtime.handler.forward_passes == passes


def test_an_answer_over_the_response_cap_is_refused_before_any_work(runtime):
    from container.app import create_app
    from container.settings import Settings
    from model_handlers.embedded import embedded_model_dir

    settings = Settings.from_env({"SEARCHBOX_MODEL_DIR": str(embedded_model_dir()), "SEARCHBOX_MAX_RESPONSE_MB": "1"})
    capped = create_app(settings, runtime).test_client()
    rows = "".join(f"{i},x\n" for i in range(400)).encode()  # 400 x 384 floats: about 2.3 MB of JSON
    passes = runtime.handler.forward_passes
    body = assert_error(post(capped, "/invocations", rows, "text/csv"), 413, "RESPONSE_TOO_LARGE")
    assert "SEARCHBOX_MAX_RESPONSE_MB" in body["detail"]
    assert runtime.handler.forward_passes == passes
    assert post(capped, "/invocations", "".join(f"{i},x\n" for i in range(100)).encode(), "text/csv").status_code == 200


def test_a_request_that_alone_cannot_finish_in_time_is_refused_at_once_saying_how_to_split(client, minilm_dir):
    long_text = "The quick brown fox jumps over the lazy dog near the river bank. " * 40
    # the budget sized from this machine's speed, so that 2048 long inputs take four budgets: on a CPU or a GPU
    # (16 inputs measure the per-input cost as well as 64 did: a pass's cost is linear in its inputs here)
    took = []
    for _ in range(2):
        sent = time.monotonic()
        assert post(client, "/v1/embeddings", {"input": [long_text] * 16}).status_code == 200
        took.append(time.monotonic() - sent)
    budget = min(took) / 16 * 2048 / 4
    with serving(minilm_dir, {"SEARCHBOX_REQUEST_TIMEOUT_S": f"{budget:.3f}"}) as tight:
        passes = tight.runtime.handler.forward_passes
        response = tight.post("/v1/embeddings", {"input": [long_text] * 2048})
        body = assert_error(response, 413, "REQUEST_TOO_LARGE")
        assert "split it into at least" in body["detail"]
        assert tight.runtime.handler.forward_passes == passes


def test_a_rerank_that_would_make_too_many_windows_is_refused(client, runtime):
    document = "w " * 1_000_000  # a million tokens: about 5,200 windows of 254 tokens
    passes = runtime.handler.forward_passes
    body = assert_error(post(client, "/v1/rerank", {"query": "q", "documents": [document]}), 413, "REQUEST_TOO_LARGE")
    assert "4096 windows" in body["detail"]
    assert runtime.handler.forward_passes == passes
