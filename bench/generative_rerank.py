"""Generative rerank throughput: rerank requests/s through `serve` beside sentence-transformers' own
`CrossEncoder.predict` in-process on the same model, side by side in one run.

The model is examples/tiny_generative_reranker.py's `small` one (a 256-wide, 4-layer Qwen3ForCausalLM with seeded
random weights, Qwen3-Reranker's judge prompt as its chat template, saved as a `CrossEncoder` with `LogitScore`): no
generative reranker's weights can be downloaded here, and the code path is the same at any size.

- limit: `CrossEncoder.predict` on the query's 20 (query, document) pairs per call, in-process;
- searchbox: `serve` over HTTP `/v1/rerank`, 1 client × 20 documents (target >= 0.9x the limit).

Rounds alternate the systems; each keeps its best round. Prints a Markdown section (also part of `make bench`).

    .venv/bin/python -m bench.generative_rerank [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import orjson

from bench.loadgen import run_load
from bench.servers import calls_per_second, keep_best
from bench.texts import SHORT

DOCUMENTS = 20
CLIENTS = 1
TARGET = 0.9
QUERY = "Which city is the capital of Germany?"


def build(out_dir: Path) -> Path:
    """examples/tiny_generative_reranker.py's `small` model."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    if str(examples) not in sys.path:
        sys.path.insert(0, str(examples))
    import tiny_generative_reranker

    return tiny_generative_reranker.build(out_dir, "small")


def measure(model_dir: Path, threads: int, log_dir: Path, seconds: float, warmup: float, rounds: int,
            start_searchbox) -> dict[str, float]:
    """Best requests/s of each system over `rounds`."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(threads)
    reference = CrossEncoder(str(model_dir), device="cpu", local_files_only=True)
    documents = [SHORT[i % len(SHORT)] for i in range(DOCUMENTS)]
    pairs = [(QUERY, document) for document in documents]
    bodies = [orjson.dumps({"query": QUERY, "documents": documents, "return_documents": False})]
    best: dict[str, float] = {}
    server = start_searchbox(model_dir, threads, log_dir)
    try:
        for number in range(rounds):
            figures = {"limit": calls_per_second(lambda: reference.predict(pairs, batch_size=DOCUMENTS), seconds,
                                                 warmup)}
            time.sleep(0.3)
            result = run_load(server.url, "/v1/rerank", bodies, CLIENTS, seconds, warmup)
            if result.errors:
                raise RuntimeError(f"searchbox answered {result.errors} errors: {result.first_error}")
            figures["searchbox"] = result.requests / result.seconds
            keep_best(best, figures, "generative rerank", number, rounds, unit="requests/s")
    finally:
        server.stop()
    return best


def section(best: dict[str, float], threads: int) -> tuple[str, str]:
    ratio = best["searchbox"] / best["limit"]
    text = "\n".join([
        "## Generative rerank (Qwen3-Reranker-shaped)", "",
        f"A 256-wide, 4-layer Qwen3ForCausalLM judge (examples/tiny_generative_reranker.py `small`), {threads} torch "
        f"threads, {CLIENTS} client × {DOCUMENTS} documents to `/v1/rerank`; limit: `CrossEncoder.predict` in-process "
        f"on the same {DOCUMENTS} pairs per call.", "",
        "| scenario | requests/s | limit | searchbox / limit |", "|---|---|---|---|",
        f"| {CLIENTS} × {DOCUMENTS} documents | {best['searchbox']:.2f} | {best['limit']:.2f} | {ratio:.2f}× |", ""])
    check = (f"- generative rerank {CLIENTS}×{DOCUMENTS}: {ratio:.2f}× CrossEncoder.predict (target ≥ {TARGET}×): "
             + ("met" if ratio >= TARGET else "NOT met"))
    return text, check


def run(threads: int, log_dir: Path, seconds: float, warmup: float, rounds: int, start_searchbox) -> tuple[str, str]:
    """Build the model, measure; the Markdown section and its target line."""
    model_dir = build(log_dir / "generative-reranker")
    print(f"generative rerank: model in {model_dir}", flush=True)
    return section(measure(model_dir, threads, log_dir, seconds, warmup, rounds, start_searchbox), threads)


def main(argv: list[str] | None = None) -> int:
    from bench.servers import bench_main, start_searchbox

    return bench_main(__doc__, "generative-rerank", argv, lambda args, threads, tmp: "\n".join(
        run(threads, tmp, args.seconds, args.warmup, args.rounds, start_searchbox)))


if __name__ == "__main__":
    sys.exit(main())
