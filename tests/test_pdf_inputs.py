"""PDF inputs (`{"pdf": ...}`) on a model that reads images: the tiny CLIP built with transformers' own classes.

PDFs are made here with Pillow (one picture a page). Expected vectors come from an independent reference: each page
rendered by pypdfium2 directly, here, at the size CLIP's own processor resizes to (its `shortest_edge`), and embedded
by transformers' `CLIPModel.get_image_features` on that processor's output. Expected usage comes from the same page
sent as an ordinary image input. Limits are proven to refuse before any page is rendered: pypdfium2's page rendering
is watched (a counting wrapper around the library's own method, which it still calls) and the model's forward passes
are counted.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import threading
import time

import numpy as np
import pypdfium2
import pytest
import torch
from PIL import Image

from helpers import assert_documented, assert_error, serving

pytestmark = pytest.mark.app

PARITY = 0.9999


# --- PDFs, made here ----------------------------------------------------------------------------------


def pattern(seed: int, size=(60, 40)) -> Image.Image:
    """A page's picture: blocks of random colours on a gradient, different for every seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    array = np.stack([x, y[::-1], np.full_like(x, 40 * seed % 256)], axis=-1)
    for _ in range(4):
        top, left = rng.integers(0, height - 8), rng.integers(0, width - 8)
        array[top: top + 10, left: left + 14] = rng.integers(0, 255, 3)
    return Image.fromarray(array.astype(np.uint8))


def make_pdf(*pages: Image.Image) -> bytes:
    # copies: Pillow's PDF writer keeps state on the images it saved, and an image saved first in one PDF then
    # appended in another is written as the first page again
    pages = [page.copy() for page in pages]
    buffer = io.BytesIO()
    pages[0].save(buffer, "PDF", save_all=True, append_images=pages[1:])
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return b64(buffer.getvalue())


def encrypted_pdf() -> bytes:
    """A one-page PDF under the standard security handler whose user password is not empty (its /U entry matches no
    key made from the empty password): a reader needs a password to open it (ISO 32000-1, 7.6.3)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 10 10] >>",
               b"<< /Filter /Standard /V 1 /R 2 /O <" + b"ab" * 32 + b"> /U <" + b"cd" * 32 + b"> /P -4 >>"]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += (b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 4 0 R /ID [<" % (len(objects) + 1) + b"00" * 16 + b"><"
            + b"00" * 16 + b">] >>\nstartxref\n%d\n%%%%EOF\n" % xref)
    return bytes(out)


# --- the reference ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(clip_dir):
    with serving(clip_dir) as app:
        yield app


@pytest.fixture(scope="module")
def reference(clip_dir):
    from transformers import AutoProcessor, CLIPModel

    return CLIPModel.from_pretrained(str(clip_dir)).eval(), AutoProcessor.from_pretrained(str(clip_dir))


@pytest.fixture(scope="module")
def document(clip):
    return clip.get("/openapi.json").json()


def rendered(reference, data: bytes) -> list[Image.Image]:
    """Each page as pypdfium2 renders it with its shorter side at the processor's `shortest_edge`."""
    shortest = reference[1].image_processor.size["shortest_edge"]
    pdf = pypdfium2.PdfDocument(data)
    try:
        pages = []
        for page in pdf:
            width, height = page.get_size()
            pages.append(page.render(scale=shortest / min(width, height)).to_pil().convert("RGB"))
            page.close()
        return pages
    finally:
        pdf.close()


def unit_image_vectors(reference, images: list[Image.Image]) -> np.ndarray:
    model, processor = reference
    with torch.no_grad():
        vectors = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output.numpy()
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def unit_text_vectors(reference, texts: list[str]) -> np.ndarray:
    model, processor = reference
    with torch.no_grad():
        vectors = model.get_text_features(**processor(text=texts, padding=True, return_tensors="pt")).pooler_output
    vectors = vectors.numpy()
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def renders(monkeypatch):
    """How many pages pypdfium2 renders (its own `PdfPage.render` still does the work)."""
    count = {"pages": 0}
    original = pypdfium2.PdfPage.render

    def counting(self, *args, **kwargs):
        count["pages"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pypdfium2.PdfPage, "render", counting)
    return count


# --- embeddings -----------------------------------------------------------------------------------------


def test_a_pdf_answers_a_row_per_page_where_it_stood(clip, reference, document):
    pdf = make_pdf(pattern(1), pattern(2, (40, 70)), pattern(3))
    photo = pattern(9)
    answer = clip.post("/v1/embeddings", {"input": ["a red square", {"pdf": b64(pdf)}, {"image": png(photo)}]})
    assert answer.status_code == 200, answer.text
    assert_documented(document, "post", "/v1/embeddings", answer)
    rows = answer.json()["data"]
    assert [(row["index"], row.get("page")) for row in rows] == [(0, None), (1, 1), (1, 2), (1, 3), (2, None)]
    got = np.array([row["embedding"] for row in rows])
    pages = unit_image_vectors(reference, rendered(reference, pdf))
    want = np.vstack([unit_text_vectors(reference, ["a red square"]), pages, unit_image_vectors(reference, [photo])])
    similarity = got @ want.T
    assert np.all(np.diag(similarity) >= PARITY), np.diag(similarity)
    # the pages are told apart by the reference: a wrong page order would fail the diagonal above
    assert np.all(pages @ pages.T - np.eye(3) < PARITY)


def test_each_page_is_billed_as_the_image_it_renders_to(clip, reference):
    pdf = make_pdf(pattern(1), pattern(2, (40, 70)))
    as_pdf = clip.post("/v1/embeddings", {"input": [{"pdf": b64(pdf)}]}).json()
    as_images = clip.post("/v1/embeddings", {"input": [{"image": png(page)} for page in rendered(reference, pdf)]})
    assert as_pdf["usage"] == as_images.json()["usage"]
    np.testing.assert_allclose([row["embedding"] for row in as_pdf["data"]],
                               [row["embedding"] for row in as_images.json()["data"]], atol=1e-5)


def test_a_data_uri_reads_as_base64_does(clip):
    pdf = b64(make_pdf(pattern(4), pattern(5)))
    plain = clip.post("/v1/embeddings", {"input": {"pdf": pdf}}).json()["data"]
    uri = clip.post("/v1/embeddings", {"input": {"pdf": f"data:application/pdf;base64,{pdf}"}}).json()["data"]
    assert [row["page"] for row in uri] == [1, 2]
    assert [row["embedding"] for row in uri] == [row["embedding"] for row in plain]


def test_the_sagemaker_envelope_answers_each_page_under_its_input_id(clip, reference):
    """What the jina-sagemaker client sends for a document: `{"data": [{"pdf": ...}]}`, one envelope for every model."""
    pdf = make_pdf(pattern(6), pattern(7))
    body = {"data": [{"text": "first", "id": 7}, {"pdf": b64(pdf), "id": "doc-1"}], "parameters": {"task": "x"}}
    answer = clip.post("/invocations", body)
    assert answer.status_code == 200, answer.text
    items = answer.json()["data"]
    assert [(item["id"], item.get("page")) for item in items] == [(7, None), ("doc-1", 1), ("doc-1", 2)]
    assert answer.json()["parameters"] == {"task": "x"}
    page_usage = [clip.post("/invocations", {"data": {"image": png(page)}}).json()["data"][0]["usage"]
                  for page in rendered(reference, pdf)]
    assert [item["usage"] for item in items[1:]] == page_usage
    want = unit_image_vectors(reference, rendered(reference, pdf))
    got = np.array([item["embedding"] for item in items[1:]])
    assert np.all(np.sum(got * want, axis=1) >= PARITY)
    # the client's v4 shape: one PDF object as `data`
    single = clip.post("/invocations", {"data": {"pdf": b64(pdf)}}).json()["data"]
    assert [item["page"] for item in single] == [1, 2] and single[0]["id"] == single[1]["id"]


def test_a_json_lines_batch_line_of_a_pdf_answers_its_pages(clip):
    line = json.dumps({"pdf": b64(make_pdf(pattern(1), pattern(2))), "id": "p"})
    answer = clip.post("/invocations", data=line + '\n"a text"\n', headers={"Content-Type": "application/jsonlines"})
    assert answer.status_code == 200, answer.text
    first, second = (json.loads(text) for text in answer.text.splitlines())
    assert [(item["id"], item["page"]) for item in first["data"]] == [("p", 1), ("p", 2)]
    assert "page" not in second["data"][0]


def test_a_pdf_instance_on_vertex_ai_predicts_the_list_of_its_pages(clip_dir, reference):
    """README (Google Cloud Vertex AI): prediction i is the answer's item of index i; a PDF's is the list of its pages'
    items, however many it has, so that there is still one prediction per instance."""
    two_pages, one_page = make_pdf(pattern(1), pattern(2)), make_pdf(pattern(3))
    instances = ["a red square", {"pdf": b64(two_pages)}, {"pdf": b64(one_page)}, "after the PDFs"]
    with serving(clip_dir, {"AIP_PREDICT_ROUTE": "/predict"}) as app:
        answer = app.post("/predict", {"instances": instances})
        data = app.post("/invocations", {"input": instances}).json()["data"]
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert predictions == [data[0], [data[1], data[2]], [data[3]], data[4]]
    assert [item["page"] for item in predictions[1]] == [1, 2]
    expected = unit_image_vectors(reference, rendered(reference, two_pages))
    np.testing.assert_allclose([item["embedding"] for item in predictions[1]], expected, atol=1e-4)


# --- rerank --------------------------------------------------------------------------------------------


def test_a_pdf_document_scores_as_its_best_page(clip, reference):
    pages = [pattern(11), pattern(12)]
    forward, backward = make_pdf(*pages), make_pdf(*pages[::-1])
    query = "a page of blocks"
    page_vectors = unit_image_vectors(reference, rendered(reference, forward))
    scores = page_vectors @ unit_text_vectors(reference, [query])[0]
    assert abs(scores[0] - scores[1]) > 1e-3  # the best page is not the mean, nor either page whatever the order
    documents = [{"pdf": b64(forward)}, "some text", {"pdf": b64(backward)}]
    answer = clip.post("/v1/rerank", {"query": query, "documents": documents})
    assert answer.status_code == 200, answer.text
    hits = {hit["index"]: hit for hit in answer.json()["results"]}
    for index in (0, 2):
        assert hits[index]["relevance_score"] == pytest.approx(float(scores.max()), abs=1e-4)
        assert hits[index]["document"] == documents[index]  # echoed as sent


def test_a_pdf_query_and_a_pdf_to_classify_are_refused_by_name(clip):
    pdf = b64(make_pdf(pattern(1)))
    assert_error(clip.post("/v1/rerank", {"query": {"pdf": pdf}, "documents": ["a"]}), 400, "UNSUPPORTED_INPUT",
                 "the query is a PDF")
    assert_error(clip.post("/v1/classify", {"input": ["a", {"pdf": pdf}], "labels": ["x", "y"]}), 400,
                 "UNSUPPORTED_INPUT", "input 1 is a PDF")


# --- limits and refusals ---------------------------------------------------------------------------------


def test_a_pdf_over_the_page_limit_is_refused_before_any_page_is_rendered(clip, renders):
    runtime = clip.runtime
    small, many = make_pdf(pattern(1), pattern(2)), make_pdf(*[pattern(seed, (16, 16)) for seed in range(33)])
    passes = runtime.handler.forward_passes
    started = time.perf_counter()
    answer = clip.post("/v1/embeddings", {"input": [{"pdf": b64(small)}, "text", {"pdf": b64(many)}]})
    elapsed = time.perf_counter() - started
    assert_error(answer, 400, "PDF_TOO_MANY_PAGES", "input 2", "33 pages", "limit of 32 pages")
    # the small PDF before it was not rendered either: every PDF is counted before any page is drawn
    assert renders["pages"] == 0 and runtime.handler.forward_passes == passes
    assert elapsed < 5, elapsed


def test_pages_count_as_inputs_across_a_request(clip, renders):
    runtime = clip.runtime
    pdf = b64(make_pdf(*[pattern(seed, (16, 16)) for seed in range(32)]))
    passes = runtime.handler.forward_passes
    # 64 PDFs of 32 pages, and one text: 2049 rows, one over the 2048 inputs a request may make
    answer = clip.post("/v1/embeddings", {"input": ["text", *[{"pdf": pdf}] * 64]})
    assert_error(answer, 400, "TOO_MANY_INPUTS", "2049 rows", "at most 2048")
    assert renders["pages"] == 0 and runtime.handler.forward_passes == passes


def test_a_page_that_would_render_over_the_pixel_limit_is_refused_before_rendering(clip, renders):
    # 60000 x 1 points: its shorter side brought to the processor's 32 pixels makes 1,920,000 x 32 pixels
    long_strip = make_pdf(pattern(1), Image.new("RGB", (60_000, 1), (200, 10, 10)))
    answer = clip.post("/v1/embeddings", {"input": [{"pdf": b64(long_strip)}]})
    assert_error(answer, 400, "IMAGE_TOO_LARGE", "input 0", "page 2", "50,000,000")
    assert renders["pages"] == 0


@pytest.mark.parametrize("sent, mentions", [
    (b64(b"\x89PNG\r\n\x1a\n" + b"\0" * 64), ("not a PDF",)),
    (b64(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n trailer garbage"), ("cannot be read",)),
    (b64(encrypted_pdf()), ("encrypted",)),
    # a page tree that counts three pages and holds one: PDFium opens it, then cannot measure pages 2 and 3
    (b64(make_pdf(pattern(1)).replace(b"/Count 1", b"/Count 3")), ("pages cannot be read",)),
    ("", ("empty or not a string",)),
    ("not base64 at all!", ("neither base64",)),
])
def test_what_is_not_a_readable_pdf_is_refused_by_name(clip, sent, mentions):
    answer = clip.post("/v1/embeddings", {"input": ["fine", {"pdf": sent}]})
    assert_error(answer, 400, "INVALID_PDF", "input 1", *mentions)


def test_a_truncated_pdf_is_refused_by_name(clip):
    pdf = make_pdf(pattern(1), pattern(2))
    answer = clip.post("/v1/embeddings", {"input": {"pdf": b64(pdf[: len(pdf) // 3])}})
    assert_error(answer, 400, "INVALID_PDF", "input 0")


def test_a_model_that_reads_no_images_refuses_a_pdf_as_before(app):
    pdf = b64(make_pdf(pattern(1)))
    assert_error(app.post("/v1/embeddings", {"input": ["a", {"pdf": pdf}]}), 400, "UNSUPPORTED_INPUT",
                 "input 1 is a PDF", "text only")
    assert_error(app.post("/invocations", {"data": {"pdf": pdf}}), 400, "UNSUPPORTED_INPUT", "input 0 is a PDF")


# --- URLs ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pdf_server():
    """A local HTTP server answering one PDF as application/pdf."""
    body = make_pdf(pattern(21), pattern(22))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "application/pdf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{server.server_address[1]}/paper.pdf", body
    server.shutdown()
    server.server_close()


def test_a_pdf_url_is_fetched_when_fetching_is_on(clip_dir, clip, pdf_server):
    url, body = pdf_server
    assert_error(clip.post("/v1/embeddings", {"input": {"pdf": url}}), 400, "IMAGE_URL_NOT_ALLOWED", "input 0")
    with serving(clip_dir, {"SEARCHBOX_IMAGE_FETCH": "1", "SEARCHBOX_IMAGE_FETCH_ALLOW_HOSTS": "localhost"}) as app:
        fetched = app.post("/v1/embeddings", {"input": {"pdf": url}})
        assert fetched.status_code == 200, fetched.text
    inline = clip.post("/v1/embeddings", {"input": {"pdf": b64(body)}}).json()["data"]
    assert [row["page"] for row in fetched.json()["data"]] == [1, 2]
    assert [row["embedding"] for row in fetched.json()["data"]] == [row["embedding"] for row in inline]
