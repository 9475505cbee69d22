"""Zero-shot classify throughput: inputs/s of `/v1/classify` (10 labels) beside `/v1/embeddings` of the same inputs,
through the same `serve` of the embedded MiniLM, side by side in one run (issue 24: target >= 0.9x).

Classifying costs the inputs' forward passes plus, the first time, the labels'; the labels' embeddings are then kept
per model (model_handlers/operations/classify.py's LabelCache), so a stream of requests with the same labels should
run about as fast as embedding their inputs. Rounds alternate the two routes; each keeps its best round. Prints a
Markdown section (also part of `make bench`).

    .venv/bin/python -m bench.classify [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import orjson

from bench.loadgen import run_load
from bench.servers import keep_best
from bench.texts import SHORT

BATCH = 32
CLIENTS = 4
TARGET = 0.9
LABELS = ["weather", "sport", "cooking", "travel", "finance", "health", "technology", "music", "politics", "science"]


def measure(model_dir: Path, threads: int, log_dir: Path, seconds: float, warmup: float, rounds: int,
            start_searchbox) -> dict[str, float]:
    """Best inputs/s of each route over `rounds`."""
    texts = [SHORT[i % len(SHORT)] for i in range(BATCH * CLIENTS)]
    batches = [texts[i:i + BATCH] for i in range(0, len(texts), BATCH)]
    routes = {"embeddings": ("/v1/embeddings", [orjson.dumps({"input": batch}) for batch in batches]),
              "classify": ("/v1/classify", [orjson.dumps({"input": batch, "labels": LABELS}) for batch in batches])}
    best: dict[str, float] = {}
    server = start_searchbox(model_dir, threads, log_dir)
    try:
        for number in range(rounds):
            figures = {}
            # each route goes first in every other round: neither always meets a cold (or a busy) machine
            order = list(routes.items()) if number % 2 == 0 else list(reversed(routes.items()))
            for name, (path, bodies) in order:
                result = run_load(server.url, path, bodies, CLIENTS, seconds, warmup)
                if result.errors:
                    raise RuntimeError(f"{path} answered {result.errors} errors: {result.first_error}")
                figures[name] = result.requests * BATCH / result.seconds
                time.sleep(0.3)
            keep_best(best, figures, "classify", number, rounds)
    finally:
        server.stop()
    return best


def section(best: dict[str, float], threads: int) -> tuple[str, str]:
    ratio = best["classify"] / best["embeddings"]
    text = "\n".join([
        "## Zero-shot classify", "",
        f"all-MiniLM-L6-v2, {threads} torch threads, {CLIENTS} clients × {BATCH} texts; `/v1/classify` against "
        f"{len(LABELS)} labels (kept after the first request) beside `/v1/embeddings` of the same texts, one `serve`.",
        "", "| scenario | classify inputs/s | embeddings inputs/s | classify / embeddings |", "|---|---|---|---|",
        f"| {CLIENTS} clients × {BATCH} texts, {len(LABELS)} labels | {best['classify']:.1f} | "
        f"{best['embeddings']:.1f} | {ratio:.2f}× |", ""])
    check = (f"- classify {CLIENTS}×{BATCH}, {len(LABELS)} labels: {ratio:.2f}× embeddings (target ≥ {TARGET}×): "
             + ("met" if ratio >= TARGET else "NOT met"))
    return text, check


def run(threads: int, log_dir: Path, seconds: float, warmup: float, rounds: int, start_searchbox) -> tuple[str, str]:
    """Measure on the embedded model; the Markdown section and its target line."""
    from model_handlers.embedded import embedded_model_dir

    return section(measure(embedded_model_dir(), threads, log_dir, seconds, warmup, rounds, start_searchbox), threads)


def main(argv: list[str] | None = None) -> int:
    from bench.servers import bench_main, start_searchbox

    return bench_main(__doc__, "classify", argv, lambda args, threads, tmp: "\n".join(
        run(threads, tmp, args.seconds, args.warmup, args.rounds, start_searchbox)))


if __name__ == "__main__":
    sys.exit(main())
