"""jina-reranker-v3 (`JinaForRanking`), served natively as kind `listwise-reranker`, against the model's own `rerank()`.

The reference is tests/jina_reranker_v3_reference.py (a re-implementation of the published modeling.py), run from the
tiny checkpoint's directory as its remote code. Every expected score, order and token count comes from it and its
tokenizer: the prompts it builds, the blocks it cuts, the scores its rerank() answers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import serving

pytestmark = pytest.mark.app

QUERY = "what do cats like to eat"
DOCUMENTS = ["cats like fish and chicken", "the river runs past an old mill", "a kitten drinks milk", "",
             "children play near the water while birds sing", "the baker sells warm bread at the market"]
# 130 documents, of a few lengths: the tiny tokenizer's budget (model_max_length 2348) closes a block every 20 or so
MANY = [f"passage {i} : " + " ".join(["the river runs past an old mill", "cats like fish", "warm bread"][: 1 + i % 3])
        for i in range(130)]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model_dir(jina_reranker_v3_dir, tmp_path_factory) -> Path:
    """The checkpoint with a `modeling.py` that cannot be imported: served natively, it never is."""
    target = shutil.copytree(jina_reranker_v3_dir, tmp_path_factory.mktemp("listwise") / "served")
    (target / "modeling.py").write_text('raise RuntimeError("searchbox ran the checkpoint\'s remote code")\n')
    return target


@pytest.fixture(scope="module")
def reference(jina_reranker_v3_dir):
    from models.jina_reranker_v3 import reference

    return reference(jina_reranker_v3_dir)


@pytest.fixture(scope="module")
def module(jina_reranker_v3_dir):
    from models.jina_reranker_v3 import reference_module

    return reference_module(jina_reranker_v3_dir)


@pytest.fixture(scope="module")
def app(model_dir):
    with serving(model_dir) as served:
        yield served


def expected(reference, query, documents, **options):
    return [(hit["index"], hit["relevance_score"]) for hit in reference.rerank(query, documents, **options)]


def prompt_tokens(reference, module, query, documents, instruction=None) -> tuple[int, int]:
    """(blocks, tokens the model reads): every block's whole prompt, as the reference builds and tokenizes it."""
    cut, blocks = reference.blocks(query, documents)
    tokenizer = reference._tokenizer()
    return len(blocks), sum(len(tokenizer(module.prompt(cut, block, instruction))["input_ids"]) for block in blocks)


def assert_same(results, wanted, score="relevance_score"):
    assert [hit["index"] for hit in results] == [index for index, _ in wanted]
    assert max(abs(hit[score] - value) for hit, (_, value) in zip(results, wanted)) < TOLERANCE


def rerank(app, body, path="/v1/rerank"):
    answer = app.post(path, body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_detected_and_served_without_remote_code(model_dir, app):
    """The kind is told from config.json alone; no SEARCHBOX_TRUST_REMOTE_CODE, no pinned manifest, and the
    directory's modeling.py (made to raise here) is never imported, yet the model serves."""
    from model_handlers import model_code
    from model_handlers.serving_config import read_serving_config

    config = read_serving_config(model_dir, trust_remote_code=False)
    assert config.kind.name == "listwise-reranker"
    assert model_code.needed(model_dir) == []
    assert not (model_dir / "searchbox-manifest.json").exists()
    assert app.runtime.handler.kind.name == "listwise-reranker"
    assert rerank(app, {"query": QUERY, "documents": DOCUMENTS[:2]})["results"]


def test_calibration_blocks_have_the_length_asked(app):
    """The cost model measures passes of blocks of each length (Batcher.calibrate): a block of exactly that many
    tokens, answering its query's vector and one document's."""
    model = app.runtime.handler.model
    for length in (8, 300, model.max_length):
        block = model.calibration_item(length)
        assert block.length == length
        (answer,) = model.forward([block])
        assert answer[0].shape == (2, 512)


def test_one_block_equals_the_models_rerank(app, reference, module):
    blocks, tokens = prompt_tokens(reference, module, QUERY, DOCUMENTS)
    assert blocks == 1
    body = rerank(app, {"query": QUERY, "documents": DOCUMENTS, "return_documents": False})
    assert_same(body["results"], expected(reference, QUERY, DOCUMENTS))
    # the whole prompt, template and the query twice included
    assert body["usage"]["total_tokens"] == tokens


def test_many_documents_make_several_blocks_merged_as_the_model_merges_them(app, reference, module):
    blocks, tokens = prompt_tokens(reference, module, QUERY, MANY)
    assert blocks >= 4, "the token budget must close several blocks"
    body = rerank(app, {"query": QUERY, "documents": MANY, "return_documents": False})
    assert_same(body["results"], expected(reference, QUERY, MANY))
    assert body["usage"]["total_tokens"] == tokens


def with_max_length(source: Path, target: Path, length: int) -> Path:
    """A copy of the checkpoint whose tokenizer says `model_max_length` = `length` (the blocks' budget)."""
    shutil.copytree(source, target)
    settings = json.loads((target / "tokenizer_config.json").read_text())
    (target / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": length}))
    return target


def load_reference(model_dir):
    from models.jina_reranker_v3 import reference

    return reference(model_dir)


def test_blocks_closed_by_count_at_125_documents(jina_reranker_v3_dir, tmp_path):
    """With a budget no document list here reaches, 130 documents make blocks of 125 and 5."""
    wide = with_max_length(jina_reranker_v3_dir, tmp_path / "wide", 100_000)
    reference = load_reference(wide)
    assert [len(block) for block in reference.blocks(QUERY, MANY)[1]] == [125, 5]
    with serving(wide) as app:
        body = rerank(app, {"query": QUERY, "documents": MANY, "return_documents": False})
    assert_same(body["results"], expected(reference, QUERY, MANY))


def test_long_query_and_documents_are_cut_as_the_model_cuts_them(app, reference, module):
    query = "what do cats like to eat " * 120  # past 512 tokens
    documents = ["the river runs past an old mill " * 400, "a kitten drinks milk", "cats like fish " * 900]
    tokenizer = reference._tokenizer()
    assert len(tokenizer(query)["input_ids"]) > 512
    assert len(tokenizer(documents[0])["input_ids"]) > 2048 and len(tokenizer(documents[2])["input_ids"]) > 2048
    body = rerank(app, {"query": query, "documents": documents, "return_documents": False})
    assert_same(body["results"], expected(reference, query, documents))
    assert body["usage"]["total_tokens"] == prompt_tokens(reference, module, query, documents)[1]


def test_top_n_and_return_documents(app, reference):
    wanted = expected(reference, QUERY, DOCUMENTS, top_n=2)
    body = rerank(app, {"query": QUERY, "documents": DOCUMENTS, "top_n": 2})
    assert_same(body["results"], wanted)
    assert [hit["document"] for hit in body["results"]] == [{"text": DOCUMENTS[index]} for index, _ in wanted]
    bare = rerank(app, {"query": QUERY, "documents": DOCUMENTS, "top_n": 2, "return_documents": False})
    assert all("document" not in hit for hit in bare["results"])


def test_instruction_goes_into_the_prompt(app, reference, module):
    instruction = "prefer passages about drinks"
    wanted = expected(reference, QUERY, DOCUMENTS, instruction=instruction)
    assert max(abs(a - b) for (_, a), (_, b) in zip(sorted(wanted), sorted(expected(reference, QUERY, DOCUMENTS)))) \
        > 1e-3, "the instruction must change the scores for this test to say anything"
    body = rerank(app, {"query": QUERY, "documents": DOCUMENTS, "instruction": instruction, "return_documents": False})
    assert_same(body["results"], wanted)
    assert body["usage"]["total_tokens"] == prompt_tokens(reference, module, QUERY, DOCUMENTS, instruction)[1]


def test_marker_strings_in_texts_are_removed_as_the_model_removes_them(app, reference):
    documents = ["cats like <|embed_token|>fish", "milk<|rerank_token|>", "bread"]
    query = "cats<|rerank_token|> eat"
    body = rerank(app, {"query": query, "documents": documents, "return_documents": False})
    assert_same(body["results"], expected(reference, query, documents))


@pytest.mark.parametrize("wrap", [lambda body: {"data": body}, lambda body: {"data": [body]}],
                         ids=["object", "one-element list"])
def test_sagemaker_envelope(app, reference, module, wrap):
    body = {"query": QUERY, "documents": [{"text": d} for d in DOCUMENTS], "top_n": 3}
    answer = rerank(app, wrap(body), "/invocations")
    (item,) = answer["data"]
    assert_same(item["results"], expected(reference, QUERY, DOCUMENTS, top_n=3))
    assert item["query_usage"]["total_tokens"] + item["docs_usage"]["total_tokens"] == prompt_tokens(
        reference, module, QUERY, DOCUMENTS)[1]
    assert all(hit["usage"]["total_tokens"] > 0 for hit in item["results"])


def test_other_callers_bodies(app, reference):
    """The public body on /invocations, Cohere's SDK body, TEI's and Elasticsearch's amazon_sagemaker rerank."""
    wanted = expected(reference, QUERY, DOCUMENTS)
    assert_same(rerank(app, {"query": QUERY, "documents": DOCUMENTS}, "/invocations")["results"], wanted)
    assert_same(rerank(app, {"query": QUERY, "documents": DOCUMENTS, "api_version": 2}, "/invocations")["results"],
                wanted)
    assert_same(rerank(app, {"query": QUERY, "texts": DOCUMENTS}, "/invocations"), wanted, score="score")
    assert_same(rerank(app, {"query": QUERY, "input": DOCUMENTS}, "/invocations")["rerank"], wanted)


def test_batch_transform_rows_are_rerank_requests(app, reference):
    rows = [("q-1", QUERY, DOCUMENTS[:3]), ("q-2", "where is the mill", DOCUMENTS[1:5])]
    body = "".join(f'{row_id},{query},"{json.dumps(documents).replace(chr(34), chr(34) * 2)}"\n'
                   for row_id, query, documents in rows)
    answer = app.post("/invocations", data=body, headers={"Content-Type": "text/csv"})
    assert answer.status_code == 200, answer.text
    answers = answer.json()["data"]
    assert [item["id"] for item in answers] == ["q-1", "q-2"]
    for item, (_, query, documents) in zip(answers, rows):
        assert_same(item["results"], expected(reference, query, documents))


def test_embeddings_are_refused_by_name(app):
    for path, body in (("/v1/embeddings", {"input": ["hello"]}), ("/invocations", {"data": [{"text": "hello"}]})):
        answer = app.post(path, body)
        assert answer.status_code == 400
        error = answer.json()
        assert error["code"] == "UNSUPPORTED_OPERATION"
        assert "reranker" in error["detail"] and "/v1/rerank" in error["detail"]


def test_blocks_of_several_requests_share_a_padded_pass(app):
    """A block read in a right-padded pass beside longer blocks answers what it answers alone."""
    from model_handlers.types import RerankRequest, TextInput

    model = app.runtime.handler.model
    short = model.prepare_rerank(RerankRequest(TextInput(QUERY), tuple(map(TextInput, DOCUMENTS[:2]))), 100).items
    long = model.prepare_rerank(RerankRequest(TextInput("bread"), tuple(map(TextInput, MANY[:60]))), 100).items
    assert len(long) > 1 and all(block.length > short[0].length for block in long)
    together = model.forward([*short, *long])
    for block, shared in zip([*short, *long], together):
        (alone,) = model.forward([block])
        assert np.abs(alone[0] - shared[0]).max() < 1e-5


def test_a_block_closes_when_the_budget_left_is_exactly_2048(app, reference):
    """The budget rule's edge: the document that leaves exactly 2048 tokens of budget is its block's last."""
    tokenizer = reference._tokenizer()

    def tokens(text):
        return len(tokenizer(text)["input_ids"])

    target = tokenizer.model_max_length - 2 * tokens(QUERY) - 2048  # document tokens that leave exactly 2048
    documents, total = [], 0
    while target - total > 40:
        documents.append(DOCUMENTS[len(documents) % 3])
        total += tokens(documents[-1])
    documents.append(" ".join(["a"] * (target - total)))
    assert tokens(documents[-1]) == target - total
    documents += DOCUMENTS[:3]
    assert [len(block) for block in reference.blocks(QUERY, documents)[1]] == [len(documents) - 3, 3]
    body = rerank(app, {"query": QUERY, "documents": documents, "return_documents": False})
    assert_same(body["results"], expected(reference, QUERY, documents))


def test_a_cut_document_counts_2048_tokens_in_the_budget(jina_reranker_v3_dir, tmp_path):
    """Three documents cut to 2048 tokens fit one block of a 6444-token budget; counted uncut (2300 each) only two
    would."""
    roomy = with_max_length(jina_reranker_v3_dir, tmp_path / "roomy", 3 * 2048 + 300)
    reference = load_reference(roomy)
    documents = [" ".join(["a"] * 2300), " ".join(["b"] * 2300), " ".join(["a"] * 2300), "cats like fish"]
    assert [len(block) for block in reference.blocks(QUERY, documents)[1]] == [3, 1]
    with serving(roomy) as app:
        body = rerank(app, {"query": QUERY, "documents": documents, "return_documents": False})
    assert_same(body["results"], expected(reference, QUERY, documents))


def test_models_listing_says_it_is_listwise_and_takes_an_instruction(app):
    reranking = app.get("/v1/models").json()["data"][0]["details"]["rerank"]
    assert reranking["scoring"].startswith("listwise") and reranking["takes_instruction"] is True
    assert reranking["default_instruction"] is None  # the model's own prompt has no <instruct> part


def test_a_tokenizer_that_adds_special_tokens_is_cut_and_read_as_the_model_reads_it(jina_reranker_v3_dir, tmp_path):
    """A fine-tune whose tokenizer puts a token before every text (as BOS-adding tokenizers do): the model's own code
    counts it in each text's length, keeps it in a cut text's decoded ids, and reads it at the prompt's start."""
    opened = shutil.copytree(jina_reranker_v3_dir, tmp_path / "bos")
    document = json.loads((opened / "tokenizer.json").read_text())
    document["post_processor"] = {"type": "TemplateProcessing",
                                  "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                                             {"Sequence": {"id": "A", "type_id": 0}}],
                                  "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                                           {"Sequence": {"id": "B", "type_id": 1}}],
                                  "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [
                                      document["model"]["vocab"]["<|im_start|>"]], "tokens": ["<|im_start|>"]}}}
    (opened / "tokenizer.json").write_text(json.dumps(document))
    reference = load_reference(opened)
    tokenizer = reference._tokenizer()
    assert tokenizer("a")["input_ids"][0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    query = "what do cats like to eat " * 120
    documents = ["the river runs past an old mill " * 400, "a kitten drinks milk", "cats like fish"]
    with serving(opened) as app:
        body = rerank(app, {"query": query, "documents": documents, "return_documents": False})
    assert_same(body["results"], expected(reference, query, documents))


def test_a_checkpoint_without_the_marker_tokens_or_the_projector_is_refused_by_name(jina_reranker_v3_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from helpers import refused_at_load

    unmarked = shutil.copytree(jina_reranker_v3_dir, tmp_path / "unmarked")
    document = json.loads((unmarked / "tokenizer.json").read_text())
    document["added_tokens"] = [token for token in document["added_tokens"] if token["content"] != "<|rerank_token|>"]
    del document["model"]["vocab"]["<|rerank_token|>"]
    (unmarked / "tokenizer.json").write_text(json.dumps(document))
    assert "no <|rerank_token|> token" in refused_at_load(unmarked)

    headless = shutil.copytree(jina_reranker_v3_dir, tmp_path / "headless")
    tensors = load_file(str(headless / "model.safetensors"))
    del tensors["projector.2.weight"]
    save_file(tensors, str(headless / "model.safetensors"), metadata={"format": "pt"})
    assert "do not fit jina-reranker-v3's projector (missing ['2.weight'], unexpected [])" in refused_at_load(headless)
