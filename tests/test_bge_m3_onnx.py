"""BGE-M3 on the ONNX backend: one graph answering the dense vector, the sparse token weights and the ColBERT vectors,
served, and compared with FlagEmbedding 1.4.2's `BGEM3FlagModel` on the same weights (its own venv,
tests/models/bge_m3.py): the tiny BERT-encoder BGE-M3 and the XLM-RoBERTa one (BGE-M3's own architecture).

fp32 within 1e-4 of FlagEmbedding on every form (dense and ColBERT vectors element-wise, both L2-normalised; sparse
weights on the same token ids), rerank scores `compute_score`'s weighted mean; the build's gate of the three forms,
refused when int8 misses it; the serve path without torch. `server` tier: the reference is FlagEmbedding in its own venv.
"""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from helpers import answer, onnx_artifact, refused_at_load, run_in_a_fresh_process, serving, unit
from models.bge_m3 import RERANK_DOCUMENTS, RERANK_QUERY, TEXTS

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "packaging"))

import _onnx  # noqa: E402
import build_artifact  # noqa: E402

FP32_TOLERANCE = 1e-4


def with_safetensors_heads(source: Path, target: Path) -> Path:
    """FlagEmbedding's .pt heads as safetensors (what an artifact ships, and what loads without the pickle opt-in)."""
    import torch
    from safetensors.torch import save_file

    shutil.copytree(source, target)
    for head in ("colbert_linear", "sparse_linear"):
        save_file(torch.load(str(target / f"{head}.pt"), weights_only=True), str(target / f"{head}.safetensors"))
        (target / f"{head}.pt").unlink()
    return target


@pytest.fixture(scope="module")
def bge_m3_reference(tmp_path_factory, minilm_dir):
    from models.bge_m3 import make_reference
    from reference_env import ReferenceUnavailable

    try:
        return make_reference(tmp_path_factory.mktemp("bge-m3"), minilm_dir)
    except ReferenceUnavailable as exc:
        pytest.fail(f"the BGE-M3 reference (FlagEmbedding 1.4.2 in its own venv) cannot be made: {exc}", pytrace=False)


def exported_copy(source: Path, target: Path) -> Path:
    """`source` exported by the kind's own exporter, its searchbox.json naming the ONNX backend: what a build without
    --quantize serves, without the archive and the gate."""
    from model_handlers.kinds.bge_m3 import export_onnx

    model = with_safetensors_heads(source, target)
    export_onnx(model, model / "onnx" / "model.onnx")
    (model / "searchbox.json").write_text(json.dumps({"backend": "onnx"}))
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory, bge_m3_reference) -> Path:
    return exported_copy(bge_m3_reference.model_dir, tmp_path_factory.mktemp("bge-m3-onnx") / "model")


def assert_every_form_matches(body: dict, ranked: dict, expected: dict) -> None:
    for index, item in enumerate(body["data"]):
        np.testing.assert_allclose(item["embedding"], expected["dense"][index], atol=FP32_TOLERANCE, rtol=0)
        lexical = expected["lexical"][index]
        ids = sorted(int(token) for token in lexical)
        assert item["sparse_embedding"]["indices"] == ids
        np.testing.assert_allclose(item["sparse_embedding"]["values"], [lexical[str(i)] for i in ids],
                                   atol=FP32_TOLERANCE, rtol=0)
        rows = np.asarray(item["multi_vector"], dtype=np.float64).reshape(expected[f"colbert_{index}"].shape)
        np.testing.assert_allclose(unit(rows), expected[f"colbert_{index}"], atol=FP32_TOLERANCE, rtol=0)
    scores = {hit["index"]: hit["relevance_score"] for hit in ranked["results"]}
    np.testing.assert_allclose([scores[i] for i in range(len(RERANK_DOCUMENTS))],
                               expected["score_colbert+sparse+dense"], atol=FP32_TOLERANCE, rtol=0)


def test_the_graph_answers_three_outputs(exported):
    """onnxruntime alone: the tokenizer's inputs in, `dense_vector` [batch, hidden], `sparse_weights` [batch, seq] and
    `colbert_vectors` [batch, seq - 1, width] out, in that order; padding's ColBERT rows zero."""
    import onnxruntime
    from transformers import AutoTokenizer

    session = onnxruntime.InferenceSession(str(exported / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["dense_vector", "sparse_weights", "colbert_vectors"]
    features = AutoTokenizer.from_pretrained(str(exported))(TEXTS[:2], padding=True, return_tensors="np")
    dense, weights, colbert = session.run(None, {i.name: features[i.name].astype(np.int64)
                                                 for i in session.get_inputs()})
    batch, length = features["input_ids"].shape
    assert dense.shape == (batch, 384) and weights.shape == (batch, length) and colbert.shape[:2] == (batch, length - 1)
    assert (weights >= 0).all()  # ReLU in the graph
    padding = features["attention_mask"][:, 1:] == 0
    assert padding.any() and not colbert[padding].any()


def test_fp32_onnx_answers_flagembeddings_three_forms_and_rerank(exported, bge_m3_reference):
    expected = bge_m3_reference.arrays()
    with serving(exported) as served:
        assert served.get("/v1/models").json()["data"][0]["backend"] == "onnx"
        before = served.runtime.handler.forward_passes
        answer(served, "/v1/embeddings", {"input": TEXTS[:4]})
        dense_passes = served.runtime.handler.forward_passes - before
        before = served.runtime.handler.forward_passes
        body = answer(served, "/v1/embeddings", {"input": TEXTS[:4], "return_sparse": True,
                                                 "return_multivector": True})
        assert served.runtime.handler.forward_passes - before == dense_passes, \
            "all three forms from the passes of the one graph a dense request costs"
        body["data"] += answer(served, "/v1/embeddings", {"input": TEXTS[4:], "return_sparse": True,
                                                          "return_multivector": True})["data"]
        ranked = answer(served, "/v1/rerank", {"query": RERANK_QUERY, "documents": RERANK_DOCUMENTS})
        alone = answer(served, "/v1/sparse-embeddings", {"input": TEXTS[:1], "return_tokens": True})
    assert_every_form_matches(body, ranked, expected)
    tokens = alone["data"][0]["sparse_embedding"]["tokens"]
    assert tokens and not {"[CLS]", "[SEP]", "[PAD]"} & set(tokens)  # FlagEmbedding drops cls/eos/pad/unk


def test_an_xlm_roberta_bge_m3_exports_and_matches_flagembedding(bge_m3_reference, tmp_path):
    """BGE-M3's own architecture: positions counted after the padding id, a tokenizer with </s> as its end token."""
    model = exported_copy(bge_m3_reference.xlmr_dir, tmp_path / "xlmr")
    with serving(model) as served:
        body = answer(served, "/v1/embeddings", {"input": TEXTS, "return_sparse": True, "return_multivector": True})
        ranked = answer(served, "/v1/rerank", {"query": RERANK_QUERY, "documents": RERANK_DOCUMENTS})
    assert_every_form_matches(body, ranked, bge_m3_reference.arrays(bge_m3_reference.xlmr_dir.name))


def test_a_graph_that_is_not_a_bge_m3_export_is_refused_at_load(exported, tmp_path):
    import onnx

    unnamed = tmp_path / "unnamed"
    shutil.copytree(exported, unnamed)
    graph = onnx.load(str(unnamed / "onnx" / "model.onnx"))
    del graph.metadata_props[:]
    onnx.save(graph, str(unnamed / "onnx" / "model.onnx"))
    assert (f"{unnamed / 'onnx' / 'model.onnx'} is not a BGE-M3 export" in
            refused_at_load(unnamed, {"SEARCHBOX_BACKEND": "onnx"}))


def test_the_fp32_build_records_the_three_gates_and_the_serve_path_imports_no_torch(bge_m3_reference, tmp_path):
    source = with_safetensors_heads(bge_m3_reference.model_dir, tmp_path / "source")
    report, model_dir = onnx_artifact(source, tmp_path / "build")
    quality = report.quality
    assert report.kind == "bge-m3" and quality.backend_file == _onnx.FP32_FILE
    assert quality.fp32_min_cosine >= 0.9999 and quality.fp32_max_weight_diff <= 1e-4
    assert quality.fp32_min_token_cosine >= 0.9999
    manifest = json.loads((model_dir / "searchbox-manifest.json").read_text())
    assert manifest["onnx"] == quality.as_dict()
    listing = quality.listing_markdown()
    assert "sparse weights are within" in listing and "token vectors keep cosine" in listing
    expected = bge_m3_reference.arrays()
    loaded, out = run_in_a_fresh_process(
        model_dir, "r = h.run(EmbedRequest(inputs=(TextInput(args),), operation='multi-vector'))\n"
                   "d = h.run(EmbedRequest(inputs=(TextInput(args),)))\n"
                   "out = {'colbert': r.vectors[0].tolist(), 'dense': d.vectors[0].tolist()}", TEXTS[0])
    assert loaded == []
    np.testing.assert_allclose(unit(out["colbert"]), expected["colbert_0"], atol=FP32_TOLERANCE, rtol=0)
    np.testing.assert_allclose(out["dense"], expected["dense"][0], atol=FP32_TOLERANCE, rtol=0)


def test_the_int8_build_of_the_tiny_bge_m3_misses_the_gate_and_is_refused_with_its_figures(bge_m3_reference,
                                                                                            tmp_path):
    """The default gates: the tiny model's random heads keep, with int8, the same top-10 neighbours for 80% of the
    queries (the dense gate asks 90%): refused naming it, nothing written."""
    source = with_safetensors_heads(bge_m3_reference.model_dir, tmp_path / "source")
    out = tmp_path / "dist" / "model.tar.gz"
    with pytest.raises(build_artifact.BuildRefused, match=r"quality gate: int8 loses too much against fp32: .*same "
                                                          r"top-10 neighbours for \d+% of queries < 90%"):
        build_artifact.build_artifact(source, out, backend="onnx", quantize="int8")
    assert not (tmp_path / "dist").exists()


def test_served_int8_holds_the_gates_it_was_built_under_against_flagembedding(bge_m3_reference, tmp_path):
    """An int8 build under gates lowered to what this random-headed model keeps (the defaults refuse it, above): the
    served forms recomputed here against FlagEmbedding stay within them."""
    source = with_safetensors_heads(bge_m3_reference.model_dir, tmp_path / "source")
    gate = _onnx.Gate(int8_min_top_k_agreement=0.7, int8_min_top_k_overlap=0.9, int8_min_dot_correlation=0.98,
                      int8_min_mean_token_cosine=0.98)
    out = tmp_path / "dist" / "model.tar.gz"
    report = build_artifact.build_artifact(source, out, backend="onnx", quantize="int8", gate=gate, compresslevel=0)
    with tarfile.open(out) as tar:
        tar.extractall(tmp_path / "model", filter="data")
    quality = report.quality
    assert quality.backend_file == _onnx.INT8_FILE
    assert quality.int8_mean_token_cosine >= 0.98 and quality.int8_top_k_overlap >= 0.9
    expected = bge_m3_reference.arrays()
    with serving(tmp_path / "model") as served:
        body = answer(served, "/v1/embeddings", {"input": TEXTS, "return_sparse": True, "return_multivector": True})
    dense = np.asarray([item["embedding"] for item in body["data"]])
    assert (unit(dense) * expected["dense"]).sum(axis=1).min() >= 0.99
    token_cosines = np.concatenate([
        (unit(np.asarray(item["multi_vector"]).reshape(expected[f"colbert_{i}"].shape)) * expected[f"colbert_{i}"])
        .sum(axis=1) for i, item in enumerate(body["data"])])
    assert token_cosines.mean() >= 0.98
    for item, lexical in zip(body["data"], expected["lexical"]):
        reference = sorted(lexical, key=lambda token: -lexical[token])[:32]
        served_top = {str(i) for i, _ in sorted(zip(item["sparse_embedding"]["indices"],
                                                    item["sparse_embedding"]["values"]), key=lambda p: -p[1])[:32]}
        if reference:
            assert len(set(reference) & served_top) / len(reference) >= 0.5
