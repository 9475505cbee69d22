"""The multimodal kind on a small CLIP built here with transformers' own classes (examples/tiny_clip.py).

Vectors are checked against transformers' `CLIPModel.get_text_features` / `get_image_features` through the saved
processor and against sentence-transformers on the same directory; images are made with Pillow in several sizes,
modes and formats. Tables run in-process (`create_app` on the real model); one real `serve` does the end to end.
URL fetching is tested against a local HTTP server whose one name (localhost) is allowed explicitly; nothing
else is ever connected to: refused addresses are refused before any connection.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import shutil
import socket
import struct
import sys
import threading
import time
import urllib.parse
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from helpers import assert_error, cosine, serving
from model_handlers import HandlerOptions, load_handler
from model_handlers.errors import InvalidInput, ModelDirectoryError
from model_handlers.images import ImageReader
from model_handlers.kinds import ModelFiles, detect
from model_handlers.options import ImageOptions
from model_handlers.types import EmbedRequest, ImageInput, TextInput
from models.clip import SIZES, clip_tokenizer

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.app

PARITY = 0.9999
WIDTH = SIZES["tiny"]["projection"]
TEXTS = ["a photo of a dog", "How is the weather today?", "an orange square below a blue square"]


# --- images ------------------------------------------------------------------------------------------


def picture(size=(48, 40), seed=0) -> Image.Image:
    """An RGB picture with structure (gradients and blocks), so that orientation and crops change vectors."""
    rng = np.random.default_rng(seed)
    width, height = size
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    array = np.stack([x, y, np.full_like(x, 128)], axis=-1)
    array[: height // 3, : width // 2] = rng.integers(0, 255, 3)
    return Image.fromarray(array.astype(np.uint8))


def encoded(image: Image.Image, format_: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format_, **save)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds no pixels: only a check of the header can tell it is too large."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def sample_images() -> dict[str, tuple[bytes, Image.Image]]:
    """name -> (file bytes, the image a reference implementation is given for it)."""
    base = picture()
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    palette = base.quantize(16)
    palette.info["transparency"] = 0
    grey = base.convert("L")
    grey16 = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)
    assert grey16.mode == "I;16"
    frames = [picture(seed=1), picture(seed=2)]
    rotated = base.transpose(Image.Transpose.ROTATE_270)  # shown upright by EXIF orientation 6 (rotate 90 CW)
    exif = Image.Exif()
    exif[0x0112] = 6
    cases = {
        "png-rgb": encoded(base, "PNG"),
        "jpeg-rgb": encoded(picture((300, 200)), "JPEG", quality=90),
        "webp": encoded(base, "WEBP", quality=90),
        "gif-animated": encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50),
        "bmp": encoded(base, "BMP"),
        "png-rgba": encoded(rgba, "PNG"),
        "png-palette-transparent": encoded(palette, "PNG", transparency=0),
        "png-grey": encoded(grey, "PNG"),
        "jpeg-cmyk": encoded(base.convert("CMYK"), "JPEG", quality=95),
        "jpeg-exif-rotated": encoded(rotated, "JPEG", quality=95, exif=exif.tobytes()),
        "png-tiny": encoded(picture((1, 1)), "PNG"),
    }
    references = {name: ImageOps.exif_transpose(Image.open(io.BytesIO(data))) for name, data in cases.items()}
    cases["png-grey-16bit"] = encoded(grey16, "PNG")
    references["png-grey-16bit"] = grey  # its 8-bit twin: 16-bit must keep the picture, not clip it to white
    return {name: (data, references[name]) for name, data in cases.items()}


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(clip_dir):
    """transformers' CLIPModel and the processor saved with it."""
    from transformers import AutoProcessor, CLIPModel

    return CLIPModel.from_pretrained(str(clip_dir)).eval(), AutoProcessor.from_pretrained(str(clip_dir))


@pytest.fixture(scope="module")
def st_model(clip_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(clip_dir), device="cpu", local_files_only=True)


def reference_texts(reference, texts: list[str]) -> np.ndarray:
    model, processor = reference
    with torch.no_grad():
        return model.get_text_features(**processor(text=texts, padding=True, return_tensors="pt")).pooler_output.numpy()


def reference_images(reference, images: list[Image.Image]) -> np.ndarray:
    model, processor = reference
    with torch.no_grad():
        return model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output.numpy()


@pytest.fixture(scope="module")
def clip(clip_dir):
    """The in-process server on the tiny CLIP, URL fetching off (the default)."""
    with serving(clip_dir) as app:
        yield app


@pytest.fixture(scope="module")
def images_server():
    """A local HTTP server: an image, an HTML page, redirects (to allowed and refused places), a slow answer."""
    png = encoded(picture(), "PNG")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            port = self.server.server_address[1]
            redirects = {"/to-loopback": f"http://127.0.0.1:{port}/cat.png",
                         "/to-metadata": "http://169.254.169.254/latest/meta-data/",
                         "/to-private": "http://10.0.0.7/cat.png",
                         "/to-allowed": f"http://localhost:{port}/cat.png",
                         "/to-file": "file:///etc/passwd"}
            if self.path in redirects:
                self.send_response(302)
                self.send_header("Location", redirects[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path == "/slow.png":
                time.sleep(3)
            if self.path == "/late.png":
                time.sleep(0.6)
            if self.path == "/trickle.png":  # the headers at once, then a byte every 0.1 s: never done in time
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                for byte in png[:100]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.1)
                return
            if self.path == "/chunked.png":  # no Content-Length: the body's size is known only as it arrives
                self.protocol_version = "HTTP/1.1"
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                for start in range(0, len(png), 50):
                    piece = png[start:start + 50]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
                return
            if self.path == "/unsized.png":  # HTTP/1.0 without Content-Length: the body ends when the server closes
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                self.wfile.write(png)
                return
            body, kind = (b"<html>not an image</html>", "text/html") if self.path == "/page" else (png, "image/png")
            self.send_response(200 if self.path != "/missing.png" else 404)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # the slow answer's client has gone (as it should): nothing to report

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], png
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def clip_fetching(clip_dir):
    """The in-process server with URL fetching on, and one host name allowed although it is loopback."""
    with serving(clip_dir, {"SEARCHBOX_IMAGE_FETCH": "1", "SEARCHBOX_IMAGE_FETCH_ALLOW_HOSTS": "localhost",
                            "SEARCHBOX_IMAGE_FETCH_TIMEOUT_S": "2"}) as app:
        yield app


def vectors_rows(answer) -> list[dict]:
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def vectors(answer) -> np.ndarray:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return np.array([item["embedding"] for item in body["data"]])


# --- detection and parity ----------------------------------------------------------------------------


def test_clip_directories_are_the_multimodal_kind(clip_dir, tmp_path, reference):
    assert detect(ModelFiles.read(clip_dir)).name == "multimodal"
    # sentence-transformers' older CLIP layout: the transformers model in the CLIPModel module's folder
    legacy = tmp_path / "st-clip"
    shutil.copytree(clip_dir, legacy / "0_CLIPModel")
    (legacy / "modules.json").write_text(json.dumps(
        [{"idx": 0, "name": "0", "path": "0_CLIPModel", "type": "sentence_transformers.models.CLIPModel"}]))
    assert detect(ModelFiles.read(legacy)).name == "multimodal"
    handler = load_handler(legacy)
    try:
        result = handler.run(EmbedRequest(inputs=(TextInput(TEXTS[0]),)))
    finally:
        handler.close()
    # the same model as transformers' CLIPModel computes it, not as the server's other layout does
    assert cosine(result.vectors[0], reference_texts(reference, [TEXTS[0]])[0]) >= PARITY


def test_texts_and_images_match_transformers_and_sentence_transformers(clip, reference, st_model):
    cases = sample_images()
    names = list(cases)
    body = {"input": [*TEXTS, *({"image": b64(cases[name][0])} for name in names)]}
    got = vectors(clip.post("/v1/embeddings", body))
    assert got.shape == (len(TEXTS) + len(names), WIDTH)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    want_texts = reference_texts(reference, TEXTS)
    st_texts = st_model.encode(TEXTS)
    for row, want, st in zip(got, want_texts, st_texts):
        assert cosine(row, want) >= PARITY and cosine(row, st) >= PARITY
    for row, name in zip(got[len(TEXTS):], names):
        image = cases[name][1]
        want = reference_images(reference, [image])[0]
        st = st_model.encode([image])[0]
        assert cosine(row, want) >= PARITY, name
        assert cosine(row, st) >= PARITY, name


def test_exif_orientation_is_applied(clip):
    upright = picture((40, 24))
    exif = Image.Exif()
    exif[0x0112] = 6  # the stored pixels are turned; viewers rotate them 90 degrees clockwise
    stored = encoded(upright.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif.tobytes())
    got = vectors(clip.post("/v1/embeddings", {"input": [{"image": b64(stored)},
                                                         {"image": b64(encoded(upright, "PNG"))},
                                                         {"image": b64(encoded(upright.rotate(90, expand=True),
                                                                               "PNG"))}]}))
    assert cosine(got[0], got[1]) >= 0.99999
    assert cosine(got[0], got[2]) < 0.999  # as stored, the picture is another one


def test_mixed_request_keeps_input_order_ids_and_keys(clip):
    images = [b64(encoded(picture(seed=seed), "PNG")) for seed in range(3)]
    items = [{"text": TEXTS[0]}, {"image": images[0], "id": "a"}, {"text": TEXTS[1], "id": "t2"},
             {"bytes": images[1]}, {"url": "data:image/png;base64," + images[2], "id": 7}, {"text": TEXTS[2]}]
    answer = clip.post("/invocations", {"data": items, "parameters": {"task": "retrieval.query"}})
    mixed = vectors(answer)
    body = answer.json()
    assert [item.get("id") for item in body["data"]][1:3] == ["a", "t2"] and body["data"][4]["id"] == 7
    alone = [vectors(clip.post("/invocations", {"data": [item]}))[0] for item in items]
    for got, want in zip(mixed, alone):
        assert cosine(got, want) >= 0.99999


def test_image_usage_is_jinas_tile_rule(clip, reference):
    sizes = {(500, 500): 9000, (224, 224): 1000, (225, 224): 2000, (1, 1): 1000, (1000, 200): 5000}
    items = [{"image": b64(encoded(picture(size), "PNG"))} for size in sizes]
    answer = clip.post("/invocations", {"data": [{"text": "a photo of a dog"}, *items]})
    assert answer.status_code == 200, answer.text
    usage = [item["usage"]["total_tokens"] for item in answer.json()["data"]]
    assert usage[1:] == list(sizes.values())
    # <|startoftext|> a photo of a dog <|endoftext|>, as CLIP's own processor tokenizes it
    assert usage[0] == len(reference[1].tokenizer("a photo of a dog")["input_ids"])
    public = clip.post("/v1/embeddings", {"input": [{"text": "a photo of a dog"}, *items]}).json()
    assert public["usage"] == {"total_tokens": sum(usage), "prompt_tokens": sum(usage)}


def test_options_apply_to_images_as_to_texts(clip):
    image = {"image": b64(encoded(picture(), "PNG"))}
    full = vectors(clip.post("/v1/embeddings", {"input": [image], "normalized": False}))[0]
    cut = vectors(clip.post("/v1/embeddings", {"input": [image], "dimensions": 8}))[0]
    np.testing.assert_allclose(cut, full[:8] / np.linalg.norm(full[:8]), atol=1e-5)
    assert abs(np.linalg.norm(full) - 1) > 1e-3  # not normalised when asked so
    typed = clip.post("/v1/embeddings", {"input": [image], "embedding_type": ["base64", "ubinary"]}).json()["data"][0]
    decoded = np.frombuffer(base64.b64decode(typed["embedding"]["base64"]), dtype="<f4")
    np.testing.assert_allclose(decoded, full / np.linalg.norm(full), atol=1e-6)
    assert typed["embedding"]["ubinary"] == list(np.packbits(full > 0))


def test_searchbox_json_sets_tiles_and_prompts(clip_dir, tmp_path, reference):
    model_dir = tmp_path / "clip-v2-style"
    shutil.copytree(clip_dir, model_dir)
    (model_dir / "searchbox.json").write_text(json.dumps({
        "image_tile_size": 512, "image_tile_tokens": 4000, "tasks": {"retrieval.query": "query: "}}))
    handler = load_handler(model_dir)
    try:
        image = ImageInput(b64(encoded(picture((500, 500)), "PNG")))
        result = handler.run(EmbedRequest(inputs=(image, TextInput("a dog")), task="retrieval.query"))
    finally:
        handler.close()
    assert result.token_counts[0] == 4000  # 500 x 500 is one 512 px tile
    assert cosine(result.vectors[1], reference_texts(reference, ["query: a dog"])[0]) >= PARITY


def test_remote_code_dual_encoder(clip_dir, tmp_path, reference):
    """jina-clip's layout: auto_map to modules beside the weights, get_text_features taking input_ids only."""
    model_dir = tmp_path / "remote-clip"
    shutil.copytree(clip_dir, model_dir)
    (model_dir / "configuration_dual.py").write_text(
        "from transformers import CLIPConfig\n\n\nclass DualConfig(CLIPConfig):\n    model_type = 'tiny_dual'\n")
    (model_dir / "modeling_dual.py").write_text(
        "from transformers import CLIPModel\n\nfrom .configuration_dual import DualConfig\n\n\n"
        "class DualModel(CLIPModel):\n    config_class = DualConfig\n\n"
        "    def get_text_features(self, input_ids=None):\n"
        "        return super().get_text_features(input_ids=input_ids).pooler_output\n\n"
        "    def get_image_features(self, pixel_values=None):\n"
        "        return super().get_image_features(pixel_values=pixel_values).pooler_output\n")
    config = json.loads((model_dir / "config.json").read_text())
    config.update(model_type="tiny_dual", architectures=["DualModel"],
                  auto_map={"AutoConfig": "configuration_dual.DualConfig", "AutoModel": "modeling_dual.DualModel"})
    (model_dir / "config.json").write_text(json.dumps(config))
    assert detect(ModelFiles.read(model_dir)).name == "multimodal"
    # its own modules run only where a manifest pins them or the operator allows (model_handlers/model_code.py)
    with pytest.raises(ModelDirectoryError, match="remote code configuration_dual.py"):
        load_handler(model_dir)
    handler = load_handler(model_dir, HandlerOptions(trust_remote_code=True))
    try:
        image = picture()
        result = handler.run(EmbedRequest(inputs=(TextInput(TEXTS[0]), TextInput(TEXTS[1]),
                                                    ImageInput(b64(encoded(image, "PNG"))))))
    finally:
        handler.close()
    want = reference_texts(reference, TEXTS[:2])
    assert cosine(result.vectors[0], want[0]) >= PARITY and cosine(result.vectors[1], want[1]) >= PARITY
    assert cosine(result.vectors[2], reference_images(reference, [image])[0]) >= PARITY


def test_siglip_texts_are_padded_to_the_max_length(tmp_path):
    """SigLIP's text tower pools the last position and was trained on max-length padding: padded to the longest
    instead, its vectors differ (cosine ~0.96 here), so the kind pads SigLIP texts as its processor documents."""
    from transformers import AutoProcessor, SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor

    tokenizer = clip_tokenizer()
    tokenizer.model_max_length = 16
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = SiglipConfig(text_config=dict(tower, vocab_size=len(tokenizer), max_position_embeddings=16,
                                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id),
                          vision_config=dict(tower, image_size=32, patch_size=8))
    torch.manual_seed(0)
    model = SiglipModel(config).eval()
    model.save_pretrained(tmp_path)
    SiglipProcessor(image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}),
                    tokenizer=tokenizer).save_pretrained(tmp_path)
    assert detect(ModelFiles.read(tmp_path)).name == "multimodal"
    processor = AutoProcessor.from_pretrained(str(tmp_path))
    image = picture()
    handler = load_handler(tmp_path)
    try:
        result = handler.run(EmbedRequest(inputs=(TextInput(TEXTS[0]), TextInput(TEXTS[1]),
                                                    ImageInput(b64(encoded(image, "PNG"))))))
    finally:
        handler.close()
    with torch.no_grad():
        texts = model.get_text_features(**processor(text=TEXTS[:2], padding="max_length", max_length=16,
                                                    return_tensors="pt")).pooler_output.numpy()
        pixels = model.get_image_features(**processor(images=[image], return_tensors="pt")).pooler_output.numpy()
    assert cosine(result.vectors[0], texts[0]) >= PARITY and cosine(result.vectors[1], texts[1]) >= PARITY
    assert cosine(result.vectors[2], pixels[0]) >= PARITY


def test_preprocessed_pixels_waiting_for_the_model_are_bounded(clip_dir, monkeypatch):
    """Pixels are float32 once preprocessed: a cap on what may wait refuses the request too large alone (413) and,
    while others' images fill it, new ones (503), until those are freed."""
    from model_handlers.kinds import multimodal
    from model_handlers.errors import Overloaded, TooLarge

    one_image = 3 * 32 * 32 * 4
    monkeypatch.setattr(multimodal, "MAX_HELD_PIXEL_BYTES", 3 * one_image)
    handler = load_handler(clip_dir)
    model = handler.model  # the kind's model: prepare without running, so that its items stay alive
    image = ImageInput(b64(encoded(picture(), "PNG")))
    try:
        with pytest.raises(TooLarge, match="at most 3 images per request"):
            model.prepare_embed(EmbedRequest(inputs=(image,) * 4))
        waiting = model.prepare_embed(EmbedRequest(inputs=(image, image)))
        with pytest.raises(Overloaded, match="retry shortly"):
            model.prepare_embed(EmbedRequest(inputs=(image, image)))
        del waiting
        assert len(handler.run(EmbedRequest(inputs=(image, image, TextInput("x")))).vectors) == 3
    finally:
        handler.close()


# --- refusals ----------------------------------------------------------------------------------------


def test_bad_images_are_400s_naming_the_input(clip):
    jpeg = encoded(picture((200, 200)), "JPEG")
    cases = [
        ({"image": "cat.png"}, "INVALID_IMAGE", "neither base64, a data URI nor an http(s) URL"),
        ({"image": b64(b"hello, not an image")}, "INVALID_IMAGE", "not a JPEG, PNG, WebP, GIF or BMP image"),
        ({"bytes": b64(jpeg[: len(jpeg) // 2])}, "INVALID_IMAGE", "cannot be decoded"),
        ({"url": "data:image/png;base64"}, "INVALID_IMAGE", "data URI"),
        ({"image": b64(encoded(picture(), "TIFF"))}, "INVALID_IMAGE", "not a JPEG, PNG"),
        ({"image": ""}, "INVALID_IMAGE", "empty"),
        ({"image": b64(png_header(8000, 8000))}, "IMAGE_TOO_LARGE", "8000x8000", "50,000,000"),
        ({"image": b64(png_header(100_000, 100_000))}, "IMAGE_TOO_LARGE", "pixels"),
    ]
    for item, code, *mentions in cases:
        answer = clip.post("/invocations", {"data": [{"text": "fine"}, {"text": "also fine"}, item]})
        assert_error(answer, 400, code, "input 2", *mentions)


def test_other_modalities_are_refused_by_index(clip, app):
    for key, name in (("audio", "an audio input"), ("video", "a video"), ("pdf", "a PDF")):
        body = {"data": [{"text": "x"}, {key: "https://example.com/file"}]}
        if key != "pdf":  # a PDF is read as its pages (tests/test_pdf_inputs.py)
            assert_error(clip.post("/invocations", body), 400, "UNSUPPORTED_INPUT", f"input 1 is {name}",
                         "takes text, images and PDFs")
        assert_error(app.post("/invocations", body), 400, "UNSUPPORTED_INPUT", f"input 1 is {name}", "text only")
    # the client's v4 shape: one PDF object as `data`
    assert_error(app.post("/invocations", {"data": {"pdf": "https://example.com/a.pdf"}}), 400, "UNSUPPORTED_INPUT",
                 "input 0 is a PDF")
    assert_error(clip.post("/v1/rerank", {"query": "q", "documents": ["a", {"video": "v.mp4"}]}), 400,
                 "UNSUPPORTED_INPUT", "document 1 is a video")


def test_late_chunking_is_refused_by_name(clip):
    assert_error(clip.post("/v1/embeddings", {"input": ["a", "b"], "late_chunking": True}), 422,
                 "UNSUPPORTED_OPTION", "late_chunking")


def test_urls_are_refused_while_fetching_is_off(clip):
    for url in ("http://127.0.0.1/cat.png", "http://169.254.169.254/latest/meta-data/", "https://example.com/cat.jpg",
                "file:///etc/passwd"):
        for key in ("image", "url"):
            answer = clip.post("/invocations", {"data": [{key: url}]})
            assert_error(answer, 400, "IMAGE_URL_NOT_ALLOWED", "input 0", "base64 or a data URI")


def test_fetching_on_takes_allowed_hosts_and_refuses_internal_addresses(clip_fetching, images_server):
    port, png = images_server
    fetched = vectors(clip_fetching.post("/invocations", {"data": [{"url": f"http://localhost:{port}/cat.png"},
                                                                   {"url": f"http://localhost:{port}/to-allowed"}]}))
    inline = vectors(clip_fetching.post("/invocations", {"data": [{"bytes": b64(png)}]}))[0]
    assert cosine(fetched[0], inline) >= 0.99999 and cosine(fetched[1], inline) >= 0.99999
    refused = [
        (f"http://127.0.0.1:{port}/cat.png", "IMAGE_URL_NOT_ALLOWED", "loopback or private address"),
        ("http://169.254.169.254/latest/meta-data/", "IMAGE_URL_NOT_ALLOWED", "metadata"),
        ("http://[::ffff:169.254.169.254]/", "IMAGE_URL_NOT_ALLOWED", "metadata"),
        ("http://168.63.129.16/machine", "IMAGE_URL_NOT_ALLOWED", "metadata"),
        ("http://10.1.2.3/cat.png", "IMAGE_URL_NOT_ALLOWED", "private"),
        (f"http://localhost:{port}/to-loopback", "IMAGE_URL_NOT_ALLOWED", "127.0.0.1"),
        (f"http://localhost:{port}/to-metadata", "IMAGE_URL_NOT_ALLOWED", "169.254.169.254"),
        (f"http://localhost:{port}/to-private", "IMAGE_URL_NOT_ALLOWED", "10.0.0.7"),
        (f"http://localhost:{port}/to-file", "IMAGE_URL_NOT_ALLOWED", "only http(s)"),
        ("ftp://localhost/cat.png", "IMAGE_URL_NOT_ALLOWED", "only http(s)"),
        (f"http://user:pw@localhost:{port}/cat.png", "IMAGE_URL_NOT_ALLOWED", "credentials"),
        (f"http://localhost:{port}/page", "INVALID_IMAGE", "text/html"),
        (f"http://localhost:{port}/missing.png", "INVALID_IMAGE", "HTTP 404"),
        (f"http://localhost:{port}/slow.png", "INVALID_IMAGE", "longer than 2 s"),
    ]
    for url, code, mention in refused:
        assert_error(clip_fetching.post("/invocations", {"data": [{"text": "t"}, {"image": url}]}), 400, code,
                     "input 1", mention)


def test_a_name_that_resolves_to_loopback_is_refused_unless_allowed(images_server):
    port, png = images_server
    url = f"http://localhost:{port}/cat.png"
    with pytest.raises(InvalidInput, match="localhost is a loopback or private address") as refused:
        ImageReader(ImageOptions(fetch=True)).data(url, "input 0", time.monotonic() + 5)
    assert refused.value.code == "IMAGE_URL_NOT_ALLOWED"
    assert ImageReader(ImageOptions(fetch=True, fetch_allow_hosts=("localhost",))).data(
        url, "input 0", time.monotonic() + 5) == png
    with pytest.raises(InvalidInput, match="bytes, over the limit of 100") as too_large:
        ImageReader(ImageOptions(fetch=True, fetch_allow_hosts=("localhost",), fetch_max_bytes=100)).data(
            url, "input 0", time.monotonic() + 5)
    assert too_large.value.code == "IMAGE_TOO_LARGE"


@pytest.mark.parametrize("path", ["/chunked.png", "/unsized.png"])
def test_an_image_streamed_without_a_declared_length_is_capped_as_it_arrives(images_server, path):
    """No Content-Length to check first: the bytes are counted as they arrive. The cap one byte short of the
    image refuses it; a cap of exactly its size (the PNG built here) takes it, byte for byte."""
    port, png = images_server
    url = f"http://localhost:{port}{path}"

    def reader(cap: int) -> ImageReader:
        return ImageReader(ImageOptions(fetch=True, fetch_allow_hosts=("localhost",), fetch_max_bytes=cap))

    with pytest.raises(InvalidInput, match=f"more than {len(png) - 1:,} bytes, the limit") as too_large:
        reader(len(png) - 1).data(url, "input 0", time.monotonic() + 5)
    assert too_large.value.code == "IMAGE_TOO_LARGE"
    assert reader(len(png)).data(url, "input 0", time.monotonic() + 5) == png


@pytest.fixture
def resolver(monkeypatch):
    """The system resolver with test names on top: `answers[name]` lists the addresses each lookup of it gets
    (the last one repeated), a name in `stalled` never answers, and `asked` counts the lookups of every name."""
    real = socket.getaddrinfo
    answers: dict[str, list[str]] = {}
    asked: dict[str, int] = {}
    stalled, release = set(), threading.Event()

    def getaddrinfo(host, port, *args, **kwargs):
        asked[host] = asked.get(host, 0) + 1
        if host in stalled:
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "the test resolver gave up")
        if host in answers:
            address = answers[host][min(asked[host], len(answers[host])) - 1]
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield answers, stalled, asked
    release.set()


def test_a_resolver_that_hangs_ends_at_the_request_deadline(clip_fetching, resolver):
    _, stalled, _ = resolver
    stalled.add("stalled.test")
    started = time.monotonic()
    answer = clip_fetching.post("/invocations", {"data": [{"image": "http://stalled.test/cat.png"}]})
    took = time.monotonic() - started
    assert_error(answer, 400, "INVALID_IMAGE", "input 0", "longer than 2 s")
    assert took < 3.5, f"the answer came {took:.1f} s after a 2 s fetch deadline"


def test_a_trickling_body_ends_at_the_request_deadline(clip_fetching, images_server):
    port, _ = images_server
    started = time.monotonic()
    answer = clip_fetching.post("/invocations", {"data": [{"image": f"http://localhost:{port}/trickle.png"}]})
    took = time.monotonic() - started
    assert_error(answer, 400, "INVALID_IMAGE", "input 0", "longer than 2 s")
    assert took < 3.5, f"the answer came {took:.1f} s after a 2 s fetch deadline"


def test_a_rerank_query_and_documents_share_one_fetch_deadline(clip_fetching, images_server):
    port, _ = images_server
    trickle = f"http://localhost:{port}/trickle.png"
    started = time.monotonic()
    answer = clip_fetching.post("/v1/rerank", {"query": {"image": trickle}, "documents": [{"image": trickle}]})
    took = time.monotonic() - started
    assert_error(answer, 400, "INVALID_IMAGE", "the query", "longer than 2 s")
    # one deadline for the query's URL and the documents': not 2 s for each
    assert took < 3.5, f"the answer came {took:.1f} s after a 2 s fetch deadline"


def test_the_urls_of_a_request_are_fetched_at_once_within_its_deadline(images_server):
    port, png = images_server
    reader = ImageReader(ImageOptions(fetch=True, fetch_allow_hosts=("localhost",), fetch_timeout_s=3))
    # six answers 0.6 s late each: 3.6 s one after another, over the deadline; about 0.6 s at once
    sources = [(f"http://localhost:{port}/late.png", f"input {i}") for i in range(6)]
    sources.append((b64(png), "input 6"))
    started = time.monotonic()
    with reader.fetches(sources) as fetches:
        assert [fetches.data(at) for _, at in sources] == [png] * 7
    assert time.monotonic() - started < 3


def test_ssrf_through_dns_an_allowed_name_resolving_to_metadata_is_refused(images_server, resolver):
    port, _ = images_server
    answers, _, _ = resolver
    answers["images.test"] = ["169.254.169.254"]
    reader = ImageReader(ImageOptions(fetch=True, fetch_allow_hosts=("images.test",)))
    with pytest.raises(InvalidInput, match="images.test is a link-local or cloud metadata address") as refused:
        reader.data(f"http://images.test:{port}/cat.png", "input 0", time.monotonic() + 5)
    assert refused.value.code == "IMAGE_URL_NOT_ALLOWED"


def test_the_connection_goes_to_the_address_that_was_checked(images_server, resolver):
    """DNS rebinding: the first answer passes the check, every later one is the metadata address. One lookup,
    and the connection to its (checked) address, fetch the image; a second lookup would have been refused."""
    port, png = images_server
    answers, _, asked = resolver
    answers["rebinding.test"] = ["127.0.0.1", "169.254.169.254"]
    reader = ImageReader(ImageOptions(fetch=True, fetch_allow_hosts=("rebinding.test",)))
    assert reader.data(f"http://rebinding.test:{port}/cat.png", "input 0", time.monotonic() + 5) == png
    assert asked["rebinding.test"] == 1


def test_image_settings_are_read_once(monkeypatch):
    from container.settings import Settings, SettingsError

    settings = Settings.from_env({"SEARCHBOX_IMAGE_FETCH": "true", "SEARCHBOX_IMAGE_MAX_PIXELS": "1000",
                                  "SEARCHBOX_IMAGE_FETCH_ALLOW_HOSTS": "Images.Internal, localhost",
                                  "SEARCHBOX_IMAGE_FETCH_MAX_MB": "2"})
    assert settings.image_fetch and settings.image_max_pixels == 1000
    assert settings.image_fetch_allow_hosts == ("images.internal", "localhost")
    assert settings.image_fetch_max_bytes == 2 * 1024 * 1024
    assert not Settings.from_env({}).image_fetch
    with pytest.raises(SettingsError, match="not a host name"):
        Settings.from_env({"SEARCHBOX_IMAGE_FETCH_ALLOW_HOSTS": "http://x"})


# --- rerank, batch transform -------------------------------------------------------------------------


def test_rerank_with_image_documents_and_image_query(clip, reference):
    pictures = [picture(seed=seed) for seed in range(2)]
    images = [b64(encoded(p, "PNG")) for p in pictures]  # PNG is lossless: the reference reads the same pixels
    documents = [{"text": TEXTS[0]}, {"image": images[0]}, {"bytes": images[1]}, "a plain string document"]
    embedded_answer = clip.post("/invocations", {"data": [{"text": "dog"}, *documents[:3], {"text": documents[3]}]})
    usage = [item["usage"]["total_tokens"] for item in embedded_answer.json()["data"]]
    # the scores README promises: cosine of CLIP's normalised query and document embeddings, from transformers
    texts = reference_texts(reference, ["dog", TEXTS[0], documents[3]])
    images_want = reference_images(reference, pictures)
    unit = [v / np.linalg.norm(v) for v in (texts[0], texts[1], images_want[0], images_want[1], texts[2])]
    want = [float(unit[0] @ row) for row in unit[1:]]
    body = {"data": [{"query": "dog", "documents": documents, "top_n": 3}]}  # the m0-style list the client sends
    answer = clip.post("/invocations", body)
    assert answer.status_code == 200, answer.text
    result = answer.json()["data"][0]
    order = sorted(range(4), key=lambda i: -want[i])[:3]
    assert [hit["index"] for hit in result["results"]] == order
    for hit in result["results"]:
        assert hit["relevance_score"] == pytest.approx(want[hit["index"]], abs=1e-4)
        shown = documents[hit["index"]]
        assert hit["document"] == (shown if isinstance(shown, dict) else {"text": shown})  # echoed under its key
        assert hit["usage"]["total_tokens"] == usage[1 + hit["index"]]
    assert result["query_usage"]["total_tokens"] == usage[0]
    assert result["docs_usage"]["total_tokens"] == sum(usage[1:])  # also the document top_n cut
    image_query = clip.post("/v1/rerank", {"query": {"image": images[0]}, "documents": documents,
                                           "return_documents": False}).json()
    best = image_query["results"][0]
    assert best["index"] == 1 and best["relevance_score"] == pytest.approx(1.0, abs=1e-5)
    assert "document" not in best and image_query["usage"]["total_tokens"] > 2000


def test_csv_rows_of_text_url_and_bytes(clip):
    png = b64(encoded(picture((300, 100)), "PNG"))
    body = (f"1,a photo of a dog\\, sleeping,,\n"
            f'"2","","","{png}"\n'
            f'"3","","data:image/png;base64,{png}",""\n'
            "4,just text\n")
    answer = clip.post("/invocations", data=body, headers={"Content-Type": "text/csv"})
    assert answer.status_code == 200, answer.text
    rows = answer.json()["data"]
    assert [row["id"] for row in rows] == ["1", "2", "3", "4"]
    assert [row["usage"]["total_tokens"] for row in rows][1:3] == [2000, 2000]
    assert cosine(rows[1]["embedding"], rows[2]["embedding"]) >= 0.99999
    both = clip.post("/invocations", data=f'"5","text","","{png}"\n', headers={"Content-Type": "text/csv"})
    assert_error(both, 400, "INVALID_CSV", "line 1", "exactly one of text, url, bytes")
    sys.path.insert(0, str(ROOT / "packaging"))
    import _samples

    sample = clip.post("/invocations", data=_samples.of("multimodal").csv, headers={"Content-Type": "text/csv"})  # the listing's
    assert [row["usage"]["total_tokens"] for row in vectors_rows(sample)][1:] == [1000, 1000]
    # a rerank line whose documents hold another modality is estimated, then refused by the model (never a 500)
    rerank_line = json.dumps({"query": "q", "documents": ["a", {"audio": "data:audio/wav;base64,UklGRg=="}]})
    assert_error(clip.post("/invocations", data=rerank_line + "\n", headers={"Content-Type": "application/jsonlines"}),
                 400, "UNSUPPORTED_INPUT", "line 1", "document 1 is an audio input")
    line = clip.post("/invocations", data=json.dumps({"bytes": png, "id": "j"}) + "\n",
                     headers={"Content-Type": "application/jsonlines"})
    assert line.status_code == 200 and json.loads(line.text)["data"][0]["usage"]["total_tokens"] == 2000


def test_a_bad_image_fails_only_its_own_request(clip_dir):
    """Decoding is on each request's thread: concurrent good requests are answered while a bad one fails."""
    handler = load_handler(clip_dir, HandlerOptions(images=ImageOptions(max_pixels=100_000)))
    good = EmbedRequest(inputs=(ImageInput(b64(encoded(picture(), "PNG"))), TextInput("x")))
    bad = EmbedRequest(inputs=(ImageInput(b64(encoded(picture((400, 400)), "PNG"))),))
    outcomes: dict[int, object] = {}

    def run(number: int, request: EmbedRequest) -> None:
        try:
            outcomes[number] = handler.run(request)
        except InvalidInput as exc:
            outcomes[number] = exc

    try:
        threads = [threading.Thread(target=run, args=(n, bad if n == 3 else good)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        handler.close()
    assert isinstance(outcomes[3], InvalidInput) and outcomes[3].code == "IMAGE_TOO_LARGE"
    assert all(len(outcomes[n].vectors) == 2 for n in range(8) if n != 3)


# --- packaging and the real server -------------------------------------------------------------------


def test_artifact_keeps_the_processor_and_answers_an_image(clip_dir, tmp_path):
    import tarfile

    sys.path.insert(0, str(ROOT / "packaging"))
    import build_artifact

    report = build_artifact.build_artifact(clip_dir, tmp_path / "model.tar.gz")
    assert report.kind == "multimodal"
    assert report.check.startswith(f"embedded 1 text and 1 image into {WIDTH} dimensions"), report.check
    with tarfile.open(report.output) as tar:
        names = set(tar.getnames())
    assert {"processor_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"} <= names


def test_served_clip_answers_a_text_and_a_png(clip_server, reference):
    """Done when: `SEARCHBOX_MODEL_DIR=<a CLIP dir> serve`, one text and one base64 PNG -> two projection-wide
    vectors with the token usage of the contract."""
    served = clip_server
    image = picture((500, 500))
    png = b64(encoded(image, "PNG"))
    answer = served.post("/invocations", {"data": [{"text": "a photo of a dog"}, {"image": png}]})
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert [len(item["embedding"]) for item in data] == [WIDTH, WIDTH]
    text_tokens = len(reference[1].tokenizer("a photo of a dog")["input_ids"])  # CLIP's own processor's count
    assert [item["usage"]["total_tokens"] for item in data] == [text_tokens, 9000]  # 3 x 3 tiles of 1000
    assert cosine(data[0]["embedding"], reference_texts(reference, ["a photo of a dog"])[0]) >= PARITY
    assert cosine(data[1]["embedding"], reference_images(reference, [image])[0]) >= PARITY
    public = served.post("/v1/embeddings", {"input": [{"text": "a photo of a dog"},
                                                      {"image": "data:image/png;base64," + png}]})
    assert public.json()["usage"]["total_tokens"] == text_tokens + 9000


def test_the_onnx_backend_asked_of_a_directory_without_its_graphs_is_refused_by_name(clip_dir):
    """An operator's SEARCHBOX_BACKEND=onnx never silently serves torch: a directory that was not built with
    --backend onnx has no exported graphs, and the first one missing is named (tests/test_multimodal_onnx.py serves
    them)."""
    from model_handlers import load_handler
    from model_handlers.errors import ModelDirectoryError
    from model_handlers.options import HandlerOptions

    with pytest.raises(ModelDirectoryError, match=r"onnx/text_model\.onnx does not exist; build the artifact with "
                                                  r"packaging/build_artifact\.py --backend onnx"):
        load_handler(clip_dir, HandlerOptions(backend="onnx"))


def test_a_data_uri_is_split_at_its_first_comma_and_a_bad_one_is_named():
    """RFC 2397: the data follow the first comma, percent-encoded unless the header ends in `;base64`."""
    reader, deadline = ImageReader(ImageOptions()), time.monotonic() + 5
    raw = b"\x89PNG,\x00 a,b%"
    uri = "data:image/png," + urllib.parse.quote(raw, safe=",")  # commas left raw in the data, as RFC 2397 allows
    assert reader.data(uri, "input[0]", deadline) == raw
    with pytest.raises(InvalidInput) as refused:
        reader.data("data:image/png;base64", "input[1]", deadline)
    assert str(refused.value) == "input[1]: the data URI has no `,` before its data (data:image/png;base64,...)"
    with pytest.raises(InvalidInput) as refused:
        reader.data("data:image/png;base64,not*base64", "input[2]", deadline)
    assert str(refused.value) == "input[2]: the data URI's data is neither base64, a data URI nor an http(s) URL"


def test_an_image_that_cannot_be_decoded_is_refused_with_pils_own_reason():
    pixels = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, "PNG")
    truncated = encoded.getvalue()[:len(encoded.getvalue()) // 2]
    with pytest.raises(OSError) as pil:  # what PIL itself says of the same bytes
        Image.open(io.BytesIO(truncated)).load()
    with pytest.raises(InvalidInput) as refused:
        ImageReader(ImageOptions()).decode(truncated, "input[0]")
    assert str(refused.value) == f"input[0]: the PNG image cannot be decoded ({pil.value}); send the whole file"
