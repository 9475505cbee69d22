"""The client libraries people call SageMaker and OpenAI-style endpoints with, driven for real against a server.

OpenAI's SDK talks to the server directly (`base_url`). LangChain's SagemakerEndpointEmbeddings, LlamaIndex's
SageMakerEmbedding and Cohere's SagemakerClientV2 call SageMaker's InvokeEndpoint: here they reach the server through
`SageMakerRuntime` (tests/sagemaker_runtime.py), an HTTP endpoint doing what InvokeEndpoint does. The libraries run
in their own venv (tests/reference_env.py), each configured as its documentation shows
(tests/integration_clients_driver.py); their answers are compared with searchbox's own API on the same texts.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from reference_env import ReferenceUnavailable, clients_python
from sagemaker_runtime import SageMakerRuntime

pytestmark = pytest.mark.server

DRIVER = Path(__file__).with_name("integration_clients_driver.py")
ENDPOINT = "searchbox-endpoint"
TEXTS = ["The quick brown fox jumps over the lazy dog.", "A fast auburn fox leaps above a sleepy hound."]
QUERY = "Which animal jumps?"
DOCUMENTS = ["Paris is the capital of France.", "The fox jumps over the dog.", "Bread is baked in ovens."]


@pytest.fixture(scope="module")
def python():
    try:
        return clients_python()
    except ReferenceUnavailable as exc:
        pytest.fail(f"the client libraries' venv cannot be made: {exc}", pytrace=False)


@pytest.fixture
def runtime(server):
    emulator = SageMakerRuntime(server.url)
    yield emulator
    emulator.close()


def drive(python, client: str, runtime: SageMakerRuntime | None, server, **args):
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    if runtime is not None:
        env["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"] = runtime.url  # boto3's own per-service endpoint setting
        args["emulator"] = runtime.url
    args = {"server": server.url, "endpoint": ENDPOINT, "texts": TEXTS, "query": QUERY, "documents": DOCUMENTS, **args}
    done = subprocess.run([str(python), str(DRIVER), client, json.dumps(args)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def reference(server, texts, **options):
    answer = server.post("/v1/embeddings", {"input": texts, **options})
    assert answer.status_code == 200, answer.text
    return np.array([item["embedding"] for item in answer.json()["data"]]), int(answer.headers["X-Compute-Tokens"])


def test_openai_sdk_default_base64_and_floats(python, server):
    got = drive(python, "openai", None, server)
    expected, tokens = reference(server, TEXTS)
    np.testing.assert_allclose(np.array(got["default"]), expected, atol=1e-6)  # sent as base64, decoded by the SDK
    assert got["usage"] == tokens
    np.testing.assert_allclose(np.array(got["float_64"]), reference(server, TEXTS, dimensions=64)[0], atol=1e-6)


def test_langchain_sagemaker_endpoint_embeddings_with_its_documented_handler(python, server, runtime):
    got = drive(python, "langchain", runtime, server)
    np.testing.assert_allclose(np.array(got["documents"]), reference(server, TEXTS)[0], atol=1e-6)
    np.testing.assert_allclose(np.array([got["query"]]), reference(server, [QUERY])[0], atol=1e-6)
    sent = json.loads(runtime.seen[0][2])
    assert sent == {"inputs": TEXTS, "answer": "vectors"} and runtime.seen[0][1] == "application/json"


def test_llamaindex_sagemaker_embedding_with_its_default_handler(python, server, runtime):
    got = drive(python, "llamaindex", runtime, server)
    np.testing.assert_allclose(np.array(got["documents"]), reference(server, TEXTS)[0], atol=1e-6)
    np.testing.assert_allclose(np.array([got["query"]]), reference(server, [QUERY])[0], atol=1e-6)
    assert json.loads(runtime.seen[0][2]) == {"inputs": TEXTS}


def test_cohere_sagemaker_client_v2_embed_and_rerank(python, server, runtime):
    got = drive(python, "cohere", runtime, server)
    np.testing.assert_allclose(np.array(got["float"]), reference(server, TEXTS, input_type="document")[0], atol=1e-6)
    ranked = server.post("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": 2}).json()["results"]
    assert [(index, pytest.approx(score)) for index, score in got["ranked"]] == \
        [(hit["index"], hit["relevance_score"]) for hit in ranked]
    assert {endpoint for endpoint, _, _ in runtime.seen} == {ENDPOINT}
    embed_body, rerank_body = (json.loads(body) for _, _, body in runtime.seen)
    assert embed_body["texts"] == TEXTS and embed_body["input_type"] == "search_document"
    assert rerank_body["query"] == QUERY and rerank_body["documents"] == DOCUMENTS
