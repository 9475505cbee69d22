"""Generative rerankers (a causal LM's yes/no judgement of each pair): the tiny Qwen3-Reranker-shaped model of
tests/models/generative_reranker.py, served, against sentence-transformers' own `CrossEncoder.predict` on the same
directory, through every body that reranks.

Windows: README "Rerank"'s rule (windows at 0, stride, 2*stride, ... and a last one ending at the document's end),
computed here from the tokenizer, each window's text scored by `CrossEncoder.predict`. Usage: every token the model
read, counted here by rendering each pair with the tokenizer's own chat template.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sentence_transformers import CrossEncoder
from transformers import AutoTokenizer

from helpers import assert_error, refused_at_load, serving

pytestmark = pytest.mark.app

QUERY = "what is the capital of Germany"
DOCUMENTS = [
    "Berlin is the capital of Germany.",
    "The quick brown fox jumps over the lazy dog.",
    "Search engines rank documents.",
    "How do rotary position embeddings work?",
    "",
    "Rerankers read the query and each document together.",
]
TOLERANCE = 1e-4
# a long document: the window rule needs it to be several times the window
LONG = " ".join(["The quick brown fox jumps over the lazy dog."] * 6 + ["Berlin is the capital of Germany."]
                + ["Search engines rank documents."] * 5)


@pytest.fixture(scope="module")
def reference(generative_reranker_dir):
    return CrossEncoder(str(generative_reranker_dir), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def tokenizer(generative_reranker_dir):
    return AutoTokenizer.from_pretrained(str(generative_reranker_dir))


@pytest.fixture(scope="module")
def app(generative_reranker_dir):
    with serving(generative_reranker_dir) as served:
        yield served


def ranking(app, body, path="/v1/rerank"):
    response = app.post(path, body)
    assert response.status_code == 200, response.text
    return response.json()


def expected_ranking(scores) -> list[int]:
    return list(np.argsort(-np.asarray(scores), kind="stable"))


def prompt_tokens(tokenizer, query: str, document: str, instruction: str | None = None) -> int:
    """The tokens of one judge prompt, rendered by the tokenizer's own chat template."""
    messages = ([{"role": "system", "content": instruction}] if instruction is not None else []) + [
        {"role": "query", "content": query}, {"role": "document", "content": document}]
    return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def test_scores_are_cross_encoder_predict_and_sorted(app, reference):
    expected = reference.predict([(QUERY, document) for document in DOCUMENTS])
    assert np.ptp(expected) > 0.01, "the tiny model's scores must spread for the order to mean anything"
    answer = ranking(app, {"query": QUERY, "documents": DOCUMENTS})
    assert answer["model"] == "tiny-generative-reranker"
    results = answer["results"]
    assert [r["index"] for r in results] == expected_ranking(expected)
    for result in results:
        assert abs(result["relevance_score"] - float(expected[result["index"]])) < TOLERANCE
        assert result["document"] == {"text": DOCUMENTS[result["index"]]}


def test_instruction_is_the_judges_system_message(app, reference):
    instruction = "Find the passage that names a city"
    expected = reference.predict([(QUERY, document) for document in DOCUMENTS], prompt=instruction)
    default = reference.predict([(QUERY, document) for document in DOCUMENTS])
    assert np.abs(expected - default).max() > 1e-3, "the instruction must change the scores for this to test it"
    answer = ranking(app, {"query": QUERY, "documents": DOCUMENTS, "instruction": instruction})
    assert [r["index"] for r in answer["results"]] == expected_ranking(expected)
    for result in answer["results"]:
        assert abs(result["relevance_score"] - float(expected[result["index"]])) < TOLERANCE


def test_every_rerank_body_gets_the_same_scores(app, reference):
    expected = reference.predict([(QUERY, document) for document in DOCUMENTS])
    order, scores = expected_ranking(expected), [float(expected[i]) for i in expected_ranking(expected)]

    def same(hits, index="index", score="relevance_score"):
        assert [hit[index] for hit in hits] == order
        assert np.allclose([hit[score] for hit in hits], scores, atol=TOLERANCE)

    sagemaker = {"query": QUERY, "documents": DOCUMENTS}
    same(ranking(app, {"data": sagemaker}, "/invocations")["data"][0]["results"])
    same(ranking(app, {"data": [sagemaker]}, "/invocations")["data"][0]["results"])
    same(ranking(app, {"query": QUERY, "documents": DOCUMENTS}, "/invocations")["results"])
    # Cohere's SDK rerank body, TEI's, Elasticsearch's amazon_sagemaker `elastic` rerank
    same(ranking(app, {"query": QUERY, "documents": DOCUMENTS, "api_version": 2}, "/invocations")["results"])
    same(ranking(app, {"query": QUERY, "texts": DOCUMENTS}, "/invocations"), score="score")
    same(ranking(app, {"query": QUERY, "input": DOCUMENTS}, "/invocations")["rerank"])


def test_batch_transform_rows_are_rerank_requests(app, reference):
    rows = [("q-1", QUERY, DOCUMENTS[:3]), ("q-2", "which animal jumps", DOCUMENTS[1:4])]
    body = "".join(f'{row_id},{query},"{json.dumps(documents).replace(chr(34), chr(34) * 2)}"\n'
                   for row_id, query, documents in rows)
    response = app.post("/invocations", data=body, headers={"Content-Type": "text/csv"})
    assert response.status_code == 200, response.text
    answers = response.json()["data"]
    assert [answer["id"] for answer in answers] == ["q-1", "q-2"]
    for answer, (_, query, documents) in zip(answers, rows):
        expected = reference.predict([(query, document) for document in documents])
        assert [hit["index"] for hit in answer["results"]] == expected_ranking(expected)
        assert np.allclose([hit["relevance_score"] for hit in answer["results"]],
                           sorted(expected, reverse=True), atol=TOLERANCE)


def test_usage_is_every_token_of_every_prompt(app, tokenizer):
    instruction = "Find the passage that names a city"
    answer = ranking(app, {"data": {"query": QUERY, "documents": DOCUMENTS[:3], "instruction": instruction}},
                     "/invocations")["data"][0]
    query_tokens = len(tokenizer(QUERY, add_special_tokens=False)["input_ids"])
    prompts = [prompt_tokens(tokenizer, QUERY, document, instruction) for document in DOCUMENTS[:3]]
    assert answer["query_usage"]["total_tokens"] == 3 * query_tokens
    assert answer["docs_usage"]["total_tokens"] == sum(prompts) - 3 * query_tokens
    assert sorted(hit["usage"]["total_tokens"] for hit in answer["results"]) == sorted(
        tokens - query_tokens for tokens in prompts)


def test_a_long_document_scores_its_best_window(tmp_path, generative_reranker_dir, reference, tokenizer):
    model_dir = tmp_path / "windowed"
    shutil.copytree(generative_reranker_dir, model_dir)
    (model_dir / "searchbox.json").write_text(json.dumps({"rerank_window_tokens": 24, "rerank_window_overlap": 4}))
    content = tokenizer(LONG, add_special_tokens=False)["input_ids"]
    assert len(content) > 3 * 24
    starts = list(range(0, len(content) - 24, 20)) + [len(content) - 24]
    windows = [tokenizer.decode(content[start:start + 24]) for start in starts]
    expected_long = max(reference.predict([(QUERY, window) for window in windows]))
    expected_short = float(reference.predict([(QUERY, DOCUMENTS[0])])[0])
    with serving(model_dir) as served:
        answer = ranking(served, {"query": QUERY, "documents": [DOCUMENTS[0], LONG]})
    scores = {hit["index"]: hit["relevance_score"] for hit in answer["results"]}
    assert abs(scores[0] - expected_short) < TOLERANCE
    assert abs(scores[1] - float(expected_long)) < TOLERANCE


def test_a_reranker_without_a_prompt_refuses_an_instruction_by_name(reranker_dir):
    with serving(reranker_dir) as served:
        assert_error(served.post("/v1/rerank", {"query": "q", "documents": ["d"], "instruction": "be strict"}),
                     422, "INVALID_OPTION", "takes no `instruction`")


def test_it_is_listed_as_a_reranker_and_refuses_embeddings_by_name(app):
    models = app.get("/v1/models").json()["data"]
    assert [model["id"] for model in models] == ["tiny-generative-reranker"]
    listed = json.dumps(models[0])
    assert "generative reranker" in listed and "rerank" in listed
    assert_error(app.post("/v1/embeddings", {"input": ["a text"]}), 400, None, "generative reranker", "/v1/rerank")


def test_a_chat_template_without_query_and_document_roles_is_refused_at_load(tmp_path, generative_reranker_dir):
    model_dir = tmp_path / "plain-chat"
    shutil.copytree(generative_reranker_dir, model_dir)
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    # a chat model's template: system, user and assistant turns only (a query or document message renders nothing)
    config["chat_template"] = ("{% for m in messages %}{% if m.role in ['system', 'user', 'assistant'] %}<|im_start|>"
                               "{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}")
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    (model_dir / "chat_template.jinja").unlink()
    reason = refused_at_load(model_dir)
    assert "query" in reason and "document" in reason and "chat template" in reason


def test_v1_models_says_how_each_reranker_scores_and_what_it_takes(app, reranker_dir):
    card = app.get("/v1/models").json()["data"][0]
    reranking = card["details"]["rerank"]
    assert reranking["scoring"].startswith("generative, pointwise") and reranking["takes_instruction"] is True
    # the tiny model's instruction default is its chat template's own (no sentence-transformers default prompt)
    assert reranking["default_instruction"] is None
    assert reranking["max_tokens_per_model_input"] == 384  # the tokenizer's model_max_length
    assert card["max_inputs"] == 2048 and reranking["max_windows"] == 4096  # README's defaults
    with serving(reranker_dir) as cross_encoder:
        pointwise = cross_encoder.get("/v1/models").json()["data"][0]["details"]["rerank"]
    assert pointwise["scoring"].startswith("pointwise: a cross-encoder") and pointwise["takes_instruction"] is False


def test_a_too_long_query_keeps_its_first_half_room_tokens(app, reference, tokenizer):
    """README: the query keeps at most half the room a pair leaves beside the judge prompt (384 tokens here)."""
    room = 384 - prompt_tokens(tokenizer, "", "")
    query = " ".join(["which city is the capital of Germany"] * 40)
    content = tokenizer(query, add_special_tokens=False)["input_ids"]
    assert len(content) > room // 2
    kept = tokenizer.decode(content[:room // 2])
    expected = reference.predict([(kept, document) for document in DOCUMENTS[:3]])
    answer = ranking(app, {"query": query, "documents": DOCUMENTS[:3]})
    assert [hit["index"] for hit in answer["results"]] == expected_ranking(expected)
    assert np.allclose([hit["relevance_score"] for hit in answer["results"]], sorted(expected, reverse=True),
                       atol=TOLERANCE)


def test_an_instruction_that_leaves_no_room_is_refused_by_name(app):
    response = app.post("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS[:2],
                                       "instruction": "judge strictly " * 400})
    assert_error(response, 422, "INVALID_OPTION", "shorter `instruction`")


def test_a_bare_causal_lm_directory_named_a_generative_reranker_in_searchbox_json(tmp_path, generative_reranker_dir,
                                                                                   reference):
    """A directory as a model card publishes it (a `*ForCausalLM`, its tokenizer and a judge-prompt chat template; no
    sentence-transformers files): `"kind": "generative-reranker"` serves it as `CrossEncoder` reads it, with the
    tokenizer's "yes" and "no" tokens."""
    model_dir = tmp_path / "bare"
    shutil.copytree(generative_reranker_dir, model_dir)
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        (model_dir / name).unlink()
    shutil.rmtree(model_dir / "1_LogitScore")
    assert "embedding" in detected_kind(model_dir)  # without the word, a causal LM is an embedding model
    (model_dir / "searchbox.json").write_text(json.dumps({"kind": "generative-reranker"}))
    expected = reference.predict([(QUERY, document) for document in DOCUMENTS])
    with serving(model_dir) as served:
        answer = ranking(served, {"query": QUERY, "documents": DOCUMENTS})
    assert [hit["index"] for hit in answer["results"]] == expected_ranking(expected)
    assert np.allclose([hit["relevance_score"] for hit in answer["results"]], sorted(expected, reverse=True),
                       atol=TOLERANCE)


def detected_kind(model_dir) -> str:
    from model_handlers.serving_config import read_serving_config

    return read_serving_config(model_dir).kind.name


def test_a_pair_is_served_at_most_8192_tokens_unless_searchbox_json_says(tmp_path, generative_reranker_dir):
    """README: positions of 40960 and a tokenizer of 131072 serve pairs of 8192 tokens; `max_length` says otherwise."""
    model_dir = tmp_path / "long"
    shutil.copytree(generative_reranker_dir, model_dir)
    for name, key, value in (("tokenizer_config.json", "model_max_length", 131072),
                             ("config.json", "max_position_embeddings", 40960)):
        config = json.loads((model_dir / name).read_text())
        config[key] = value
        (model_dir / name).write_text(json.dumps(config))
    with serving(model_dir) as served:
        assert served.get("/v1/models").json()["data"][0]["details"]["rerank"]["max_tokens_per_model_input"] == 8192
    (model_dir / "searchbox.json").write_text(json.dumps({"max_length": 300}))
    with serving(model_dir) as served:
        assert served.get("/v1/models").json()["data"][0]["details"]["rerank"]["max_tokens_per_model_input"] == 300


def test_onnx_is_refused_by_name_at_build_and_at_load(tmp_path, generative_reranker_dir):
    """README: not exported, served on torch; an operator's SEARCHBOX_BACKEND=onnx never silently serves torch."""
    import sys
    from pathlib import Path

    from model_handlers import kinds
    from model_handlers.errors import ModelDirectoryError

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "packaging"))
    import _onnx

    assert "has no ONNX backend" in refused_at_load(generative_reranker_dir, {"SEARCHBOX_BACKEND": "onnx"})
    with pytest.raises(ModelDirectoryError, match=r"kind generative-reranker \(.*\) does not export to ONNX"):
        _onnx.build_onnx(tmp_path, kinds.named("generative-reranker"), None, _onnx.Gate())
