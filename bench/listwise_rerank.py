"""Listwise rerank throughput: rerank requests/s through `serve` beside the model's own `rerank()` in-process on the
same checkpoint, side by side in one run (issue 33).

The model is examples/tiny_jina_reranker_v3.py's `small` one (a 256-wide, 4-layer jina-reranker-v3-shaped
`JinaForRanking` with seeded random weights, its code as `modeling.py`, a byte-level BPE tokenizer trained on a few
sentences with `model_max_length` 4096, so that a block holds about 2,000 tokens of documents): no jina-reranker-v3
weights can be downloaded here, and the code path is the same at any size.

- limit: the checkpoint's own `JinaForRanking.rerank()` (its `modeling.py`, loaded as `trust_remote_code` loads it),
  in-process, on the same query and documents: one forward pass per block, one block after another;
- searchbox: `serve` over HTTP `/v1/rerank`, 1 client: the same blocks in right-padded passes of at most
  SEARCHBOX_MAX_BATCH_TOKENS padded tokens (target >= 1.0x the limit in both scenarios). On CPU that is 1,024, so every
  block here (2,000 to 3,400 tokens) is a pass of its own, as in rerank()'s loop, and what the ratio measures is the
  rest of the request's path; on a GPU (16,384) the 130 documents' blocks share one pass.

Scenarios: 1 query × 20 documents (one block) and 1 × 130 documents (several blocks, by the model's own block rule;
the section says how many). The documents are bench/texts.py's short passages (about 90 tokens each with this
tokenizer). Before timing, searchbox's scores are checked against the limit's, so that both do the same work.
Rounds alternate the systems; each keeps its best round. Prints a Markdown section (also part of `make bench`).

    .venv/bin/python -m bench.listwise_rerank [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import orjson

from bench.loadgen import run_load
from bench.servers import calls_per_second, http_status, keep_best
from bench.texts import SHORT

SCENARIOS = (20, 130)
CLIENTS = 1
TARGET = 1.0
QUERY = "Which city is the capital of Germany?"
# the model's own scores are float32 numpy; searchbox's come from the same float32 vectors in another order of sums
TOLERANCE = 1e-4


def build(out_dir: Path) -> Path:
    """examples/tiny_jina_reranker_v3.py's `small` model."""
    return _example().build(out_dir, "small")


def _example():
    examples = Path(__file__).resolve().parent.parent / "examples"
    if str(examples) not in sys.path:
        sys.path.insert(0, str(examples))
    import tiny_jina_reranker_v3

    return tiny_jina_reranker_v3


def documents(count: int) -> list[str]:
    return [SHORT[i % len(SHORT)] for i in range(count)]


def measure(model_dir: Path, threads: int, log_dir: Path, seconds: float, warmup: float, rounds: int,
            start_searchbox) -> tuple[dict[int, dict[str, float]], dict[int, int]]:
    """Best requests/s of each system over `rounds`, per scenario, and each scenario's number of blocks."""
    import torch

    torch.set_num_threads(threads)
    model = _example().reference(model_dir)
    best: dict[int, dict[str, float]] = {count: {} for count in SCENARIOS}
    blocks = {count: len(model.blocks(QUERY, documents(count))[1]) for count in SCENARIOS}
    server = start_searchbox(model_dir, threads, log_dir)
    try:
        bodies = {count: orjson.dumps({"query": QUERY, "documents": documents(count), "return_documents": False})
                  for count in SCENARIOS}
        for count in SCENARIOS:
            _check(server.url, bodies[count], model.rerank(QUERY, documents(count)), count)
        for number in range(rounds):
            for count in SCENARIOS:
                figures = {"limit": calls_per_second(lambda: model.rerank(QUERY, documents(count)), seconds, warmup)}
                time.sleep(0.3)
                result = run_load(server.url, "/v1/rerank", [bodies[count]], CLIENTS, seconds, warmup)
                if result.errors:
                    raise RuntimeError(f"searchbox answered {result.errors} errors: {result.first_error}")
                figures["searchbox"] = result.requests / result.seconds
                keep_best(best[count], figures, f"listwise rerank 1×{count}", number, rounds, unit="requests/s")
    finally:
        server.stop()
    return best, blocks


def _check(url: str, body: bytes, expected: list[dict], count: int) -> None:
    """searchbox's scores are the model's own: else the two would not be doing the same work."""
    status, answer = http_status(url + "/v1/rerank", body)
    if status != 200:
        raise RuntimeError(f"searchbox answered {status}: {answer[:300]!r}")
    served = {row["index"]: row["relevance_score"] for row in orjson.loads(answer)["results"]}
    worst = max(abs(served[row["index"]] - row["relevance_score"]) for row in expected)
    if len(served) != len(expected) or worst > TOLERANCE:
        raise RuntimeError(f"1×{count}: searchbox's scores differ from rerank()'s by up to {worst:.2e}")


def section(best: dict[int, dict[str, float]], blocks: dict[int, int], threads: int) -> tuple[str, str]:
    rows, checks = [], []
    for count in SCENARIOS:
        ratio = best[count]["searchbox"] / best[count]["limit"]
        rows.append(f"| {CLIENTS} × {count} documents | {blocks[count]} | {best[count]['searchbox']:.2f} | "
                    f"{best[count]['limit']:.2f} | {ratio:.2f}× |")
        checks.append(f"- listwise rerank {CLIENTS}×{count} ({blocks[count]} block{'s' * (blocks[count] > 1)}): "
                      f"{ratio:.2f}× the model's rerank() (target ≥ {TARGET}×): "
                      + ("met" if ratio >= TARGET else "NOT met"))
    text = "\n".join([
        "## Listwise rerank (jina-reranker-v3-shaped)", "",
        f"A 256-wide, 4-layer `JinaForRanking` (examples/tiny_jina_reranker_v3.py `small`, model_max_length 4096), "
        f"{threads} torch threads, {CLIENTS} client to `/v1/rerank`; limit: the checkpoint's own `rerank()` "
        "in-process on the same query and documents (one pass per block, in turn). On CPU searchbox's pass budget "
        "(1,024 padded tokens by default) also makes each of these blocks a pass of its own.", "",
        "| scenario | blocks | requests/s | limit | searchbox / limit |", "|---|---|---|---|---|", *rows, ""])
    return text, "\n".join(checks)


def run(threads: int, log_dir: Path, seconds: float, warmup: float, rounds: int, start_searchbox) -> tuple[str, str]:
    """Build the model, measure; the Markdown section and its target lines."""
    model_dir = build(log_dir / "listwise-reranker")
    print(f"listwise rerank: model in {model_dir}", flush=True)
    best, blocks = measure(model_dir, threads, log_dir, seconds, warmup, rounds, start_searchbox)
    return section(best, blocks, threads)


def main(argv: list[str] | None = None) -> int:
    from bench.servers import bench_main, start_searchbox

    return bench_main(__doc__, "listwise-rerank", argv, lambda args, threads, tmp: "\n".join(
        run(threads, tmp, args.seconds, args.warmup, args.rounds, start_searchbox)))


if __name__ == "__main__":
    sys.exit(main())
