"""ColBERT on the ONNX backend: the PyLate-layout ColBERT of tests/models/colbert.py exported (encoder and Dense
projection in one graph), served, and compared with PyLate 1.6.0's `ColBERT.encode` and `colbert_scores` on the same
weights (its own venv), and the graph alone with transformers' BertModel and the Dense layer's weights.

The markers, the query expansion and the skiplist stay outside the graph, done on the ids and the attention mask as
on torch: the served query vectors (32 rows, expansion included) and document vectors (punctuation skipped) only match
PyLate's if they still are. `server` tier throughout: the reference is PyLate in its own venv (as test_multi_vector.py).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from helpers import answer, onnx_artifact, refused_at_load, run_in_a_fresh_process, serving, unit
from models.colbert import DOCUMENTS, QUERIES, RERANK_DOCUMENTS, RERANK_QUERY, pylate_encode

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "packaging"))

import _onnx  # noqa: E402
import _quality_set  # noqa: E402
import build_artifact  # noqa: E402

# fp32 ONNX against PyLate on torch: the bar (measured: 3.8e-7 on the token vectors of this model)
FP32_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def pylate_dir(colbert) -> Path:
    return colbert.model_dir("pylate")


@pytest.fixture(scope="module")
def reference(colbert) -> dict[str, np.ndarray]:
    return colbert.arrays("pylate")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, pylate_dir) -> Path:
    """The ColBERT exported by the kind's own exporter, its searchbox.json naming the ONNX backend: what a build
    without --quantize serves, without the archive and the gate."""
    from model_handlers.kinds.multi_vector import export_onnx

    target = tmp_path_factory.mktemp("colbert-onnx") / "model"
    shutil.copytree(pylate_dir, target)
    export_onnx(target, target / "onnx" / "model.onnx")
    (target / "searchbox.json").write_text(json.dumps({"backend": "onnx"}))
    return target


def test_the_graph_answers_bert_hidden_states_through_the_dense_projection(exported):
    """onnxruntime alone on the graph: the tokenizer's inputs in, one output `token_vectors` out, [batch, seq, 128],
    equal to transformers' BertModel's last hidden states times the Dense layer's weight (bias false, identity
    activation in 1_Dense/config.json), on a batch of other lengths than the export's example."""
    import onnxruntime
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertModel

    session = onnxruntime.InferenceSession(str(exported / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == ["token_vectors"]
    tokenizer = AutoTokenizer.from_pretrained(str(exported))
    features = tokenizer(DOCUMENTS[:4], padding=True, return_tensors="np")
    (vectors,) = session.run(None, {i.name: features[i.name].astype(np.int64) for i in session.get_inputs()})
    weight = load_file(str(exported / "1_Dense" / "model.safetensors"))["linear.weight"]
    with torch.no_grad():
        hidden = BertModel.from_pretrained(str(exported)).eval()(
            **{name: torch.from_numpy(array) for name, array in features.items()}).last_hidden_state
    assert vectors.shape == (4, features["input_ids"].shape[1], 128)
    np.testing.assert_allclose(vectors, (hidden @ weight.T).numpy(), atol=FP32_TOLERANCE, rtol=0)


def test_fp32_onnx_answers_pylates_token_vectors_and_scores(exported, reference):
    with serving(exported) as served:
        assert served.get("/v1/models").json()["data"][0]["backend"] == "onnx"
        queries = answer(served, "/v1/multi-vector", {"input": QUERIES, "input_type": "query"})
        documents = answer(served, "/v1/multi-vector", {"input": DOCUMENTS, "input_type": "document"})
        ranked = answer(served, "/v1/rerank", {"query": RERANK_QUERY, "documents": RERANK_DOCUMENTS})
    for i, item in enumerate(queries["data"]):
        np.testing.assert_allclose(item["embeddings"], reference[f"q{i}"], atol=FP32_TOLERANCE, rtol=0)
    for j, item in enumerate(documents["data"]):
        np.testing.assert_allclose(item["embeddings"], reference[f"d{j}"], atol=FP32_TOLERANCE, rtol=0)
    # MaxSim of the query against each document's best window: PyLate's colbert_scores
    assert [hit["index"] for hit in ranked["results"]] == np.argsort(-reference["rerank_best"], kind="stable").tolist()
    for hit in ranked["results"]:
        assert abs(hit["relevance_score"] - reference["rerank_best"][hit["index"]]) < FP32_TOLERANCE


def test_a_graph_that_is_not_this_directorys_colbert_export_is_refused_at_load(exported, tmp_path):
    """The graph carries the tokens' facts and the projections it holds; without them (a graph exported by another
    tool) it is refused, not served with guessed special tokens."""
    import onnx

    unnamed = tmp_path / "unnamed"
    shutil.copytree(exported, unnamed)
    graph = onnx.load(str(unnamed / "onnx" / "model.onnx"))
    del graph.metadata_props[:]
    onnx.save(graph, str(unnamed / "onnx" / "model.onnx"))
    assert (f"{unnamed / 'onnx' / 'model.onnx'} is not the ColBERT export of this directory"
            in refused_at_load(unnamed, {"SEARCHBOX_BACKEND": "onnx"}))


def test_jina_colbert_v2s_layout_is_refused_by_name_at_export(jina_colbert_dir, tmp_path):
    out = tmp_path / "dist" / "model.tar.gz"
    with pytest.raises(build_artifact.BuildRefused, match="jina-colbert-v2's layout .* does not export to ONNX yet: "
                                                          "build it with --backend torch"):
        build_artifact.build_artifact(jina_colbert_dir, out, backend="onnx")
    assert not (tmp_path / "dist").exists()


def test_the_int8_build_of_the_tiny_colbert_misses_the_gate_and_is_refused_with_its_figures(pylate_dir, tmp_path):
    """The default gate (mean token cosine >= 0.99 and MaxSim Spearman >= 0.99 against torch): the tiny ColBERT's random
    projection measures 0.985 and 0.95 with int8, so its build is refused, naming both, and writes nothing."""
    out = tmp_path / "dist" / "model.tar.gz"
    with pytest.raises(build_artifact.BuildRefused, match=r"int8 loses too much against the model on torch: mean token "
                                                          r"cosine 0\.9\d+ < 0\.99 .*MaxSim scores correlate at "
                                                          r"Spearman 0\.9\d+ < 0\.99"):
        build_artifact.build_artifact(pylate_dir, out, backend="onnx", quantize="int8")
    assert not (tmp_path / "dist").exists()


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory, pylate_dir):
    """An int8 build under a gate lowered to what this random-projection model keeps (the default refuses it, above)."""
    folder = tmp_path_factory.mktemp("colbert-int8")
    gate = _onnx.Gate(int8_min_mean_token_cosine=0.98, int8_min_maxsim_spearman=0.9)
    report = build_artifact.build_artifact(pylate_dir, folder / "model.tar.gz", backend="onnx", quantize="int8",
                                           gate=gate, compresslevel=0)
    import tarfile

    with tarfile.open(folder / "model.tar.gz") as tar:
        tar.extractall(folder / "model", filter="data")
    return report, folder / "model"


def test_served_int8_keeps_its_recorded_figures_against_pylate_recomputed_here(int8_artifact, tmp_path):
    """Token cosines and MaxSim rank correlation of the served int8 model against PyLate's encode of the quality set
    (not against searchbox's torch path), equal to what the build recorded in the manifest and the listing."""
    report, model_dir = int8_artifact
    quality = report.quality
    assert quality.backend_file == _onnx.INT8_FILE and quality.fp32_min_token_cosine >= 0.9999
    manifest = json.loads((model_dir / "searchbox-manifest.json").read_text())
    assert manifest["onnx"] == quality.as_dict() and manifest["kind"] == "multi-vector"
    queries, passages = list(_quality_set.QUERIES), list(_quality_set.PASSAGES)
    documents = list(_quality_set.VALIDATION_TEXTS)
    with serving(model_dir) as served:
        on_queries = answer(served, "/v1/multi-vector", {"input": queries, "input_type": "query"})["data"]
        # dynamic int8 scales activations per pass: the texts go in the build's requests, so the passes are its
        on_documents = (answer(served, "/v1/multi-vector", {"input": documents})["data"]
                        + answer(served, "/v1/multi-vector", {"input": passages})["data"])
    pylate_queries = pylate_encode(model_dir, queries, True, tmp_path)
    pylate_documents = pylate_encode(model_dir, documents + passages, False, tmp_path)
    served_rows = [unit(item["embeddings"]) for item in on_queries + on_documents[: len(documents)]]
    cosines = np.concatenate([(a * unit(b)).sum(axis=1) for a, b in
                              zip(served_rows, pylate_queries + pylate_documents[: len(documents)])])
    assert quality.int8_mean_token_cosine == pytest.approx(cosines.mean(), abs=2e-3)
    assert quality.int8_min_token_cosine == pytest.approx(cosines.min(), abs=2e-3)
    assert cosines.mean() >= 0.98

    def maxsim(query_rows, passage_rows) -> np.ndarray:
        return np.asarray([(unit(q) @ unit(p).T).max(axis=1).sum() for q in query_rows for p in passage_rows])

    served_scores = maxsim([item["embeddings"] for item in on_queries],
                           [item["embeddings"] for item in on_documents[len(documents):]])
    pylate_scores = maxsim(pylate_queries, pylate_documents[len(documents):])
    spearman = stats.spearmanr(served_scores, pylate_scores).statistic
    assert quality.int8_maxsim_spearman == pytest.approx(spearman, abs=2e-3)
    assert f"MaxSim scores correlate with PyTorch's at Spearman {_onnx._floor(spearman, 4)}" in \
        quality.listing_markdown()


def test_the_fp32_build_passes_its_gate_and_the_serve_path_imports_no_torch(pylate_dir, tmp_path, reference):
    report, model_dir = onnx_artifact(pylate_dir, tmp_path)
    assert report.kind == "multi-vector" and report.quality.backend_file == _onnx.FP32_FILE
    assert report.quality.fp32_min_token_cosine >= 0.9999 and report.quality.int8_mean_token_cosine is None
    loaded, vectors = run_in_a_fresh_process(
        model_dir, "r = h.run(EmbedRequest(inputs=(TextInput(args),), operation='multi-vector', input_type='query'))\n"
                   "out = r.vectors[0].tolist()", QUERIES[0])
    assert loaded == []
    np.testing.assert_allclose(vectors, reference["q0"], atol=FP32_TOLERANCE, rtol=0)
