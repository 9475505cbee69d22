"""Every host answers a request the same way: Flask's /invocations, /score and /v1/*, azmlinfsrv's score.py, and the
artifact's smoke test send the same bodies, shapes and headers and must get the same bytes (request ids aside).

score.py runs in this process as azmlinfsrv runs it: `init()` loads the model from $SEARCHBOX_MODEL_DIR, then `run()`
is handed a werkzeug request. Timing headers (X-Queue-Time, X-Inference-Time) differ run to run and are left out.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

import flask
import orjson
import pytest

from model_handlers.embedded import embedded_model_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packaging"))

pytestmark = pytest.mark.app

# An id the server made up for an input that came without one (a fresh one per answer).
GENERATED_ID = re.compile(rb'"id":"[0-9a-f]{32}"')
# Headers whose values depend only on the request and the model.
COMPARED_HEADERS = ("Content-Type", "X-Compute-Tokens", "X-Amzn-Inference-Metering", "Retry-After")
# One line that asks something (lines run side by side, and the batcher may pack them differently each time: floats
# equal only to rounding), and a blank one, answered `null` in place.
JSONLINES = '\n{"input": ["second", "line"]}\n'
ENVELOPE = json.dumps({"data": [{"text": "hello", "id": "a"}, {"text": "world", "id": 7}],
                      "parameters": {"dimensions": 64}})
PUBLIC = json.dumps({"input": ["hello", "world"], "embedding_type": ["float", "base64"]})
CASES = {
    "sagemaker-envelope": (ENVELOPE, "application/json", {}),
    "public-embeddings": (PUBLIC, "application/json; charset=utf-8", {}),
    "csv": ('"q1","When are you open, really?"\nq2,naïve café\\, 東京\n', "text/csv", {}),
    "json-lines": (JSONLINES, "application/jsonlines", {}),
    "json-lines-one-line-as-json": ('{"text": "only"}\n', "application/jsonl", {"Accept": "application/json"}),
    "accept-any-of": (ENVELOPE, "application/json", {"Accept": "text/html, application/*;q=0.5"}),
    "accept-refused": (JSONLINES, "application/jsonlines", {"Accept": "text/csv"}),
    # Elasticsearch's `{"input"}` would read as searchbox's own body: SageMaker's CustomAttributes name the shape
    "custom-attributes-shape": (json.dumps({"input": ["a", "b"]}), "application/json",
                                {"X-Amzn-SageMaker-Custom-Attributes": "searchbox-shape=elastic"}),
    "custom-attributes-unknown-shape": (ENVELOPE, "application/json",
                                        {"X-Amzn-SageMaker-Custom-Attributes": "searchbox-shape=nobody"}),
    # the embedded model holds no LoRA adapters: a request for one is refused, never answered by the base model
    "adapter-header": (PUBLIC, "application/json", {"X-Amzn-SageMaker-Adapter-Identifier": "support-tickets"}),
    "model-refusal": (json.dumps({"input": ["a"], "dimensions": 100000}), "application/json", {}),
    "not-json": ("{not json", "application/json", {}),
    "unsupported-media-type": ("hello", "text/plain", {}),
}


@pytest.fixture(scope="module")
def score():
    """container/azureml/score.py, initialised as azmlinfsrv does, on the embedded model; the process state init()
    changes (environment, our loggers' handlers) restored after."""
    from container.azureml import score as module

    environ = dict(os.environ)
    loggers = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).level,
                      logging.getLogger(name).propagate) for name in ("searchbox", "container", "model_handlers")}
    os.environ["SEARCHBOX_MODEL_DIR"] = str(embedded_model_dir())
    try:
        module.init()
        yield module
    finally:
        os.environ.clear()
        os.environ.update(environ)
        for name, (handlers, level, propagate) in loggers.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


def scored(score, body: str | bytes, content_type: str, headers: dict[str, str]) -> tuple[int, dict, bytes]:
    """score.run()'s answer to a POST /score, handed a werkzeug request as azmlinfsrv hands it."""
    data = body.encode() if isinstance(body, str) else body
    with flask.Flask("azmlinfsrv").test_request_context("/score", method="POST", data=data,
                                                        headers={"Content-Type": content_type, **headers}):
        answer = score.run(flask.request._get_current_object())
        return answer.status_code, dict(answer.headers), answer.get_data()


def posted(client, path: str, body: str | bytes, content_type: str, headers: dict[str, str]) -> tuple[int, dict, bytes]:
    answer = client.post(path, data=body, headers={"Content-Type": content_type, **headers})
    return answer.status_code, dict(answer.headers), answer.data


def comparable(answer: tuple[int, dict, bytes]) -> tuple[int, dict, bytes]:
    """The answer without what differs per request: an error body's request id, ids made up for inputs that came
    without one, the timing headers."""
    status, headers, body = answer
    body = GENERATED_ID.sub(b'"id":"generated"', body)
    if status >= 400:
        error = orjson.loads(body)
        assert error.pop("request_id")
        body = orjson.dumps(error)
    return status, {name: headers.get(name) for name in COMPARED_HEADERS}, body


@pytest.mark.parametrize("name", CASES)
def test_invocations_score_route_and_score_py_answer_the_same_bytes(client, score, name):
    body, content_type, headers = CASES[name]
    invocations = comparable(posted(client, "/invocations", body, content_type, headers))
    assert comparable(posted(client, "/score", body, content_type, headers)) == invocations
    assert comparable(scored(score, body, content_type, headers)) == invocations


def test_the_cases_cover_answers_and_refusals(client):
    """The table above holds what it says: answers in each shape, and refusals of each header and body."""
    statuses = {name: client.post("/invocations", data=body, headers={"Content-Type": content_type, **headers})
                for name, (body, content_type, headers) in CASES.items()}
    assert {name for name, answer in statuses.items() if answer.status_code == 200} == {
        "sagemaker-envelope", "public-embeddings", "csv", "json-lines", "json-lines-one-line-as-json",
        "accept-any-of", "custom-attributes-shape"}
    assert statuses["accept-refused"].status_code == 406
    assert statuses["json-lines-one-line-as-json"].headers["Content-Type"] == "application/json"
    assert statuses["accept-any-of"].headers["Content-Type"] == "application/json"
    # Elasticsearch's answer shape, not searchbox's `{"data": [...]}`
    assert set(statuses["custom-attributes-shape"].json) == {"text_embedding"}
    assert statuses["custom-attributes-unknown-shape"].json["code"] == "UNKNOWN_SHAPE"
    assert statuses["adapter-header"].json["code"] == "UNKNOWN_ADAPTER"
    assert statuses["model-refusal"].status_code == 422
    assert statuses["unsupported-media-type"].status_code == 415


@pytest.mark.parametrize("name", ["public-embeddings", "custom-attributes-shape", "adapter-header", "model-refusal",
                                  "not-json"])
def test_v1_embeddings_answers_its_bodies_as_invocations_does(client, name):
    """/v1/embeddings takes only JSON and no shapes: a `{"input"}` body there is the same request as on
    /invocations (the custom attributes are /invocations' alone: /v1/embeddings reads the body as its own)."""
    body, content_type, headers = CASES[name]
    v1 = comparable(posted(client, "/v1/embeddings", body, content_type, headers))
    if name == "custom-attributes-shape":
        assert v1 == comparable(posted(client, "/invocations", body, content_type, {}))
    else:
        assert v1 == comparable(posted(client, "/invocations", body, content_type, headers))


def test_the_artifact_smoke_test_answers_its_sample_as_every_host(client, score):
    import _samples
    import build_artifact

    from model_handlers import read_serving_config

    config = read_serving_config(embedded_model_dir())
    _, figures, body = build_artifact._smoke_test(embedded_model_dir(), config, "cpu")
    sample = orjson.dumps(_samples.of(config.kind.name).request)
    invocations = comparable(posted(client, "/invocations", sample, "application/json", {}))
    assert invocations[0] == 200
    assert comparable((200, invocations[1], body))[2] == invocations[2]
    assert comparable(scored(score, sample, "application/json", {})) == invocations
    assert figures.tokens == int(invocations[1]["X-Compute-Tokens"])
