"""jina-embeddings-v4 (kind `vision-language-embedding`): the tiny v4-shaped checkpoint of tests/models/jina_v4.py,
served, against tests/jina_v4_reference.py (v4's own encode_text / encode_image, re-implemented from its public code
on transformers' Qwen2.5-VL and the checkpoint's files) on the same directory.

Single vectors by cosine (>= 0.9999), token vectors row for row; per task, texts and images in one request, and rows
of several tasks in one forward pass. Usage: a text's tokens as the reference's tokenizer counts them, an image's
visual tokens as the reference's image processor makes them. Late chunking: each input's span of the reference's
hidden states of the whole text, averaged.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from helpers import assert_error, cosine, serving
from jina_v4_reference import JinaV4Reference

pytestmark = pytest.mark.app

TEXTS = ["Berlin is the capital of Germany.", "The quick brown fox jumps over the lazy dog."]
PARITY = 0.9999
# Each task as a request names it, and the reference's (task, prompt_name)
TASKS = {"retrieval.query": ("retrieval", "query"), "retrieval.passage": ("retrieval", "passage"),
         "text-matching": ("text-matching", "query"), "code.query": ("code", "query"),
         "code.passage": ("code", "passage")}


def image(seed: int, size=(150, 100)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png(picture: Image.Image) -> str:
    out = io.BytesIO()
    picture.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


IMAGES = [image(1), image(2, (60, 60))]


@pytest.fixture(scope="module")
def reference(jina_v4_dir):
    return JinaV4Reference(jina_v4_dir)


@pytest.fixture(scope="module")
def app(jina_v4_dir):
    with serving(jina_v4_dir) as served:
        yield served


def embed(app, body, path="/v1/embeddings"):
    response = app.post(path, body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("task", sorted(TASKS))
def test_texts_and_images_are_v4s_own_single_vectors(app, reference, task):
    name, side = TASKS[task]
    answer = embed(app, {"input": [*TEXTS, *({"image": png(p)} for p in IMAGES)], "task": task})
    expected = reference.encode_text(TEXTS, name, side) + reference.encode_image(IMAGES, name)
    assert [item["index"] for item in answer["data"]] == [0, 1, 2, 3]
    for item, vector in zip(answer["data"], expected):
        assert len(item["embedding"]) == len(vector)
        assert cosine(item["embedding"], vector) >= PARITY


def test_token_vectors_are_v4s_own_multivector(app, reference):
    body = {"input": [*TEXTS, {"image": png(IMAGES[0])}], "task": "retrieval.passage"}
    expected = (reference.encode_text(TEXTS, "retrieval", "passage", return_multivector=True)
                + reference.encode_image(IMAGES[:1], "retrieval", return_multivector=True))
    # the multi-vector route, and /v1/embeddings with return_multivector: Jina's API answers `embeddings` instead
    for answer in (embed(app, body, "/v1/multi-vector"), embed(app, {**body, "return_multivector": True})):
        for item, matrix in zip(answer["data"], expected):
            assert "embedding" not in item
            np.testing.assert_allclose(np.asarray(item["embeddings"]), matrix, atol=1e-4)


def test_the_sagemaker_v4_body(app, reference):
    """contract.md §2j's body, as jina-sagemaker sends it (None for what the caller left out)."""
    body = {"data": [{"text": TEXTS[0]}, {"image": png(IMAGES[1])}],
            "parameters": {"task": "text-matching", "late_chunking": False, "dimensions": 16,
                           "return_multivector": False}}
    answer = app.post("/invocations", body).json()["data"]
    expected = reference.encode_text(TEXTS[:1], "text-matching", truncate_dim=16) + reference.encode_image(
        IMAGES[1:], "text-matching", truncate_dim=16)
    for item, vector in zip(answer, expected):
        assert len(item["embedding"]) == 16
        assert cosine(item["embedding"], vector) >= PARITY
    multi = app.post("/invocations", {**body, "parameters": {**body["parameters"], "dimensions": None,
                                                             "return_multivector": True}}).json()["data"]
    expected = (reference.encode_text(TEXTS[:1], "text-matching", return_multivector=True)
                + reference.encode_image(IMAGES[1:], "text-matching", return_multivector=True))
    for item, matrix in zip(multi, expected):
        np.testing.assert_allclose(np.asarray(item["embeddings"]), matrix, atol=1e-4)


def test_each_task_has_its_own_adapter_on_images_too(app):
    """The vision tower's LoRA pairs apply (the reference applies them): the same image differs by task."""
    vectors = [embed(app, {"input": [{"image": png(IMAGES[0])}], "task": task})["data"][0]["embedding"]
               for task in ("retrieval.query", "code.query", "text-matching")]
    assert max(cosine(vectors[0], vectors[1]), cosine(vectors[0], vectors[2])) < 0.999


def test_rows_of_several_tasks_in_one_pass(app, reference):
    """Three requests' texts and images, of three tasks, run in one forward pass, each row with its own adapters."""
    from model_handlers.types import EmbedRequest, ImageInput, TextInput

    model = app.runtime.handler.model
    requests = [EmbedRequest(inputs=(TextInput(TEXTS[0]), ImageInput(png(IMAGES[0]))), task=task, operation="embed")
                for task in ("retrieval.query", "code.passage", "text-matching")]
    prepared = [model.prepare_embed(request) for request in requests]
    outputs = model.forward([item for p in prepared for item in p.items])
    assert len(outputs) == 6
    for (name, side), pair in zip([TASKS[r.task] for r in requests], zip(outputs[::2], outputs[1::2])):
        expected = reference.encode_text(TEXTS[:1], name, side) + reference.encode_image(IMAGES[:1], name)
        for (got,), vector in zip(pair, expected):
            assert cosine(got, vector) >= PARITY


def test_usage_counts_text_tokens_and_visual_tokens(app, reference):
    answer = embed(app, {"input": [TEXTS[0], {"image": png(IMAGES[0])}], "task": "retrieval.query"})
    assert answer["usage"]["total_tokens"] == (reference.text_tokens(TEXTS[0], "retrieval")
                                               + reference.visual_tokens(IMAGES[0]))
    assert reference.visual_tokens(IMAGES[0]) == (100 // 28 + (100 % 28 > 14)) * (150 // 28 + (150 % 28 > 14))


def test_late_chunking_pools_each_text_in_the_whole_context(app, reference):
    answer = embed(app, {"input": TEXTS, "task": "retrieval.passage", "late_chunking": True})
    tokenizer = reference.tokenizer
    whole = "Passage: " + " ".join(TEXTS)
    hidden = reference.hidden_states(whole, "retrieval")
    assert len(hidden) == len(tokenizer(whole)["input_ids"])
    start = len(tokenizer("Passage:")["input_ids"])
    for index, text in enumerate(TEXTS):
        length = len(tokenizer(" " + text)["input_ids"])
        expected = hidden[start:start + length].mean(axis=0)
        assert cosine(answer["data"][index]["embedding"], expected) >= PARITY
        start += length


def test_rerank_is_maxsim_of_token_vectors(app, reference):
    documents = [TEXTS[1], {"image": png(IMAGES[0])}, TEXTS[0]]
    answer = app.post("/v1/rerank", {"query": "capital of Germany", "documents": documents,
                                     "return_documents": False}).json()
    query = reference.encode_text(["capital of Germany"], "retrieval", "query", return_multivector=True)[0]
    pieces = (reference.encode_text([TEXTS[1], TEXTS[0]], "retrieval", "passage", return_multivector=True)
              + reference.encode_image(IMAGES[:1], "retrieval", return_multivector=True))
    matrices = [pieces[0], pieces[2], pieces[1]]
    scores = [float((query @ matrix.T).max(axis=1).sum()) for matrix in matrices]
    results = answer["results"]
    assert [hit["index"] for hit in results] == list(np.argsort(-np.asarray(scores), kind="stable"))
    for hit in results:
        assert hit["relevance_score"] == pytest.approx(scores[hit["index"]], rel=1e-4)


def test_refusals_name_what_is_wrong(app):
    assert_error(app.post("/v1/embeddings", {"input": TEXTS, "task": "separation"}), 422, "UNKNOWN_TASK",
                 "retrieval", "text-matching", "code")
    assert_error(app.post("/v1/embeddings", {"input": [{"audio": "UklGRg=="}]}), 400, "UNSUPPORTED_INPUT",
                 "input 0", "text, images and PDFs")
    assert_error(app.post("/v1/embeddings", {"input": [TEXTS[0], {"image": png(IMAGES[0])}],
                                             "late_chunking": True}), 422, None, "late_chunking")
    assert_error(app.post("/v1/embeddings", {"input": [{"image": "bm90IGFuIGltYWdl"}]}), 400, "INVALID_IMAGE",
                 "input 0")


def test_an_oversized_image_is_refused_before_any_pass(jina_v4_dir):
    with serving(jina_v4_dir, {"SEARCHBOX_IMAGE_MAX_PIXELS": "10000"}) as small:
        passes = small.runtime.handler.forward_passes
        assert_error(small.post("/v1/embeddings", {"input": [TEXTS[0], {"image": png(IMAGES[0])}]}), 400,
                     "IMAGE_TOO_LARGE", "input 1")
        assert small.runtime.handler.forward_passes == passes


def test_images_that_cannot_finish_in_time_are_refused_before_decoding(app):
    """A request whose time is up when it is prepared (admitted by the server earlier): the refusal comes from the
    image's header (its visual tokens cost model time), not from decoding its pixels, which are no image at all."""
    import time

    from model_handlers.deadline import Deadline
    from model_handlers.errors import InvalidInput, TooLarge
    from model_handlers.types import EmbedRequest, ImageInput

    header = io.BytesIO()
    image(3, (600, 400)).save(header, "PNG")
    corrupt = base64.b64encode(header.getvalue()[:200] + bytes(5000)).decode()  # a PNG's header, then no pixels
    pipeline = app.runtime.handler
    request = EmbedRequest(inputs=(ImageInput(corrupt),), operation="embed")
    passes = pipeline.forward_passes
    with pytest.raises(TooLarge, match="model time"):
        pipeline.run(request, Deadline(time.monotonic(), admitted=True))
    with pytest.raises(InvalidInput, match="cannot be decoded"):
        pipeline.run(request)  # with time to spare, it is decoded, and fails as the broken image it is
    assert pipeline.forward_passes == passes


@pytest.mark.server  # a build in a subprocess, and curl against an HTTP server
def test_readme_examples_answer_as_written(tmp_path):
    """README's jina-embeddings-v4: its build command, then each curl example run as written against that model,
    answering what its comment shows."""
    from helpers import run_readme_examples_on_built

    ran = run_readme_examples_on_built("vision-language-embedding", ["tiny_jina_vl.py", "v4"], tmp_path / "tiny-v4")
    assert len(ran) == 4


@pytest.mark.parametrize("body, task, side", [
    ({}, "retrieval", "query"),  # no task: retrieval, read as a query (v4's own encode_text defaults)
    ({"task": "retrieval"}, "retrieval", "query"),  # a task without its side: a query
    ({"task": "code", "input_type": "document"}, "code", "passage"),  # or the side input_type names
    ({"input_type": "document"}, "retrieval", "passage"),
])
def test_tasks_without_their_side(app, reference, body, task, side):
    answer = embed(app, {"input": TEXTS, **body})
    for item, vector in zip(answer["data"], reference.encode_text(TEXTS, task, side)):
        assert cosine(item["embedding"], vector) >= PARITY


def test_batch_transform_csv_rows_of_text_url_and_bytes(app, reference):
    """Batch transform's CSV for images (`id,text,url,bytes`, as for CLIP): each row one input, its vector v4's."""
    picture = png(IMAGES[0])
    body = (f"1,{TEXTS[0]},,\n"
            f'"2","","","{picture}"\n'
            f'"3","","data:image/png;base64,{picture}",""\n')
    answer = app.post("/invocations", data=body, headers={"Content-Type": "text/csv"})
    assert answer.status_code == 200, answer.text
    rows = answer.json()["data"]
    assert [row["id"] for row in rows] == ["1", "2", "3"]
    expected = reference.encode_text(TEXTS[:1], "retrieval", "query") + reference.encode_image(IMAGES[:1], "retrieval")
    for row, vector in zip(rows, expected + expected[1:]):
        assert cosine(row["embedding"], vector) >= PARITY
    assert [row["usage"]["total_tokens"] for row in rows][1:] == [reference.visual_tokens(IMAGES[0])] * 2


def two_page_pdf() -> tuple[str, list[Image.Image]]:
    """A two-page PDF (Pillow's writer, one picture a page) as base64, and its pages as pypdfium2 renders them at v4's
    pixel budget (README: a page is rendered to about the processor's max_pixels): the reference's inputs."""
    import math

    import pypdfium2

    pages = [image(4).copy(), image(5, (80, 120)).copy()]
    buffer = io.BytesIO()
    pages[0].save(buffer, "PDF", save_all=True, append_images=pages[1:])
    document = pypdfium2.PdfDocument(buffer.getvalue())
    rendered = []
    for page in document:
        width, height = page.get_size()
        rendered.append(page.render(scale=math.sqrt(602112 / (width * height))).to_pil().convert("RGB"))
    return base64.b64encode(buffer.getvalue()).decode(), rendered


def test_a_pdf_is_its_pages_each_v4s_own_vectors(app, reference):
    data, pages = two_page_pdf()
    body = {"input": [TEXTS[0], {"pdf": data}], "task": "retrieval.passage"}
    single = embed(app, body)
    assert [(row["index"], row.get("page")) for row in single["data"]] == [(0, None), (1, 1), (1, 2)]
    expected = reference.encode_text(TEXTS[:1], "retrieval", "passage") + reference.encode_image(pages, "retrieval")
    for row, vector in zip(single["data"], expected):
        assert cosine(row["embedding"], vector) >= PARITY
    assert single["usage"]["total_tokens"] == (reference.text_tokens(TEXTS[0], "retrieval", "passage")
                                               + sum(reference.visual_tokens(page) for page in pages))
    multi = embed(app, {**body, "return_multivector": True})
    expected = (reference.encode_text(TEXTS[:1], "retrieval", "passage", return_multivector=True)
                + reference.encode_image(pages, "retrieval", return_multivector=True))
    for row, matrix in zip(multi["data"], expected):
        np.testing.assert_allclose(np.asarray(row["embeddings"]), matrix, atol=1e-4)


def test_a_pdf_document_reranks_as_its_best_page(app, reference):
    data, pages = two_page_pdf()
    answer = app.post("/v1/rerank", {"query": "a picture", "documents": [TEXTS[0], {"pdf": data}]}).json()
    query = reference.encode_text(["a picture"], "retrieval", "query", return_multivector=True)[0]
    page_scores = [float((query @ matrix.T).max(axis=1).sum())
                   for matrix in reference.encode_image(pages, "retrieval", return_multivector=True)]
    (hit,) = [hit for hit in answer["results"] if hit["index"] == 1]
    assert hit["relevance_score"] == pytest.approx(max(page_scores), rel=1e-4)
    assert hit["document"] == {"pdf": data}
