"""Sparse (SPLADE) embeddings: a tiny SPLADE built offline (tests/models/sparse.py) answers exactly what
sentence-transformers' `SparseEncoder.encode` computes on the same weights, through every route; rerank scores are
`SparseEncoder.similarity`'s dot products."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import answer, assert_documented, assert_error, serving
from models.sparse import make_bare, make_inference_free, make_splade

# models loaded in this process (create_app + the test client); the README test starts a real server
pytestmark = pytest.mark.app

TEXTS = ["what do cats like to eat", "Dogs, cats & birds: popular pets!!! (mostly...)", "",
         "Learned sparse retrieval weighs every vocabulary entry. " * 40]  # the last one longer than 128 tokens
QUERY = "where does the baker sell bread"
DOCUMENTS = ["the baker sells warm bread at the market", "a short note about rain", "farmers bring grain to the mill",
             "bread bread bakery baker sell"]


@pytest.fixture(scope="module")
def reference(splade_encoder) -> np.ndarray:
    return splade_encoder.encode(TEXTS, convert_to_tensor=True).to_dense().numpy()


@pytest.fixture(scope="module")
def splade(splade_dir):
    with serving(splade_dir) as served:
        yield served


def sparse_matches(item: dict, weights: np.ndarray, top_k: int | None = None) -> None:
    """Same indices, ascending, values within 1e-5 of the reference's."""
    expected = np.flatnonzero(weights > 0)
    if top_k is not None:
        expected = np.sort(expected[np.argsort(-weights[expected], kind="stable")[:top_k]])
    assert item["indices"] == sorted(item["indices"])
    assert item["indices"] == expected.tolist()
    np.testing.assert_allclose(item["values"], weights[expected], atol=1e-5, rtol=0)


def test_public_route_matches_sparse_encoder(splade, reference):
    body = answer(splade, "/v1/sparse-embeddings", {"input": TEXTS})
    assert body["object"] == "list" and [d["object"] for d in body["data"]] == ["sparse_embedding"] * len(TEXTS)
    for item, weights in zip(body["data"], reference):
        sparse_matches(item["sparse_embedding"], weights)
        assert "tokens" not in item["sparse_embedding"]
    assert body["usage"]["total_tokens"] > 128  # tokens read, the long input cut to the model's 128


def test_a_cpu_runs_one_request_as_two_passes_at_once_and_answers_as_sparse_encoder(splade_dir, reference):
    """transformers' masked-LM keeps nothing of a pass: on a CPU (two threads here) one request is cut in two passes
    that run at once, one thread each."""
    with serving(splade_dir, {"SEARCHBOX_TORCH_THREADS": "2"}) as served:
        before = served.runtime.handler.forward_passes
        body = answer(served, "/v1/sparse-embeddings", {"input": TEXTS})
        assert served.runtime.handler.forward_passes - before == 2
    for item, weights in zip(body["data"], reference):
        sparse_matches(item["sparse_embedding"], weights)


def test_invocations_envelope_and_public_body_answer_the_models_form(splade, reference):
    envelope = answer(splade, "/invocations", {"data": [{"text": t, "id": i} for i, t in enumerate(TEXTS)]})
    assert [item["id"] for item in envelope["data"]] == list(range(len(TEXTS)))
    for item, weights in zip(envelope["data"], reference):
        sparse_matches(item["sparse_embedding"], weights)
        assert item["usage"]["total_tokens"] > 0
    public = answer(splade, "/invocations", {"input": TEXTS[:2]})
    for item, weights in zip(public["data"], reference):
        sparse_matches(item["sparse_embedding"], weights)


def test_top_k_min_weight_and_tokens(splade, reference, splade_encoder):
    body = answer(splade, "/v1/sparse-embeddings", {"input": TEXTS[:2], "top_k": 5, "return_tokens": True})
    for item, weights in zip(body["data"], reference):
        sparse_matches(item["sparse_embedding"], weights, top_k=5)
        assert item["sparse_embedding"]["tokens"] == splade_encoder.tokenizer.convert_ids_to_tokens(
            item["sparse_embedding"]["indices"])
    floor = float(np.quantile(reference[0][reference[0] > 0], 0.9))
    kept = answer(splade, "/v1/sparse-embeddings", {"input": TEXTS[0], "min_weight": floor})["data"][0]
    assert kept["sparse_embedding"]["indices"] == np.flatnonzero(reference[0] > floor).tolist()
    envelope = answer(splade, "/invocations", {"data": [{"text": TEXTS[0]}], "parameters": {"top_k": "3"}})
    sparse_matches(envelope["data"][0]["sparse_embedding"], reference[0], top_k=3)


def test_truncate_false_refuses_a_long_input_and_bad_options_are_named(splade):
    assert_error(splade.post("/v1/sparse-embeddings", {"input": TEXTS[3], "truncate": False}), 400,
                 "INPUT_TOKEN_LIMIT_EXCEEDED", "128")
    assert_error(splade.post("/v1/sparse-embeddings", {"input": "a", "top_k": 0}), 422, "INVALID_OPTION", "top_k")
    assert_error(splade.post("/v1/sparse-embeddings", {"input": "a", "min_weight": "lots"}), 422, None, "min_weight")
    # a sparse model makes no dense vectors: the refusal names the route it answers
    assert_error(splade.post("/v1/embeddings", {"input": "a"}), 400, "UNSUPPORTED_OPERATION", "/v1/sparse-embeddings")


def test_a_dense_model_refuses_sparse_requests_by_route(app):
    assert_error(app.post("/v1/sparse-embeddings", {"input": "a"}), 400, "UNSUPPORTED_OPERATION", "/v1/embeddings")


def test_batch_transform_csv_and_json_lines(splade, reference):
    csv = '1,what do cats like to eat\n"2","Dogs, cats & birds: popular pets!!! (mostly...)"\n'
    response = splade.post("/invocations", data=csv.encode(), headers={"Content-Type": "text/csv"})
    assert response.status_code == 200, response.text[:500]
    assert response.text.endswith("}\n") and response.text.count("\n") == 1
    body = response.json()
    assert [item["id"] for item in body["data"]] == ["1", "2"]
    for item, weights in zip(body["data"], reference):
        sparse_matches(item["sparse_embedding"], weights)
    lines = json.dumps({"text": TEXTS[0], "id": "7"}) + "\n" + json.dumps({"input": [TEXTS[1]], "top_k": 4}) + "\n"
    jsonl = splade.post("/invocations", data=lines.encode(), headers={"Content-Type": "application/jsonlines"})
    assert jsonl.status_code == 200, jsonl.text[:500]
    record, public = (json.loads(line) for line in jsonl.text.splitlines())
    sparse_matches(record["data"][0]["sparse_embedding"], reference[0])
    sparse_matches(public["data"][0]["sparse_embedding"], reference[1], top_k=4)


def test_rerank_is_sparse_encoders_dot_product(splade, splade_encoder):
    query = splade_encoder.encode([QUERY], convert_to_tensor=True)
    documents = splade_encoder.encode(DOCUMENTS, convert_to_tensor=True)
    expected = splade_encoder.similarity(query, documents)[0].numpy()
    body = answer(splade, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS})
    assert [hit["index"] for hit in body["results"]] == np.argsort(-expected, kind="stable").tolist()
    for hit in body["results"]:
        assert hit["relevance_score"] == pytest.approx(float(expected[hit["index"]]), rel=1e-4, abs=1e-4)
    envelope = answer(splade, "/invocations", {"data": {"query": QUERY, "documents": DOCUMENTS, "top_n": 2}})
    assert [hit["index"] for hit in envelope["data"][0]["results"]] == [hit["index"] for hit in body["results"][:2]]


def test_sum_pooling_and_a_bare_masked_lm_directory(tmp_path, minilm_dir, splade_encoder):
    from sentence_transformers import SparseEncoder

    summed = make_splade(tmp_path / "sum-splade", minilm_dir, pooling="sum")
    bare = make_bare(tmp_path / "bare", minilm_dir)
    for directory, reference_dir in ((summed, summed), (bare, summed.with_name("sum-splade-mlm"))):
        with serving(directory) as served:
            body = answer(served, "/v1/sparse-embeddings", {"input": TEXTS[:2]})
        if directory == bare:  # the bare directory is max pooling, as SPLADE v2
            expected = splade_encoder  # the same weights, max pooling
        else:
            expected = SparseEncoder(str(reference_dir), device="cpu")
        weights = expected.encode(TEXTS[:2], convert_to_tensor=True).to_dense().numpy()
        for item, row in zip(body["data"], weights):
            sparse_matches(item["sparse_embedding"], row)


@pytest.mark.parametrize("pooling", ["max", "sum"])
def test_log1p_relu_activation_matches_sparse_encoders_splade_pooling(tmp_path, minilm_dir, pooling):
    """SpladePooling(activation_function="log1p_relu"): log1p applied twice. sentence-transformers' own module on
    the same weights is the reference; with one log1p fewer the weights would be the plain relu model's."""
    from sentence_transformers import SparseEncoder

    directory = make_splade(tmp_path / f"log1p-{pooling}", minilm_dir, pooling=pooling, activation="log1p_relu")
    with serving(directory) as served:
        body = answer(served, "/v1/sparse-embeddings", {"input": TEXTS})
    reference = SparseEncoder(str(directory), device="cpu")
    assert reference[1].activation_function == "log1p_relu"
    weights = reference.encode(TEXTS, convert_to_tensor=True).to_dense().numpy()
    for item, row in zip(body["data"], weights):
        sparse_matches(item["sparse_embedding"], row)


def test_models_listing_and_openapi_name_the_sparse_route(splade):
    models = splade.get("/v1/models").json()
    assert "sparse" in json.dumps(models)
    document = splade.get("/openapi.json").json()
    assert "/v1/sparse-embeddings" in document["paths"]
    response = splade.post("/v1/sparse-embeddings", {"input": ["a b c"], "return_tokens": True})
    assert_documented(document, "post", "/v1/sparse-embeddings", response)


@pytest.fixture(scope="module")
def inference_free_dir(tmp_path_factory, minilm_dir):
    return make_inference_free(tmp_path_factory.mktemp("sparse") / "inference-free", minilm_dir)


def test_inference_free_queries_are_a_static_lookup_and_documents_run_the_model(inference_free_dir):
    from sentence_transformers import SparseEncoder

    directory = inference_free_dir
    encoder = SparseEncoder(str(directory), device="cpu")
    queries = encoder.encode_query(TEXTS[:2], convert_to_tensor=True).to_dense().numpy()
    documents = encoder.encode_document(TEXTS[:2], convert_to_tensor=True).to_dense().numpy()
    expected = encoder.similarity(encoder.encode_query([QUERY], convert_to_tensor=True),
                                  encoder.encode_document(DOCUMENTS, convert_to_tensor=True))[0].numpy()
    with serving(directory) as served:
        as_queries = answer(served, "/v1/sparse-embeddings", {"input": TEXTS[:2], "input_type": "query"})
        as_documents = answer(served, "/v1/sparse-embeddings", {"input": TEXTS[:2]})
        ranked = answer(served, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS})
        too_long = served.post("/v1/sparse-embeddings", {"input": TEXTS[3], "input_type": "query", "truncate": False})
    assert_error(too_long, 400, "INPUT_TOKEN_LIMIT_EXCEEDED", "128")
    for item, weights in zip(as_queries["data"], queries):
        sparse_matches(item["sparse_embedding"], weights)
    for item, weights in zip(as_documents["data"], documents):
        sparse_matches(item["sparse_embedding"], weights)
    # a query is billed the tokens it has (no special tokens are added to a static query)
    assert as_queries["usage"]["total_tokens"] == sum(len(encoder.tokenizer.tokenize(t)) for t in TEXTS[:2])
    for hit in ranked["results"]:
        assert hit["relevance_score"] == pytest.approx(float(expected[hit["index"]]), rel=1e-4, abs=1e-4)


def readme_bodies() -> list[tuple[str, dict]]:
    """The (path, body) of each curl in README's "Sparse embeddings" section."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Sparse embeddings", 1)[1].split("\n## ", 1)[0]
    calls = re.findall(r"curl -s localhost:8080(\S+) .*?\n\s*-d '(.*?)'", section, flags=re.S)
    return [(path, json.loads(body)) for path, body in calls]


def test_readme_curls_answer_on_a_real_server(splade_server):
    calls = readme_bodies()
    assert [path for path, _ in calls] == ["/v1/sparse-embeddings", "/invocations", "/v1/rerank"]
    server = splade_server
    public, envelope, ranked = (answer(server, path, body) for path, body in calls)
    item = public["data"][0]["sparse_embedding"]
    assert len(item["indices"]) == 3 and len(item["tokens"]) == 3 and min(item["values"]) > 0
    assert min(envelope["data"][0]["sparse_embedding"]["values"]) > 0.5
    assert envelope["parameters"] == {"min_weight": 0.5}
    assert sorted(hit["index"] for hit in ranked["results"]) == [0, 1]


def test_build_artifact_checks_and_packs_a_splade_and_the_listing_shows_its_route(tmp_path, splade_dir, reference):
    import dataclasses
    import sys
    import tarfile
    from pathlib import Path

    from model_handlers import HandlerOptions, load_handler
    from model_handlers.types import EmbedRequest, TextInput

    packaging = Path(__file__).resolve().parent.parent / "packaging"
    sys.path.insert(0, str(packaging))
    import _catalog
    import aws_listing
    import build_artifact

    output = tmp_path / "model.tar.gz"
    report = build_artifact.build_artifact(splade_dir, output, served_name="tiny-splade")
    assert report.kind == "sparse"
    assert report.check.startswith("embedded 1 text into sparse vectors of 3 entries"), report.check
    unpacked = tmp_path / "model"
    unpacked.mkdir()
    with tarfile.open(output, "r:gz") as tar:
        tar.extractall(unpacked, filter="data")
    assert json.loads((unpacked / "searchbox.json").read_text())["kind"] == "sparse"
    handler = load_handler(unpacked, HandlerOptions(device="cpu"))
    try:
        vector = handler.run(EmbedRequest(inputs=(TextInput(TEXTS[0]),), operation="sparse")).vectors[0]
    finally:
        handler.close()
    sparse_matches({"indices": vector.indices.tolist(), "values": vector.values.tolist()}, reference[0])
    product = dataclasses.replace(_catalog.load_catalog(packaging / "catalog.example.yaml")[0], kind="sparse",
                                  model_dir=splade_dir, served_name="tiny-splade")
    usage = aws_listing.usage_markdown(product, tmp_path / "no-bench.md", aws_listing.measure_sample(product))
    assert "/v1/sparse-embeddings" in usage and "sparse_embedding" in usage


# Source: elastic/elasticsearch, x-pack/plugin/inference/src/main/java/org/elasticsearch/xpack/inference/services/
# sagemaker/schema/elastic/ElasticSparseEmbeddingPayload.java: `api: elastic` reads {"sparse_embedding": [{"is_truncated":
# bool, "embedding": {token: float}}]}, one per input, unknown keys refused; the request is ElasticPayload's
# {"input", "input_type"?, "task_settings"?} (as for text_embedding, tests/test_integrations.py).
@pytest.mark.parametrize("route", ["/invocations", "/score"])
def test_elasticsearch_sparse_embedding_answer_is_sparse_encoders_weights_by_token(splade, splade_encoder, reference,
                                                                                   route):
    tokenizer = splade_encoder.tokenizer
    answered = answer(splade, route, {"input": TEXTS, "input_type": "ingest"})
    assert set(answered) == {"sparse_embedding"}
    assert len(answered["sparse_embedding"]) == len(TEXTS)
    for item, weights in zip(answered["sparse_embedding"], reference):
        assert set(item) == {"is_truncated", "embedding"} and item["is_truncated"] is False
        kept = np.flatnonzero(weights > 0)
        expected = dict(zip(tokenizer.convert_ids_to_tokens(kept.tolist()), weights[kept].tolist()))
        assert set(item["embedding"]) == set(expected)
        for token, weight in item["embedding"].items():
            assert weight == pytest.approx(expected[token], abs=1e-5)
    one = answer(splade, route, {"input": TEXTS[0], "task_settings": {"top_k": 3}})
    assert len(one["sparse_embedding"]) == 1 and len(one["sparse_embedding"][0]["embedding"]) == 3


# Source: opensearch-project/ml-commons, docs/model_serving_framework/deploy_sparse_model_to_SageMaker.ipynb (commit
# 950f05600289177bba83a9521f85d07e258d15c5): the neural-sparse connector sends {"texts": [...],
# "sparse_embedding_format": "word" | "token_id"} (or, in its legacy schema, the bare list) and reads one
# {token: weight} object per text (`SparseEncoder.decode` as dicts; token ids as strings for token_id).
@pytest.mark.parametrize("fmt", ["word", "token_id", None])
def test_opensearch_neural_sparse_answers_one_token_weight_object_per_text(splade, splade_encoder, reference, fmt):
    body = TEXTS if fmt is None else {"texts": TEXTS, "sparse_embedding_format": fmt}
    answered = answer(splade, "/invocations", body)
    assert isinstance(answered, list) and len(answered) == len(TEXTS)
    for item, weights in zip(answered, reference):
        kept = np.flatnonzero(weights > 0)
        keys = ([str(i) for i in kept.tolist()] if fmt == "token_id"
                else splade_encoder.tokenizer.convert_ids_to_tokens(kept.tolist()))
        expected = dict(zip(keys, weights[kept].tolist()))
        assert set(item) == set(expected)
        for key, weight in item.items():
            assert weight == pytest.approx(expected[key], abs=1e-5)
    assert_error(splade.post("/invocations", {"texts": TEXTS, "sparse_embedding_format": "bits"}), 422, None,
                 "sparse_embedding_format")


@pytest.mark.parametrize("query_pooled", [True, False], ids=["mlm-and-pooling", "mlm-alone"])
def test_a_router_whose_query_route_is_a_second_model_is_refused_at_load_naming_its_modules(tmp_path, minilm_dir,
                                                                                            query_pooled):
    """Queries either take the document route or look up a SparseStaticEmbedding: a Router that gives them a model of
    their own is refused by name, with the modules router_config.json (sentence-transformers' own file) lists."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Router, Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    from model_handlers import HandlerOptions, load_handler
    from model_handlers.errors import ModelDirectoryError
    from models.sparse import make_masked_lm

    plain = make_masked_lm(tmp_path / "mlm", minilm_dir)
    routes = {side: [Transformer(str(plain), transformer_task="fill-mask", max_seq_length=128), SpladePooling("max")]
              for side in ("query", "document")}
    if not query_pooled:  # one module, like a static route's, but not a SparseStaticEmbedding
        routes["query"] = routes["query"][:1]
    router = Router.for_query_document(query_modules=routes["query"], document_modules=routes["document"])
    directory = tmp_path / "two-models"
    SparseEncoder(modules=[router], device="cpu").save(str(directory))
    saved = json.loads((directory / "router_config.json").read_text())
    query_types = ", ".join(saved["types"][folder] for folder in saved["structure"]["query"])
    with pytest.raises(ModelDirectoryError) as refused:
        load_handler(directory, HandlerOptions(device="cpu"))
    assert str(refused.value) == (f"{directory}: the Router's query route ({query_types}) is neither a "
                                  "SparseStaticEmbedding nor the document route; searchbox serves only those")


def test_a_static_query_of_exactly_the_max_length_is_answered_whole(inference_free_dir, minilm_dir):
    from transformers import AutoTokenizer

    directory = inference_free_dir
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    longest, over = "a " * 128, "a " * 129
    assert (len(tokenizer.tokenize(longest)), len(tokenizer.tokenize(over))) == (128, 129)  # no special tokens
    with serving(directory) as served:
        for text, status in ((longest, 200), (over, 400), ("bread", 200)):
            response = served.post("/v1/sparse-embeddings", {"input": text, "input_type": "query", "truncate": False})
            assert response.status_code == status, (len(text), response.text)
