"""Other projects' request shapes on /invocations and /score (container/dialects/integrations.md), in-process.

The callers that are servers (Elasticsearch, OpenSearch, Azure AI Search) cannot run here: each is tested with the
exact JSON its source sends and reads, cited beside the test. The client libraries that install (OpenAI, Cohere,
LangChain, LlamaIndex) are driven for real in test_integration_clients.py.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest

from helpers import assert_error

ROUTES = ("/invocations", "/score")
TEXTS = ["The quick brown fox jumps over the lazy dog.", "A fast auburn fox leaps above a sleepy hound."]
QUERY = "Which animal jumps?"
DOCUMENTS = ["Paris is the capital of France.", "The fox jumps over the dog.", "Bread is baked in ovens."]


def reference_vectors(app, texts, **options):
    """searchbox's own embeddings API on the same texts: what every shape must answer, in its own layout."""
    answer = app.post("/v1/embeddings", {"input": texts, **options})
    assert answer.status_code == 200, answer.text
    return np.array([item["embedding"] for item in answer.json()["data"]]), int(answer.headers["X-Compute-Tokens"])


def reference_ranking(app, query, documents, **options):
    answer = app.post("/v1/rerank", {"query": query, "documents": documents, "return_documents": False, **options})
    assert answer.status_code == 200, answer.text
    return [(hit["index"], hit["relevance_score"]) for hit in answer.json()["results"]]


def assert_same_vectors(got, expected):
    got = np.array(got, dtype=np.float32)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-6)


def assert_strict_keys(obj, allowed):
    """Elasticsearch's parsers are built with IGNORE_UNKNOWN_FIELDS = false: one key more and it fails."""
    assert set(obj) <= set(allowed), f"{sorted(set(obj) - set(allowed))} would make Elasticsearch's parser fail"


# --- Elasticsearch `amazon_sagemaker`, `api: elastic` ---------------------------------------------------------
# Source: elastic/elasticsearch, x-pack/plugin/inference/src/main/java/org/elasticsearch/xpack/inference/services/
# sagemaker/schema/elastic/ElasticPayload.java (commit 1845333d0e9968c14d0371d5acff5954c9af4914): the body is
# {"input": <string when one, else list>, "input_type": "ingest"|"search" (when specified), "query" (when given),
# "task_settings": {...} (when given)}; ElasticTextEmbeddingPayload.java
# (commit 6adbfc748409165a663943a0191db89d7841527d) reads {"text_embedding": [{"embedding": [floats]}]} (element_type
# float); ElasticRerankPayload.java (commit c0b5e8229c742136ef20227c94f2f38a169204a2) sends {"input", "query",
# "return_documents", "top_n"} and reads RankedDocsResults: {"rerank": [{"index", "relevance_score", "text"?}]}.

@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("input_type,side", [("ingest", "document"), ("search", "query")])
def test_elasticsearch_elastic_text_embedding(app, route, input_type, side):
    expected, tokens = reference_vectors(app, TEXTS, input_type=side)
    answer = app.post(route, {"input": TEXTS, "input_type": input_type})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert_strict_keys(body, {"text_embedding"})
    for item in body["text_embedding"]:
        assert_strict_keys(item, {"embedding"})
    assert_same_vectors([item["embedding"] for item in body["text_embedding"]], expected)
    assert int(answer.headers["X-Compute-Tokens"]) == tokens  # metered the same as the native body


def test_elasticsearch_elastic_single_input_is_a_string_and_task_settings_carry_options(app):
    # one input goes as a bare string; task_settings is passed through as the inference request gave it
    expected, _ = reference_vectors(app, [TEXTS[0]], dimensions=64)
    answer = app.post("/invocations", {"input": TEXTS[0], "task_settings": {"dimensions": 64}}).json()
    assert_same_vectors([item["embedding"] for item in answer["text_embedding"]], expected)


def test_elasticsearch_elastic_classification_and_clustering_select_the_tasks(app):
    # ElasticPayload passes any other input type through as named; searchbox's own input_type never takes these
    for input_type in ("classification", "clustering"):
        answer = app.post("/invocations", {"input": TEXTS, "input_type": input_type})
        assert answer.status_code == 200, answer.text
        assert set(answer.json()) == {"text_embedding"}


@pytest.mark.parametrize("route", ROUTES)
def test_elasticsearch_elastic_rerank(app, route):
    expected = reference_ranking(app, QUERY, DOCUMENTS, top_n=2)
    answer = app.post(route, {"input": DOCUMENTS, "query": QUERY, "return_documents": True, "top_n": 2})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert_strict_keys(body, {"rerank"})
    for hit in body["rerank"]:
        assert_strict_keys(hit, {"index", "relevance_score", "text"})
        assert hit["text"] == DOCUMENTS[hit["index"]]
    assert [(hit["index"], pytest.approx(hit["relevance_score"])) for hit in body["rerank"]] == expected


# --- Elasticsearch `amazon_sagemaker`, `api: openai` ----------------------------------------------------------
# Source: elastic/elasticsearch, .../sagemaker/schema/openai/OpenAiTextEmbeddingPayload.java (commit
# 815156c6017c4589af053a0b457ad0ce0ddee571): {"input": <string or list>, "user"?, "dimensions"?}, read with
# OpenAiEmbeddingsResponseEntity: {"data": [{"embedding": [...]}, ...]} in input order.

def test_elasticsearch_openai_text_embedding(app):
    expected, _ = reference_vectors(app, TEXTS, dimensions=128)
    body = app.post("/invocations", {"input": TEXTS, "user": "es-user", "dimensions": 128}).json()
    assert_same_vectors([item["embedding"] for item in body["data"]], expected)
    assert [item["index"] for item in body["data"]] == [0, 1]


# --- OpenSearch ML Commons SageMaker connectors ----------------------------------------------------------------
# Source: opensearch-project/ml-commons, docs/remote_inference_blueprints/sagemaker_connector_blueprint.md (commit
# 4a5c138828cdac7c995522bc4c39af6c6d9218a3): "request_body": "${parameters.inputs}" -- the texts as a bare JSON list;
# docs/remote_inference_blueprints/standard_blueprints/sagemaker_asymmetric_embedding_standard_blueprint.md (commit
# 3079691c07e6da24f95a52c9f69b10830602a8a5): "request_body": "{ \"texts\": ${parameters.texts}, \"content_type\":
# \"${parameters.content_type}\" }" with content_type query/passage; both read the answer as a list of vectors
# (its "Example Response": "response": [[...], ...]), what connector.post_process.default.embedding takes.

@pytest.mark.parametrize("route", ROUTES)
def test_opensearch_bare_list_of_texts(app, route):
    expected, tokens = reference_vectors(app, TEXTS)
    answer = app.post(route, TEXTS)
    assert answer.status_code == 200, answer.text
    assert_same_vectors(answer.json(), expected)
    assert int(answer.headers["X-Compute-Tokens"]) == tokens


@pytest.mark.parametrize("content_type,side", [("query", "query"), ("passage", "document")])
def test_opensearch_asymmetric_texts_and_content_type(app, content_type, side):
    expected, _ = reference_vectors(app, TEXTS, input_type=side)
    answer = app.post("/invocations", {"texts": TEXTS, "content_type": content_type})
    assert answer.status_code == 200, answer.text
    assert_same_vectors(answer.json(), expected)


# --- Azure AI Search custom Web API skill / AML skill ----------------------------------------------------------
# Source: Microsoft Learn, "Custom skill interface" (azure/search/cognitive-search-custom-skill-interface): the
# request is {"values": [{"recordId", "data": {<inputs>}}]}, the answer {"values": [{"recordId", "data":
# {<outputs>}, "errors": [{"message"}], "warnings": [{"message"}]}]}, every record answered, a record's failure
# reported in its own `errors` inside a 200.

@pytest.mark.parametrize("route", ROUTES)
def test_azure_search_skill_embeds_every_record(app, route):
    expected, tokens = reference_vectors(app, TEXTS)
    body = {"values": [{"recordId": "r1", "data": {"text": TEXTS[0]}}, {"recordId": "r2", "data": {"text": TEXTS[1]}}]}
    answer = app.post(route, body)
    assert answer.status_code == 200, answer.text
    values = answer.json()["values"]
    assert [record["recordId"] for record in values] == ["r1", "r2"]
    assert all(record["errors"] == [] and record["warnings"] == [] for record in values)
    assert_same_vectors([record["data"]["embedding"] for record in values], expected)
    assert int(answer.headers["X-Compute-Tokens"]) == tokens


def test_azure_search_skill_reports_a_bad_record_inside_a_200(app):
    expected, _ = reference_vectors(app, [TEXTS[1]], dimensions=32)
    body = {"values": [{"recordId": "bad", "data": {"content": "no text key"}},
                       {"recordId": "good", "data": {"text": TEXTS[1], "dimensions": 32}},
                       {"recordId": "other-options", "data": {"text": TEXTS[0], "dimensions": 16}}]}
    answer = app.post("/score", body)
    assert answer.status_code == 200, answer.text
    bad, good, other = answer.json()["values"]
    assert bad["recordId"] == "bad" and bad["data"] == {} and "data.text" in bad["errors"][0]["message"]
    assert good["errors"] == [] and good["recordId"] == "good"
    assert_same_vectors([good["data"]["embedding"]], expected)
    assert other["data"] == {} and "same options" in other["errors"][0]["message"]


def test_azure_search_skill_with_no_good_record_is_an_error_and_no_record_an_empty_answer(app):
    assert_error(app.post("/score", {"values": [{"recordId": "1", "data": {}}]}), 422, "VALIDATION_ERROR")
    assert_error(app.post("/score", {"values": [{"recordId": {"nested": 1}, "data": {"text": "x"}}]}), 422,
                 "VALIDATION_ERROR", "recordId")
    answer = app.post("/score", {"values": []})
    assert answer.status_code == 200 and answer.json() == {"values": []}


# --- Hugging Face TEI / Inference Toolkit ---------------------------------------------------------------------
# Source: huggingface/text-embeddings-inference, docs/openapi.json (commit 006e16b702263e09686b33f9152a5ad0f9468085):
# EmbedRequest {"inputs": string|[string],
# "normalize", "truncate", "truncation_direction", "prompt_name", "dimensions"} -> [[number]]; RerankRequest
# {"query", "texts", "return_text", "raw_scores", "truncate"} -> [{"index", "score", "text"?}].

@pytest.mark.parametrize("route", ROUTES)
def test_tei_embed(app, route):
    expected, tokens = reference_vectors(app, TEXTS, dimensions=96)
    answer = app.post(route, {"inputs": TEXTS, "dimensions": 96, "normalize": True, "truncate": True})
    assert answer.status_code == 200, answer.text
    assert_same_vectors(answer.json(), expected)
    assert int(answer.headers["X-Compute-Tokens"]) == tokens


def test_tei_embed_one_string_and_the_vectors_answer(app):
    expected, _ = reference_vectors(app, [TEXTS[0]])
    assert_same_vectors(app.post("/invocations", {"inputs": TEXTS[0]}).json(), expected)
    keyed = app.post("/invocations", {"inputs": [TEXTS[0]], "answer": "vectors"}).json()
    assert set(keyed) == {"vectors"}
    assert_same_vectors(keyed["vectors"], expected)


@pytest.mark.parametrize("route", ROUTES)
def test_tei_rerank(app, route):
    expected = reference_ranking(app, QUERY, DOCUMENTS)
    answer = app.post(route, {"query": QUERY, "texts": DOCUMENTS, "return_text": True})
    assert answer.status_code == 200, answer.text
    hits = answer.json()
    assert [(hit["index"], pytest.approx(hit["score"])) for hit in hits] == expected
    assert all(hit["text"] == DOCUMENTS[hit["index"]] and set(hit) == {"index", "score", "text"} for hit in hits)


# --- Cohere v2 embed (the body Cohere's SDK sends to SageMaker: test_integration_clients.py drives the SDK) ------

@pytest.mark.parametrize("route", ROUTES)
def test_cohere_embed_by_type(app, route):
    expected, tokens = reference_vectors(app, TEXTS, input_type="query", dimensions=64)
    answer = app.post(route, {"texts": TEXTS, "input_type": "search_query", "embedding_types": ["float", "base64"],
                              "output_dimension": 64})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["response_type"] == "embeddings_by_type" and body["texts"] == TEXTS
    assert body["meta"]["billed_units"]["input_tokens"] == tokens
    assert_same_vectors(body["embeddings"]["float"], expected)
    decoded = [np.frombuffer(base64.b64decode(item), dtype="<f4") for item in body["embeddings"]["base64"]]
    assert_same_vectors(decoded, expected)


# --- Every shape on every route: never answered in another's ---------------------------------------------------

def answer_shape(body) -> str:
    """Which shape an answer is; the classes are disjoint."""
    if isinstance(body, list):
        if all(isinstance(item, list) for item in body):
            return "vectors list"
        if all(isinstance(item, dict) and "score" in item for item in body):
            return "tei rerank"
        return "unknown list"
    keys = set(body)
    for shape, marker in (("elastic text_embedding", {"text_embedding"}), ("elastic rerank", {"rerank"}),
                          ("azure values", {"values"}), ("vectors object", {"vectors"})):
        if keys == marker:
            return shape
    if body.get("response_type") == "embeddings_by_type":
        return "cohere embed"
    if body.get("object") == "list":
        return "searchbox rerank" if "results" in body else "searchbox embeddings"
    if "data" in body and "parameters" in body:
        return "searchbox envelope rerank" if "results" in body["data"][0] else "searchbox envelope"
    return "unknown"


SHAPES = [
    ({"data": [{"text": TEXTS[0]}]}, "searchbox envelope"),
    ({"data": {"query": QUERY, "documents": DOCUMENTS}}, "searchbox envelope rerank"),
    ({"input": TEXTS}, "searchbox embeddings"),
    ({"input": TEXTS, "model": "m", "encoding_format": "base64"}, "searchbox embeddings"),  # OpenAI SDK
    ({"query": QUERY, "documents": DOCUMENTS, "top_n": 2, "api_version": 2}, "searchbox rerank"),  # Cohere SDK rerank
    ({"input": TEXTS, "input_type": "ingest"}, "elastic text_embedding"),
    ({"input": TEXTS[0], "task_settings": {}}, "elastic text_embedding"),
    ({"input": DOCUMENTS, "query": QUERY}, "elastic rerank"),
    (TEXTS, "vectors list"),
    ({"texts": TEXTS}, "vectors list"),
    ({"texts": TEXTS, "content_type": "passage"}, "vectors list"),
    ({"inputs": TEXTS}, "vectors list"),
    ({"inputs": TEXTS, "answer": "vectors"}, "vectors object"),
    ({"inputs": TEXTS[0], "parameters": {}}, "vectors list"),
    ({"query": QUERY, "texts": DOCUMENTS}, "tei rerank"),
    ({"texts": TEXTS, "input_type": "search_document", "embedding_types": ["float"]}, "cohere embed"),
    ({"values": [{"recordId": "1", "data": {"text": TEXTS[0]}}]}, "azure values"),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("body,shape", SHAPES, ids=[shape + f"-{i}" for i, (_, shape) in enumerate(SHAPES)])
def test_every_shape_is_answered_in_its_own_shape(app, route, body, shape):
    answer = app.post(route, body)
    assert answer.status_code == 200, answer.text
    assert answer_shape(answer.json()) == shape


@pytest.mark.parametrize("body,shape", [(body, shape) for body, shape in SHAPES if shape not in
                                        ("searchbox embeddings", "searchbox rerank")])
def test_the_public_routes_answer_only_their_own_shape(app, body, shape):
    """/v1/embeddings and /v1/rerank speak one shape each (unknown keys ignored, as OpenAI's `user`): another's body
    is an error there or that route's own answer, never another shape's."""
    for path, own in (("/v1/embeddings", "searchbox embeddings"), ("/v1/rerank", "searchbox rerank")):
        answer = app.post(path, body)
        assert answer.status_code in (400, 422) or answer_shape(answer.json()) == own, (path, body, answer.text)


@pytest.mark.parametrize("body,names", [
    ({"inputs": TEXTS, "texts": TEXTS, "input_type": "search_query"}, ["TEI", "Cohere"]),
    ({"values": [], "input": TEXTS}, ["searchbox", "Azure AI Search"]),
    ({"data": [{"text": "a"}], "inputs": TEXTS}, ["searchbox", "TEI"]),
    ({"query": QUERY, "texts": DOCUMENTS, "documents": DOCUMENTS}, ["searchbox", "TEI rerank"]),
    ({"input": TEXTS, "input_type": "search", "inputs": TEXTS}, ["TEI", "Elasticsearch"]),
])
@pytest.mark.parametrize("route", ROUTES)
def test_an_ambiguous_body_names_the_shapes_it_could_be(app, route, body, names):
    answer = app.post(route, body)
    assert_error(answer, 400, "AMBIGUOUS_BODY")
    for name in names:
        assert name in answer.json()["detail"]


def test_an_unknown_body_names_every_shape(app):
    answer = app.post("/invocations", {"prompt": "hello"})
    assert_error(answer, 422, "VALIDATION_ERROR")
    for name in ("Elasticsearch", "Azure AI Search", "TEI", "Cohere", "OpenSearch"):
        assert name in answer.json()["detail"]


# --- Naming the shape: SageMaker's CustomAttributes ------------------------------------------------------------
# Elasticsearch stores task_settings.custom_attributes in the inference endpoint and sends it as InvokeEndpoint's
# CustomAttributes on every call (elastic/elasticsearch, .../sagemaker/model/SageMakerTaskSettings.java, commit
# 8a43cecac2a654e0d837431b9a3cd7c99ee9b271), which SageMaker hands to the container as this header: a direct
# `_inference` call without an input_type is then `{"input"}` alone, and still answered in Elastic's shape.

ELASTIC = {"X-Amzn-SageMaker-Custom-Attributes": "searchbox-shape=elastic"}


def test_custom_attributes_name_the_elastic_shape_of_a_bare_input_body(app):
    expected, _ = reference_vectors(app, TEXTS)
    body = app.post("/invocations", {"input": TEXTS}, headers=ELASTIC).json()
    assert set(body) == {"text_embedding"}
    assert_same_vectors([item["embedding"] for item in body["text_embedding"]], expected)
    # without the attribute the same body is OpenAI's
    assert answer_shape(app.post("/invocations", {"input": TEXTS}).json()) == "searchbox embeddings"


def test_custom_attributes_with_other_pairs_and_errors(app):
    mixed = {"X-Amzn-SageMaker-Custom-Attributes": "trace=abc; searchbox-shape=elastic"}
    assert set(app.post("/invocations", {"input": "x"}, headers=mixed).json()) == {"text_embedding"}
    assert_error(app.post("/invocations", {"input": "x"},
                          headers={"X-Amzn-SageMaker-Custom-Attributes": "searchbox-shape=nope"}),
                 400, "UNKNOWN_SHAPE", "elastic")
    assert_error(app.post("/invocations", {"inputs": ["x"]}, headers=ELASTIC), 422, "VALIDATION_ERROR", "Elasticsearch")
    # a public route has one shape: the attribute does not change it
    assert answer_shape(app.post("/v1/embeddings", {"input": "x"}, headers=ELASTIC).json()) == "searchbox embeddings"


@pytest.mark.parametrize("body, field", [
    ({"texts": ["a"], "input_type": ["search_query"]}, "input_type"),
    ({"texts": ["a"], "input_type": "search_query", "truncate": {"END": 1}}, "truncate"),
    ({"texts": ["a"], "content_type": ["query"]}, "content_type"),
    ({"texts": ["a"], "sparse_embedding_format": [{}]}, "sparse_embedding_format"),
    ({"inputs": ["a"], "answer": ["vectors"]}, "answer"),
])
def test_a_choice_field_of_any_json_type_is_a_422_naming_the_choices(app, body, field):
    """A list or an object where a shape takes one of a few words: refused by name (found by make soak's generated
    traffic as a 500: a membership test on a list raised TypeError)."""
    assert_error(app.post("/invocations", body), 422, "VALIDATION_ERROR", f"`{field}` must be one of")
