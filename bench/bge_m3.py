"""BGE-M3: all three outputs (dense, sparse, ColBERT) of every input in one call beside three separate calls, through
`serve`, side by side in one run.

The model is the embedded MiniLM-L6's encoder with seeded BGE-M3 heads (colbert_linear, sparse_linear) saved as
safetensors beside it: the compute is a MiniLM-sized BGE-M3's (no BGE-M3 weights can be downloaded here).

- one call: `/v1/embeddings` with `return_sparse` and `return_multivector`, 4 clients x 32 texts;
- three calls: `/v1/embeddings`, `/v1/sparse-embeddings` and `/v1/multi-vector` on the same 32 texts, each client
  sending them in turn (what a caller pays without one-pass outputs: three forward passes per input).

Figures are inputs answered with all three outputs per second (target: one call >= 2.5x three calls). Rounds alternate
the two; each keeps its best round. Prints a Markdown section (also part of `make bench`).

    .venv/bin/python -m bench.bge_m3 [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import orjson

from bench.loadgen import run_load_mixed
from bench.servers import keep_best
from bench.texts import SHORT

BATCH = 32
CLIENTS = 4
TARGET = 2.5


def build(minilm_dir: Path, out_dir: Path) -> Path:
    """MiniLM's encoder with seeded BGE-M3 heads beside it (safetensors: no pickle opt-in needed)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BertModel

    encoder = BertModel.from_pretrained(str(minilm_dir))
    hidden = encoder.config.hidden_size
    torch.manual_seed(0)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(str(out_dir))
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(str(out_dir))
    for name, width in (("colbert_linear", hidden), ("sparse_linear", 1)):
        save_file({key: value.contiguous() for key, value in torch.nn.Linear(hidden, width).state_dict().items()},
                  str(out_dir / f"{name}.safetensors"))
    return out_dir


def measure(model_dir: Path, threads: int, log_dir: Path, seconds: float, warmup: float, rounds: int,
            start_searchbox) -> dict[str, float]:
    """Best inputs/s (all three outputs each) of both ways over `rounds`."""
    texts = [SHORT[i % len(SHORT)] for i in range(BATCH * CLIENTS)]
    batches = [texts[i:i + BATCH] for i in range(0, len(texts), BATCH)]
    one = [("/v1/embeddings", orjson.dumps({"input": batch, "return_sparse": True, "return_multivector": True}))
           for batch in batches]
    three = [(path, orjson.dumps({"input": batch})) for batch in batches
             for path in ("/v1/embeddings", "/v1/sparse-embeddings", "/v1/multi-vector")]
    best: dict[str, float] = {}
    server = start_searchbox(model_dir, threads, log_dir)
    try:
        for number in range(rounds):
            figures = {}
            for name, calls, per_input in (("one call", one, 1), ("three calls", three, 3)):
                result = run_load_mixed(server.url, calls, CLIENTS, seconds, warmup)
                if result.errors:
                    raise RuntimeError(f"searchbox answered {result.errors} errors: {result.first_error}")
                figures[name] = result.requests * BATCH / per_input / result.seconds
                time.sleep(0.3)
            keep_best(best, figures, "bge-m3", number, rounds)
    finally:
        server.stop()
    return best


def section(best: dict[str, float], threads: int) -> tuple[str, str]:
    ratio = best["one call"] / best["three calls"]
    text = "\n".join([
        "## BGE-M3: three outputs in one call", "",
        f"MiniLM-L6 with seeded BGE-M3 heads, {threads} torch threads, {CLIENTS} clients × {BATCH} texts; inputs "
        "answered with dense, sparse and ColBERT outputs per second: one `/v1/embeddings` call with `return_sparse` "
        "and `return_multivector`, or `/v1/embeddings`, `/v1/sparse-embeddings` and `/v1/multi-vector` in turn.", "",
        "| scenario | one call (inputs/s) | three calls (inputs/s) | one / three |", "|---|---|---|---|",
        f"| {CLIENTS} clients × {BATCH} texts | {best['one call']:.1f} | {best['three calls']:.1f} | {ratio:.2f}× |",
        ""])
    check = (f"- BGE-M3 {CLIENTS}×{BATCH}: one call {ratio:.2f}× three calls (target ≥ {TARGET}×): "
             + ("met" if ratio >= TARGET else "NOT met"))
    return text, check


def run(threads: int, log_dir: Path, seconds: float, warmup: float, rounds: int, start_searchbox) -> tuple[str, str]:
    from model_handlers.embedded import embedded_model_dir

    model_dir = build(embedded_model_dir(), log_dir / "minilm-bge-m3")
    print(f"bge-m3: MiniLM BGE-M3 in {model_dir}", flush=True)
    return section(measure(model_dir, threads, log_dir, seconds, warmup, rounds, start_searchbox), threads)


def main(argv: list[str] | None = None) -> int:
    from bench.servers import bench_main, start_searchbox

    return bench_main(__doc__, "bge-m3", argv, lambda args, threads, tmp: "\n".join(
        run(threads, tmp, args.seconds, args.warmup, args.rounds, start_searchbox)))


if __name__ == "__main__":
    sys.exit(main())
