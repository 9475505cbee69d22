"""Sparse (SPLADE) throughput: inputs/s through `serve` beside sentence-transformers' `SparseEncoder.encode`
in-process, side by side in one run.

The model is the embedded MiniLM-L6 read as a BertForMaskedLM (its encoder's weights; the MLM head is seeded random,
its bias lowered so a few hundred entries of an input stay above zero, as a trained SPLADE's), saved as a
`SparseEncoder`: the compute is a MiniLM-sized SPLADE's (no SPLADE weights can be downloaded here).

- limit: `SparseEncoder.encode` on the same 32 texts per call, in-process (its sparse COO answer);
- searchbox: `serve` over HTTP `/v1/sparse-embeddings`, 4 clients x 32 texts (target >= 0.9x the limit).

Rounds alternate the systems; each keeps its best round. Prints a Markdown section (also part of `make bench`).

    .venv/bin/python -m bench.sparse [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import shutil
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


def build(minilm_dir: Path, out_dir: Path) -> Path:
    """MiniLM's encoder under a seeded MLM head, saved as a SparseEncoder (fill-mask Transformer + SpladePooling)."""
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig.from_pretrained(str(minilm_dir), tie_word_embeddings=False)
    model = BertForMaskedLM.from_pretrained(str(minilm_dir), config=config)
    with torch.no_grad():
        model.cls.predictions.decoder.weight.mul_(10)
        model.cls.predictions.decoder.bias.fill_(-4.5)
        model.cls.predictions.bias.fill_(-4.5)
    plain = out_dir.with_name(out_dir.name + "-mlm")
    model.save_pretrained(str(plain))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, plain / name)
    mlm = Transformer(str(plain), transformer_task="fill-mask", max_seq_length=256)
    SparseEncoder(modules=[mlm, SpladePooling("max")], device="cpu").save(str(out_dir))
    return out_dir


def measure(model_dir: Path, threads: int, log_dir: Path, seconds: float, warmup: float, rounds: int,
            start_searchbox) -> dict[str, float]:
    """Best inputs/s of each system over `rounds`."""
    import torch
    from sentence_transformers import SparseEncoder

    torch.set_num_threads(threads)
    encoder = SparseEncoder(str(model_dir), device="cpu")
    texts = [SHORT[i % len(SHORT)] for i in range(BATCH * CLIENTS)]
    batches = [texts[i:i + BATCH] for i in range(0, len(texts), BATCH)]
    bodies = [orjson.dumps({"input": batch}) for batch in batches]
    best: dict[str, float] = {}
    server = start_searchbox(model_dir, threads, log_dir)
    try:
        for number in range(rounds):
            figures = {"limit": calls_per_second(lambda: [encoder.encode(batch, batch_size=BATCH) for batch in batches],
                                       seconds, warmup) * BATCH * len(batches)}
            time.sleep(0.3)
            result = run_load(server.url, "/v1/sparse-embeddings", bodies, CLIENTS, seconds, warmup)
            if result.errors:
                raise RuntimeError(f"searchbox answered {result.errors} errors: {result.first_error}")
            figures["searchbox"] = result.requests * BATCH / result.seconds
            keep_best(best, figures, "sparse", number, rounds)
    finally:
        server.stop()
    return best


def section(best: dict[str, float], threads: int) -> tuple[str, str]:
    ratio = best["searchbox"] / best["limit"]
    text = "\n".join([
        "## Sparse embeddings (SPLADE)", "",
        f"MiniLM-L6 as a SPLADE (seeded MLM head, max pooling), {threads} torch threads, {CLIENTS} clients × {BATCH} "
        "texts to `/v1/sparse-embeddings` (every nonzero weight answered as JSON); limit: `SparseEncoder.encode` "
        f"in-process on the same {BATCH} texts per call.", "",
        "| scenario | inputs/s | limit | searchbox / limit |", "|---|---|---|---|",
        f"| {CLIENTS} clients × {BATCH} texts | {best['searchbox']:.1f} | {best['limit']:.1f} | {ratio:.2f}× |", ""])
    check = (f"- sparse {CLIENTS}×{BATCH}: {ratio:.2f}× SparseEncoder.encode (target ≥ {TARGET}×): "
             + ("met" if ratio >= TARGET else "NOT met"))
    return text, check


def run(threads: int, log_dir: Path, seconds: float, warmup: float, rounds: int, start_searchbox) -> tuple[str, str]:
    """Build the model, measure; the Markdown section and its target line (what bench/run.py appends)."""
    from model_handlers.embedded import embedded_model_dir

    model_dir = build(embedded_model_dir(), log_dir / "minilm-splade")
    print(f"sparse: MiniLM SPLADE in {model_dir}", flush=True)
    return section(measure(model_dir, threads, log_dir, seconds, warmup, rounds, start_searchbox), threads)


def main(argv: list[str] | None = None) -> int:
    from bench.servers import bench_main, start_searchbox

    return bench_main(__doc__, "sparse", argv, lambda args, threads, tmp: "\n".join(
        run(threads, tmp, args.seconds, args.warmup, args.rounds, start_searchbox)))


if __name__ == "__main__":
    sys.exit(main())
