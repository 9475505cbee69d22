"""GET /openapi.json: a valid OpenAPI 3.1 document of every route, that says what the parsers read and the
renderers write: real answers of the embedded model validate against it, and each option's schema accepts
exactly the values its parser accepts."""

from __future__ import annotations

import base64
import re

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from container.dialects import fields, rerank
from container.errors import ValidationFailed
from helpers import assert_documented, openapi_validator

TEXTS = ["a cat sat on the mat", "quantum computing"]


@pytest.fixture(scope="module")
def document(app):
    answer = app.get("/openapi.json")
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    return answer.json()


def test_the_document_is_valid_openapi_3_1(document):
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    assert document["openapi"].startswith("3.1")


def test_every_route_of_the_app_is_in_the_document(client, document):
    # Flask writes a path parameter <name>, OpenAPI {name}
    routes = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
              for rule in client.application.url_map.iter_rules()
              if rule.endpoint != "static" for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert routes == documented


def test_every_error_answer_is_documented_with_the_error_schema(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            errors = {status: r for status, r in operation["responses"].items() if not status.startswith("2")}
            assert "405" in errors, (path, method)
            for response in errors.values():
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/embeddings", {"input": TEXTS}),
    ("/v1/embeddings", {"input": "one", "encoding_format": "base64", "dimensions": "128"}),
    ("/v1/embeddings", {"input": [{"text": "x"}], "embedding_type": ["float", "binary", "ubinary", "base64"]}),
    ("/invocations", {"input": TEXTS, "normalized": "false"}),
    ("/invocations", {"data": [{"text": TEXTS[0], "id": 7}, {"text": TEXTS[1]}],
                      "parameters": {"embedding_type": "ubinary", "truncate": True}}),
    ("/score", {"data": {"text": "one"}}),
    ("/v1/rerank", {"query": "cat", "documents": TEXTS, "top_n": 1}),
    ("/v1/rerank", {"query": {"text": "cat"}, "documents": [{"text": t} for t in TEXTS], "return_documents": False}),
    ("/invocations", {"data": {"query": "cat", "documents": TEXTS}, "parameters": {"k": 1}}),
    ("/invocations", {"query": "cat", "documents": TEXTS}),
])
def test_answers_of_the_embedded_model_match_the_document(app, document, path, body):
    answer = app.post(path, body)
    assert answer.status_code == 200, answer.text
    assert_documented(document, "post", path, answer)
    # and the body sent is one the document describes
    schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    openapi_validator(document, schema).validate(body)


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/v1/embeddings", {"input": TEXTS, "dimensions": "many"}, 422),
    ("/v1/embeddings", b"{not json", 400),
    ("/v1/multi-vector", {"input": TEXTS}, 400),  # the embedded model makes single vectors
])
def test_error_answers_match_the_document(app, document, path, body, status):
    answer = app.post(path, data=body) if isinstance(body, bytes) else app.post(path, body)
    assert answer.status_code == status, answer.text
    assert_documented(document, "post", path, answer)


@pytest.mark.parametrize("path", ["/ping", "/health", "/v1/models", "/execution-parameters", "/metrics"])
def test_get_routes_match_the_document(app, document, path):
    answer = app.get(path)
    assert answer.status_code == 200, answer.text
    assert_documented(document, "get", path, answer)


def test_a_batch_answer_is_documented(app, document):
    answer = app.post("/invocations", data="1,hello\n2,world\n", headers={"Content-Type": "text/csv"})
    assert answer.status_code == 200, answer.text
    assert_documented(document, "post", "/invocations", answer)
    assert "text/csv" in document["paths"]["/invocations"]["post"]["requestBody"]["content"]


# Values a client may send for an option: the schema must accept exactly those its parser reads.
SAMPLES = [None, True, False, "true", "False", "TRUE", "yes", "", 0, 1, -3, 12, 12.0, 1.5, "12", " 7 ", "+3", "0",
           "1e3", "²", "12345678901234567890", 10**17, 10**19, "query", "document", "passage", "float", "base64",
           "binary", "ubinary", "int8", ["float"], ["base64", "ubinary"], [], ["float", "nope"], {"a": 1}, [1]]


@pytest.mark.parametrize("option", [*fields.embed_options(), fields.ENCODING_OPTION, *rerank.OPTIONS],
                         ids=lambda option: option.name)
def test_each_options_schema_accepts_what_its_parser_reads(option):
    validator = Draft202012Validator(option.property_schema())
    for value in SAMPLES:
        try:
            option.read(value, option.name)
            parsed = True
        except ValidationFailed:
            parsed = False
        assert validator.is_valid(value) == parsed, (option.name, value)


def test_the_input_schema_accepts_what_the_parser_reads():
    validator = Draft202012Validator(fields.input_schema())
    image = base64.b64encode(b"\x89PNG").decode()
    for value in ["text", {"text": "t"}, {"image": image}, {"url": "https://example.com/a.png"}, {"bytes": image},
                  {"audio": "x"}, {"video": 3}, {"text": 3}, {"image": 3}, {}, 3, None, ["t"], {"id": 1},
                  {"text": "t", "image": 3}, {"text": 3, "image": "x"}, {"url": "u", "pdf": 1}, {"pdf": 1, "url": 2}]:
        try:
            fields.embed_input(value, "input")
            parsed = True
        except ValidationFailed:
            parsed = False
        assert validator.is_valid(value) == parsed, value
