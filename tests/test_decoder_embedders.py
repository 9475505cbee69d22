"""Decoder embedders against sentence-transformers' own `SentenceTransformer.encode`: a causal one with last-token
pooling (Qwen3-Embedding's layout: Qwen3Model, an instruction as the `query` prompt, none for documents;
tests/models/code_embeddings.py) and a bidirectional one with dense projections (EmbeddingGemma's layout:
Gemma3TextModel with `use_bidirectional_attention`, mean pooling, two bias-free Dense layers, normalisation,
`query`/`document` prompts; tests/models/embedding_gemma.py). jina-code-embeddings' task table: test_code_embeddings.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from helpers import cosine, serving

pytestmark = pytest.mark.app

TEXTS = ["Berlin is the capital of Germany.", "How do embeddings work? The quick brown fox jumps over the lazy dog."]


@pytest.fixture(scope="module")
def reference(embedding_gemma_dir):
    return SentenceTransformer(str(embedding_gemma_dir), device="cpu", local_files_only=True)


def test_a_qwen3_embedding_layout_answers_its_prompts_by_input_type_and_task(tmp_path_factory):
    from models.code_embeddings import make_qwen3_embedding

    model_dir = make_qwen3_embedding(tmp_path_factory.mktemp("models") / "tiny-qwen3-embedding")
    reference = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    query, document = reference.encode(TEXTS, prompt_name="query"), reference.encode(TEXTS, prompt_name="document")
    assert min(cosine(a, b) for a, b in zip(query, document)) < 0.999
    with serving(model_dir) as app:
        for body, expected in (({"input_type": "query"}, query), ({"task": "retrieval.query"}, query),
                               ({"input_type": "document"}, document), ({}, document)):
            answer = app.post("/v1/embeddings", {"input": TEXTS, **body})
            assert answer.status_code == 200, answer.text
            for item, reference_vector in zip(answer.json()["data"], expected):
                assert cosine(item["embedding"], reference_vector) >= 0.9999, body


def test_every_side_and_dimensions_equal_sentence_transformers(embedding_gemma_dir, reference):
    with serving(embedding_gemma_dir) as app:
        for side in ("query", "document"):
            expected = reference.encode(TEXTS, prompt_name=side)
            for body, path, rows in (({"input": TEXTS, "input_type": side}, "/v1/embeddings", "data"),
                                     ({"data": [{"text": t} for t in TEXTS], "parameters": {"input_type": side}},
                                      "/invocations", "data")):
                answer = app.post(path, body)
                assert answer.status_code == 200, answer.text
                served = [item["embedding"] for item in answer.json()[rows]]
                for vector, reference_vector in zip(served, expected):
                    assert cosine(vector, reference_vector) >= 0.9999
                    assert abs(np.linalg.norm(vector) - 1.0) < 1e-5
        # Matryoshka: the first 16 of the projected dimensions, renormalised
        answer = app.post("/v1/embeddings", {"input": TEXTS, "input_type": "query", "dimensions": 16})
        full = reference.encode(TEXTS, prompt_name="query")
        for item, reference_vector in zip(answer.json()["data"], full):
            cut = reference_vector[:16] / np.linalg.norm(reference_vector[:16])
            assert cosine(item["embedding"], cut) >= 0.9999 and len(item["embedding"]) == 16


def test_attention_is_bidirectional_as_the_config_says(embedding_gemma_dir):
    """The first token's vector reads the tokens after it (a causal mask would leave it unchanged)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(embedding_gemma_dir))
    model = AutoModel.from_pretrained(str(embedding_gemma_dir)).eval()
    short, longer = (tokenizer(text, return_tensors="pt")["input_ids"] for text in ("Berlin", "Berlin is big"))
    with torch.no_grad():
        first_alone = model(input_ids=short).last_hidden_state[0, 0]
        first_in_context = model(input_ids=longer).last_hidden_state[0, 0]
    assert not torch.allclose(first_alone, first_in_context, atol=1e-4)


def test_a_bf16_checkpoint_is_served_in_float32_on_a_cpu(tmp_path, code_embeddings_dir):
    """Decoders are stored in bf16; on a CPU searchbox loads them in float32 (faster on most CPUs, and the answers of
    the fp32 model): the served vectors equal SentenceTransformer.encode on the float32 model to cosine 0.9999."""
    import shutil

    import torch
    from transformers import AutoModel

    model_dir = tmp_path / "bf16"
    shutil.copytree(code_embeddings_dir, model_dir)
    AutoModel.from_pretrained(str(code_embeddings_dir)).to(torch.bfloat16).save_pretrained(str(model_dir))
    fp32 = SentenceTransformer(str(model_dir), device="cpu", model_kwargs={"dtype": torch.float32})
    with serving(model_dir) as app:
        model = app.runtime.handler.model._encoder._model
        assert next(model.parameters()).dtype == torch.float32
        answer = app.post("/v1/embeddings", {"input": TEXTS, "task": "nl2code", "input_type": "query"}).json()
    for item, expected in zip(answer["data"], fp32.encode(TEXTS, prompt_name="nl2code_query")):
        assert cosine(item["embedding"], expected) >= 0.9999


def test_a_32k_token_input_is_answered_within_the_deadline_or_refused_by_name(tmp_path_factory):
    """A decoder with a 32k context (Qwen3-Embedding's 32768): a 32k-token input is one pass of its own; it is answered
    (200, every token billed) within the request deadline, and refused by name before any pass when the deadline is
    shorter than the model time it needs, as calibration (up to 8192 tokens) and its extrapolation estimate it."""
    import json
    import time

    from helpers import assert_error
    from models.code_embeddings import make_qwen3_embedding

    model_dir = make_qwen3_embedding(tmp_path_factory.mktemp("models") / "long-context")
    for name, key, value in (("sentence_bert_config.json", "max_seq_length", 32768),
                             ("tokenizer_config.json", "model_max_length", 32768),
                             ("config.json", "max_position_embeddings", 40960)):
        config = json.loads((model_dir / name).read_text())
        config[key] = value
        (model_dir / name).write_text(json.dumps(config))
    text = " ".join(["Berlin is the capital of Germany."] * 5000)  # about 40k tokens: cut to the 32768 served
    with serving(model_dir) as app:
        started = time.monotonic()
        answer = app.post("/v1/embeddings", {"input": [text]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["total_tokens"] == 32768
        assert time.monotonic() - started < 50  # the default request deadline (README: SEARCHBOX_REQUEST_TIMEOUT_S)
    with serving(model_dir, {"SEARCHBOX_REQUEST_TIMEOUT_S": "1"}) as app:
        started = time.monotonic()
        assert_error(app.post("/v1/embeddings", {"input": [text]}), 413, None, "model time", "split it")
        assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("layout", ["qwen3-embedding", "embedding-gemma"])
def test_every_body_and_mixed_concurrent_sides_equal_sentence_transformers(layout, embedding_gemma_dir,
                                                                          tmp_path_factory):
    """Both layouts through the SageMaker envelope, JSON Lines batch transform (a side per line) and concurrent
    requests of both sides, each answer equal to SentenceTransformer.encode with its prompt."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    from models.code_embeddings import make_qwen3_embedding

    model_dir = (embedding_gemma_dir if layout == "embedding-gemma"
                 else make_qwen3_embedding(tmp_path_factory.mktemp("models") / "tiny-qwen3-embedding"))
    own = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    expected = {side: own.encode(TEXTS, prompt_name=side) for side in ("query", "document")}

    def same(served, side):
        for vector, reference_vector in zip(served, expected[side]):
            assert cosine(vector, reference_vector) >= 0.9999, side

    with serving(model_dir) as app:
        for side in ("query", "document"):
            answer = app.post("/invocations", {"data": [{"text": t} for t in TEXTS],
                                               "parameters": {"input_type": side}})
            assert answer.status_code == 200, answer.text
            same([item["embedding"] for item in answer.json()["data"]], side)
        sides = ["document", "query", "document"]
        lines = "".join(json.dumps({"input": TEXTS, "input_type": side}) + "\n" for side in sides)
        answer = app.post("/invocations", data=lines, headers={"Content-Type": "application/jsonlines"})
        assert answer.status_code == 200, answer.text
        for line, side in zip(answer.text.splitlines(), sides):
            same([item["embedding"] for item in json.loads(line)["data"]], side)
        asks = ["query", "document"] * 6
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda side: app.post("/v1/embeddings", {"input": TEXTS, "input_type": side}),
                                    asks))
        for answer, side in zip(answers, asks):
            assert answer.status_code == 200, answer.text
            same([item["embedding"] for item in answer.json()["data"]], side)
