"""The limit: sentence-transformers in-process, in a process of its own, driven by JSON lines on stdin.

    python -m bench.limit MODEL_DIR THREADS [onnx] [--device cuda] [--dtype bfloat16]

With `onnx`, sentence-transformers' ONNX backend on MODEL_DIR/onnx/model.onnx (the ONNX limit; it needs
optimum, so bench/onnx_bench.py runs it with the peer's Python, whose libraries have it). `--device` and `--dtype` (a
torch dtype's name; left out, the checkpoint's own) place the models as searchbox does on a GPU (bench/gpu.py).

A separate process so that its resident memory is that of a bare Python process holding the same
model (the fair reference for the server's), and so that its torch threads are idle while the
servers are measured. One command per line; one JSON answer per line on stdout.

    {"op": "embed", "batches": [[text, ...], ...], "seconds": 5, "warmup": 1}
    {"op": "rerank", "model_dir": "...", "query": "...", "documents": [...], "seconds": 5, "warmup": 1}
    {"op": "rss"}
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _timed(call, inputs: list, seconds: float, warmup: float) -> dict:
    stop = time.perf_counter() + warmup
    for batch in itertools.cycle(inputs):
        if time.perf_counter() >= stop:
            break
        call(batch)
    latencies, items = [], 0
    cpu_started = time.process_time()
    started = time.perf_counter()
    stop = started + seconds
    for batch in itertools.cycle(inputs):
        if time.perf_counter() >= stop:
            break
        sent = time.perf_counter()
        call(batch)
        latencies.append(time.perf_counter() - sent)
        items += len(batch)
    return {"calls": len(latencies), "items": items, "seconds": time.perf_counter() - started,
            "cpu_s": time.process_time() - cpu_started, "latencies": latencies}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("threads", type=int)
    parser.add_argument("backend", nargs="?", default="torch", choices=("torch", "onnx"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    args = parser.parse_args()
    model_dir, threads, backend, device = args.model_dir, args.threads, args.backend, args.device
    model_kwargs = {"dtype": args.dtype} if args.dtype else {}
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from sentence_transformers import CrossEncoder, SentenceTransformer

    if threads > 0:
        torch.set_num_threads(threads)
    if backend == "onnx":
        kwargs = {"file_name": "onnx/model.onnx", "provider": "CPUExecutionProvider"}
        if threads > 0:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            kwargs["session_options"] = options
        model = SentenceTransformer(model_dir, device="cpu", local_files_only=True, backend="onnx", model_kwargs=kwargs)
    else:
        model = SentenceTransformer(model_dir, device=device, local_files_only=True, model_kwargs=model_kwargs)
    model.encode(["warm up the model"])
    cross_encoders: dict[str, CrossEncoder] = {}
    print(json.dumps({"ready": True, "rss_mb": rss_mb(), "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "embed":
            batches = command["batches"]
            answer = _timed(lambda b: model.encode(b, batch_size=len(b)), batches,
                            command["seconds"], command["warmup"])
        elif op == "rerank":
            path = command["model_dir"]
            if path not in cross_encoders:
                cross_encoders[path] = CrossEncoder(path, device=device, local_files_only=True,
                                                    model_kwargs=model_kwargs)
            cross = cross_encoders[path]
            pairs = [[(command["query"], doc) for doc in command["documents"]]]
            answer = _timed(lambda p: cross.predict(p, batch_size=len(p)), pairs,
                            command["seconds"], command["warmup"])
        elif op == "rss":
            answer = {"rss_mb": rss_mb()}
        else:
            answer = {"error": f"unknown op {op}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
