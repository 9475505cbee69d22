"""The Accept header, honoured as the SageMaker inference toolkit honours it: none or `*/*` takes the answer's own
media type, else the first listed type the answer can be; a list naming none of them is a 406 in the contract's
JSON, before any work. Through `create_app` on the real model."""

from __future__ import annotations

import orjson
import pytest

from helpers import assert_error

BODY = {"input": ["hello", "world"]}


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/json; q=0.9",
                                    "text/html, application/*;q=0.8", "text/csv, application/json"])
def test_json_answers_take_any_accept_that_names_json(app, accept):
    headers = {} if accept is None else {"Accept": accept}
    answer = app.post("/v1/embeddings", BODY, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    assert len(answer.json()["data"]) == 2


@pytest.mark.parametrize("path,body", [("/v1/embeddings", BODY), ("/invocations", {"data": [{"text": "x"}]}),
                                       ("/v1/rerank", {"query": "q", "documents": ["d"]})])
def test_an_accept_the_answer_cannot_be_is_a_406_before_any_work(app, runtime, path, body):
    passes = runtime.handler.forward_passes
    error = assert_error(app.post(path, body, headers={"Accept": "text/csv"}), 406, "NOT_ACCEPTABLE",
                         "text/csv", "application/json")
    assert error["request_id"]
    assert runtime.handler.forward_passes == passes


def test_a_csv_answer_is_json_or_a_one_line_json_lines_file(app):
    rows = b"1,hello\n2,world\n"
    as_json = app.post("/invocations", data=rows, headers={"Content-Type": "text/csv", "Accept": "application/json"})
    as_lines = app.post("/invocations", data=rows,
                        headers={"Content-Type": "text/csv", "Accept": "application/jsonlines"})
    assert as_json.status_code == as_lines.status_code == 200, as_lines.text
    assert as_json.headers["Content-Type"] == "application/json"
    assert as_lines.headers["Content-Type"] == "application/jsonlines"
    assert as_lines.content.count(b"\n") == 1
    assert orjson.loads(as_json.content)["data"][1]["id"] == "2"
    assert orjson.loads(as_lines.content) == orjson.loads(as_json.content)


def test_json_lines_answer_json_only_when_they_are_one_line(app):
    headers = {"Content-Type": "application/jsonlines", "Accept": "application/json"}
    one = app.post("/invocations", data=b'{"data": [{"text": "a"}]}\n', headers=headers)
    assert one.status_code == 200 and one.headers["Content-Type"] == "application/json"
    assert one.json()["data"][0]["embedding"]
    assert_error(app.post("/invocations", data=b'"a"\n"b"\n', headers=headers), 406, "NOT_ACCEPTABLE",
                 "application/jsonlines")
    lines = app.post("/invocations", data=b'"a"\n"b"\n',
                     headers={"Content-Type": "application/jsonlines", "Accept": "application/x-jsonlines"})
    assert lines.status_code == 200 and lines.headers["Content-Type"] == "application/x-jsonlines"
    assert len(lines.content.splitlines()) == 2
