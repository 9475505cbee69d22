"""Every request variant of contract §2a/§2b, and every error of §5: tables through `create_app` in-process.

What needs the real process (nginx's own errors, concurrency, shutdown) is in test_hostile_traffic.py and
test_lifecycle_and_concurrency.py.
"""

from __future__ import annotations

import re

import pytest

from helpers import assert_error

HEX32 = re.compile(r"^[0-9a-f]{32}$")


# --- §2a: the SageMaker envelope --------------------------------------------------------------

@pytest.mark.parametrize("data", [
    [{"text": "a"}, {"text": "b"}],
    ["a", "b"],
    [{"text": "a"}, "b"],
])
def test_envelope_lists(app, data):
    body = app.post("/invocations", {"data": data}).json()
    assert set(body) == {"data", "parameters"}
    assert [set(item) for item in body["data"]] == [{"id", "embedding", "usage"}] * 2
    assert all(HEX32.match(item["id"]) for item in body["data"])
    assert body["data"][0]["id"] != body["data"][1]["id"]


def test_envelope_single_object_and_echoed_ids(app):
    single = app.post("/invocations", {"data": {"text": "q", "id": "query-1"}}).json()
    assert [item["id"] for item in single["data"]] == ["query-1"]
    ids = app.post("/invocations", {"data": [{"text": "a", "id": 7}, {"text": "b"}]}).json()["data"]
    assert ids[0]["id"] == 7 and HEX32.match(ids[1]["id"])


def test_envelope_parameters_missing_null_unknown_or_stringly(app):
    plain = app.post("/invocations", {"data": ["x"]}).json()["data"][0]["embedding"]
    variants = [
        {"data": ["x"], "parameters": None},
        {"data": ["x"], "parameters": {"task": None, "dimensions": None, "late_chunking": None}},
        {"data": ["x"], "parameters": {"dimenisons": 1024, "whatever": [1]}},
        {"data": ["x"], "parameters": {"task": "retrieval.passage"}},
    ]
    for body in variants:
        response = app.post("/invocations", body)
        assert response.status_code == 200, (body, response.text)
        assert response.json()["data"][0]["embedding"] == pytest.approx(plain, abs=1e-6)
    cut = app.post("/invocations", {"data": ["x"], "parameters": {"dimensions": "32"}}).json()
    assert len(cut["data"][0]["embedding"]) == 32
    assert cut["parameters"] == {"dimensions": "32"}


def test_empty_data_is_an_empty_answer(app):
    response = app.post("/invocations", {"data": []})
    assert response.status_code == 200
    assert response.json() == {"data": [], "parameters": {}}


def test_charset_and_custom_attributes_are_accepted(app):
    response = app.post("/invocations", data=b'{"data": ["caf\xc3\xa9"]}', headers={
        "Content-Type": "application/json; charset=utf-8",
        "X-Amzn-SageMaker-Custom-Attributes": "trace=abc",
    })
    assert response.status_code == 200, response.text
    assert HEX32.match(response.headers["X-Request-Id"])


# --- §2b: the public API ------------------------------------------------------------------------

@pytest.mark.parametrize("payload,count", [
    ({"input": "one string"}, 1),
    ({"input": ["a", "b", "c"]}, 3),
    ({"input": [{"text": "a"}, "b"]}, 2),
    ({"model": "anything", "input": ["a"], "task": "retrieval.passage", "dimensions": 256, "normalized": True,
      "embedding_type": "float", "late_chunking": False, "truncate": False}, 1),
])
def test_public_api_variants(app, reference_model, payload, count):
    for path in ("/v1/embeddings", "/invocations"):
        body = app.post(path, payload).json()
        assert set(body) == {"model", "object", "usage", "data"}
        assert body["object"] == "list" and body["model"] == "all-MiniLM-L6-v2"
        assert [item["index"] for item in body["data"]] == list(range(count))
        assert all(item["object"] == "embedding" for item in body["data"])
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] > 0
        # `dimensions` (when given) is the length of every vector; else the model's own
        width = int(payload.get("dimensions", reference_model.get_sentence_embedding_dimension()))
        assert [len(item["embedding"]) for item in body["data"]] == [width] * count


def test_openai_encoding_format_is_embedding_type(app):
    as_base64 = app.post("/v1/embeddings", {"input": ["x"], "encoding_format": "base64"}).json()
    same = app.post("/v1/embeddings", {"input": ["x"], "embedding_type": "base64"}).json()
    assert as_base64["data"][0]["embedding"] == same["data"][0]["embedding"]
    assert isinstance(same["data"][0]["embedding"], str)


# --- §5: errors -----------------------------------------------------------------------------------

def test_bad_json(app):
    response = app.post("/invocations", data=b'{"data": [', headers={"Content-Type": "application/json"})
    assert_error(response, 400, "INVALID_JSON", "not valid JSON")


def test_unsupported_content_type_lists_the_supported_ones(app):
    response = app.post("/invocations", data=b"x=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE", "application/x-www-form-urlencoded", "application/json")


def test_payload_over_the_limit(app):
    huge = b'{"input": ["' + b"a" * (6 * 1024 * 1024 + 10) + b'"]}'
    response = app.post("/v1/embeddings", data=huge, headers={"Content-Type": "application/json"})
    assert_error(response, 413, "PAYLOAD_TOO_LARGE", "6 MiB")


def test_too_many_inputs_without_echoing_them(app):
    secret = "do-not-echo-this-input"
    response = app.post("/v1/embeddings", {"input": [secret] * 2049})
    body = assert_error(response, 400, "TOO_MANY_INPUTS", "2049", "2048")
    assert secret not in response.text and secret not in body["detail"]


@pytest.mark.parametrize("path,payload,field", [
    ("/v1/embeddings", {"input": 5}, "input"),
    ("/v1/embeddings", {"input": ["ok", 3]}, "input[1]"),
    ("/v1/embeddings", {"input": ["x"], "dimensions": "wide"}, "dimensions"),
    ("/v1/embeddings", {"input": ["x"], "normalized": "yes please"}, "normalized"),
    ("/v1/embeddings", {"input": ["x"], "embedding_type": "int4"}, "embedding_type"),
    ("/v1/embeddings", {"input": ["x"], "task": 12}, "task"),
    ("/v1/embeddings", {"input": [{"txt": "x"}]}, "input[0]"),
    ("/invocations", {"data": [{"text": 1}]}, "data[0].text"),
    ("/invocations", {"data": ["x"], "parameters": [1]}, "parameters"),
    ("/invocations", {"data": "plain string"}, "data"),
    # TEI's `{"inputs"}` and OpenSearch's bare list are shapes of their own (test_integrations.py)
    ("/invocations", {"inputs": 5}, "inputs"),
    ("/invocations", [1], "body"),
    ("/invocations", {"prompt": "x"}, "data"),
])
def test_wrong_types_name_the_field(app, path, payload, field):
    assert_error(app.post(path, payload), 422, "VALIDATION_ERROR", f"`{field}`" if field != "input" else field)


def test_dimensions_wider_than_the_model(app, reference_model):
    width = reference_model.get_sentence_embedding_dimension()
    assert_error(app.post("/v1/embeddings", {"input": ["x"], "dimensions": 4096}), 422, "INVALID_DIMENSIONS",
                 str(width), "4096")


def test_too_long_without_truncate_names_the_input_and_its_tokens(app, reference_model):
    long_text = "token " * 600
    tokens = len(reference_model.tokenizer(long_text)["input_ids"])  # [CLS] and [SEP] included, as the model reads
    response = app.post("/v1/embeddings", {"input": ["short", long_text], "truncate": False})
    assert_error(response, 400, "INPUT_TOKEN_LIMIT_EXCEEDED", "input 1", f"{tokens} tokens",
                 str(reference_model.max_seq_length), "truncate")


def test_image_input_on_a_text_model(app):
    response = app.post("/invocations", {"data": [{"image": "https://example.com/cat.png"}]})
    assert_error(response, 400, "UNSUPPORTED_INPUT", "input 0", "text only")


def test_unknown_route_and_wrong_method(app):
    assert_error(app.get("/nothing"), 404, "NOT_FOUND", "/invocations")
    assert_error(app.get("/invocations"), 405, "METHOD_NOT_ALLOWED", "GET")


def test_missing_content_type_is_read_as_json(app):
    response = app.post("/invocations", data=b'{"data": ["x"]}', headers={"Content-Type": None})
    assert response.status_code == 200, response.text
