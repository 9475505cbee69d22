"""Embeddings through the server's app (in-process, on the real model), checked against sentence-transformers."""

from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from helpers import cosine

SHORT = ["hello", "The cat sits on the mat.", "¿Dónde está la estación de tren más cercana?", ""]
LONG = " ".join(f"Sentence number {i} talks about search, ranking and retrieval systems." for i in range(18))
TOO_LONG = LONG * 5  # about 1000 word pieces: truncated to the model's 256


def embed(app, texts, **params):
    response = app.post("/invocations", {"data": [{"text": t} for t in texts], "parameters": params})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_parity_short_long_and_truncated(app, reference_model):
    texts = SHORT + [LONG, TOO_LONG]
    served = embed(app, texts)
    expected = reference_model.encode(texts)
    assert len(served) == len(texts)
    for item, reference in zip(served, expected):
        assert len(item["embedding"]) == len(reference)
        assert cosine(item["embedding"], reference) >= 0.9999
        assert abs(np.linalg.norm(item["embedding"]) - 1) < 1e-5


def test_usage_counts_the_tokens_the_model_processed(app, minilm_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    texts = ["hello", LONG, TOO_LONG]
    served = embed(app, texts)
    expected = [len(tokenizer(t, truncation=True, max_length=256)["input_ids"]) for t in texts]
    assert [item["usage"]["total_tokens"] for item in served] == expected
    assert expected[-1] == 256
    public = app.post("/v1/embeddings", {"input": texts}).json()
    assert public["usage"] == {"total_tokens": sum(expected), "prompt_tokens": sum(expected)}


@pytest.mark.parametrize("dimensions", [1, 64, "128", 384])
def test_dimensions_cut_then_renormalise(app, reference_model, dimensions):
    n = int(dimensions)
    served = embed(app, ["Matryoshka dolls nest inside each other."], dimensions=dimensions)[0]["embedding"]
    full = reference_model.encode(["Matryoshka dolls nest inside each other."])[0]
    assert len(served) == n
    assert abs(np.linalg.norm(served) - 1) < 1e-5
    np.testing.assert_allclose(served, full[:n] / np.linalg.norm(full[:n]), atol=1e-5)


def test_every_embedding_type_decodes_back(app):
    text = ["binary quantisation keeps the sign of each dimension"]
    as_float = np.asarray(embed(app, text)[0]["embedding"], dtype=np.float32)
    encoded = embed(app, text, embedding_type=["float", "base64", "binary", "ubinary"])[0]["embedding"]
    assert set(encoded) == {"float", "base64", "binary", "ubinary"}
    np.testing.assert_array_equal(np.asarray(encoded["float"], dtype=np.float32), as_float)
    decoded = np.frombuffer(base64.b64decode(encoded["base64"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, as_float)
    ubinary = np.asarray(encoded["ubinary"])
    assert len(ubinary) == len(as_float) // 8 and ubinary.min() >= 0 and ubinary.max() <= 255
    np.testing.assert_array_equal(ubinary, np.packbits(as_float > 0))
    np.testing.assert_array_equal(np.asarray(encoded["binary"]), ubinary.astype(int) - 128)
    # a single type answers the value itself, not a dict
    assert isinstance(embed(app, text, embedding_type="base64")[0]["embedding"], str)
    # dimensions apply before the encoding: 64 dims -> 8 bytes
    assert len(embed(app, text, embedding_type="ubinary", dimensions=64)[0]["embedding"]) == 8


def test_normalized_false_returns_the_pooled_vector(app, reference_model):
    text = ["unnormalised vectors keep their length"]
    raw = np.asarray(embed(app, text, normalized=False)[0]["embedding"])
    assert abs(np.linalg.norm(raw) - 1) > 0.01
    assert cosine(raw, reference_model.encode(text)[0]) >= 0.9999
    # the values, not only the direction: sentence-transformers' own modules up to (not including) Normalize
    pooled = _unnormalised_reference(reference_model, text)[0]
    np.testing.assert_allclose(raw, pooled, rtol=1e-4, atol=1e-5)
    cut = np.asarray(embed(app, text, normalized=False, dimensions=64)[0]["embedding"])
    assert cut.shape == (64,)
    np.testing.assert_allclose(cut, pooled[:64], rtol=1e-4, atol=1e-5)


def _unnormalised_reference(reference_model, texts):
    """The pooled vectors sentence-transformers computes before its Normalize module."""
    from sentence_transformers.models import Normalize

    modules = [module for module in reference_model if not isinstance(module, Normalize)]
    assert len(modules) == len(reference_model) - 1, "the embedded model ends in Normalize"
    features = reference_model.tokenize(texts)
    with torch.no_grad():
        for module in modules:
            features = module(features)
    return features["sentence_embedding"].numpy()


def test_a_model_without_tasks_ignores_a_task(app):
    """README: "a model without tasks ignores it" (on a model whose tasks are prompts, an unknown task falls back to
    the default: test_tasks_select_the_configured_prompt)."""
    plain = embed(app, ["tasks select prompts"])[0]["embedding"]
    tasked = embed(app, ["tasks select prompts"], task="nl2code.query")[0]["embedding"]
    np.testing.assert_allclose(plain, tasked, atol=1e-6)


def late_chunking_reference(minilm_dir, texts: list[str]) -> tuple[list[np.ndarray], int]:
    """README's rule computed with transformers alone: consecutive inputs packed into as few [CLS] ... [SEP]
    sequences as fit the model's max length (an input never straddles two), each input the mean of its own token
    span in its sequence. Answers the vectors and the tokens read."""
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    model = AutoModel.from_pretrained(str(minilm_dir)).eval()
    # the max length sentence-transformers reads the model with, less [CLS] and [SEP]
    room = json.loads((minilm_dir / "sentence_bert_config.json").read_text())["max_seq_length"] - 2
    pieces = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    packs, current = [], []
    for piece in pieces:
        if current and sum(map(len, current)) + len(piece) > room:
            packs.append(current)
            current = []
        current.append(piece)
    packs.append(current)
    vectors, read = [], 0
    for pack in packs:
        ids = [tokenizer.cls_token_id] + sum(pack, []) + [tokenizer.sep_token_id]
        read += len(ids)
        with torch.no_grad():
            tokens = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))[0][0]
        start = 1
        for piece in pack:
            vectors.append(tokens[start:start + len(piece)].mean(0).numpy())
            start += len(piece)
    return vectors, read


def test_late_chunking_pools_each_span_in_context(app, minilm_dir):
    """Reference computed by hand: one sequence [CLS] a b c [SEP], mean of each input's token span."""
    texts = ["Berlin is the capital of Germany.", "It has 3.8 million inhabitants.", "The city is known for its art."]
    response = app.post("/v1/embeddings", {"input": texts, "late_chunking": True})
    assert response.status_code == 200, response.text
    body = response.json()
    expected, read = late_chunking_reference(minilm_dir, texts)
    for item, reference in zip(body["data"], expected):
        assert cosine(item["embedding"], reference) >= 0.9999
    assert body["usage"]["total_tokens"] == read
    independent = app.post("/v1/embeddings", {"input": texts}).json()["data"]
    assert cosine(body["data"][1]["embedding"], independent[1]["embedding"]) < 0.999


def test_late_chunking_spreads_over_sequences_when_inputs_exceed_the_max_length(app, minilm_dir, reference_model):
    texts = [LONG, LONG, "short tail"]
    body = app.post("/v1/embeddings", {"input": texts, "late_chunking": True}).json()
    expected, read = late_chunking_reference(minilm_dir, texts)
    # the inputs do need two sequences (LONG twice is over the room), else this would test one
    assert 2 * len(reference_model.tokenizer(LONG, add_special_tokens=False)["input_ids"]) > (
        reference_model.max_seq_length - 2)
    assert len(body["data"]) == len(expected) == 3
    for item, reference in zip(body["data"], expected):
        assert cosine(item["embedding"], reference) >= 0.9999
    # each sequence carries its own [CLS] and [SEP]
    assert body["usage"]["total_tokens"] == read


@pytest.fixture(scope="module")
def prompted(tmp_path_factory, minilm_dir):
    """The same weights served (in this process) with a searchbox.json that maps tasks to prompts."""
    from helpers import serving

    model_dir = tmp_path_factory.mktemp("prompted") / "prompted-minilm"
    shutil.copytree(minilm_dir, model_dir)
    (model_dir / "searchbox.json").write_text(json.dumps({
        "served_model_name": "prompted-minilm", "default_task": "retrieval.passage",
        "tasks": {"retrieval.query": "query: ", "retrieval.passage": {"prompt": "passage: "}},
    }))
    with serving(model_dir) as app:
        yield app


def test_tasks_select_the_configured_prompt(prompted, reference_model):
    text = "how do rerankers work"
    query = prompted.post("/v1/embeddings", {"input": [text], "task": "retrieval.query"}).json()
    assert query["model"] == "prompted-minilm"
    assert cosine(query["data"][0]["embedding"], reference_model.encode([text], prompt="query: ")[0]) >= 0.9999
    default = prompted.post("/v1/embeddings", {"input": [text], "task": "unknown.task"}).json()
    assert cosine(default["data"][0]["embedding"], reference_model.encode([text], prompt="passage: ")[0]) >= 0.9999
    # the prompt's tokens are processed, so they are billed
    plain_tokens = len(reference_model.tokenizer(text)["input_ids"])
    prompt_tokens = {prompt: len(reference_model.tokenizer(prompt, add_special_tokens=False)["input_ids"])
                     for prompt in ("query: ", "passage: ")}
    assert query["usage"]["total_tokens"] == plain_tokens + prompt_tokens["query: "]
    assert default["usage"]["total_tokens"] == plain_tokens + prompt_tokens["passage: "]


def test_input_type_selects_the_retrieval_task_when_no_task_is_given(prompted, reference_model):
    text = "how do rerankers work"
    query = prompted.post("/invocations", {"data": [text], "parameters": {"input_type": "query"}}).json()
    assert cosine(query["data"][0]["embedding"], reference_model.encode([text], prompt="query: ")[0]) >= 0.9999
    document = prompted.post("/v1/embeddings", {"input": [text], "input_type": "document"}).json()
    assert cosine(document["data"][0]["embedding"], reference_model.encode([text], prompt="passage: ")[0]) >= 0.9999
    # an explicit task wins over input_type
    both = prompted.post("/v1/embeddings", {"input": [text], "input_type": "document",
                                                   "task": "retrieval.query"}).json()
    assert cosine(both["data"][0]["embedding"], reference_model.encode([text], prompt="query: ")[0]) >= 0.9999
    refused = prompted.post("/v1/embeddings", {"input": [text], "input_type": "passage"})
    assert refused.status_code == 422 and "`input_type` must be one of query, document" in refused.json()["detail"]
