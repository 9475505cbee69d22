"""Vision-language models: images/s and pages/s of searchbox's kinds against the models' own code, side by side.

Builds the small jina-embeddings-v4-shaped checkpoint of examples/tiny_jina_vl.py (`--size small`: 256 wide, 4
layers; its weights stored in bf16 where `--dtype bf16`, as the published checkpoint is), then on `--device`:

- images: `--images` photos of 640x480 (random pixels, PNG) embedded through searchbox's pipeline (one request; its
  batcher makes the passes) and through tests/jina_v4_reference.py (v4's own encode_image, re-implemented: batches
  of 8, its default) on the same weights;
- pages: a PDF of `--pages` pages through searchbox (`{"pdf"}`: rendered by PDFium at the processor's pixel budget,
  then embedded) and through the reference (the same pages rendered by pypdfium2 in the bench, then encode_image);
- jina-reranker-m0 (when its kind is present): `--images` image documents reranked against a text query by
  searchbox and by its own compute_score (tests/jina_reranker_m0_reference.py).

Each line prints searchbox's rate, the reference's, their ratio and the worst cosine (or score difference) between
the two, so a speed-up that changed the answers shows. It is a GPU benchmark (bf16, SDPA); `--device cpu --size tiny`
checks that it runs.

    .venv/bin/python -m bench.vision_language [--device cuda] [--dtype bf16] [--images 32] [--pages 16]
"""

from __future__ import annotations

import argparse
import base64
import io
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "examples"))

QUERY = "a chart of quarterly revenue"


def _photos(count: int) -> list:
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) for _ in range(count)]


def _png(picture) -> str:
    out = io.BytesIO()
    picture.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def _stored_in(model_dir: Path, dtype: str) -> Path:
    """The checkpoint's tensors (the heads beside the backbone included) stored in `dtype`."""
    import torch
    from safetensors.torch import load_file, save_file

    if dtype == "fp32":
        return model_dir
    path = model_dir / "model.safetensors"
    tensors = {name: tensor.to(torch.bfloat16) for name, tensor in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})
    return model_dir


def _timed(run, repeats: int = 3) -> tuple[float, object]:
    """The best of `repeats` runs' seconds (after one warm run), and the last answer."""
    answer = run()
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        answer = run()
        best = min(best, time.perf_counter() - started)
    return best, answer


def _cosines(got, expected) -> float:
    return min(float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))
               for a, b in zip(np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)))


def _line(what: str, count: int, ours: float, theirs: float, agreement: str) -> str:
    return (f"{what}: searchbox {count / ours:8.1f}/s, model's own code {count / theirs:8.1f}/s, "
            f"ratio {theirs / ours:5.2f}x; {agreement}")


def v4(work: Path, device: str, dtype: str, size: str, images: int, pages: int) -> list[str]:
    import pypdfium2
    import torch
    from PIL import Image

    import tiny_jina_vl
    from jina_v4_reference import JinaV4Reference
    from model_handlers import HandlerOptions, load_handler
    from model_handlers.types import EmbedRequest, ImageInput, OtherInput

    model_dir = _stored_in(tiny_jina_vl.build_v4(work / "v4", size), dtype)
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    photos = _photos(images)
    buffer = io.BytesIO()
    sheets = [picture.copy() for picture in _photos(pages)]
    sheets[0].save(buffer, "PDF", save_all=True, append_images=sheets[1:])
    document = pypdfium2.PdfDocument(buffer.getvalue())
    rendered = []
    for page in document:
        width, height = page.get_size()
        rendered.append(page.render(scale=math.sqrt(tiny_jina_vl.V4_PIXELS["max_pixels"] / (width * height)))
                        .to_pil().convert("RGB"))
    lines = []
    handler = load_handler(model_dir, HandlerOptions(device=device))
    try:
        handler.warm_up()
        loaded = f"{handler.model._backbone.dtype}, {handler.model._backbone.model.config._attn_implementation}"
        image_request = EmbedRequest(inputs=tuple(ImageInput(_png(p)) for p in photos), task="retrieval.passage",
                                     operation="embed")
        pdf_request = EmbedRequest(inputs=(OtherInput("pdf", base64.b64encode(buffer.getvalue()).decode()),),
                                   task="retrieval.passage", operation="embed", pages=True)
        ours_images, served_images = _timed(lambda: handler.run(image_request))
        ours_pages, served_pages = _timed(lambda: handler.run(pdf_request))
    finally:
        handler.close()
    reference = JinaV4Reference(model_dir, device=device, dtype=torch_dtype)

    def own(pictures):
        return [vector for start in range(0, len(pictures), 8)
                for vector in reference.encode_image(pictures[start:start + 8], "retrieval")]

    # v4's own encode_image opens each image from its file (or URL) first: the same PNG bytes searchbox decodes
    encoded = [base64.b64decode(_png(p)) for p in photos]
    theirs_images, expected_images = _timed(lambda: own([Image.open(io.BytesIO(data)).convert("RGB")
                                                         for data in encoded]))
    theirs_pages, expected_pages = _timed(lambda: own(rendered))
    lines.append(f"jina-embeddings-v4 ({size}, searchbox loaded {loaded}) on {device}")
    lines.append(_line("  images (640x480)", images, ours_images, theirs_images,
                       f"worst cosine {_cosines(served_images.vectors, expected_images):.5f}"))
    lines.append(_line("  PDF pages", pages, ours_pages, theirs_pages,
                       f"worst cosine {_cosines(served_pages.vectors, expected_pages):.5f}"))
    return lines


def m0(work: Path, device: str, dtype: str, size: str, images: int) -> list[str]:
    try:
        from jina_reranker_m0_reference import JinaRerankerM0Reference
    except ImportError:
        return ["jina-reranker-m0: no reference in tests/ (its kind is not in this tree)"]
    import torch

    import tiny_jina_vl
    from model_handlers import HandlerOptions, load_handler
    from model_handlers.types import ImageInput, RerankRequest, TextInput

    model_dir = _stored_in(tiny_jina_vl.build_m0(work / "m0", size), dtype)
    photos = _photos(images)
    handler = load_handler(model_dir, HandlerOptions(device=device))
    try:
        handler.warm_up()
        request = RerankRequest(query=TextInput(QUERY), documents=tuple(ImageInput(_png(p)) for p in photos))
        ours, served = _timed(lambda: handler.run(request))
    finally:
        handler.close()
    reference = JinaRerankerM0Reference(model_dir, device=device,
                                        dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    theirs, expected = _timed(lambda: reference.compute_score([(QUERY, p) for p in photos], doc_type="image"))
    scores = {hit.index: hit.relevance_score for hit in served.hits}
    worst = max(abs(scores[i] - float(expected[i])) for i in range(images))
    return [f"jina-reranker-m0 ({size}) on {device}",
            _line("  image documents (640x480)", images, ours, theirs, f"worst score difference {worst:.5f}")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--size", choices=("tiny", "small"), default="small")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--pages", type=int, default=16)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="searchbox-vl-bench-") as tmp:
        lines = v4(Path(tmp), args.device, args.dtype, args.size, args.images, args.pages)
        lines += m0(Path(tmp), args.device, args.dtype, args.size, args.images)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
