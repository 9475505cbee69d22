"""Google Cloud Vertex AI's custom container: a real `serve` with the AIP_* variables Vertex AI sets, its model copied
from a Cloud Storage emulator (gcp-storage-emulator, a real process) with Google's own client.

Each prediction is checked against what the same server's `/invocations` (or the operation's public route) answers
the same inputs: Vertex AI's body is another envelope around the same pipeline, so the answers must be the same
bytes once unwrapped; one embedding is also checked against sentence-transformers, so that "the same" is also right.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import free_port, start_server, stop_server

storage = pytest.importorskip("google.cloud.storage")
pytest.importorskip("gcp_storage_emulator")

pytestmark = pytest.mark.server

BUCKET = "searchbox-models"
# Vertex AI's own default predict route has this form when the Model names none (Google's "Custom container
# requirements": AIP_PREDICT_ROUTE); a colon in a path must survive nginx and Flask
PREDICT = "/v1/endpoints/1234/deployedModels/5678:predict"
HEALTH = "/v1/endpoints/1234/deployedModels/5678"


@pytest.fixture(scope="module")
def emulator(gcs_emulator):
    """The session's Cloud Storage emulator (tests/conftest.py, shared with the classifier store's tests): its URL
    (STORAGE_EMULATOR_HOST); the models are uploaded under their own prefixes by the fixtures below."""
    return gcs_emulator.url


def client(url: str):
    from google.auth.credentials import AnonymousCredentials

    return storage.Client(project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": url})


def upload(url: str, directory: Path, prefix: str) -> None:
    bucket = client(url).bucket(BUCKET)
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            bucket.blob(f"{prefix}/{path.relative_to(directory).as_posix()}").upload_from_filename(str(path))


def vertex_env(url: str, uri: str, port: int) -> dict[str, str]:
    # SAGEMAKER_BIND_TO_PORT blank: the server must find its port in AIP_HTTP_PORT, as on Vertex AI
    return {"AIP_HTTP_PORT": str(port), "AIP_PREDICT_ROUTE": PREDICT, "AIP_HEALTH_ROUTE": HEALTH,
            "AIP_STORAGE_URI": uri, "STORAGE_EMULATOR_HOST": url, "SAGEMAKER_BIND_TO_PORT": ""}


@pytest.fixture(scope="module")
def minilm_vertex(emulator, minilm_dir, tmp_path_factory):
    upload(emulator, minilm_dir, "models/minilm")
    # a sibling whose name starts with the same letters: gs://.../models/minilm is a directory, not a name prefix
    client(emulator).bucket(BUCKET).blob("models/minilm-old/decoy.txt").upload_from_string("not the model")
    port = free_port()
    running = start_server(tmp_path_factory.mktemp("vertex"),
                           vertex_env(emulator, f"gs://{BUCKET}/models/minilm", port), port=port, ping_path=HEALTH)
    yield running
    stop_server(running)


def post(url: str, body) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body)
    return requests.post(url, data=data, headers={"Content-Type": "application/json"}, timeout=120)


def predict(running, body) -> dict:
    answer = post(running.url + PREDICT, body)
    assert answer.status_code == 200, answer.text[:500]
    return answer.json()


def test_the_model_was_copied_from_cloud_storage(minilm_vertex, minilm_dir):
    log = minilm_vertex.log()
    assert f"copied gs://{BUCKET}/models/minilm ({sum(1 for p in minilm_dir.rglob('*') if p.is_file())} files" in log
    assert "decoy" not in log
    models = requests.get(minilm_vertex.url + "/v1/models", timeout=5).json()
    # named after the copied directory (the prefix's last part): the copy was served, not the embedded model
    assert models["data"][0]["id"] == "minilm"


def test_health_route_is_readiness(minilm_vertex):
    answer = requests.get(minilm_vertex.url + HEALTH, timeout=5)
    assert answer.status_code == 200 and answer.json() == {"status": "healthy"}
    assert requests.get(minilm_vertex.url + "/ping", timeout=5).status_code == 200  # SageMaker's stays


@pytest.mark.parametrize("instances", [
    ["a first text", "a second, longer text about Cloud Storage"],
    [{"text": "an item"}, "a plain text", {"text": "the third"}],
    [f"text number {i}" for i in range(40)],  # a batch prediction's body: order kept, one prediction each
])
def test_embedding_predictions_are_the_invocations_items(minilm_vertex, instances, reference_model):
    answer = predict(minilm_vertex, {"instances": instances})
    reference = post(minilm_vertex.url + "/invocations", {"input": instances}).json()
    assert len(answer["predictions"]) == len(instances)
    assert answer["predictions"] == reference["data"]
    assert answer["metadata"] == {key: value for key, value in reference.items() if key != "data"}
    assert [p["index"] for p in answer["predictions"]] == list(range(len(instances)))
    first = instances[0] if isinstance(instances[0], str) else instances[0]["text"]
    expected = reference_model.encode([first], normalize_embeddings=True)[0]
    np.testing.assert_allclose(answer["predictions"][0]["embedding"], expected, atol=1e-5)


def test_parameters_are_the_request_options(minilm_vertex):
    instances = ["options travel in parameters"]
    answer = predict(minilm_vertex, {"instances": instances, "parameters": {"embedding_type": "base64"}})
    reference = post(minilm_vertex.url + "/invocations", {"input": instances, "embedding_type": "base64"}).json()
    assert isinstance(answer["predictions"][0]["embedding"], str)  # base64, not a list: the option was read
    assert answer["predictions"] == reference["data"]


def test_classify_instances_with_labels_in_parameters(minilm_vertex):
    instances = ["my invoice is wrong", "the login page is down"]
    labels = ["billing", "technical support"]
    answer = predict(minilm_vertex, {"instances": instances, "parameters": {"labels": labels}})
    reference = post(minilm_vertex.url + "/invocations", {"input": instances, "labels": labels}).json()
    assert answer["predictions"] == reference["data"]
    assert answer["predictions"][0]["prediction"] == "billing"
    assert answer["metadata"] == {"usage": reference["usage"]}


def test_tokenize_is_named_by_parameters_operation(minilm_vertex):
    instances = ["hello world", "tokenize me"]
    answer = predict(minilm_vertex, {"instances": instances,
                                     "parameters": {"operation": "tokenize", "return_tokens": True}})
    reference = post(minilm_vertex.url + "/v1/tokenize", {"input": instances, "return_tokens": True}).json()
    assert answer["predictions"] == reference["data"]
    # BERT's WordPiece: [CLS] hello world [SEP]
    assert answer["predictions"][0]["tokens"] == ["[CLS]", "hello", "world", "[SEP]"]


def test_rerank_instances_are_whole_requests(reranker_dir):
    """Read on the app in this process with AIP_PREDICT_ROUTE set: what a rerank prediction holds is the dialect's
    doing, not the process's (the copy from Cloud Storage, AIP_HTTP_PORT and nginx's colon path are the `serve`
    above's)."""
    from helpers import serving

    instances = [{"query": "what is the capital of France?", "documents": ["Paris is in France", "Berlin", "Rome"],
                  "top_n": 2},
                 {"query": "a second query", "documents": ["one", "two"]}]
    with serving(reranker_dir, {"AIP_PREDICT_ROUTE": PREDICT}) as app:
        # return_documents off (it defaults to on): the parameters are seen to reach every instance's request
        answered = app.post(PREDICT, {"instances": instances, "parameters": {"return_documents": False}})
        assert answered.status_code == 200, answered.text[:500]
        answer = answered.json()
        references = [app.post("/invocations", {**instance, "return_documents": False}).json()
                      for instance in instances]
    assert len(answer["predictions"]) == 2
    for prediction, reference in zip(answer["predictions"], references):
        # the two instances ran side by side, so the batcher may have padded them together: scores agree to float
        # rounding, everything else (order, documents, usage) exactly
        scores = [result.pop("relevance_score") for result in prediction["results"]]
        expected = [result.pop("relevance_score") for result in reference["results"]]
        assert prediction == reference and not any("document" in result for result in prediction["results"])
        assert scores == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert len(answer["predictions"][0]["results"]) == 2  # top_n of the instance


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"instances": "one text"}, 422, "`instances` list"),
    ({"instances": []}, 422, "`instances` is empty"),
    ({"data": ["a SageMaker body"]}, 422, "`instances` list"),
    ({"instances": ["a text", {"query": "q", "documents": ["d"]}]}, 422, "not both"),
    ({"instances": ["a"], "parameters": {"operation": "nonsense"}}, 422, "parameters.operation"),
    ({"instances": ["a"] * 3000}, 400, "at most"),  # the limits of /invocations hold (SEARCHBOX_MAX_INPUTS)
    (b'{"instances": ["unterminated', 400, ""),
])
def test_refusals_keep_the_contract_body_with_vertex_error(minilm_vertex, body, status, fragment):
    answer = post(minilm_vertex.url + PREDICT, body)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert set(error) == {"error", "detail", "code", "request_id"}
    assert error["error"] == error["detail"] and fragment in error["detail"]
    assert error["request_id"] == answer.headers["X-Request-Id"]


def start_failure(tmp_path, env) -> tuple[int, str]:
    port = free_port()
    running = start_server(tmp_path, env(port), port=port, wait=False)
    try:
        code = running.process.wait(60)
    finally:
        stop_server(running)
    return code, running.log()


def test_missing_bucket_is_a_clear_start_failure(emulator, tmp_path):
    code, log = start_failure(tmp_path, lambda port: vertex_env(emulator, "gs://no-such-bucket/model", port))
    assert code != 0
    assert "cannot serve gs://no-such-bucket/model: cannot copy the model from gs://no-such-bucket/model: the " \
           "bucket gs://no-such-bucket does not exist" in log
    assert "Traceback" not in log


def test_missing_directory_is_a_clear_start_failure(emulator, tmp_path):
    code, log = start_failure(tmp_path, lambda port: vertex_env(emulator, f"gs://{BUCKET}/models/absent", port))
    assert code != 0
    assert f"cannot copy the model from gs://{BUCKET}/models/absent: no objects under it" in log
    assert "Traceback" not in log


def test_copied_model_is_checked_by_the_remote_code_policy(emulator, minilm_dir, tmp_path):
    """Remote code an artifact does not pin is refused before any worker starts, as for a mounted model."""
    model = tmp_path / "remote"
    shutil.copytree(minilm_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_unpinned.UnpinnedModel"}
    (model / "config.json").write_text(json.dumps(config))
    (model / "modeling_unpinned.py").write_text("raise SystemExit('remote code ran')\n")
    upload(emulator, model, "models/remote")
    code, log = start_failure(tmp_path, lambda port: vertex_env(emulator, f"gs://{BUCKET}/models/remote", port))
    assert code != 0
    assert "modeling_unpinned.py" in log and "remote code ran" not in log
    assert "nginx listens on port" not in log  # refused before the server started
