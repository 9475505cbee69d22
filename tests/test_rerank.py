"""Rerank over HTTP: a cross-encoder built from the embedded MiniLM weights, and the embedding model itself.

Scores are checked against sentence-transformers' CrossEncoder (the cross-encoder) and against cosine
similarities of sentence-transformers embeddings (the embedding model); long documents against the window
rule of README "Rerank", computed here from the tokenizer and scored by CrossEncoder on each window's text.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder
from transformers import AutoTokenizer

from container.dialects import decode_invocation
from container.errors import ValidationFailed
from model_handlers import HandlerOptions, load_handler
from model_handlers.errors import ModelDirectoryError
from model_handlers.ranking import Windowing, rank
from model_handlers.serving_config import read_serving_config
from model_handlers.types import RerankRequest, TextInput

QUERY = "what do cats like to eat"
DOCUMENTS = [
    "cats like to eat fish and chicken",
    "the stock market fell sharply on monday",
    "a kitten drinks milk",
    "",
    "Dogs and cats are popular pets; some cats eat grass.",
    "rain is expected over the weekend",
]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
# Whole words of the uncased vocabulary: a window of them decodes to text that tokenizes back to the same ids.
WORDS = ("the river runs past an old mill where farmers bring grain every autumn . children play near the "
         "water while birds sing in tall trees and the baker sells warm bread at the market on sunday .").split()
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def cross_encoder(reranker_dir):
    return CrossEncoder(str(reranker_dir), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def tokenizer(reranker_dir):
    return AutoTokenizer.from_pretrained(str(reranker_dir))


def rerank(server, body, path="/v1/rerank"):
    response = server.post(path, body)
    assert response.status_code == 200, response.text
    return response.json()


def words(count: int, offset: int = 0) -> str:
    return " ".join(WORDS[(offset + i) % len(WORDS)] for i in range(count))


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def expected_windows(length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """README's rule: windows at 0, stride, 2*stride, ... and a last one ending at the document's end."""
    if length <= size:
        return [(0, length)]
    stride = size - overlap
    starts = list(range(0, length - size, stride)) + [length - size]
    return [(start, start + size) for start in starts]


def window_texts(tokenizer, text: str, size: int, overlap: int) -> list[str]:
    content = ids(tokenizer, text)
    texts = [tokenizer.decode(content[a:b]) for a, b in expected_windows(len(content), size, overlap)]
    for (a, b), window in zip(expected_windows(len(content), size, overlap), texts):
        assert ids(tokenizer, window) == content[a:b], "the reference window must tokenize back to the same ids"
    return texts


# --- the cross-encoder ---------------------------------------------------------------------------


def test_scores_match_cross_encoder_and_are_sorted(reranker_server, cross_encoder):
    expected = cross_encoder.predict([(QUERY, d) for d in DOCUMENTS])
    answer = rerank(reranker_server, {"query": QUERY, "documents": DOCUMENTS})
    assert answer["model"] == "tiny-reranker" and answer["object"] == "list"
    results = answer["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    for result in results:
        assert abs(result["relevance_score"] - float(expected[result["index"]])) < TOLERANCE
        assert result["document"] == {"text": DOCUMENTS[result["index"]]}
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert len(set(np.round(scores, 4))) > 3, "the scores must spread out for the order to mean anything"
    assert [r["index"] for r in results] == list(np.argsort(-expected, kind="stable"))


def test_a_cpu_scores_one_request_in_two_passes_at_once_as_crossencoder_does(reranker_dir, cross_encoder):
    """transformers' classifier keeps nothing of a pass, so on a CPU one request's pairs are cut in two passes that
    run at once, each on half the threads."""
    request = RerankRequest(query=TextInput(QUERY), documents=tuple(TextInput(d) for d in DOCUMENTS))
    handler = load_handler(reranker_dir, HandlerOptions(torch_threads=2))
    try:
        handler.run(request)  # calibrated and warm
        before = handler.forward_passes
        hits = handler.run(request).hits
        assert handler.forward_passes - before == 2
    finally:
        handler.close()
    expected = cross_encoder.predict([(QUERY, d) for d in DOCUMENTS])
    assert sorted(hit.index for hit in hits) == list(range(len(DOCUMENTS)))
    for hit in hits:
        assert abs(hit.relevance_score - float(expected[hit.index])) < TOLERANCE


def test_the_shared_cross_encoder_tells_its_scores_apart(cross_encoder):
    """conftest's one cross-encoder builder widens the seeded head: without it scores bunch within ~1e-4 of 0.5, as
    close as the tolerances the tests compare with, and an order or a score check could pass by chance."""
    scores = np.sort(cross_encoder.predict([(QUERY, document) for document in DOCUMENTS]))
    assert np.diff(scores).min() >= 1e-3 and scores[-1] - scores[0] >= 0.1, scores


def test_cross_encoder_activation_is_sigmoid_for_one_label(cross_encoder, reranker_dir):
    # sentence-transformers 6.2: num_labels=1 and no saved activation -> Sigmoid; the server's default matches.
    assert isinstance(cross_encoder.activation_fn, torch.nn.Sigmoid)
    assert read_serving_config(reranker_dir).score_activation == "sigmoid"
    assert read_serving_config(reranker_dir).kind.name == "reranker"


def test_usage_is_every_token_the_model_read(reranker_server, tokenizer):
    answer = rerank(reranker_server, {"data": {"query": QUERY, "documents": DOCUMENTS}}, "/invocations")["data"][0]
    # tokenized as CrossEncoder does (a batch of pairs: an empty document still gets its closing [SEP])
    pair_lengths = [len(row) for row in tokenizer([QUERY] * len(DOCUMENTS), DOCUMENTS)["input_ids"]]
    query_length = len(ids(tokenizer, QUERY))
    # One pair per short document: the query is read once per pair, each document with the 3 special tokens.
    assert answer["query_usage"] == {"total_tokens": query_length * len(DOCUMENTS)}
    assert answer["docs_usage"]["total_tokens"] + answer["query_usage"]["total_tokens"] == sum(pair_lengths)
    for result in answer["results"]:
        assert result["usage"] == {"total_tokens": pair_lengths[result["index"]] - query_length}
    assert sum(r["usage"]["total_tokens"] for r in answer["results"]) == answer["docs_usage"]["total_tokens"]
    public = rerank(reranker_server, {"query": QUERY, "documents": DOCUMENTS, "top_n": 1})
    assert public["usage"] == {"total_tokens": sum(pair_lengths)}  # billed for every document, not only top_n


def test_long_document_scores_its_best_window(reranker_server, cross_encoder, tokenizer):
    document = words(1200)
    content_length = len(ids(tokenizer, document))
    assert content_length > 1000
    query_length = len(ids(tokenizer, QUERY))
    size = 512 - 3 - query_length  # the room beside the query and the pair's 3 special tokens
    windows = window_texts(tokenizer, document, size, size // 4)
    assert len(windows) == 3
    window_scores = cross_encoder.predict([(QUERY, w) for w in windows])
    answer = rerank(reranker_server, {"data": {"query": QUERY, "documents": [document, DOCUMENTS[0]]}}, "/invocations")
    result = next(r for r in answer["data"][0]["results"] if r["index"] == 0)
    assert abs(result["relevance_score"] - float(window_scores.max())) < TOLERANCE
    assert result["usage"] == {"total_tokens": len(windows) * size + 3 * len(windows)}
    assert answer["data"][0]["query_usage"] == {"total_tokens": query_length * (len(windows) + 1)}


def test_a_too_long_query_keeps_its_first_half_room_tokens(reranker_server, cross_encoder, tokenizer):
    query = words(400, offset=3)
    kept = 509 // 2  # half of the room of one 512-token pair
    cut_query = tokenizer.decode(ids(tokenizer, query)[:kept])
    assert ids(tokenizer, cut_query) == ids(tokenizer, query)[:kept]
    answer = rerank(reranker_server, {"data": {"query": query, "documents": [DOCUMENTS[0]]}}, "/invocations")["data"][0]
    assert answer["query_usage"] == {"total_tokens": kept}
    expected = cross_encoder.predict([(cut_query, DOCUMENTS[0])])[0]
    assert abs(answer["results"][0]["relevance_score"] - float(expected)) < TOLERANCE


def test_window_size_overlap_and_activation_come_from_searchbox_json(tmp_path, reranker_dir, tokenizer):
    model_dir = tmp_path / "windowed"
    shutil.copytree(reranker_dir, model_dir)
    (model_dir / "searchbox.json").write_text(json.dumps({
        "rerank_window_tokens": 32, "rerank_window_overlap": 8, "score_activation": "none"}))
    handler = load_handler(model_dir, HandlerOptions(device="cpu"))
    try:
        document = words(100, offset=5)
        result = handler.run(RerankRequest(query=TextInput(QUERY), documents=(TextInput(document),)))
    finally:
        handler.close()
    windows = window_texts(tokenizer, document, 32, 8)
    assert len(windows) == 4
    raw = CrossEncoder(str(reranker_dir), device="cpu", local_files_only=True,
                       activation_fn=torch.nn.Identity())
    logits = raw.predict([(QUERY, w) for w in windows])
    assert abs(result.hits[0].relevance_score - float(logits.max())) < TOLERANCE
    assert logits.min() < 0 or logits.max() > 1, "raw logits, no sigmoid"
    assert result.hits[0].tokens == 4 * (32 + 3)


def test_embed_on_a_reranker_says_what_to_send(reranker_server):
    for path, body in (("/v1/embeddings", {"input": ["hello"]}), ("/invocations", {"data": [{"text": "hello"}]})):
        response = reranker_server.post(path, body)
        assert response.status_code == 400
        error = response.json()
        assert error["code"] == "UNSUPPORTED_OPERATION"
        assert "reranker" in error["detail"] and "/v1/rerank" in error["detail"]


# --- dialects, top_n, return_documents ----------------------------------------------------------------


def test_sagemaker_envelope_object_or_one_element_list(reranker_server):
    body = {"query": QUERY, "documents": [{"text": d} for d in DOCUMENTS[:3]], "top_n": 2}
    as_object = rerank(reranker_server, {"data": body, "parameters": {"note": "echoed"}}, "/invocations")
    as_list = rerank(reranker_server, {"data": [body]}, "/invocations")
    assert as_object["parameters"] == {"note": "echoed"} and as_list["parameters"] == {}
    assert as_object["data"] == as_list["data"]
    (item,) = as_object["data"]
    assert set(item) == {"query_usage", "docs_usage", "results"}
    assert len(item["results"]) == 2
    for result in item["results"]:
        assert set(result) == {"index", "relevance_score", "document", "usage"}
        assert result["document"] == {"text": DOCUMENTS[result["index"]]}


def test_public_dialect_on_every_route_gives_the_same_answer(reranker_server):
    body = {"model": "whatever", "query": QUERY, "documents": ["a kitten drinks milk", {"text": DOCUMENTS[0]}]}
    answers = [rerank(reranker_server, body, path) for path in ("/v1/rerank", "/invocations")]
    assert answers[0] == answers[1]
    assert set(answers[0]) == {"model", "object", "usage", "results"}
    for result in answers[0]["results"]:
        assert set(result) == {"index", "relevance_score", "document"}


def test_top_n_cuts_the_full_ranking_and_is_clamped(reranker_server):
    full = rerank(reranker_server, {"query": QUERY, "documents": DOCUMENTS})["results"]
    assert rerank(reranker_server, {"query": QUERY, "documents": DOCUMENTS, "top_n": 2})["results"] == full[:2]
    assert rerank(reranker_server, {"query": QUERY, "documents": DOCUMENTS, "top_n": "3"})["results"] == full[:3]
    assert rerank(reranker_server, {"query": QUERY, "documents": DOCUMENTS, "top_n": 100})["results"] == full
    assert rerank(reranker_server, {"query": QUERY, "documents": DOCUMENTS, "top_n": None})["results"] == full


def test_return_documents_false_omits_them(reranker_server):
    for path, body, pick in (
        ("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "return_documents": False}, lambda a: a["results"]),
        ("/invocations", {"data": {"query": QUERY, "documents": DOCUMENTS, "return_documents": False}},
         lambda a: a["data"][0]["results"]),
    ):
        results = pick(rerank(reranker_server, body, path))
        assert len(results) == len(DOCUMENTS)
        assert all("document" not in r and "relevance_score" in r for r in results)


def test_equal_scores_keep_input_order(reranker_server):
    documents = ["a kitten drinks milk", "cats like to eat fish", "a kitten drinks milk", "a kitten drinks milk"]
    results = rerank(reranker_server, {"query": QUERY, "documents": documents})["results"]
    tied = [r for r in results if documents[r["index"]] == "a kitten drinks milk"]
    assert len({r["relevance_score"] for r in tied}) == 1
    assert [r["index"] for r in tied] == [0, 2, 3]
    hits = rank([0.5, 0.9, 0.5, 0.9, 0.1], [1] * 5, top_n=None)
    assert [h.index for h in hits] == [1, 3, 0, 2, 4]


def test_no_documents_is_an_empty_answer(reranker_server):
    answer = rerank(reranker_server, {"data": {"query": QUERY, "documents": []}}, "/invocations")
    assert answer["data"] == [{"query_usage": {"total_tokens": 0}, "docs_usage": {"total_tokens": 0}, "results": []}]


def test_an_image_document_for_a_text_reranker_names_it(reranker_server):
    response = reranker_server.post("/v1/rerank", {"query": "q", "documents": ["a", {"image": "https://x/y.png"}]})
    assert response.status_code == 400
    assert response.json()["code"] == "UNSUPPORTED_INPUT" and "document 1 is an image" in response.json()["detail"]


@pytest.mark.parametrize("path, body, field", [
    ("/v1/rerank", {"query": QUERY}, "`documents` is missing"),
    ("/v1/rerank", {"documents": ["d"]}, "`query` is missing"),
    ("/v1/rerank", {"query": 3, "documents": ["d"]}, "`query` must be a string"),
    ("/v1/rerank", {"query": "q", "documents": "d"}, "`documents` must be a list"),
    ("/v1/rerank", {"query": "q", "documents": ["d", 7]}, "`documents[1]`"),
    ("/v1/rerank", {"query": "q", "documents": [{"text": None}]}, "`documents[0].text`"),
    ("/v1/rerank", {"query": "q", "documents": ["d"], "top_n": 0}, "`top_n` must be at least 1"),
    ("/v1/rerank", {"query": "q", "documents": ["d"], "top_n": "two"}, "`top_n`"),
    ("/v1/rerank", {"query": "q", "documents": ["d"], "return_documents": "no"}, "`return_documents`"),
    ("/invocations", {"data": {"query": "q"}}, "`data.documents` is missing"),
    ("/invocations", {"data": {"query": "q", "documents": [1]}}, "`data.documents[0]`"),
    ("/invocations", {"data": [{"query": "q", "documents": []}] * 2}, "send one per body"),
    ("/invocations", {"data": {"query": "q", "documents": ["d"], "top_n": -1}}, "`data.top_n`"),
])
def test_bad_rerank_bodies_name_the_field(reranker_server, path, body, field):
    response = reranker_server.post(path, body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert field in error["detail"] and error["code"] == "VALIDATION_ERROR" and error["request_id"]


def test_limits_on_document_count_and_payload(reranker_server):
    response = reranker_server.post("/v1/rerank", {"query": "q", "documents": ["secret document"] * 2049})
    assert response.status_code == 400
    assert response.json()["code"] == "TOO_MANY_INPUTS" and "2048" in response.json()["detail"]
    assert "secret document" not in response.text
    response = reranker_server.post("/invocations", {"data": {"query": "q", "documents": ["x" * 1024] * 7000}})
    assert response.status_code == 413 and response.json()["code"] == "PAYLOAD_TOO_LARGE"


def test_routing_by_body_shape():
    assert isinstance(decode_invocation({"data": {"query": "q", "documents": ["d"]}}).request, RerankRequest)
    assert isinstance(decode_invocation({"data": [{"query": "q", "documents": ["d"]}]}).request, RerankRequest)
    assert isinstance(decode_invocation({"query": "q", "documents": ["d"]}).request, RerankRequest)
    assert not isinstance(decode_invocation({"data": [{"text": "q"}]}).request, RerankRequest)
    assert not isinstance(decode_invocation({"data": []}).request, RerankRequest)
    with pytest.raises(ValidationFailed, match="`query` and `documents`"):
        decode_invocation({"question": "q"})


# --- the embedding model reranks too ---------------------------------------------------------------


def cosines(reference_model, query, documents):
    vectors = reference_model.encode([query, *documents], normalize_embeddings=True)
    return vectors[1:] @ vectors[0]


def test_embedding_model_ranks_the_paraphrase_first(server, reference_model):
    query = "How do I reset my password?"
    documents = ["The weather will be sunny tomorrow.",
                 "Bananas are rich in potassium.",
                 "Steps to recover a forgotten login password",
                 "Our office is closed on public holidays."]
    answer = rerank(server, {"query": query, "documents": documents})
    assert answer["results"][0]["index"] == 2
    expected = cosines(reference_model, query, documents)
    for result in answer["results"]:
        assert abs(result["relevance_score"] - float(expected[result["index"]])) < TOLERANCE
    # usage: the query embedded once, each document once, special tokens included
    tokenizer = reference_model.tokenizer
    lengths = [len(tokenizer(t)["input_ids"]) for t in (query, *documents)]
    assert answer["usage"] == {"total_tokens": sum(lengths)}
    envelope = rerank(server, {"data": {"query": query, "documents": documents}}, "/invocations")["data"][0]
    assert envelope["query_usage"] == {"total_tokens": lengths[0]}
    assert envelope["docs_usage"] == {"total_tokens": sum(lengths[1:])}


def test_embedding_rerank_finds_a_passage_at_the_end_of_a_long_document(server, reference_model):
    query = "How many moons does Jupiter have?"
    filler = " ".join(f"Step {i}: knead the bread dough, let it rise in a warm kitchen, then bake it until golden."
                      for i in range(40))
    needle = "Jupiter, the largest planet, has 95 officially recognised moons, the biggest of them being Ganymede."
    documents = [filler + " " + needle, "Telescopes help astronomers observe distant galaxies."]
    assert len(reference_model.tokenizer(documents[0])["input_ids"]) > 3 * 256
    # Plain truncation (what sentence-transformers does: the first 256 tokens) would miss the passage:
    truncated = cosines(reference_model, query, documents)
    assert truncated[0] < truncated[1] - 0.1
    answer = rerank(server, {"query": query, "documents": documents})
    assert [r["index"] for r in answer["results"]] == [0, 1]
    assert answer["results"][0]["relevance_score"] > truncated[1] + 0.1


# --- unit rules -------------------------------------------------------------------------------------


def test_windows_cover_the_document_and_end_at_its_end():
    windowing = Windowing(size=4, overlap=1)
    content = np.arange(10)
    assert [w.tolist() for w in windowing.split(content)] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert [w.tolist() for w in windowing.split(np.arange(11))][-1] == [7, 8, 9, 10]
    assert [w.tolist() for w in windowing.split(np.arange(3))] == [[0, 1, 2]]
    assert [w.tolist() for w in windowing.split(np.arange(0))] == [[]]


def test_window_config_is_checked(tmp_path, reranker_dir):
    model_dir = tmp_path / "bad"
    shutil.copytree(reranker_dir, model_dir)
    for config, message in (({"rerank_window_tokens": 64, "rerank_window_overlap": 40}, "at most half"),
                            ({"rerank_window_tokens": "big"}, "rerank_window_tokens must be an integer"),
                            ({"max_query_tokens": 0}, "max_query_tokens must be an integer")):
        (model_dir / "searchbox.json").write_text(json.dumps(config))
        with pytest.raises(ModelDirectoryError, match=message):
            read_serving_config(model_dir)


def test_activation_saved_by_a_cross_encoder_is_honoured(tmp_path, reranker_dir):
    model_dir = tmp_path / "identity"
    shutil.copytree(reranker_dir, model_dir)
    hf_config = json.loads((model_dir / "config.json").read_text())
    hf_config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.linear.Identity"}
    (model_dir / "config.json").write_text(json.dumps(hf_config))
    assert read_serving_config(model_dir).score_activation == "none"
    (model_dir / "searchbox.json").write_text(json.dumps({"score_activation": "sigmoid"}))
    assert read_serving_config(model_dir).score_activation == "sigmoid"


def test_a_saved_tanh_activation_scores_as_the_cross_encoder_does(tmp_path, reranker_dir):
    """A CrossEncoder saved with Tanh is served with Tanh, not silently as sigmoid; an unknown class is refused."""
    model_dir = tmp_path / "tanh"
    shutil.copytree(reranker_dir, model_dir)
    hf_config = json.loads((model_dir / "config.json").read_text())
    hf_config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.activation.Tanh"}
    (model_dir / "config.json").write_text(json.dumps(hf_config))
    documents = (words(12, offset=3), words(20, offset=40))
    handler = load_handler(model_dir, HandlerOptions(device="cpu"))
    try:
        result = handler.run(RerankRequest(query=TextInput(QUERY), documents=tuple(TextInput(d) for d in documents)))
    finally:
        handler.close()
    reference = CrossEncoder(str(model_dir), device="cpu", local_files_only=True)
    assert isinstance(reference.activation_fn, torch.nn.Tanh)  # the library reads the same saved class
    expected = reference.predict([(QUERY, d) for d in documents])
    served = {hit.index: hit.relevance_score for hit in result.hits}
    for index, score in enumerate(expected):
        assert abs(served[index] - float(score)) < TOLERANCE
    hf_config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.activation.Softplus"}
    (model_dir / "config.json").write_text(json.dumps(hf_config))
    with pytest.raises(ModelDirectoryError, match="Softplus"):
        read_serving_config(model_dir)
