"""SPLADE on the ONNX backend: the tiny SPLADE of the sparse tests (tests/models/sparse.py) exported, served and
compared with sentence-transformers' `SparseEncoder.encode` on the same weights.

Two tiers in one file. `app`: the kind's own exporter (`export_onnx`) run here once per model, its graph served in this
process (create_app and the test client), and the refusals at export and at load; `make test-fast` (and so make
mutation) reaches the ONNX path through them. `server`: the project's packaging script end to end (export, quantize,
gate, archive: about 20 s), the int8 figures recomputed here (not read from the manifest), and the serve path's
imports in a process of its own."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from helpers import answer, onnx_artifact, refused_at_load, run_in_a_fresh_process, serving
from models.sparse import make_bare, make_inference_free
from tiers import implies

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "packaging"))

import _onnx  # noqa: E402
import _quality_set  # noqa: E402
import build_artifact  # noqa: E402

TEXTS = ["what do cats like to eat", "Dogs, cats & birds: popular pets!!! (mostly...)", "",
         "Learned sparse retrieval weighs every vocabulary entry. " * 40]  # the last one longer than 128 tokens
QUERY = "where does the baker sell bread"
DOCUMENTS = ["the baker sells warm bread at the market", "a short note about rain", "farmers bring grain to the mill",
             "bread bread bakery baker sell"]
# fp32 ONNX against torch: measured max difference 2.8e-6 on this model (the build's fp32_max_weight_diff); the
# assertion allows 1e-5, the bar for every route
FP32_TOLERANCE = 1e-5


def dense(items: list[dict], width: int) -> np.ndarray:
    rows = np.zeros((len(items), width))
    for row, item in zip(rows, items):
        row[item["sparse_embedding"]["indices"]] = item["sparse_embedding"]["values"]
    return rows


def encode(encoder, texts) -> np.ndarray:
    return encoder.encode(list(texts), convert_to_tensor=True).to_dense().numpy().astype(np.float64)


def onnx_served(model_dir: Path) -> Path:
    """`model_dir` exported by the kind's own exporter to the default ONNX file, its searchbox.json naming the ONNX
    backend: what a build without --quantize serves, without the archive and the gate (the server tier's)."""
    from model_handlers.kinds.sparse import export_onnx

    export_onnx(model_dir, model_dir / "onnx" / "model.onnx")
    config = model_dir / "searchbox.json"
    declared = json.loads(config.read_text()) if config.exists() else {}
    config.write_text(json.dumps({**declared, "backend": "onnx"}))
    return model_dir


@pytest.fixture(scope="module")
def exported(tmp_path_factory, splade_dir) -> Path:
    """The tiny SPLADE exported once for this module's app-tier tests (a copy: splade_dir is the session's)."""
    target = tmp_path_factory.mktemp("sparse-onnx-export") / "model"
    shutil.copytree(splade_dir, target)
    return onnx_served(target)


def served_backend(served) -> str:
    return served.get("/v1/models").json()["data"][0]["backend"]


def load_error(model_dir: Path) -> str:
    """What loading `model_dir` on the ONNX backend in this process was refused with."""
    return refused_at_load(model_dir, {"SEARCHBOX_BACKEND": "onnx"})


# --- app tier: the kind's exporter and the ONNX backend in this process ------------------------------------------


def test_the_export_takes_the_tokenizers_inputs_and_answers_sparse_encoders_weights(exported, splade_encoder):
    """The graph read with onnxruntime alone: the inputs the model's own tokenizer makes (BERT's, token_type_ids
    included, and honoured), one [batch, vocab] output named `sparse_weights` (the exporter's contract), the pooling
    it holds in its metadata, and batch and length dynamic: three texts of other lengths than the export's example
    answer SparseEncoder's weights."""
    import onnxruntime
    import torch
    from transformers import AutoModelForMaskedLM

    session = onnxruntime.InferenceSession(str(exported / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    features = splade_encoder.tokenizer(TEXTS[:3], padding=True, return_tensors="np")
    assert {graph_input.name for graph_input in session.get_inputs()} == set(features) == {
        "input_ids", "token_type_ids", "attention_mask"}
    assert [output.name for output in session.get_outputs()] == ["sparse_weights"]
    assert session.get_modelmeta().custom_metadata_map["searchbox.splade_pooling"] == "max of relu"
    (weights,) = session.run(None, {name: features[name].astype(np.int64) for name in features})
    assert weights.shape == (3, splade_encoder.tokenizer.vocab_size)
    np.testing.assert_allclose(weights, encode(splade_encoder, TEXTS[:3]), atol=FP32_TOLERANCE, rtol=0)
    # token_type_ids is an input, so the graph honours it (the serve path sends zeros, as for every single text): with
    # segment 1 throughout, transformers' own MLM pooled by hand, SPLADE's max over the tokens of log(1 + ReLU(logits))
    segment_one = {**features, "token_type_ids": np.ones_like(features["token_type_ids"])}
    (on_segment_one,) = session.run(None, {name: segment_one[name].astype(np.int64) for name in segment_one})
    mlm = AutoModelForMaskedLM.from_pretrained(str(exported), local_files_only=True).eval()
    with torch.no_grad():
        logits = mlm(**{name: torch.from_numpy(segment_one[name].astype(np.int64)) for name in segment_one}).logits
    masked = logits.numpy() * segment_one["attention_mask"][..., None]
    np.testing.assert_allclose(on_segment_one, np.log1p(np.maximum(masked, 0)).max(axis=1), atol=FP32_TOLERANCE,
                               rtol=0)
    assert not np.allclose(on_segment_one, weights, atol=1e-3)  # the segment changes the weights: the check bites


def test_a_sparse_model_with_adapters_is_refused_at_export_naming_them(tmp_path, splade_dir):
    """LoRA adapters (held from the start, or selected by a task) are not in the exported graph: refused, naming
    what selects them, nothing written."""
    from peft import LoraConfig

    from model_handlers.errors import ModelDirectoryError
    from model_handlers.kinds.sparse import export_onnx

    model = tmp_path / "with-adapters"
    shutil.copytree(splade_dir, model)
    LoraConfig(r=4, target_modules=["query", "value"]).save_pretrained(str(model / "adapters" / "legal"))
    for declared, named in (({"adapters": {"legal": "adapters/legal"}}, "legal"),
                            ({"tasks": {"contracts": {"adapter": "legal"}}}, "contracts")):
        (model / "searchbox.json").write_text(json.dumps(declared))
        with pytest.raises(ModelDirectoryError) as refused:
            export_onnx(model, model / "onnx" / "model.onnx")
        assert refused.value.detail == (f"adapters ({named}) are not in the exported graph: build it with "
                                        "--backend torch")
        assert not (model / "onnx").exists()


def test_fp32_onnx_answers_sparse_encoders_weights_through_every_route(exported, splade_encoder):
    expected = encode(splade_encoder, TEXTS)
    with serving(exported) as served:
        assert served_backend(served) == "onnx"
        public = answer(served, "/v1/sparse-embeddings", {"input": TEXTS})
        envelope = answer(served, "/invocations", {"data": [{"text": t, "id": str(i)} for i, t in enumerate(TEXTS)]})
        tokens = answer(served, "/v1/sparse-embeddings", {"input": TEXTS[:1], "top_k": 5, "return_tokens": True})
        ranked = answer(served, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS})
    for items in (public["data"], envelope["data"]):
        for item, weights in zip(items, expected):
            kept = np.flatnonzero(weights > 0)
            assert item["sparse_embedding"]["indices"] == kept.tolist()
            np.testing.assert_allclose(item["sparse_embedding"]["values"], weights[kept], atol=FP32_TOLERANCE, rtol=0)
    top5 = np.sort(np.argsort(-expected[0], kind="stable")[:5])
    assert tokens["data"][0]["sparse_embedding"]["indices"] == top5.tolist()
    vocabulary = splade_encoder.tokenizer.convert_ids_to_tokens(top5.tolist())
    assert tokens["data"][0]["sparse_embedding"]["tokens"] == vocabulary
    # usage: the tokens read, as on torch (the same tokenizer and special tokens; the long text cut at 128)
    assert [item["usage"]["total_tokens"] for item in envelope["data"]] == [
        min(len(splade_encoder.tokenizer(t)["input_ids"]), 128) for t in TEXTS]
    # rerank by sparse dot product: SparseEncoder.similarity's scores and order
    scores = splade_encoder.similarity(splade_encoder.encode([QUERY], convert_to_tensor=True),
                                       splade_encoder.encode(DOCUMENTS, convert_to_tensor=True))[0].numpy()
    assert [hit["index"] for hit in ranked["results"]] == np.argsort(-scores, kind="stable").tolist()
    for hit in ranked["results"]:
        assert hit["relevance_score"] == pytest.approx(float(scores[hit["index"]]), rel=1e-4, abs=1e-4)


def test_onnx_without_its_files_or_with_another_pooling_is_refused_at_load(splade_dir, exported, tmp_path):
    import onnx

    missing = load_error(splade_dir)
    assert "onnx/model.onnx does not exist" in missing and "--backend onnx" in missing
    # the graph holds max pooling; a searchbox.json that now says sum would serve other weights: refused, not served
    resummed = tmp_path / "resummed"
    shutil.copytree(exported, resummed)
    serving = json.loads((resummed / "searchbox.json").read_text())
    (resummed / "searchbox.json").write_text(json.dumps({**serving, "pooling_strategy": "sum"}))
    mismatch = load_error(resummed)
    assert (f"{resummed / 'onnx' / 'model.onnx'} pools max of relu, the directory says sum of relu: rebuild the "
            "artifact with packaging/build_artifact.py --backend onnx") in mismatch
    # a graph that names no pooling (exported by another tool) is refused as well, not trusted
    unnamed = tmp_path / "unnamed"
    shutil.copytree(exported, unnamed)
    graph = onnx.load(str(unnamed / "onnx" / "model.onnx"))
    del graph.metadata_props[:]
    onnx.save(graph, str(unnamed / "onnx" / "model.onnx"))
    assert "model.onnx pools an unknown way, the directory says max of relu: rebuild" in load_error(unnamed)


def test_onnx_whose_encoder_config_states_no_vocabulary_size_is_refused_at_load(exported, tmp_path):
    """The served width is the encoder config's vocab_size (the graph's output width): without one, refused."""
    model = tmp_path / "no-vocab-size"
    shutil.copytree(exported, model)
    config = json.loads((model / "config.json").read_text())
    del config["vocab_size"]
    (model / "config.json").write_text(json.dumps(config))
    assert f"{model}/config.json states no vocab_size" in load_error(model)


# --- server tier: the packaging script end to end, and the serve path in a process of its own ----------------


@pytest.fixture(scope="module")
@implies("server")
def int8_artifact(tmp_path_factory, splade_dir):
    """The packaging script's int8 build (export, quantize, gate, archive: about 20 s on this project's CPUs)."""
    return onnx_artifact(splade_dir, tmp_path_factory.mktemp("sparse-onnx-build"), quantize="int8")


def test_the_build_exports_both_files_passes_the_sparse_gate_and_records_its_figures(int8_artifact):
    report, model_dir = int8_artifact
    assert report.kind == "sparse" and report.backend == "onnx"
    quality = report.quality
    assert quality.backend_file == _onnx.INT8_FILE
    assert quality.fp32_max_weight_diff <= 1e-4
    assert quality.int8_top_k_overlap >= 0.95 and quality.int8_min_top_k_overlap <= quality.int8_top_k_overlap
    assert quality.int8_dot_spearman >= 0.99 and quality.int8_dot_pearson >= 0.99
    assert quality.fp32_min_cosine is None and quality.int8_mean_cosine is None  # the dense gate was not the one run
    serving = json.loads((model_dir / "searchbox.json").read_text())
    assert serving["backend"] == "onnx" and serving["onnx_file"] == _onnx.INT8_FILE and serving["kind"] == "sparse"
    manifest = json.loads((model_dir / "searchbox-manifest.json").read_text())
    assert manifest["backend"] == "onnx" and manifest["onnx"] == quality.as_dict()
    assert {_onnx.FP32_FILE, _onnx.INT8_FILE} <= {entry["path"] for entry in manifest["files"]}
    listing = quality.listing_markdown()
    assert f"int8 keeps {_onnx._floor(quality.int8_top_k_overlap * 100, 1)}% of each text's top-32" in listing
    assert f"Spearman {_onnx._floor(quality.int8_dot_spearman, 4)}" in listing


def _overlap(weights: np.ndarray, reference: np.ndarray, k: int = 32) -> float:
    """README's figure, written out here apart from packaging/_onnx.py: of the reference's k largest entries (k: its
    non-zero entries when fewer), the share also among the served vector's k largest."""
    k = min(k, int(np.count_nonzero(reference > 0)))
    if k == 0:
        return 1.0 if not np.any(weights > 0) else 0.0
    return len(set(np.argsort(-reference)[:k]) & set(np.argsort(-weights)[:k])) / k


def test_served_int8_holds_the_gate_against_sparse_encoder_recomputed_here(int8_artifact, splade_encoder):
    """The gate measured here, through the server's routes, against SparseEncoder on torch: top-32 overlap >= 0.95
    on average over the validation texts, query-passage dot products at Spearman and Pearson >= 0.99."""
    report, model_dir = int8_artifact
    texts, queries, passages = _quality_set.VALIDATION_TEXTS, _quality_set.QUERIES, _quality_set.PASSAGES
    expected = encode(splade_encoder, texts)
    width = expected.shape[1]
    with serving(model_dir) as served:
        on_texts = dense(answer(served, "/v1/sparse-embeddings", {"input": texts})["data"], width)
        on_queries = dense(answer(served, "/v1/sparse-embeddings", {"input": queries})["data"], width)
        on_passages = dense(answer(served, "/v1/sparse-embeddings", {"input": passages})["data"], width)
        ranked = answer(served, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS})
    overlaps = [_overlap(a, b) for a, b in zip(on_texts, expected)]
    assert np.mean(overlaps) >= 0.95, overlaps
    served_dots = (on_queries @ on_passages.T).ravel()
    reference_dots = (encode(splade_encoder, queries) @ encode(splade_encoder, passages).T).ravel()
    spearman = stats.spearmanr(served_dots, reference_dots).statistic
    pearson = stats.pearsonr(served_dots, reference_dots).statistic
    assert spearman >= 0.99 and pearson >= 0.99
    # what the build recorded (and the listing quotes) is what the server answers, to rounding
    quality = report.quality
    assert quality.int8_top_k_overlap == pytest.approx(np.mean(overlaps), abs=2e-3)
    assert quality.int8_min_top_k_overlap == pytest.approx(min(overlaps), abs=2e-3)
    assert quality.int8_dot_spearman == pytest.approx(spearman, abs=2e-3)
    assert quality.int8_dot_pearson == pytest.approx(pearson, abs=2e-3)
    # int8 still ranks by sparse dot product: the top document is torch's
    scores = encode(splade_encoder, [QUERY]) @ encode(splade_encoder, DOCUMENTS).T
    assert ranked["results"][0]["index"] == int(np.argmax(scores[0]))


@pytest.mark.server
def test_an_int8_export_that_misses_the_sparse_gate_is_refused_with_its_figures_and_nothing_written(tmp_path,
                                                                                                     splade_dir):
    out = tmp_path / "dist" / "model.tar.gz"
    impossible = _onnx.Gate(int8_min_top_k_overlap=1.01)
    with pytest.raises(build_artifact.BuildRefused,
                       match=r"quality gate: int8 loses too much .* top-32 overlap 0\.9\d+ < 1\.01 on average"):
        build_artifact.build_artifact(splade_dir, out, backend="onnx", quantize="int8", gate=impossible)
    assert not (tmp_path / "dist").exists()


@pytest.mark.server
def test_a_bare_masked_lm_exports_and_the_serve_path_imports_no_torch(tmp_path, minilm_dir, splade_encoder):
    bare = make_bare(tmp_path / "bare", minilm_dir)
    report, model_dir = onnx_artifact(bare, tmp_path)
    assert report.kind == "sparse" and report.quality.backend_file == _onnx.FP32_FILE
    assert report.quality.fp32_max_weight_diff <= 1e-4 and report.quality.int8_top_k_overlap is None
    loaded, vectors = run_in_a_fresh_process(
        model_dir, "r = h.run(EmbedRequest(inputs=tuple(TextInput(t) for t in args), operation='sparse'))\n"
                   "out = [[v.indices.tolist(), v.values.tolist()] for v in r.vectors]", TEXTS[:2])
    assert loaded == []
    # the bare directory is SPLADE v2's max pooling: the SparseEncoder of the same weights is the reference
    expected = encode(splade_encoder, TEXTS[:2])
    for (indices, values), weights in zip(vectors, expected):
        kept = np.flatnonzero(weights > 0)
        assert indices == kept.tolist()
        np.testing.assert_allclose(values, weights[kept], atol=FP32_TOLERANCE, rtol=0)


@pytest.mark.server
def test_an_inference_free_splade_exports_its_document_route_and_queries_stay_a_lookup(tmp_path, minilm_dir):
    from sentence_transformers import SparseEncoder

    directory = make_inference_free(tmp_path / "inference-free", minilm_dir)
    _, model_dir = onnx_artifact(directory, tmp_path)
    encoder = SparseEncoder(str(directory), device="cpu")
    queries = encoder.encode_query(TEXTS[:2], convert_to_tensor=True).to_dense().numpy()
    documents = encoder.encode_document(TEXTS[:2], convert_to_tensor=True).to_dense().numpy()
    with serving(model_dir) as served:
        assert served.get("/v1/models").json()["data"][0]["backend"] == "onnx"
        as_queries = answer(served, "/v1/sparse-embeddings", {"input": TEXTS[:2], "input_type": "query"})
        as_documents = answer(served, "/v1/sparse-embeddings", {"input": TEXTS[:2]})
    for items, expected in ((as_queries, queries), (as_documents, documents)):
        for item, weights in zip(items["data"], expected):
            kept = np.flatnonzero(weights > 0)
            assert item["sparse_embedding"]["indices"] == kept.tolist()
            np.testing.assert_allclose(item["sparse_embedding"]["values"], weights[kept], atol=FP32_TOLERANCE, rtol=0)
