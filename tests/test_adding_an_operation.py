"""CONTRIBUTING.md's "Adding an operation", proved: a tiny operation (tests/count_operation.py, never shipped) listed
in the two registries, and nothing else changed, is served end to end by `create_app` and Flask's test client: its
route, its answers, its refusals, /v1/models and the OpenAPI document. The kinds answer it because their models
implement its protocol (a tokenizer), not because a kind lists it.

The server binds its routes when container.app is imported, so the registries are extended in a fresh process, before
anything reads them, as a module listed in OPERATION_MODULES and DIALECT_MODULES would be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from model_handlers.embedded import embedded_model_dir

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["Héllo wörld, counted", "ab", "🙂 one emoji"]

SERVE_THE_NEW_OPERATION = textwrap.dedent("""
    import json, sys
    from model_handlers import operations
    from container import dialects

    # the recipe's two registry lines: one module is both the operation and its dialect here
    operations.OPERATION_MODULES += ("count_operation",)
    dialects.DIALECT_MODULES += ("count_operation",)

    from helpers import serving
    from model_handlers.embedded import embedded_model_dir

    with serving(embedded_model_dir()) as app:
        said = {}
        for name, path, body in [("count", "/v1/count", {"input": json.loads(sys.argv[1])}),
                                 ("one", "/v1/count", {"input": "abc"}),
                                 ("no_input", "/v1/count", {"text": "abc"}),
                                 ("an_image", "/v1/count", {"input": [{"image": "aGk="}]}),
                                 ("unknown_route", "/v1/nothing", {"input": "abc"})]:
            answer = app.post(path, body)
            said[name] = {"status": answer.status_code, "body": answer.json()}
        said["models"] = app.get("/v1/models").json()
        said["openapi"] = app.get("/openapi.json").json()
        print("ANSWERS " + json.dumps(said))
""")


@pytest.fixture(scope="module")
def said():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    done = subprocess.run([sys.executable, "-c", SERVE_THE_NEW_OPERATION, json.dumps(TEXTS)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("ANSWERS "))
    return json.loads(line.removeprefix("ANSWERS "))


def test_the_new_operation_answers_on_its_own_route(said):
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    assert said["count"]["status"] == 200, said["count"]
    assert said["count"]["body"] == {"model": "all-MiniLM-L6-v2", "data": [
        {"index": index, "characters": len(text), "tokens": len(tokenizer(text, add_special_tokens=False).input_ids)}
        for index, text in enumerate(TEXTS)]}
    assert [item["characters"] for item in said["count"]["body"]["data"]] == [20, 2, 11]
    assert said["one"]["body"]["data"] == [{"index": 0, "characters": 3, "tokens": 1}]


def test_its_refusals_are_the_shared_parsers_and_the_models(said):
    assert said["no_input"]["status"] == 422
    assert said["no_input"]["body"]["detail"] == 'the body must be a JSON object with `input`: {"input": ["text", ...]}'
    assert said["an_image"]["status"] == 400 and said["an_image"]["body"]["code"] == "UNSUPPORTED_INPUT"
    assert said["an_image"]["body"]["detail"] == "input 0 is an image; model all-MiniLM-L6-v2 takes text only"


def test_the_server_lists_it_where_it_lists_every_operation(said):
    """The kind answers it (derived from its model class), /v1/models says so, the OpenAPI document has its route and
    schemas, and an unknown route's refusal names its route among the others."""
    assert "count" in said["models"]["data"][0]["operations"]
    assert set(said["models"]["data"][0]["operations"]) >= {"embed", "rerank", "tokenize", "segment", "classify"}
    post = said["openapi"]["paths"]["/v1/count"]["post"]
    assert post["operationId"] == "count"
    assert {"CountRequest", "CountResponse"} <= set(said["openapi"]["components"]["schemas"])
    assert said["unknown_route"]["status"] == 404
    assert "POST /v1/count" in said["unknown_route"]["body"]["detail"]
