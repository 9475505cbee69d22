"""Jina's XLM-RoBERTa "flash" architectures load natively: none of their remote code runs, and they answer what it
answers.

Small checkpoints in the original tensor layouts of jina-reranker-v2 and jina-colbert-v2 (tests/models/jina.py,
saved by the test stand-in of Jina's remote code in tests/jina_flash/, which travels with them as their remote code)
are served through searchbox's native path (model_handlers/jina_layout.py) and compared with that remote code on the
same inputs: reranker scores within 1e-5 of its `compute_score`, ColBERT token vectors at cosine >= 0.9999 with its
encoder and the checkpoint's projection.

`make lock UPGRADE=1` runs this file under the versions it is about to pin (docker/lock_requirements.py): a
transformers release that breaks a Jina architecture, natively or as remote code, is caught before it is pinned.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models import jina
from model_handlers import HandlerOptions, load_handler, model_code
from model_handlers.serving_config import read_serving_config
from model_handlers.types import EmbedRequest, RerankRequest, TextInput

SCORE_TOLERANCE = 1e-5
MIN_COSINE = 0.9999
QUERY = "What does the cat eat?"
DOCUMENTS = [
    "The cat eats fish and chicken every evening.",
    "Stocks fell sharply on Monday.",
    "Katzen fressen gern Fisch; le chat mange du poisson.",
    "A much longer document about pets, food and the daily routine of a household with two cats and a dog. " * 4,
    "?!",
]
QUERIES = ["what do cats eat", "cat food", ""]
PASSAGES = ["Cats eat fish, chicken & mice!", "Bananas are yellow.", DOCUMENTS[3]]


@pytest.fixture(scope="module")
def reranker_dir(jina_reranker_dir) -> Path:
    return jina_reranker_dir


@pytest.fixture(scope="module")
def colbert_dir(jina_colbert_dir) -> Path:
    return jina_colbert_dir


def remote(model_dir: Path, auto_class: str):
    """The directory's own remote code, as transformers runs it with trust_remote_code."""
    import transformers

    model = getattr(transformers, auto_class).from_pretrained(str(model_dir), trust_remote_code=True,
                                                              local_files_only=True)
    assert type(model).__module__.startswith("transformers_modules."), "the reference must be the remote code"
    return model.eval()


def loaded_from(model_dir: Path, before: set[str]) -> list[str]:
    """Modules imported since `before` that come from the model directory (or transformers' copy of its code)."""
    return sorted(name for name, module in list(sys.modules.items()) if name not in before and (
        name.startswith("transformers_modules") or str(Path(getattr(module, "__file__", None) or "/").resolve())
        .startswith(str(model_dir.resolve()))))


def test_the_checkpoints_hold_the_original_flash_layout(reranker_dir, colbert_dir):
    from safetensors import safe_open

    with safe_open(str(reranker_dir / "model.safetensors"), "pt") as weights:
        names = set(weights.keys())
    assert {"roberta.emb_ln.weight", "roberta.encoder.layers.0.mixer.Wqkv.weight",
            "roberta.encoder.layers.1.mixer.out_proj.bias", "roberta.encoder.layers.0.norm1.weight",
            "roberta.encoder.layers.0.mlp.fc1.weight", "roberta.encoder.layers.0.mlp.fc2.weight",
            "roberta.encoder.layers.0.norm2.bias", "roberta.embeddings.position_embeddings.weight",
            "classifier.dense.weight", "classifier.out_proj.weight"} <= names
    with safe_open(str(colbert_dir / "model.safetensors"), "pt") as weights:
        names = set(weights.keys())
    assert {"roberta.encoder.layers.0.mixer.Wqkv.weight", "linear.weight"} <= names
    assert not any("position_embeddings" in name for name in names)  # rotary: no position table
    for model_dir in (reranker_dir, colbert_dir):
        assert "XLMRobertaFlashConfig" in (model_dir / "config.json").read_text()
        assert (model_dir / "modeling_xlm_roberta.py").is_file()


def test_reranker_scores_equal_its_remote_code(reranker_dir):
    handler = load_handler(reranker_dir, HandlerOptions(device="cpu"))  # no trust_remote_code: read natively
    try:
        hits = handler.run(RerankRequest(query=TextInput(QUERY), documents=tuple(map(TextInput, DOCUMENTS)))).hits
    finally:
        handler.close()
    expected = remote(reranker_dir, "AutoModelForSequenceClassification").compute_score(
        [[QUERY, document] for document in DOCUMENTS])
    assert sorted(hit.index for hit in hits) == list(range(len(DOCUMENTS)))
    for hit in hits:
        assert abs(hit.relevance_score - expected[hit.index]) <= SCORE_TOLERANCE, (hit, expected)
    assert len({round(score, 3) for score in expected}) > 1, "random weights must still tell documents apart"


def colbert_ai_inputs(tokenizer, text: str, input_type: str, metadata: dict) -> tuple[list[int], list[int]]:
    """colbert-ai's QueryTokenizer / DocTokenizer rules (the ones jina-colbert-v2 was trained with), from the
    checkpoint's artifact.metadata: the text tokenized to maxlen - 1 with its start and end tokens, the marker put
    after the start token; a query padded to its maxlen with the mask token, which it attends to
    (`attend_to_mask_tokens`); a document answered without its punctuation (`mask_punctuation`: the first token of each
    of Python's string.punctuation). Returns (ids, positions answered)."""
    import string

    query = input_type == "query"
    maxlen = metadata["query_maxlen" if query else "doc_maxlen"]
    ids = tokenizer(text, truncation=True, max_length=maxlen - 1)["input_ids"]
    marker = tokenizer.convert_tokens_to_ids(metadata["query_token_id" if query else "doc_token_id"])
    ids = [ids[0], marker, *ids[1:]]
    if query:
        assert metadata["attend_to_mask_tokens"]
        return ids + [tokenizer.mask_token_id] * (maxlen - len(ids)), list(range(maxlen))
    skiplist = {tokenizer(symbol, add_special_tokens=False)["input_ids"][0] for symbol in string.punctuation}
    assert metadata["mask_punctuation"]
    return ids, [position for position, token in enumerate(ids) if token not in skiplist]


def test_colbert_token_vectors_equal_its_remote_code(colbert_dir):
    import json

    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    handler = load_handler(colbert_dir, HandlerOptions(device="cpu"))
    encoder = remote(colbert_dir, "AutoModel")
    projection = load_file(str(colbert_dir / "model.safetensors"))["linear.weight"]
    tokenizer = AutoTokenizer.from_pretrained(str(colbert_dir))
    metadata = json.loads((colbert_dir / "artifact.metadata").read_text())

    def reference(text: str, input_type: str) -> np.ndarray:
        ids, answered = colbert_ai_inputs(tokenizer, text, input_type, metadata)
        with torch.no_grad():
            tokens = encoder(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)
                             ).last_hidden_state[0] @ projection.T
        return tokens.numpy()[answered]

    try:
        for input_type, texts in (("query", QUERIES), ("document", PASSAGES)):
            request = EmbedRequest(inputs=tuple(map(TextInput, texts)), input_type=input_type)
            for text, vectors in zip(texts, handler.run(request).vectors):
                want = reference(text, input_type)
                assert vectors.shape == want.shape, (input_type, vectors.shape, want.shape)
                cosines = (vectors * want).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(want, axis=1)
                assert cosines.min() >= MIN_COSINE, (input_type, cosines.min())
        # the native path ranks by MaxSim (colbert-ai's: unit token vectors, each query token's best dot product,
        # summed), written out here in numpy on the remote code's vectors
        hits = handler.run(RerankRequest(query=TextInput(QUERIES[0]), documents=tuple(map(TextInput, PASSAGES))))
        query = reference(QUERIES[0], "query")
        query /= np.linalg.norm(query, axis=1, keepdims=True)
        expected = []
        for passage in PASSAGES:
            document = reference(passage, "document")
            document /= np.linalg.norm(document, axis=1, keepdims=True)
            expected.append(float((query.astype(np.float64) @ document.T.astype(np.float64)).max(axis=1).sum()))
        assert sorted(hit.index for hit in hits.hits) == list(range(len(PASSAGES)))
        for hit in hits.hits:
            assert abs(hit.relevance_score - expected[hit.index]) < 1e-4, (hit, expected)
    finally:
        handler.close()


@pytest.mark.parametrize("layout", ["reranker", "colbert"])
def test_the_native_path_imports_nothing_from_the_model_directory(layout, reranker_dir, colbert_dir, tmp_path,
                                                                   monkeypatch):
    """A fresh copy (a name transformers never imported code from), loaded natively: no module of the directory, no
    transformers_modules copy of it, and no loader asked for trust_remote_code=True. Then, as a control, the same
    check sees the remote code when it does run."""
    model_dir = shutil.copytree(reranker_dir if layout == "reranker" else colbert_dir, tmp_path / f"fresh-{layout}")
    assert model_code.needed(model_dir) == []
    asked = []
    trusts = model_code.trusts

    def recorded(*args):
        asked.append(trusts(*args))
        return asked[-1]

    monkeypatch.setattr(model_code, "trusts", recorded)
    before = set(sys.modules)
    handler = load_handler(model_dir, HandlerOptions(device="cpu"))
    try:
        handler.warm_up()
    finally:
        handler.close()
    assert loaded_from(model_dir, before) == []
    assert asked and not any(asked), "the native path must not be given trust_remote_code=True"
    remote(model_dir, "AutoModelForSequenceClassification" if layout == "reranker" else "AutoModel")
    assert any(name.endswith("modeling_xlm_roberta") for name in loaded_from(model_dir, before))


def test_a_directory_read_natively_needs_no_manifest_and_no_trust(reranker_dir, colbert_dir):
    for model_dir in (reranker_dir, colbert_dir):
        assert not (model_dir / model_code.MANIFEST).exists()
        config = read_serving_config(model_dir)  # no refusal: its remote code never runs
        assert config.kind.name == ("reranker" if model_dir == reranker_dir else "multi-vector")
        assert model_code.trusts(model_dir, HandlerOptions()) is False


def test_the_remote_code_route_still_serves_when_the_policy_allows(colbert_dir, tmp_path):
    """A flash variant transformers' classes do not compute (here: rotary positions on half of each head, as the
    remote code's `rotary_emb_dim` allows) stays remote code: refused by default, served with the operator's
    SEARCHBOX_TRUST_REMOTE_CODE, through the directory's own modules."""
    model_dir = jina.remote_code_only(shutil.copytree(colbert_dir, tmp_path / "variant"))
    assert model_code.needed(model_dir) == ["config.json: auto_map.AutoConfig -> configuration_xlm_roberta.py",
                                            "config.json: auto_map.AutoModel -> modeling_xlm_roberta.py"]
    with pytest.raises(Exception, match="remote code configuration_xlm_roberta.py .*SEARCHBOX_TRUST_REMOTE_CODE"):
        read_serving_config(model_dir)
    before = set(sys.modules)
    handler = load_handler(model_dir, HandlerOptions(device="cpu", trust_remote_code=True))
    try:
        vectors = handler.run(EmbedRequest(inputs=(TextInput("cats"),), input_type="query")).vectors[0]
    finally:
        handler.close()
    assert vectors.shape == (32, 24) and np.isfinite(vectors).all()
    assert any(name.endswith("modeling_xlm_roberta") for name in loaded_from(model_dir, before))


def test_a_native_checkpoint_runs_two_passes_at_once_and_remote_code_one(reranker_dir, colbert_dir, tmp_path):
    """Read natively, a flash checkpoint is transformers' own classes, which keep nothing of a pass: on a CPU one
    request is cut in two passes that run at once (the tests above compare their answers with the remote code). The
    directory's own code might keep something: it runs one pass at a time."""
    variant = jina.remote_code_only(shutil.copytree(colbert_dir, tmp_path / "variant"))
    documents = tuple(map(TextInput, DOCUMENTS))
    for model_dir, request, passes, trust in (
            (reranker_dir, RerankRequest(query=TextInput(QUERY), documents=documents), 2, False),
            (colbert_dir, EmbedRequest(inputs=documents, input_type="document"), 2, False),
            (variant, EmbedRequest(inputs=documents, input_type="document"), 1, True)):
        handler = load_handler(model_dir, HandlerOptions(device="cpu", torch_threads=2, trust_remote_code=trust))
        try:
            handler.run(request)  # calibrated and warm
            before = handler.forward_passes
            handler.run(request)
            assert handler.forward_passes - before == passes, model_dir.name
        finally:
            handler.close()
