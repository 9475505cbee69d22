"""README's "Use it from ..." recipes, each run the way its integration uses it.

The JSON recipes configure servers that cannot run here (Elasticsearch, OpenSearch, Azure AI Search): each test
builds, from the recipe's own settings, the request that server sends (sources cited in test_integrations.py and
container/dialects/integrations.md) and checks the answer is what that server reads. The Python recipes run as
written in the client libraries' venv: OpenAI's against the server, the boto3 ones through the SageMaker-runtime
emulator, Cohere's with its AWS host resolved to the emulator.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from reference_env import ReferenceUnavailable, clients_python
from sagemaker_runtime import SageMakerRuntime

README = Path(__file__).resolve().parent.parent / "README.md"
TEXTS = ["hello", "world"]
QUERY = "greeting"


def recipe(name: str) -> str:
    """The code block after `<!-- recipe: name -->` in README."""
    found = re.search(rf"<!-- recipe: {re.escape(name)} -->\n```\w+\n(.*?)```", README.read_text(encoding="utf-8"),
                      re.S)
    assert found, f"README has no recipe {name}"
    return found.group(1)


def json_recipe(name: str) -> dict:
    """A JSON recipe's body (after its `PUT ...`/`POST ...` line, when it has one)."""
    text = recipe(name)
    if re.match(r"(PUT|POST) ", text):
        text = text.split("\n", 1)[1]
    return json.loads(text)


def reference(app, texts, **options):
    answer = app.post("/v1/embeddings", {"input": texts, **options})
    assert answer.status_code == 200, answer.text
    return np.array([item["embedding"] for item in answer.json()["data"]])


def custom_attributes(config: dict) -> dict:
    """The CustomAttributes header SageMaker hands the container for an endpoint's stored task_settings."""
    value = config.get("task_settings", {}).get("custom_attributes")
    return {"X-Amzn-SageMaker-Custom-Attributes": value} if value else {}


@pytest.mark.app
def test_elasticsearch_openai_recipe(app):
    config = json_recipe("elasticsearch-openai")
    settings = config["service_settings"]
    assert config["service"] == "amazon_sagemaker" and settings["api"] == "openai"
    # OpenAiTextEmbeddingPayload.requestBytes: input (a string when one), dimensions from service_settings
    for inputs in (TEXTS, TEXTS[0]):
        answer = app.post("/invocations", {"input": inputs, "dimensions": settings["dimensions"]})
        assert answer.status_code == 200, answer.text
        got = [item["embedding"] for item in answer.json()["data"]]
        assert all(len(vector) == settings["dimensions"] for vector in got)
        expected = reference(app, inputs if isinstance(inputs, list) else [inputs])
        np.testing.assert_allclose(np.array(got), expected, atol=1e-6)


@pytest.mark.app
def test_elasticsearch_elastic_recipe(app):
    config = json_recipe("elasticsearch-elastic")
    settings = config["service_settings"]
    assert settings["api"] == "elastic" and settings["element_type"] == "float"
    headers = custom_attributes(config)
    # semantic_text sends input_type; a direct POST _inference may send none
    for body in ({"input": TEXTS, "input_type": "ingest"}, {"input": TEXTS, "input_type": "search"},
                 {"input": TEXTS[0]}, {"input": TEXTS}):
        answer = app.post("/invocations", body, headers=headers)
        assert answer.status_code == 200, answer.text
        got = answer.json()
        assert set(got) == {"text_embedding"}
        assert all(set(item) == {"embedding"} and len(item["embedding"]) == settings["dimensions"]
                   for item in got["text_embedding"])


@pytest.mark.app
def test_elasticsearch_elastic_rerank_recipe(app):
    headers = custom_attributes(json_recipe("elasticsearch-elastic-rerank"))
    for body in ({"input": TEXTS, "query": QUERY}, {"input": TEXTS, "query": QUERY, "top_n": 1,
                                                    "return_documents": True}):
        answer = app.post("/invocations", body, headers=headers)
        assert answer.status_code == 200, answer.text
        hits = answer.json()["rerank"]
        assert set(answer.json()) == {"rerank"} and len(hits) == body.get("top_n", len(TEXTS))
        assert all(set(hit) <= {"index", "relevance_score", "text"} for hit in hits)


@pytest.mark.app
def test_opensearch_connector_recipe(app):
    action = json_recipe("opensearch")["actions"][0]
    assert action["pre_process_function"] == "connector.pre_process.default.embedding"
    assert action["post_process_function"] == "connector.post_process.default.embedding"
    # the default pre-process function puts the texts in parameters.texts; the template renders them as JSON
    body = action["request_body"].replace("${parameters.texts}", json.dumps(TEXTS))
    path = "/" + urlparse(action["url"]).path.rsplit("/", 1)[1]
    answer = app.post(path, data=body, headers={"Content-Type": action["headers"]["content-type"]})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(np.array(answer.json()), reference(app, TEXTS), atol=1e-6)


@pytest.mark.app
def test_azure_ai_search_skill_recipe(app):
    skill = json_recipe("azure-ai-search")
    assert skill["httpMethod"] == "POST" and skill["@odata.type"] == "#Microsoft.Skills.Custom.WebApiSkill"
    records = [{"recordId": str(i), "data": {field["name"]: text for field in skill["inputs"]}}
               for i, text in enumerate(TEXTS)]
    answer = app.post(urlparse(skill["uri"]).path, {"values": records})
    assert answer.status_code == 200, answer.text
    values = answer.json()["values"]
    assert [record["recordId"] for record in values] == ["0", "1"]
    outputs = [field["name"] for field in skill["outputs"]]
    np.testing.assert_allclose(np.array([record["data"][outputs[0]] for record in values]), reference(app, TEXTS),
                               atol=1e-6)


# --- the Python recipes, as written ----------------------------------------------------------------------------

# Cohere's SDK builds https://runtime.sagemaker.<region>.amazonaws.com itself: the recipe runs with that host
# resolved to the emulator, as DNS would (the SDK still builds, signs and parses every request).
_RESOLVE_AWS = textwrap.dedent("""
    import os, httpx
    _handle = httpx.HTTPTransport.handle_request
    def handle_request(self, request):
        if request.url.host.endswith(".amazonaws.com"):
            emulator = httpx.URL(os.environ["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"])
            request.url = request.url.copy_with(scheme=emulator.scheme, host=emulator.host, port=emulator.port)
        return _handle(self, request)
    httpx.HTTPTransport.handle_request = handle_request
""")


@pytest.fixture(scope="module")
def python():
    try:
        return clients_python()
    except ReferenceUnavailable as exc:
        pytest.fail(f"the client libraries' venv cannot be made: {exc}", pytrace=False)


@pytest.mark.server
@pytest.mark.parametrize("name,options", [("openai", {}), ("llamaindex", {}), ("langchain", {}),
                                          ("cohere", {"input_type": "document"})])
def test_python_recipe_runs_as_written(python, server, tmp_path, name, options):
    runtime = SageMakerRuntime(server.url)
    try:
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(_RESOLVE_AWS)
        script = tmp_path / "recipe.py"
        code = recipe(name).replace("http://localhost:8080", server.url)
        script.write_text(code + "\nimport json\nprint(json.dumps([list(map(float, v)) for v in vectors]))\n")
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": runtime.url, "PYTHONPATH": str(site)}
        done = subprocess.run([str(python), str(script)], capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        got = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        runtime.close()
    expected = reference(server, TEXTS, **options)
    np.testing.assert_allclose(got, expected, atol=1e-6)
