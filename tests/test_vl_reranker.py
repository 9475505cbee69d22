"""The vision-language reranker kind (jina-reranker-m0): the tiny m0-shaped checkpoint of examples/tiny_jina_vl.py,
served, against tests/jina_reranker_m0_reference.py (its `compute_score` written out on transformers' own
Qwen2-VL and the checkpoint's score head), through /v1/rerank and the SageMaker body.

Windows: README "Rerank"'s rule (windows at 0, stride, 2*stride, ... and a last one ending at the document's end),
computed here from the tokenizer, each window's text scored by the reference. Usage: every token the model reads,
counted here as the reference's rows (prompt, images' visual tokens, score token).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer

from helpers import assert_error, refused_at_load, serving
from jina_reranker_m0_reference import JinaRerankerM0Reference

pytestmark = pytest.mark.app
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packaging"))  # the listing's samples, its load check

QUERY = "what is the capital of Germany"
DOCUMENTS = [
    "Berlin is the capital of Germany.",
    "The quick brown fox jumps over the lazy dog.",
    "Search engines rank documents.",
    "",
    "Rerankers read the query and each document together.",
]
TOLERANCE = 1e-4
# what the server may decode (pixels, from the header); above Qwen2-VL's max_pixels the processor shrinks the image
MAX_PIXELS = 800_000


def picture(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def encoded(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# sizes: below the processor's min_pixels (enlarged), ordinary, above its max_pixels (shrunk), a thin strip
IMAGES = [picture(40, 30, 1), picture(224, 160, 2), picture(1000, 700, 3), picture(300, 60, 4)]


@pytest.fixture(scope="module")
def reference(jina_m0_dir):
    return JinaRerankerM0Reference(jina_m0_dir)


@pytest.fixture(scope="module")
def tokenizer(jina_m0_dir):
    return AutoTokenizer.from_pretrained(str(jina_m0_dir))


@pytest.fixture(scope="module")
def app(jina_m0_dir):
    with serving(jina_m0_dir, {"SEARCHBOX_IMAGE_MAX_PIXELS": str(MAX_PIXELS)}) as served:
        yield served


def ranking(app, body, path="/v1/rerank"):
    response = app.post(path, body)
    assert response.status_code == 200, response.text
    return response.json()


def scores_by_index(answer) -> dict[int, float]:
    return {result["index"]: result["relevance_score"] for result in answer["results"]}


def expected_ranking(scores) -> list[int]:
    return [int(i) for i in np.argsort(-np.asarray(scores), kind="stable")]


def test_text_documents_score_as_compute_score_one_pair_at_a_time_and_batched(app, reference):
    alone = [reference.compute_score([(QUERY, document)])[0] for document in DOCUMENTS]
    batched = reference.compute_score([(QUERY, document) for document in DOCUMENTS], batch_size=len(DOCUMENTS))
    assert np.allclose(alone, batched, atol=TOLERANCE), "the reference itself must not depend on its padding"
    assert np.ptp(alone) > 0.01, "the tiny model's scores must spread for the order to mean anything"
    answer = ranking(app, {"query": QUERY, "documents": DOCUMENTS})
    assert [result["index"] for result in answer["results"]] == expected_ranking(alone)
    for index, score in scores_by_index(answer).items():
        assert abs(score - alone[index]) < TOLERANCE, (index, score, alone[index])


def test_image_documents_of_every_size_score_as_compute_score(app, reference):
    expected = reference.compute_score([(QUERY, image) for image in IMAGES], doc_type="image", batch_size=2)
    assert np.ptp(expected) > 0.001
    answer = ranking(app, {"query": QUERY, "documents": [{"image": encoded(image)} for image in IMAGES]})
    assert [result["index"] for result in answer["results"]] == expected_ranking(expected)
    for index, score in scores_by_index(answer).items():
        assert abs(score - expected[index]) < TOLERANCE, (index, score, expected[index])


def test_an_image_query_against_text_and_image_documents(app, reference):
    """The query's image and a document's ride in one row in the order [document, query], as compute_score passes
    them: swapped, each image's pixels would land on the other's tokens."""
    query = IMAGES[3]
    texts = reference.compute_score([(query, document) for document in DOCUMENTS[:3]], query_type="image")
    images = reference.compute_score([(query, image) for image in IMAGES[:2]], query_type="image", doc_type="image")
    expected = texts + images
    documents = DOCUMENTS[:3] + [{"image": encoded(image)} for image in IMAGES[:2]]
    answer = ranking(app, {"query": {"image": encoded(query)}, "documents": documents})
    assert [result["index"] for result in answer["results"]] == expected_ranking(expected)
    for index, score in scores_by_index(answer).items():
        assert abs(score - expected[index]) < TOLERANCE, (index, score, expected[index])


def test_text_and_image_documents_mixed_in_one_request_share_passes(app, reference):
    texts = reference.compute_score([(QUERY, document) for document in DOCUMENTS[:2]])
    images = reference.compute_score([(QUERY, image) for image in IMAGES[:2]], doc_type="image")
    documents = [DOCUMENTS[0], {"image": encoded(IMAGES[0])}, DOCUMENTS[1], {"url": encoded(IMAGES[1])}]
    expected = [texts[0], images[0], texts[1], images[1]]
    passes = app.runtime.handler.forward_passes
    answer = ranking(app, {"query": QUERY, "documents": documents})
    assert app.runtime.handler.forward_passes - passes == 1, "four short rows, texts and images, make one pass"
    for index, score in scores_by_index(answer).items():
        assert abs(score - expected[index]) < TOLERANCE, (index, score, expected[index])
    # each document echoed as it was sent, under its own key
    echoed = {result["index"]: result["document"] for result in answer["results"]}
    assert echoed[1] == {"image": encoded(IMAGES[0])} and echoed[3] == {"url": encoded(IMAGES[1])}
    assert echoed[0] == {"text": DOCUMENTS[0]}


def test_top_n_and_return_documents(app, reference):
    expected = reference.compute_score([(QUERY, document) for document in DOCUMENTS])
    answer = ranking(app, {"query": QUERY, "documents": DOCUMENTS, "top_n": 2, "return_documents": False})
    assert [result["index"] for result in answer["results"]] == expected_ranking(expected)[:2]
    assert all("document" not in result for result in answer["results"])


def test_usage_counts_every_token_read_and_each_images_visual_tokens(app, reference):
    """SageMaker's body bills the query and the documents apart: the query its own tokens once per pair (an image
    query its visual tokens), each document the rest of its row (prompt, its text or visual tokens, score token)."""
    documents = [DOCUMENTS[0], IMAGES[1], DOCUMENTS[2]]
    types = ["text", "image", "text"]
    body = {"data": {"query": QUERY, "documents": [d if t == "text" else {"image": encoded(d)}
                                                   for d, t in zip(documents, types)]}}
    answer = app.post("/invocations", body).json()["data"][0]
    query_tokens = len(reference.tokens(QUERY))
    rows = [reference.row_tokens(QUERY, d, doc_type=t) for d, t in zip(documents, types)]
    assert answer["query_usage"]["total_tokens"] == query_tokens * 3
    assert answer["docs_usage"]["total_tokens"] == sum(rows) - query_tokens * 3
    per_document = {result["index"]: result["usage"]["total_tokens"] for result in answer["results"]}
    assert per_document == {i: rows[i] - query_tokens for i in range(3)}
    # an image's visual tokens: one per 28x28 pixels of the processor's resize (sides rounded to 28: 224x160 ->
    # 224x168, 8 x 6 = 48 of them)
    assert reference.image_tokens(IMAGES[1]) == 48
    # against an empty text document: the 48 visual tokens and the two vision marks around them
    assert rows[1] - reference.row_tokens(QUERY, "") == 48 + 2

    # 40x30: rounded to 28x28 = 784 pixels, under min_pixels (3136), so scaled by sqrt(3136 / 1200) and rounded up:
    # 84x56, 3 x 2 visual tokens
    image_query = IMAGES[0]
    answer = app.post("/invocations", {"data": {"query": {"image": encoded(image_query)},
                                                "documents": [DOCUMENTS[0]]}}).json()["data"][0]
    assert reference.image_tokens(image_query) == 6
    assert answer["query_usage"]["total_tokens"] == 6
    assert answer["docs_usage"]["total_tokens"] == reference.row_tokens(image_query, DOCUMENTS[0],
                                                                        query_type="image") - 6
    public = ranking(app, {"query": QUERY, "documents": [DOCUMENTS[0], {"image": encoded(IMAGES[1])}]})
    assert public["usage"]["total_tokens"] == rows[0] + rows[1]


def test_the_jina_sagemaker_body_round_trips(app, reference):
    """contract §3: `data` a one-element list holding text and image documents, answered in the same envelope."""
    documents = [{"text": DOCUMENTS[0]}, {"image": encoded(IMAGES[1])}, {"text": DOCUMENTS[1]},
                 {"text": DOCUMENTS[2]}]
    body = {"data": [{"documents": documents, "query": QUERY, "top_n": 3}], "parameters": {"tag": "x"}}
    response = app.post("/invocations", body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"data", "parameters"} and len(answer["data"]) == 1
    texts = reference.compute_score([(QUERY, d["text"]) for d in documents if "text" in d])
    image = reference.compute_score([(QUERY, IMAGES[1])], doc_type="image")[0]
    expected = [texts[0], image, texts[1], texts[2]]
    results = answer["data"][0]["results"]
    assert [r["index"] for r in results] == expected_ranking(expected)[:3]
    for result in results:
        assert abs(result["relevance_score"] - expected[result["index"]]) < TOLERANCE
        assert result["document"] == documents[result["index"]]


def test_batch_transform_rows_with_image_documents(app, reference):
    """contract §4: `id,query,documents(JSON),top_n` rows, the documents' JSON holding text and image items."""
    image = {"image": encoded(IMAGES[0])}
    rows = [("q-1", QUERY, [DOCUMENTS[0], image, DOCUMENTS[1]]), ("q-2", "which animal jumps", DOCUMENTS[1:3])]
    body = "".join(f'{row_id},{query},"{json.dumps(documents).replace(chr(34), chr(34) * 2)}"\n'
                   for row_id, query, documents in rows)
    response = app.post("/invocations", data=body, headers={"Content-Type": "text/csv"})
    assert response.status_code == 200, response.text
    answers = response.json()["data"]
    assert [answer["id"] for answer in answers] == ["q-1", "q-2"]
    texts = reference.compute_score([(QUERY, DOCUMENTS[0]), (QUERY, DOCUMENTS[1])])
    first = [texts[0], reference.compute_score([(QUERY, IMAGES[0])], doc_type="image")[0], texts[1]]
    second = reference.compute_score([("which animal jumps", document) for document in DOCUMENTS[1:3]])
    for answer, expected in zip(answers, (first, second)):
        assert [hit["index"] for hit in answer["results"]] == expected_ranking(expected)
        assert np.allclose([hit["relevance_score"] for hit in answer["results"]], sorted(expected, reverse=True),
                           atol=TOLERANCE)


def test_a_long_text_document_scores_its_best_window(jina_m0_dir, reference, tokenizer, tmp_path):
    model_dir = tmp_path / "windows"
    shutil.copytree(jina_m0_dir, model_dir)
    (model_dir / "searchbox.json").write_text(json.dumps({"rerank_window_tokens": 24, "rerank_window_overlap": 6}))
    long = " ".join(["The quick brown fox jumps over the lazy dog."] * 6 + ["Berlin is the capital of Germany."]
                    + ["Search engines rank documents."] * 4)
    ids = tokenizer(long)["input_ids"]
    assert len(ids) > 3 * 24
    starts = list(range(0, len(ids) - 24, 18)) + [len(ids) - 24]
    windows = [tokenizer.decode(ids[start:start + 24]) for start in starts]
    per_window = reference.compute_score([(QUERY, window) for window in windows])
    whole = reference.compute_score([(QUERY, long)])[0]
    assert abs(max(per_window) - whole) > 10 * TOLERANCE, "the whole document must score apart from its best window"
    short = DOCUMENTS[0]
    with serving(model_dir) as app:
        answer = ranking(app, {"query": QUERY, "documents": [long, short]})
    scores = scores_by_index(answer)
    assert abs(scores[0] - max(per_window)) < TOLERANCE
    assert abs(scores[1] - reference.compute_score([(QUERY, short)])[0]) < TOLERANCE


def test_windows_fill_the_room_the_pair_leaves_within_max_length(jina_m0_dir, reference, tokenizer, tmp_path):
    """searchbox.json's max_length bounds a whole row (prompt, query, window, score token): the window is what is
    left, and every row fits, so compute_score at that max_length cuts nothing of it."""
    model_dir = tmp_path / "short"
    shutil.copytree(jina_m0_dir, model_dir)
    (model_dir / "searchbox.json").write_text(json.dumps({"max_length": 64}))
    long = " ".join(["The quick brown fox jumps over the lazy dog."] * 6 + ["Berlin is the capital of Germany."] * 4)
    ids = tokenizer(long)["input_ids"]
    size = 64 - reference.row_tokens(QUERY, "")
    overlap = size // 4
    assert len(ids) > 2 * size
    starts = list(range(0, len(ids) - size, size - overlap)) + [len(ids) - size]
    windows = [tokenizer.decode(ids[start:start + size]) for start in starts]
    assert max(reference.row_tokens(QUERY, window) for window in windows) == 64
    per_window = reference.compute_score([(QUERY, window) for window in windows], max_length=64,
                                         max_doc_length=10 ** 6)
    with serving(model_dir) as app:
        answer = ranking(app, {"query": QUERY, "documents": [long]})
    assert abs(answer["results"][0]["relevance_score"] - max(per_window)) < TOLERANCE
    assert answer["usage"]["total_tokens"] == sum(reference.row_tokens(QUERY, window) for window in windows)


def test_a_long_query_keeps_its_first_512_tokens(app, reference, tokenizer):
    query = " ".join(["Which city is the capital of Germany and why?"] * 60)
    ids = tokenizer(query)["input_ids"]
    assert len(ids) > 512
    cut = tokenizer.decode(ids[:512])
    expected = reference.compute_score([(cut, document) for document in DOCUMENTS[:2]])
    answer = ranking(app, {"query": query, "documents": DOCUMENTS[:2]})
    for index, score in scores_by_index(answer).items():
        assert abs(score - expected[index]) < TOLERANCE


def test_a_bad_image_fails_its_own_request_naming_it(app, reference):
    passes = app.runtime.handler.forward_passes
    assert_error(app.post("/v1/rerank", {"query": QUERY, "documents": [DOCUMENTS[0], {"image": "bm90IGFuIGltYWdl"}]}),
                 400, "INVALID_IMAGE", "document 1")
    assert_error(app.post("/v1/rerank", {"query": {"image": "bm90IGFuIGltYWdl"}, "documents": [DOCUMENTS[0]]}),
                 400, "INVALID_IMAGE", "the query")
    assert app.runtime.handler.forward_passes == passes
    # the model still answers the next request
    answer = ranking(app, {"query": QUERY, "documents": [DOCUMENTS[0]]})
    assert abs(answer["results"][0]["relevance_score"] - reference.compute_score([(QUERY, DOCUMENTS[0])])[0]) \
        < TOLERANCE


def test_a_text_holding_the_image_placeholder_is_refused_by_name(app):
    """The tokenizer reads `<|image_pad|>` in a text as an image's place: a row would hold a pad without its image."""
    passes = app.runtime.handler.forward_passes
    assert_error(app.post("/v1/rerank", {"query": QUERY, "documents": [DOCUMENTS[0], "see <|image_pad|> here"]}),
                 400, "INVALID_INPUT", "document 1", "<|image_pad|>")
    assert_error(app.post("/v1/rerank", {"query": "<|image_pad|>", "documents": [DOCUMENTS[0]]}),
                 400, "INVALID_INPUT", "the query")
    assert app.runtime.handler.forward_passes == passes


def test_an_image_over_the_servers_pixel_limit_is_refused_before_any_pass(app):
    passes = app.runtime.handler.forward_passes
    big = picture(1000, 900, 5)  # 900,000 pixels: over SEARCHBOX_IMAGE_MAX_PIXELS
    assert_error(app.post("/v1/rerank", {"query": QUERY, "documents": [DOCUMENTS[0], {"image": encoded(big)}]}),
                 400, "IMAGE_TOO_LARGE", "document 1", f"{MAX_PIXELS:,}")
    assert app.runtime.handler.forward_passes == passes


def test_an_image_pair_counts_its_visual_tokens_in_the_batch_budget(jina_m0_dir):
    """A pair of a 224x160 image holds 48 visual tokens and ~20 of prompt: a budget of 100 padded tokens takes two
    text pairs in one pass but not two image pairs (counted as one token per image, they would share one)."""
    with serving(jina_m0_dir, {"SEARCHBOX_MAX_BATCH_TOKENS": "100"}) as app:
        passes = app.runtime.handler.forward_passes
        ranking(app, {"query": QUERY, "documents": DOCUMENTS[:2]})
        assert app.runtime.handler.forward_passes - passes == 1
        passes = app.runtime.handler.forward_passes
        ranking(app, {"query": QUERY, "documents": [{"image": encoded(IMAGES[1])}, {"image": encoded(IMAGES[1])}]})
        assert app.runtime.handler.forward_passes - passes == 2


def test_models_card_and_kind(app):
    card = app.get("/v1/models").json()["data"][0]
    assert card["kind"] == "vision-language-reranker"
    assert card["max_length"] == 10240  # compute_score's max_length
    assert "rerank" in card["operations"] and "embed" not in card["operations"]
    assert card["details"]["rerank"]["takes_instruction"] is False
    assert "image" in card["details"]["rerank"]["scoring"]
    assert_error(app.post("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS[:1], "instruction": "x"}), 422,
                 "INVALID_OPTION", "takes no `instruction`")


def test_a_text_only_reranker_still_refuses_image_documents(reranker_dir):
    with serving(reranker_dir) as app:
        assert_error(app.post("/v1/rerank", {"query": QUERY, "documents": [DOCUMENTS[0],
                                                                           {"image": encoded(IMAGES[0])}]}),
                     400, "UNSUPPORTED_INPUT", "document 1 is an image")


def test_the_artifacts_load_check_answers_the_listings_sample(jina_m0_dir, reference):
    """packaging's load check sends the kind's sample (the m0 body jina-sagemaker sends: a text and an 8x8 PNG
    document) through the server's own engine: it must score them as compute_score does."""
    import _samples
    import build_artifact

    from model_handlers import read_serving_config

    config = read_serving_config(jina_m0_dir)
    _, figures, body = build_artifact._smoke_test(jina_m0_dir, config, "cpu")
    sample = _samples.of("vision-language-reranker").request["data"][0]
    query, (text, image) = sample["query"], sample["documents"]
    png = Image.open(io.BytesIO(base64.b64decode(image["image"]))).convert("RGB")
    expected = [reference.compute_score([(query, text["text"])])[0],
                reference.compute_score([(query, png)], doc_type="image")[0]]
    results = json.loads(body)["data"][0]["results"]
    assert sorted(r["index"] for r in results) == [0, 1]
    for result in results:
        assert abs(result["relevance_score"] - expected[result["index"]]) < TOLERANCE
    assert figures.inputs == 2
    assert figures.tokens == reference.row_tokens(query, text["text"]) + reference.row_tokens(query, png,
                                                                                             doc_type="image")


def test_a_request_that_cannot_finish_is_refused_from_its_images_headers(app):
    """An image document's visual tokens are known from its header (600x400: 21 x 14 = 294 tokens, model time): with no
    time left, the request is refused before any pixel is decoded, even pixels that are no image at all."""
    import time

    from model_handlers.deadline import Deadline
    from model_handlers.errors import InvalidInput, TooLarge
    from model_handlers.types import ImageInput, RerankRequest, TextInput

    header = io.BytesIO()
    picture(600, 400, 6).save(header, "PNG")
    corrupt = base64.b64encode(header.getvalue()[:200] + bytes(5000)).decode()  # a PNG's header, then no pixels
    pipeline = app.runtime.handler
    for request in (RerankRequest(query=TextInput(QUERY), documents=(ImageInput(corrupt),)),
                    RerankRequest(query=ImageInput(corrupt), documents=(TextInput(DOCUMENTS[0]),))):
        passes = pipeline.forward_passes
        with pytest.raises(TooLarge, match="model time"):
            pipeline.run(request, Deadline(time.monotonic(), admitted=True))
        with pytest.raises(InvalidInput, match="cannot be decoded"):
            pipeline.run(request)  # with time to spare, it is decoded, and fails as the broken image it is
        assert pipeline.forward_passes == passes


def two_page_pdf() -> tuple[str, list[Image.Image]]:
    """A two-page PDF (Pillow's writer, one picture a page) as base64, and its pages as pypdfium2 renders them at
    m0's pixel budget (README: a page is rendered to about the processor's max_pixels, 602,112): the reference's
    inputs."""
    import math

    import pypdfium2

    pages = [picture(90, 60, 7), picture(60, 100, 8)]
    buffer = io.BytesIO()
    pages[0].save(buffer, "PDF", save_all=True, append_images=pages[1:])
    document = pypdfium2.PdfDocument(buffer.getvalue())
    rendered = []
    for page in document:
        width, height = page.get_size()
        rendered.append(page.render(scale=math.sqrt(602112 / (width * height))).to_pil().convert("RGB"))
    return base64.b64encode(buffer.getvalue()).decode(), rendered


def test_a_pdf_document_reranks_as_its_best_page(app, reference):
    data, pages = two_page_pdf()
    per_page = reference.compute_score([(QUERY, page) for page in pages], doc_type="image")
    assert abs(per_page[0] - per_page[1]) > 10 * TOLERANCE, "the pages must score apart for the best to mean anything"
    text = reference.compute_score([(QUERY, DOCUMENTS[0])])[0]
    answer = app.post("/invocations", {"data": {"query": QUERY, "documents": [DOCUMENTS[0], {"pdf": data}]}}).json()
    hits = {hit["index"]: hit for hit in answer["data"][0]["results"]}
    assert abs(hits[1]["relevance_score"] - max(per_page)) < TOLERANCE
    assert abs(hits[0]["relevance_score"] - text) < TOLERANCE
    assert hits[1]["document"] == {"pdf": data}
    # every page's row is read, and billed to its document
    query_tokens = len(reference.tokens(QUERY))
    assert hits[1]["usage"]["total_tokens"] == sum(reference.row_tokens(QUERY, page, doc_type="image") - query_tokens
                                                   for page in pages)
    assert answer["data"][0]["query_usage"]["total_tokens"] == query_tokens * 3


def test_a_pdf_query_is_refused_by_name(app):
    data, _ = two_page_pdf()
    assert_error(app.post("/v1/rerank", {"query": {"pdf": data}, "documents": [DOCUMENTS[0]]}),
                 400, "UNSUPPORTED_INPUT", "the query is a PDF")


@pytest.mark.server  # a build in a subprocess, and curl against an HTTP server
def test_readme_examples_answer_as_written(tmp_path):
    """README's jina-reranker-m0: its build command, then each curl example run as written against that model,
    answering what its comment shows."""
    from helpers import run_readme_examples_on_built

    ran = run_readme_examples_on_built("vision-language-reranker", ["tiny_jina_vl.py", "m0"], tmp_path / "tiny-m0")
    assert len(ran) == 4


def test_a_checkpoint_without_its_score_head_is_refused_at_load(jina_m0_dir, tmp_path):
    """Without `score.*` the scores would come from nowhere: the directory is refused, naming what it lacks."""
    from safetensors.torch import load_file, save_file

    model_dir = tmp_path / "headless"
    shutil.copytree(jina_m0_dir, model_dir)
    weights = load_file(str(model_dir / "model.safetensors"))
    save_file({name: tensor for name, tensor in weights.items() if not name.startswith("score.")},
              str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    assert "score." in refused_at_load(model_dir)
