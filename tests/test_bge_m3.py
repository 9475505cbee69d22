"""BGE-M3: a tiny BGE-M3-layout model (tests/models/bge_m3.py) answers what FlagEmbedding 1.4.2's `BGEM3FlagModel`
computes on the same weights, in its own venv: dense cosine >= 0.9999, sparse weights within 1e-5 on the same token
ids, ColBERT vectors cosine >= 0.9999 each, and rerank scores `compute_score`'s weighted "colbert+sparse+dense" —
through the server's routes (create_app + the test client). One request asking all three outputs costs the passes a
dense request costs, and on a CPU runs as two passes at once.
"""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from models.bge_m3 import RERANK_DOCUMENTS, RERANK_QUERY, RERANK_WEIGHTS, TEXTS
from helpers import answer, assert_error, serving
from tiers import implies

MIN_COSINE = 0.9999
SPARSE_TOLERANCE = 1e-5
SCORE_TOLERANCE = 1e-4
PACKAGING = Path(__file__).resolve().parent.parent / "packaging"


@pytest.fixture(scope="module")
@implies("server")
def bge_m3_reference(tmp_path_factory, minilm_dir):
    """The tiny BGE-M3 and FlagEmbedding's answers on it; without PyPI the venv cannot be made and the tests fail."""
    from models.bge_m3 import make_reference
    from reference_env import ReferenceUnavailable

    try:
        return make_reference(tmp_path_factory.mktemp("bge-m3"), minilm_dir)
    except ReferenceUnavailable as exc:
        pytest.fail(f"the BGE-M3 reference (FlagEmbedding 1.4.2 in its own venv) cannot be made: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def expected(bge_m3_reference):
    return bge_m3_reference.arrays()


@pytest.fixture(scope="module")
def served(bge_m3_reference):
    """The model as FlagEmbedding saves it (.pt heads): served with the pickle opt-in, on two threads (two passes at
    once, one thread each, whatever the machine's cores)."""
    with serving(bge_m3_reference.model_dir, {"SEARCHBOX_ALLOW_PICKLE": "1", "SEARCHBOX_TORCH_THREADS": "2"}) as app:
        yield app, app.runtime


def dense_matches(vector, reference) -> None:
    vector = np.asarray(vector, dtype=np.float64)
    assert vector.shape == reference.shape
    assert abs(np.linalg.norm(vector) - 1) < 1e-5
    assert float(vector @ reference) / np.linalg.norm(reference) >= MIN_COSINE


def sparse_matches(item: dict, lexical: dict) -> None:
    """The same token ids (ascending) as FlagEmbedding's lexical weights, each weight within 1e-5."""
    ids = sorted(int(token) for token in lexical)
    assert item["indices"] == ids
    np.testing.assert_allclose(item["values"], [lexical[str(i)] for i in ids], atol=SPARSE_TOLERANCE, rtol=0)


def rows_match(rows, reference) -> None:
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, reference.shape[-1]) if len(rows) else np.zeros((0,))
    assert rows.shape == reference.shape, (rows.shape, reference.shape)
    if len(rows):
        cosines = (rows * reference).sum(1) / np.linalg.norm(rows, axis=1) / np.linalg.norm(reference, axis=1)
        assert cosines.min() >= MIN_COSINE, cosines.min()


def test_detected_as_bge_m3_with_every_form(served):
    app, _ = served
    model = answer_get(app, "/v1/models")["data"][0]
    assert model["kind"] == "bge-m3"
    assert set(model["operations"]) == {"embed", "sparse", "multi-vector", "rerank"}


def answer_get(app, path):
    response = app.get(path)
    assert response.status_code == 200, response.text[:500]
    return response.json()


def test_embeddings_with_every_output_match_flagembedding_from_one_pass(served, expected):
    app, runtime = served
    before = runtime.handler.forward_passes
    body = answer(app, "/v1/embeddings", {"input": TEXTS, "return_sparse": True, "return_multivector": True})
    combined = runtime.handler.forward_passes - before
    answer(app, "/v1/embeddings", {"input": TEXTS})
    assert runtime.handler.forward_passes - before == 2 * combined, "all three outputs cost the passes dense costs"
    before = runtime.handler.forward_passes
    answer(app, "/v1/embeddings", {"input": TEXTS[:4], "return_sparse": True, "return_multivector": True})
    short = runtime.handler.forward_passes - before
    answer(app, "/v1/embeddings", {"input": TEXTS[:4]})
    # short inputs: a pass on each of the two idle lanes (transformers' encoder and two linear heads keep nothing of a
    # pass), whatever the outputs asked
    assert short == 2 and runtime.handler.forward_passes - before == 2 * short
    for index, item in enumerate(body["data"]):
        assert set(item) == {"object", "index", "embedding", "sparse_embedding", "multi_vector"}
        dense_matches(item["embedding"], expected["dense"][index])
        sparse_matches(item["sparse_embedding"], expected["lexical"][index])
        rows_match(item["multi_vector"], expected[f"colbert_{index}"])
    assert body["usage"]["total_tokens"] > 512  # tokens read, the long input cut at 512


def test_each_route_alone_matches_flagembedding(served, expected):
    app, _ = served
    dense = answer(app, "/v1/embeddings", {"input": TEXTS})
    sparse = answer(app, "/v1/sparse-embeddings", {"input": TEXTS, "return_tokens": True})
    multi = answer(app, "/v1/multi-vector", {"input": TEXTS})
    for index in range(len(TEXTS)):
        assert set(dense["data"][index]) == {"object", "index", "embedding"}
        dense_matches(dense["data"][index]["embedding"], expected["dense"][index])
        sparse_matches(sparse["data"][index]["sparse_embedding"], expected["lexical"][index])
        rows_match(multi["data"][index]["embeddings"], expected[f"colbert_{index}"])
    # [CLS] and the end token ([SEP], this tokenizer's eos) are dropped, as FlagEmbedding drops cls/eos/pad/unk
    tokens = sparse["data"][0]["sparse_embedding"]["tokens"]
    assert tokens and not {"[CLS]", "[SEP]", "[PAD]"} & set(tokens)


def test_an_xlm_roberta_encoder_matches_flagembedding(bge_m3_reference):
    """BGE-M3's own architecture (XLM-R: positions counted after the padding id) through every output and rerank."""
    expected = bge_m3_reference.arrays(bge_m3_reference.xlmr_dir.name)
    with serving(bge_m3_reference.xlmr_dir, {"SEARCHBOX_ALLOW_PICKLE": "1"}) as app:
        body = answer(app, "/v1/embeddings", {"input": TEXTS, "return_sparse": True, "return_multivector": True})
        ranked = answer(app, "/v1/rerank", {"query": RERANK_QUERY, "documents": RERANK_DOCUMENTS})
        kind = answer_get(app, "/v1/models")["data"][0]["kind"]
    assert kind == "bge-m3"
    for index, item in enumerate(body["data"]):
        dense_matches(item["embedding"], expected["dense"][index])
        sparse_matches(item["sparse_embedding"], expected["lexical"][index])
        rows_match(item["multi_vector"], expected[f"colbert_{index}"])
    scores = {hit["index"]: hit["relevance_score"] for hit in ranked["results"]}
    np.testing.assert_allclose([scores[i] for i in range(len(RERANK_DOCUMENTS))],
                               expected["score_colbert+sparse+dense"], atol=SCORE_TOLERANCE, rtol=0)


def test_sagemaker_envelope_gets_dense_and_asks_the_others_in_parameters(served, expected):
    app, _ = served
    plain = answer(app, "/invocations", {"data": [{"text": TEXTS[0], "id": "a"}]})
    assert set(plain["data"][0]) == {"id", "embedding", "usage"}
    dense_matches(plain["data"][0]["embedding"], expected["dense"][0])
    both = answer(app, "/invocations", {"data": [{"text": TEXTS[0], "id": "a"}],
                                        "parameters": {"return_sparse": True, "top_k": 2}})
    item = both["data"][0]
    dense_matches(item["embedding"], expected["dense"][0])
    lexical = expected["lexical"][0]
    largest = sorted(sorted(lexical, key=lambda token: -lexical[token])[:2], key=int)
    assert item["sparse_embedding"]["indices"] == [int(token) for token in largest]
    # batch transform: `id,text` rows answer the dense vector, BGE-M3's own form
    rows = app.post("/invocations", data=f'a,"{TEXTS[0]}"\nb,"{TEXTS[3]}"\n', headers={"Content-Type": "text/csv"})
    assert rows.status_code == 200, rows.text[:500]
    items = json.loads(rows.text.splitlines()[0])["data"]
    assert [item["id"] for item in items] == ["a", "b"]
    assert all(set(item) == {"id", "embedding", "usage"} for item in items)
    dense_matches(items[1]["embedding"], expected["dense"][3])


def test_rerank_is_compute_scores_weighted_mean(served, expected):
    app, _ = served
    body = answer(app, "/v1/rerank", {"query": RERANK_QUERY, "documents": RERANK_DOCUMENTS})
    scores = {hit["index"]: hit["relevance_score"] for hit in body["results"]}
    reference = expected["score_colbert+sparse+dense"]
    np.testing.assert_allclose([scores[i] for i in range(len(RERANK_DOCUMENTS))], reference, atol=SCORE_TOLERANCE,
                               rtol=0)
    assert [hit["index"] for hit in body["results"]] == list(np.argsort(-reference, kind="stable"))
    assert RERANK_WEIGHTS == (0.4, 0.2, 0.4)


def test_requests_of_every_form_share_passes(served):
    """Dense, sparse and token-vector requests sent together run in the same passes (one batch group)."""
    from concurrent.futures import ThreadPoolExecutor

    from model_handlers.types import EmbedRequest, TextInput

    _, runtime = served
    pipeline = runtime.handler
    requests = [EmbedRequest(inputs=(TextInput(text),), operation=operation)
                for text in TEXTS[:3] for operation in ("embed", "sparse", "multi-vector")] * 4
    before = pipeline.forward_passes
    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(pipeline.run, requests))
    assert [result.operation for result in results] == [request.operation for request in requests]
    assert pipeline.forward_passes - before < len(requests) / 2


def test_pickled_heads_need_the_opt_in_and_safetensors_heads_do_not(bge_m3_reference, tmp_path):
    from model_handlers.errors import ModelDirectoryError
    from model_handlers.serving_config import read_serving_config
    from model_handlers.kinds import bge_m3
    from model_handlers.options import HandlerOptions

    config = read_serving_config(bge_m3_reference.model_dir)
    assert config.kind.name == "bge-m3"
    with pytest.raises(ModelDirectoryError, match="SEARCHBOX_ALLOW_PICKLE"):
        bge_m3.BgeM3Model(bge_m3_reference.model_dir, config, HandlerOptions(device="cpu"))
    converted = tmp_path / "safetensors-heads"
    shutil.copytree(bge_m3_reference.model_dir, converted)
    for head in bge_m3.HEADS:
        to_safetensors(converted / f"{head}.pt")
    model = bge_m3.BgeM3Model(converted, read_serving_config(converted), HandlerOptions(device="cpu"))
    assert model.width == 384


def to_safetensors(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file(torch.load(str(path), weights_only=True), str(path.with_suffix(".safetensors")))
    path.unlink()


def test_safetensors_heads_serve_the_same(bge_m3_reference, expected, tmp_path):
    converted = tmp_path / "converted"
    shutil.copytree(bge_m3_reference.model_dir, converted)
    for head in ("colbert_linear", "sparse_linear"):
        to_safetensors(converted / f"{head}.pt")
    with serving(converted) as app:
        body = answer(app, "/v1/embeddings", {"input": TEXTS[:2], "return_sparse": True, "return_multivector": True})
    for index, item in enumerate(body["data"]):
        dense_matches(item["embedding"], expected["dense"][index])
        sparse_matches(item["sparse_embedding"], expected["lexical"][index])
        rows_match(item["multi_vector"], expected[f"colbert_{index}"])


def test_artifact_refuses_pickled_heads_and_ships_converted_ones(bge_m3_reference, tmp_path):
    """build_artifact ships safetensors only: FlagEmbedding's .pt heads are refused (not silently left out, which
    would ship an encoder without its heads), naming the conversion; converted, they are shipped and load."""
    sys.path.insert(0, str(PACKAGING))
    import build_artifact

    with pytest.raises(build_artifact.BuildRefused, match="colbert_linear.pt .*save_file"):
        build_artifact.build_artifact(bge_m3_reference.model_dir, tmp_path / "refused.tar.gz")
    converted = tmp_path / "converted"
    shutil.copytree(bge_m3_reference.model_dir, converted)
    for head in ("colbert_linear", "sparse_linear"):
        to_safetensors(converted / f"{head}.pt")
    report = build_artifact.build_artifact(converted, tmp_path / "model.tar.gz", device="cpu")
    assert report.kind == "bge-m3"
    with tarfile.open(report.output) as archive:
        names = {Path(name).name for name in archive.getnames()}
    assert {"colbert_linear.safetensors", "sparse_linear.safetensors"} <= names


def test_model_dir_json_sets_rerank_weights(bge_m3_reference, tmp_path):
    from model_handlers.errors import ModelDirectoryError
    from model_handlers.serving_config import read_serving_config

    directory = tmp_path / "weighted"
    shutil.copytree(bge_m3_reference.model_dir, directory)
    (directory / "searchbox.json").write_text(json.dumps({"rerank_weights": {"dense": 1, "sparse": 0, "colbert": 0}}))
    assert read_serving_config(directory, allow_pickle=True).kind_settings.rerank_weights == (1.0, 0.0, 0.0)
    (directory / "searchbox.json").write_text(json.dumps({"rerank_weights": {"dense": -1}}))
    with pytest.raises(ModelDirectoryError, match="rerank_weights"):
        read_serving_config(directory, allow_pickle=True)


def test_dense_only_rerank_weights_give_flagembeddings_dense_score(bge_m3_reference, expected, tmp_path):
    directory = tmp_path / "dense-only"
    shutil.copytree(bge_m3_reference.model_dir, directory)
    (directory / "searchbox.json").write_text(json.dumps({"rerank_weights": {"dense": 1, "sparse": 0, "colbert": 0}}))
    with serving(directory, {"SEARCHBOX_ALLOW_PICKLE": "1"}) as app:
        body = answer(app, "/v1/rerank", {"query": RERANK_QUERY, "documents": RERANK_DOCUMENTS})
    scores = {hit["index"]: hit["relevance_score"] for hit in body["results"]}
    np.testing.assert_allclose([scores[i] for i in range(len(RERANK_DOCUMENTS))], expected["score_dense"],
                               atol=SCORE_TOLERANCE, rtol=0)


def test_sparse_route_refuses_the_combined_options(served):
    app, _ = served
    assert_error(app.post("/v1/sparse-embeddings", {"input": ["a"], "return_multivector": True}), 422,
                 "UNSUPPORTED_OPTION", "return_multivector")
    assert_error(app.post("/v1/embeddings", {"input": ["a"], "return_sparse": True, "top_k": 0}), 422,
                 "INVALID_OPTION", "top_k")


def test_other_kinds_refuse_the_combined_options(app):
    """A model of one form (the embedded MiniLM) refuses them with 4xx naming the fix (no model is built here)."""
    for option in ("return_sparse", "return_multivector"):
        assert_error(app.post("/v1/embeddings", {"input": ["a"], option: True}), 422, "UNSUPPORTED_OPTION", option,
                     "leave")
        assert_error(app.post("/invocations", {"data": [{"text": "a"}], "parameters": {option: True}}), 422,
                     "UNSUPPORTED_OPTION", option)


def test_a_bge_m3_directory_is_recognised_without_torch(tmp_path, bge_m3_dir):
    from model_handlers.kinds import ModelFiles, detect

    directory = shutil.copytree(bge_m3_dir, tmp_path / "m3")
    assert detect(ModelFiles.read(directory)).name == "bge-m3"
    (directory / "sparse_linear.pt").unlink()
    assert detect(ModelFiles.read(directory)).name == "embedding"


def readme_bodies() -> list[tuple[str, dict]]:
    """The (path, body) of each curl in README's "BGE-M3" section."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## BGE-M3", 1)[1].split("\n## ", 1)[0]
    calls = re.findall(r"curl -s localhost:8080(\S+) .*?\n\s*-d '(.*?)'", section, flags=re.S)
    return [(path, json.loads(body)) for path, body in calls]


def test_readme_curls_answer_on_a_real_server(bge_m3_server):
    calls = readme_bodies()
    assert [path for path, _ in calls] == ["/v1/embeddings", "/invocations", "/v1/sparse-embeddings", "/v1/rerank"]
    server = bge_m3_server  # safetensors heads: no pickle opt-in
    answers = []
    for path, body in calls:
        response = server.post(path, body)
        assert response.status_code == 200, response.text[:500]
        answers.append(response.json())
    everything, envelope, sparse, ranked = answers
    item = everything["data"][0]
    assert len(item["embedding"]) == 384 and item["sparse_embedding"]["indices"] and len(item["multi_vector"]) > 1
    assert 1 <= len(envelope["data"][0]["sparse_embedding"]["indices"]) <= 4 and envelope["data"][0]["id"] == "q1"
    assert len(sparse["data"][0]["sparse_embedding"]["tokens"]) == len(sparse["data"][0]["sparse_embedding"]["indices"])
    assert sorted(hit["index"] for hit in ranked["results"]) == [0, 1]


def test_answers_with_every_output_are_the_openapi_documents(served):
    from helpers import assert_documented

    app, _ = served
    document = answer_get(app, "/openapi.json")
    public = app.post("/v1/embeddings", {"input": TEXTS[:2], "return_sparse": True, "return_multivector": True})
    assert_documented(document, "post", "/v1/embeddings", public)
    envelope = app.post("/invocations", {"data": [{"text": TEXTS[0]}],
                                         "parameters": {"return_sparse": True, "return_multivector": True}})
    assert_documented(document, "post", "/invocations", envelope)
    request = document["components"]["schemas"]["EmbeddingsRequest"]["properties"]
    assert {"return_sparse", "return_multivector"} <= set(request)
