"""Azure ML, both ways buyers deploy: azmlinfsrv with container/azureml/score.py, and the custom container.

Real servers: `azmlinfsrv` on a free port beside the session's `serve`, both on the embedded model,
must answer every dialect with the same bytes; `serve` with $AZUREML_MODEL_DIR on a copy of the model.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import free_port, start_server, stop_server

pytestmark = pytest.mark.server

AZMLINFSRV = str(Path(sys.executable).with_name("azmlinfsrv"))
SCORE_PY = str(Path(__file__).resolve().parents[1] / "container" / "azureml" / "score.py")


@pytest.fixture(scope="module")
def azml(tmp_path_factory):
    running = start_azml(tmp_path_factory.mktemp("azml"))
    yield running
    stop_server(running)


def start_azml(workdir: Path, *arguments: str):
    """azmlinfsrv on score.py and a free port, with `arguments` added; returned once it answers `GET /`."""
    port = free_port()
    running = start_server(workdir, {}, port=port, wait=False,
                           command=[AZMLINFSRV, "--entry_script", SCORE_PY, "--port", str(port), *arguments])
    # init() holds the port open but unanswered until the model is warm: poll with any error as "not yet".
    deadline = time.monotonic() + 180
    while True:
        assert running.process.poll() is None, running.log()[-3000:]
        assert time.monotonic() < deadline, running.log()[-3000:]
        try:
            if requests.get(running.url + "/", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return running


def post(url: str, body: bytes | str, content_type: str, headers: dict | None = None) -> requests.Response:
    data = body.encode() if isinstance(body, str) else body
    return requests.post(url, data=data, headers={"Content-Type": content_type, **(headers or {})}, timeout=120)


def without_request_id(response: requests.Response) -> dict:
    body = response.json()
    body.pop("request_id")
    return body


CSV_ROWS = '"q1","When are you open, really?"\nq2,naïve café\\, 東京\n'
REQUESTS = {
    "sagemaker-envelope": (json.dumps({"data": [{"text": "hello", "id": "a"}, {"text": "world", "id": "b"}],
                                       "parameters": {"dimensions": 128}}), "application/json"),
    "public-embeddings": (json.dumps({"input": ["hello", "world"], "embedding_type": ["float", "base64"]}),
                          "application/json; charset=utf-8"),
    "sagemaker-rerank": (json.dumps({"data": {"query": "capital of Germany", "top_n": 2, "documents": [
        {"text": "Berlin is the capital of Germany."}, "Bananas are yellow.", "Paris is in France."]}}),
        "application/json"),
    "csv": (CSV_ROWS, "text/csv"),
    # other projects' bodies (test_integrations.py): Azure AI Search's skill is the one that calls /score
    "azure-ai-search-skill": (json.dumps({"values": [{"recordId": "1", "data": {"text": "hello"}},
                                                     {"recordId": "2", "data": {"content": "no text"}}]}),
                              "application/json"),
    "tei-embed": (json.dumps({"inputs": ["hello", "world"]}), "application/json"),
    "elastic-rerank": (json.dumps({"input": ["a", "b"], "query": "b"}), "application/json"),
}
JSON_LINES = [{"data": [{"text": "x", "id": "l1"}]}, {"input": "y"}, {"data": {"query": "q", "documents": ["a", "q"]}}]


def test_liveness_is_get_root(azml):
    response = requests.get(azml.url + "/", timeout=10)
    assert response.status_code == 200 and response.text == "Healthy"


def test_model_loaded_once_and_warm_before_ready(azml):
    # the first request after liveness is served at once, by a model that was loaded and warmed once
    assert post(azml.url + "/score", REQUESTS["csv"][0], "text/csv").status_code == 200
    assert azml.log().count("ready in") == 1, azml.log()[-3000:]


@pytest.mark.parametrize("name", list(REQUESTS))
def test_score_gives_the_same_bytes_as_invocations(azml, server, name):
    body, content_type = REQUESTS[name]
    on_azure = post(azml.url + "/score", body, content_type)
    on_sagemaker = post(server.url + "/invocations", body, content_type)
    assert on_azure.status_code == on_sagemaker.status_code == 200, on_azure.text[:500]
    assert on_azure.headers["Content-Type"] == on_sagemaker.headers["Content-Type"]
    assert on_azure.content == on_sagemaker.content


def test_score_takes_json_lines_like_invocations(azml, server):
    """The lines of one body run concurrently, so the batcher may pack them differently on each server:
    the same answers, floats equal to rounding (a body that runs alone, as above, is byte-identical)."""
    body = "\n".join(json.dumps(line) for line in JSON_LINES) + "\n"
    on_azure = post(azml.url + "/score", body, "application/jsonlines")
    on_sagemaker = post(server.url + "/invocations", body, "application/jsonlines")
    assert on_azure.status_code == on_sagemaker.status_code == 200, on_azure.text[:500]
    assert on_azure.headers["Content-Type"] == on_sagemaker.headers["Content-Type"] == "application/jsonlines"
    azure_lines, sagemaker_lines = on_azure.text.splitlines(), on_sagemaker.text.splitlines()
    assert len(azure_lines) == len(sagemaker_lines) == len(JSON_LINES)
    for a, b in zip(azure_lines, sagemaker_lines):
        assert_close(json.loads(a), json.loads(b))


def assert_close(a, b, path="$"):
    if isinstance(a, float) or isinstance(b, float):
        assert abs(a - b) <= 1e-5, path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for index, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{index}]")
    else:
        assert a == b, path


@pytest.mark.parametrize(("body", "content_type", "status", "code", "fragment"), [
    ('{"data": [', "application/json", 400, "INVALID_JSON", "not valid JSON"),
    ('{"data": ["x"], "parameters": {"dimensions": "many"}}', "application/json", 422, "VALIDATION_ERROR",
     "parameters.dimensions"),
    ('{"input": ["x"], "dimensions": 4096}', "application/json", 422, "INVALID_DIMENSIONS", "4096"),
    ("a,fine\nb,one, two\n", "text/csv", 400, "INVALID_CSV", "line 2"),
    ('{"data": ["x"]}\nnot json\n', "application/jsonlines", 400, "INVALID_JSON_LINE", "line 2"),
    ("x=1", "application/x-www-form-urlencoded", 415, "UNSUPPORTED_MEDIA_TYPE", "text/csv"),
])
def test_bad_requests_are_the_same_clear_4xx(azml, server, body, content_type, status, code, fragment):
    on_azure = post(azml.url + "/score", body, content_type, headers={"x-request-id": "my-request-7"})
    on_sagemaker = post(server.url + "/invocations", body, content_type)
    assert on_azure.status_code == on_sagemaker.status_code == status, on_azure.text
    assert on_azure.headers["Content-Type"] == "application/json"
    answer = on_azure.json()
    assert answer["code"] == code and fragment in answer["detail"], answer
    # the body quotes the id azmlinfsrv returns in its header (here: the caller's own)
    assert answer["request_id"] == on_azure.headers["x-request-id"] == "my-request-7"
    assert without_request_id(on_azure) == without_request_id(on_sagemaker)


def test_get_score_is_405_not_a_crash(azml):
    response = requests.get(azml.url + "/score", timeout=10)
    assert response.status_code == 405
    assert response.json()["code"] == "METHOD_NOT_ALLOWED"


@pytest.fixture(scope="module")
def azure_model_root(tmp_path_factory, minilm_dir) -> Path:
    """Azure mounts the registered model folder one level down: <root>/<folder>/config.json."""
    root = tmp_path_factory.mktemp("azureml-models")
    shutil.copytree(minilm_dir, root / "minilm-copy")
    return root


def test_custom_container_serves_azureml_model_dir(server_factory, azure_model_root, reference_model):
    running = server_factory({"AZUREML_MODEL_DIR": str(azure_model_root)})
    assert requests.get(running.url + "/ping", timeout=5).status_code == 200  # liveness and readiness
    assert "$AZUREML_MODEL_DIR" in running.log() and str(azure_model_root / "minilm-copy") in running.log()
    body = json.dumps({"input": ["Azure ML custom container"]})
    scored = post(running.url + "/score", body, "application/json")
    assert scored.status_code == 200, scored.text
    answer = scored.json()
    assert answer["model"] == "minilm-copy"  # named after the copy: it was served, not the embedded model
    expected = reference_model.encode(["Azure ML custom container"], normalize_embeddings=True)[0]
    got = np.asarray(answer["data"][0]["embedding"])
    assert float(got @ expected / np.linalg.norm(got)) >= 0.9999
    assert post(running.url + "/invocations", body, "application/json").content == scored.content


def test_model_dir_serves_another_model(tmp_path, minilm_dir, reference_model):
    """README: `azmlinfsrv ... --model_dir DIR` serves the model in DIR (here a copy with its own served name)."""
    model_dir = tmp_path / "models" / "another"
    shutil.copytree(minilm_dir, model_dir)
    (model_dir / "searchbox.json").write_text(json.dumps({"served_model_name": "another-model"}))
    (tmp_path / "azml").mkdir()
    running = start_azml(tmp_path / "azml", "--model_dir", str(model_dir))
    try:
        texts = ["hello", "served from --model_dir"]
        answer = post(running.url + "/score", json.dumps({"input": texts}), "application/json")
        assert answer.status_code == 200, answer.text[:500]
        body = answer.json()
        assert body["model"] == "another-model"
        for item, reference in zip(body["data"], reference_model.encode(texts)):
            np.testing.assert_allclose(item["embedding"], reference, atol=1e-5)
        assert "another" in running.log()  # score.py's start-up line names the directory it serves
    finally:
        stop_server(running)
