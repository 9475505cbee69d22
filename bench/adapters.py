"""Task adapters: what mixing tasks in one pass costs, and what per-row LoRA costs against merged weights.

The model is a jina-embeddings-v3-layout checkpoint of MiniLM's size (6 layers, 384 wide, 12 heads, rank-4 LoRA on
every Linear and Embedding for five tasks, random weights), built as the tests build theirs
(tests/models/jina_v3.py), served natively (model_handlers/jina_v3.py + peft) through the shared pipeline,
in-process: the ratios are about the adapters, not HTTP.

- one task alone: 5 callers x 32 texts, all `retrieval.query`;
- five tasks mixed: 5 callers x 32 texts, one task each (each pass mixes rows of all five);
- merged weights: the same as "one task alone" on a copy whose `retrieval.query` adapter is merged into the base
  weights (no LoRA layers at all): what a one-task-per-deployment server (vLLM) runs.

Rounds alternate the three; each keeps its best round. Prints a Markdown section (also part of `make bench`).

Then the same for a jina-embeddings-v5-text-layout decoder (tests/models/jina_v5_text.py `small`: a 256-wide, 4-layer
Qwen3Model with a rank-16 PEFT LoRA adapter per task on all seven linear layers, last-token pooling): 4 callers x 32
texts, one task alone (`retrieval.query`) against the four tasks mixed in each pass (target >= 0.85x).

    .venv/bin/python -m bench.adapters [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CALLERS = 5
BATCH = 32
SIZE = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}


def build(target: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from models.jina_v3 import build_v3

    from model_handlers.embedded import embedded_model_dir

    return build_v3(target, embedded_model_dir(), size=SIZE)


def texts(offset: int) -> list[str]:
    from bench.texts import SHORT

    return [SHORT[(offset + i) % len(SHORT)] for i in range(BATCH)]


def throughput(pipeline, tasks: list[str | None], seconds: float, warmup: float) -> float:
    """Inputs per second: one caller per entry of `tasks`, each sending BATCH texts with its task, back to back."""
    from model_handlers.types import EmbedRequest, TextInput

    requests = [EmbedRequest(inputs=tuple(TextInput(t) for t in texts(i * 7)), task=task)
                for i, task in enumerate(tasks)]
    stop = threading.Event()
    counts = [0] * len(tasks)
    measuring = threading.Event()

    def caller(index: int) -> None:
        while not stop.is_set():
            pipeline.run(requests[index])
            if measuring.is_set():
                counts[index] += BATCH

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(len(tasks))]
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    measuring.set()
    started = time.monotonic()
    time.sleep(seconds)
    total = sum(counts)
    elapsed = time.monotonic() - started
    stop.set()
    for thread in threads:
        thread.join()
    return total / elapsed


def merged(pipeline, task: str) -> None:
    """Merge `task`'s adapter into the base weights (peft's own merge) and put the plain layers back in place of
    peft's: the model then computes that task's vectors with no LoRA layer at all."""
    from peft.tuners.lora import LoraLayer

    from model_handlers import jina_v3

    model = pipeline.adapters._model
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge(adapter_names=[jina_v3.adapter_name(task)])
                setattr(parent, child_name, child.get_base_layer())
    pipeline.adapters._entries.clear()


def run(seconds: float, warmup: float, rounds: int, threads: int = 0) -> str:
    from model_handlers import HandlerOptions, load_handler

    with tempfile.TemporaryDirectory(prefix="bench-v3-") as workdir:
        model_dir = build(Path(workdir) / "v3")
        options = HandlerOptions(device="cpu", torch_threads=threads or None)
        adapted = load_handler(model_dir, options)
        adapted.warm_up()
        baseline = load_handler(model_dir, options)
        merged(baseline, "retrieval.query")
        baseline.warm_up()
        instruction = adapted.config.tasks["retrieval.query"].prompt
        tasks = list(adapted.config.tasks)
        best = {"one": 0.0, "mixed": 0.0, "merged": 0.0}
        for _ in range(rounds):
            best["one"] = max(best["one"], throughput(adapted, ["retrieval.query"] * CALLERS, seconds, warmup))
            best["mixed"] = max(best["mixed"], throughput(adapted, tasks[:CALLERS], seconds, warmup))
            # the merged copy has no tasks left: its texts carry the instruction themselves, as the task would add
            best["merged"] = max(best["merged"], throughput(_Prefixed(baseline, instruction), [None] * CALLERS,
                                                            seconds, warmup))
        adapted.close()
        baseline.close()
    mixed_ratio = best["mixed"] / best["one"]
    row_ratio = best["one"] / best["merged"]
    return "\n".join([
        "## Task adapters (jina-embeddings-v3 layout, MiniLM size, in-process)",
        "",
        f"| system | {CALLERS} callers x {BATCH} texts, inputs/s | ratio |",
        "|---|---|---|",
        f"| one task alone (per-row LoRA) | {best['one']:.1f} | 1.00x |",
        f"| five tasks mixed in each pass | {best['mixed']:.1f} | {mixed_ratio:.2f}x of one task (target >= 0.85x) |",
        f"| one task, adapter merged into the weights | {best['merged']:.1f} | per-row LoRA runs at "
        f"{row_ratio:.2f}x of it |",
        "",
        f"Target five tasks mixed >= 0.85x one task alone: {'met' if mixed_ratio >= 0.85 else 'MISSED'} "
        f"({mixed_ratio:.2f}x).",
        "",
    ])


def run_v5(seconds: float, warmup: float, rounds: int, threads: int = 0) -> str:
    """One task alone against the four v5 tasks mixed in each pass, in-process."""
    from model_handlers import HandlerOptions, load_handler

    sys.path.insert(0, str(ROOT / "tests"))
    from models.jina_v5_text import TASKS, make_jina_v5_text

    with tempfile.TemporaryDirectory(prefix="bench-v5-") as workdir:
        pipeline = load_handler(make_jina_v5_text(Path(workdir) / "v5", size="small"),
                                HandlerOptions(device="cpu", torch_threads=threads or None))
        pipeline.warm_up()
        mixed_tasks = [f"{task}.query" for task in TASKS]
        best = {"one": 0.0, "mixed": 0.0}
        for _ in range(rounds):
            best["one"] = max(best["one"], throughput(pipeline, ["retrieval.query"] * len(TASKS), seconds, warmup))
            best["mixed"] = max(best["mixed"], throughput(pipeline, mixed_tasks, seconds, warmup))
        pipeline.close()
    ratio = best["mixed"] / best["one"]
    return "\n".join([
        "## Task adapters (jina-embeddings-v5-text layout, small decoder, in-process)",
        "",
        f"| system | {len(TASKS)} callers x {BATCH} texts, inputs/s | ratio |",
        "|---|---|---|",
        f"| one task alone (per-row LoRA) | {best['one']:.1f} | 1.00x |",
        f"| four tasks mixed in each pass | {best['mixed']:.1f} | {ratio:.2f}x of one task (target >= 0.85x) |",
        "",
        f"Target four tasks mixed >= 0.85x one task alone: {'met' if ratio >= 0.85 else 'MISSED'} ({ratio:.2f}x).",
        "",
    ])


class _Prefixed:
    """A pipeline whose requests' texts get `prefix` in front (the instruction a task would prepend)."""

    def __init__(self, pipeline, prefix: str):
        self._pipeline, self._prefix = pipeline, prefix

    def run(self, request):
        from dataclasses import replace

        from model_handlers.types import TextInput

        return self._pipeline.run(replace(request, inputs=tuple(TextInput(self._prefix + i.text)
                                                                  for i in request.inputs)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    print(run(args.seconds, args.warmup, args.rounds, args.threads))
    print(run_v5(args.seconds, args.warmup, args.rounds, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
