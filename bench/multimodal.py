"""Multimodal throughput: images/s through `serve` beside the model's own forward pass, side by side in one run.

The model is a random CLIP built by examples/tiny_clip.py (`small` by default: 256-wide towers of 4 layers,
224 px images in 32 px patches, so a forward pass costs enough for the ratio to mean something; `tiny` is
all overhead). The images are 16 different 640x480 JPEGs, sent as base64 in the SageMaker envelope.

- limit: `get_image_features` on the same images already preprocessed, in this process (batches of 16);
- limit + preprocessing: decode and the model's processor, then the forward pass, in this process;
- searchbox: `serve` over HTTP `/invocations`, 1 client x 16 images and 16 clients x 1 image.

Rounds alternate the systems; each keeps its best round. Prints a Markdown section (also part of `make bench`).

    .venv/bin/python -m bench.multimodal [--size small] [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import base64
import io
import sys
import time
from pathlib import Path

import numpy as np
import orjson

from bench.loadgen import run_load
from bench.servers import keep_best

ROOT = Path(__file__).resolve().parent.parent
IMAGES = 16


def jpegs(count: int = IMAGES, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """Photo-like JPEGs: smooth gradients, blocks and noise (what a JPEG decoder and a resize really work on)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    width, height = size
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    out = []
    for index in range(count):
        base = np.stack([x * 255, y * 255, (x * y * 255 + index * 13) % 255], axis=-1)
        base += rng.normal(0, 12, base.shape)
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        base[top:top + height // 3, left:left + width // 3] = rng.integers(0, 255, 3)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=88)
        out.append(buffer.getvalue())
    return out


class InProcess:
    """The reference: transformers' CLIPModel and the saved processor, in this process, on `device` (its weights in
    the checkpoint's own dtype, as searchbox loads them)."""

    def __init__(self, model_dir: Path, threads: int, device: str = "cpu"):
        import torch
        from transformers import AutoProcessor, CLIPModel

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = device
        self.model = CLIPModel.from_pretrained(str(model_dir)).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(str(model_dir))

    def preprocess(self, images: list[bytes]):
        from PIL import Image

        return self.processor(images=[Image.open(io.BytesIO(data)).convert("RGB") for data in images],
                              return_tensors="pt")

    def forward(self, pixels) -> None:
        # the inputs in and the vectors back to the host, as a server's: on a GPU that also waits for the pass
        with self.torch.inference_mode():
            output = self.model.get_image_features(**{name: value.to(self.device) for name, value in pixels.items()})
            getattr(output, "pooler_output", output).cpu()

    def timed(self, call, seconds: float, warmup: float) -> float:
        """Calls per second of `call` for `seconds` after `warmup`."""
        stop = time.perf_counter() + warmup
        while time.perf_counter() < stop:
            call()
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            call()
            calls += 1
        return calls / (time.perf_counter() - started)


def measure(model_dir: Path, threads: int, log_dir: Path, seconds: float, warmup: float, rounds: int,
            start_searchbox, device: str = "cpu") -> dict[str, float]:
    """Best images/s of each system over `rounds` (the in-process reference on `device`; `start_searchbox` starts
    the server on the same)."""
    images = jpegs()
    reference = InProcess(model_dir, threads, device)
    pixels = reference.preprocess(images)
    bodies = {
        "1x16": [orjson.dumps({"data": [{"image": base64.b64encode(data).decode()} for data in images]})],
        "16x1": [orjson.dumps({"data": [{"image": base64.b64encode(data).decode()}]}) for data in images],
    }
    best: dict[str, float] = {}
    server = start_searchbox(model_dir, threads, log_dir)
    try:
        for number in range(rounds):
            figures = {
                "limit": IMAGES * reference.timed(lambda: reference.forward(pixels), seconds, warmup),
                "limit+pre": IMAGES * reference.timed(lambda: reference.forward(reference.preprocess(images)),
                                                      seconds, warmup),
            }
            for key, clients in (("1x16", 1), ("16x1", 16)):
                time.sleep(0.3)
                result = run_load(server.url, "/invocations", bodies[key], clients, seconds, warmup)
                if result.errors:
                    raise RuntimeError(f"searchbox answered {result.errors} errors: {result.first_error}")
                figures[key] = result.requests * (IMAGES if key == "1x16" else 1) / result.seconds
            keep_best(best, figures, "multimodal", number, rounds, "images/s")
    finally:
        server.stop()
    return best


def section(best: dict[str, float], size: str, threads: int) -> str:
    limit, full = best["limit"], best["limit+pre"]
    rows = [
        ("1 client × 16 images", best["1x16"]),
        ("16 clients × 1 image", best["16x1"]),
    ]
    lines = [
        "## Multimodal (images)", "",
        f"A random CLIP (`examples/tiny_clip.py --size {size}`: {_describe(size)}), {threads} torch threads, "
        f"{IMAGES} different 640×480 JPEGs sent as base64. Limit: `get_image_features` in-process on the same "
        "images already preprocessed, batches of 16; limit + preprocessing: decoding and the model's processor "
        "too, in-process.", "",
        "| scenario | images/s | limit | limit + preprocessing | searchbox / limit "
        "| searchbox / limit + preprocessing |",
        "|---|---|---|---|---|---|",
    ]
    for title, value in rows:
        lines.append(f"| {title} | {value:.1f} | {limit:.1f} | {full:.1f} | {value / limit:.2f}× | "
                     f"{value / full:.2f}× |")
    return "\n".join(lines) + "\n"


def _describe(size: str) -> str:
    sys.path.insert(0, str(ROOT / "examples"))
    import tiny_clip

    spec = tiny_clip.SIZES[size]
    return (f"{spec['width']}-wide towers of {spec['layers']} layers, {spec['image_size']} px images in "
            f"{spec['patch_size']} px patches")


def run(threads: int, log_dir: Path, seconds: float, warmup: float, rounds: int, start_searchbox,
        size: str = "small") -> str:
    """Build the model, measure, return the Markdown section (what bench/run.py appends to its report)."""
    sys.path.insert(0, str(ROOT / "examples"))
    import tiny_clip

    model_dir = tiny_clip.build(log_dir / f"{size}-clip", size)
    print(f"multimodal: {size} CLIP in {model_dir}", flush=True)
    return section(measure(model_dir, threads, log_dir, seconds, warmup, rounds, start_searchbox), size, threads)


def main(argv: list[str] | None = None) -> int:
    from bench.servers import bench_main, start_searchbox

    return bench_main(__doc__, "mm", argv, lambda args, threads, tmp: run(
        threads, tmp, args.seconds, args.warmup, args.rounds, start_searchbox, args.size),
        lambda parser: parser.add_argument("--size", choices=("tiny", "small"), default="small"))


if __name__ == "__main__":
    sys.exit(main())
