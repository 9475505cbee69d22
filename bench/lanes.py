"""Why a CPU runs two forward passes at once (model_handlers/options.py, CPU_LANES): the same passes of 32 short texts
on the embedded all-MiniLM-L6-v2, in this process, as one pass at a time on every thread against one pass per thread
at once, side by side in each round, for torch (transformers' own model) and for the fp32 and int8 ONNX graphs that
build_artifact.py makes.

    .venv/bin/python -m bench.lanes [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from bench.onnx_bench import build
from bench.texts import SHORT
from model_handlers.embedded import embedded_model_dir


def texts_per_second(run: Callable[[int], int], lanes: int, seconds: float) -> float:
    """Texts a second when `lanes` threads call `run(call_number)` (which returns the texts it ran) over and over."""
    counts = [0] * lanes
    stop = time.perf_counter() + seconds

    def lane(index: int) -> None:
        call = index
        while time.perf_counter() < stop:
            counts[index] += run(call)
            call += lanes

    run(0)  # warm
    started = time.perf_counter()
    threads = [threading.Thread(target=lane, args=(index,)) for index in range(lanes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def torch_runner(model_dir: Path, batches: list[list[str]]) -> Callable[[int, int], Callable[[int], int]]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    features = [tokenizer(batch, padding=True, return_tensors="pt") for batch in batches]

    def runner(threads: int, lanes: int) -> Callable[[int], int]:
        torch.set_num_threads(threads)

        def run(call: int) -> int:
            with torch.inference_mode():
                model(**features[call % len(features)])
            return len(batches[call % len(batches)])
        return run
    return runner


def onnx_runner(graph: Path, model_dir: Path, batches: list[list[str]]) -> Callable[[int, int], Callable[[int], int]]:
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    feeds = [{name: np.asarray(value, dtype=np.int64) for name, value in tokenizer(batch, padding=True).items()}
             for batch in batches]

    def runner(threads: int, lanes: int) -> Callable[[int], int]:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the server opens it
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        names = {item.name for item in session.get_inputs()}

        def run(call: int) -> int:
            feed = feeds[call % len(feeds)]
            session.run(None, {name: value for name, value in feed.items() if name in names})
            return len(batches[call % len(batches)])
        return run
    return runner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    model_dir = embedded_model_dir()
    batches = [sorted(SHORT[start:start + 32], key=len) for start in range(0, len(SHORT), 32)]
    work = Path(tempfile.mkdtemp(prefix="searchbox-lanes-"))
    fp32 = build(model_dir, work / "fp32", "--backend", "onnx")
    int8 = build(model_dir, work / "int8", "--backend", "onnx", "--quantize", "int8")
    systems = {"torch": torch_runner(model_dir, batches),
               "onnx fp32": onnx_runner(fp32 / "onnx" / "model.onnx", model_dir, batches),
               "onnx int8": onnx_runner(int8 / "onnx" / "model_int8.onnx", model_dir, batches)}
    best: dict[tuple[str, int], float] = {}
    for number in range(args.rounds):
        for name, runner in systems.items():
            for lanes in (1, cores):
                figure = texts_per_second(runner(max(1, cores // lanes), lanes), lanes, args.seconds)
                best[name, lanes] = max(best.get((name, lanes), 0.0), figure)
                print(f"round {number + 1}: {name:9s} {lanes} pass(es) at once: {figure:6.1f} texts/s", flush=True)
    print(f"\n{cores} cores, best of {args.rounds} rounds of {args.seconds:g} s, passes of 32 short texts\n")
    print(f"| system | one pass on {cores} threads | {cores} passes on one thread each | ratio |\n|---|---|---|---|")
    for name in systems:
        one, many = best[name, 1], best[name, cores]
        print(f"| {name} | {one:.1f} texts/s | {many:.1f} texts/s | {many / one:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
