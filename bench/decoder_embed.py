"""Decoder embedder throughput: inputs/s through `serve` beside sentence-transformers' `SentenceTransformer.encode`
in-process on the same model, side by side in one run.

The model is a Qwen3-Embedding-shaped decoder (tests/models/code_embeddings.py `small`: a 256-wide, 4-layer
Qwen3Model with seeded random weights, last-token pooling, normalisation, its card's query instruction): no decoder
embedder's weights can be downloaded here, and the code path is the same at any size.

- limit: `SentenceTransformer.encode` on the same 32 texts per call (with the query prompt), in-process;
- searchbox: `serve` over HTTP `/v1/embeddings`, 4 clients x 32 texts, `input_type: query` (target >= 0.9x).

Rounds alternate the systems; each keeps its best round. Prints a Markdown section (also part of `make bench`).

    .venv/bin/python -m bench.decoder_embed [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import orjson

from bench.loadgen import run_load
from bench.servers import calls_per_second, keep_best
from bench.texts import SHORT

BATCH = 32
CLIENTS = 4
TARGET = 0.9
ROOT = Path(__file__).resolve().parents[1]


def build(out_dir: Path) -> Path:
    """The `small` Qwen3-Embedding-shaped decoder of the tests."""
    sys.path.insert(0, str(ROOT / "tests"))
    from models.code_embeddings import make_qwen3_embedding

    return make_qwen3_embedding(out_dir, size="small")


def measure(model_dir: Path, threads: int, log_dir: Path, seconds: float, warmup: float, rounds: int,
            start_searchbox) -> dict[str, float]:
    """Best inputs/s of each system over `rounds`."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    encoder = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    texts = [SHORT[i % len(SHORT)] for i in range(BATCH * CLIENTS)]
    batches = [texts[i:i + BATCH] for i in range(0, len(texts), BATCH)]
    bodies = [orjson.dumps({"input": batch, "input_type": "query"}) for batch in batches]
    best: dict[str, float] = {}
    server = start_searchbox(model_dir, threads, log_dir)
    try:
        for number in range(rounds):
            figures = {"limit": calls_per_second(lambda: [encoder.encode(batch, batch_size=BATCH, prompt_name="query")
                                                for batch in batches], seconds, warmup) * BATCH * len(batches)}
            time.sleep(0.3)
            result = run_load(server.url, "/v1/embeddings", bodies, CLIENTS, seconds, warmup)
            if result.errors:
                raise RuntimeError(f"searchbox answered {result.errors} errors: {result.first_error}")
            figures["searchbox"] = result.requests * BATCH / result.seconds
            keep_best(best, figures, "decoder embed", number, rounds)
    finally:
        server.stop()
    return best


def section(best: dict[str, float], threads: int) -> tuple[str, str]:
    ratio = best["searchbox"] / best["limit"]
    text = "\n".join([
        "## Decoder embeddings (Qwen3-Embedding-shaped)", "",
        f"A 256-wide, 4-layer Qwen3Model with last-token pooling, {threads} torch threads, {CLIENTS} clients × {BATCH} "
        f"queries to `/v1/embeddings`; limit: `SentenceTransformer.encode` in-process on the same {BATCH} texts per "
        "call, with the same prompt.", "",
        "| scenario | inputs/s | limit | searchbox / limit |", "|---|---|---|---|",
        f"| {CLIENTS} clients × {BATCH} texts | {best['searchbox']:.1f} | {best['limit']:.1f} | {ratio:.2f}× |", ""])
    check = (f"- decoder embed {CLIENTS}×{BATCH}: {ratio:.2f}× SentenceTransformer.encode (target ≥ {TARGET}×): "
             + ("met" if ratio >= TARGET else "NOT met"))
    return text, check


def run(threads: int, log_dir: Path, seconds: float, warmup: float, rounds: int, start_searchbox) -> tuple[str, str]:
    model_dir = build(log_dir / "decoder-embedder")
    print(f"decoder embed: model in {model_dir}", flush=True)
    return section(measure(model_dir, threads, log_dir, seconds, warmup, rounds, start_searchbox), threads)


def main(argv: list[str] | None = None) -> int:
    from bench.servers import bench_main, start_searchbox

    return bench_main(__doc__, "decoder-embed", argv, lambda args, threads, tmp: "\n".join(
        run(threads, tmp, args.seconds, args.warmup, args.rounds, start_searchbox)))


if __name__ == "__main__":
    sys.exit(main())
