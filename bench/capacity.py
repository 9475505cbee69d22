"""`make capacity`: what one instance sustains, measured against a real `serve` over HTTP, written to a capacity file.

For each backend (torch on the embedded all-MiniLM-L6-v2; `onnx-int8`: the artifact packaging/build_artifact.py
builds with --backend onnx --quantize int8) and each request shape (`query`: 1 text per request, real-time search
traffic; `batch`: 32 texts per request, ingestion and asynchronous/batch work), closed-loop clients (bench/loadgen.py:
keep-alive, each sending its next request as soon as the last is answered) run at 1, 2, 4, 8, ... concurrent
requests for a few seconds each after a warm-up. Every level records requests/s, inputs/s, p50 and p95 latency and
errors; the sustained capacity at a p95 target is the best level that meets it (packaging/_capacity.py), read by
packaging/deployment.py to size endpoints and by bench/scale.py to simulate them. Levels stop once the p95 passes
the target and more clients no longer add throughput.

The machine it ran on is recorded (CPU model, cores, memory, GPU); `--instance-type` (or SEARCHBOX_INSTANCE_TYPE)
labels it with the cloud instance type it is, so that the deployment builder uses it for that type only; without
it the label is `local`. A run replaces the entries of the same model, backend, shape and machine and keeps the rest.

    .venv/bin/python -m bench.capacity [--instance-type ml.c6i.xlarge] [--backends torch,onnx-int8] \\
        [--shapes query,batch] [--p95-ms 1000] [--seconds 4] [--out bench/capacity.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench.loadgen import run_load
from bench.run import searchbox_body
from bench.servers import ROOT, http_status, start_searchbox
from bench.texts import SHORT
from model_handlers.embedded import embedded_model_dir

sys.path.insert(0, str(ROOT / "packaging"))
import _capacity  # noqa: E402  (the format lives with its reader, packaging/_capacity.py)

DEFAULT_OUT = ROOT / "bench" / "capacity.json"
MODEL = "all-MiniLM-L6-v2"
# Up to 64 in flight: serve admits SEARCHBOX_THREADS - 4 = 124 requests at once and nginx answers the rest 503.
LEVELS = (1, 2, 4, 8, 16, 32, 64)
ENV_INSTANCE_TYPE = "SEARCHBOX_INSTANCE_TYPE"


def machine(instance_type: str | None) -> _capacity.Machine:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    memory_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal:")), 0)
    gpu, gpu_count = None, 0
    try:
        import torch

        if torch.cuda.is_available():
            gpu, gpu_count = torch.cuda.get_device_name(0), torch.cuda.device_count()
    except ImportError:  # the slim image has no torch: no GPU is used either
        pass
    return _capacity.Machine(label=instance_type or _capacity.LOCAL, instance_type=instance_type, cpu_model=cpu,
                             cores=len(os.sched_getaffinity(0)), memory_mb=memory_kb // 1024, gpu=gpu,
                             gpu_count=gpu_count)


def bodies(shape: str) -> list[bytes]:
    """Request bodies of `shape`, the same fixed texts for every run (bench/texts.py), rotated so none repeats."""
    size = _capacity.SHAPES[shape]
    windows = [[SHORT[(start * size + i) % len(SHORT)] for i in range(size)] for start in range(len(SHORT))]
    return [searchbox_body(texts, False) for texts in windows]


def tokens_per_input(url: str) -> float:
    """Mean tokens of the benchmark's texts, as the server counts them (its `usage`)."""
    status, body = http_status(url + "/invocations", searchbox_body(SHORT, False))
    if status != 200:
        raise RuntimeError(f"the server answered {status}: {body[:300]!r}")
    data = json.loads(body)["data"]
    return round(sum(item["usage"]["total_tokens"] for item in data) / len(data), 1)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def measure_levels(url: str, shape: str, *, seconds: float, warmup: float, p95_ms: float,
                   max_concurrency: int, log=print) -> list[_capacity.Level]:
    """Closed-loop runs at doubling concurrency, until p95 is past the target and throughput stops growing."""
    requests = bodies(shape)
    per_request = _capacity.SHAPES[shape]
    levels: list[_capacity.Level] = []
    for concurrency in (c for c in LEVELS if c <= max_concurrency):
        try:
            result = run_load(url, "/invocations", requests, concurrency, seconds, warmup)
        except (OSError, EOFError) as exc:  # the server closed connections: past what it admits
            log(f"  {shape:<5} {concurrency:>3} concurrent: stopped ({type(exc).__name__}: {exc})")
            break
        ok = result.requests - result.errors
        level = _capacity.Level(concurrency=concurrency, requests_per_s=round(ok / result.seconds, 2),
                                inputs_per_s=round(ok * per_request / result.seconds, 2),
                                p50_ms=round(1000 * percentile(result.latencies, 0.50), 1),
                                p95_ms=round(1000 * percentile(result.latencies, 0.95), 1), errors=result.errors)
        log(f"  {shape:<5} {concurrency:>3} concurrent: {level.requests_per_s:8.1f} req/s {level.inputs_per_s:8.1f} "
            f"inputs/s p50 {level.p50_ms:7.1f} ms p95 {level.p95_ms:7.1f} ms"
            + (f" ({result.errors} errors: {result.first_error[:120]})" if result.errors else ""))
        growing = not levels or level.inputs_per_s > 1.1 * max(lv.inputs_per_s for lv in levels)
        levels.append(level)
        if level.p95_ms > p95_ms and not growing or level.p95_ms > 3 * p95_ms or result.errors:
            break
    return levels


def model_dir_for(backend: str, work: Path) -> Path:
    if backend == "torch":
        return embedded_model_dir()
    from bench.onnx_bench import build

    flags = ["--backend", "onnx"] + (["--quantize", "int8"] if backend == "onnx-int8" else [])
    return build(embedded_model_dir(), work / backend, *flags)


def run(*, backends: list[str], shapes: list[str], instance_type: str | None, p95_ms: float, seconds: float,
        warmup: float, threads: int, max_concurrency: int, log=print) -> list[_capacity.Measurement]:
    host = machine(instance_type)
    threads = threads or host.cores  # serve's own default: one intra-op thread per core
    log(f"machine: {host.describe()}, {threads} torch/ONNX threads")
    measurements = []
    with tempfile.TemporaryDirectory(prefix="searchbox-capacity-") as work:
        work_dir = Path(work)
        for backend in backends:
            model_dir = model_dir_for(backend, work_dir)
            server = start_searchbox(model_dir, threads, work_dir)
            try:
                log(f"{backend}: serve ready in {server.start_s:.1f} s, {server.rss_ready_mb:.0f} MB")
                tokens = tokens_per_input(server.url)
                for shape in shapes:
                    levels = measure_levels(server.url, shape, seconds=seconds, warmup=warmup, p95_ms=p95_ms,
                                            max_concurrency=max_concurrency, log=log)
                    measurements.append(_capacity.Measurement(
                        model=MODEL, kind="embedding", backend=backend, shape=shape,
                        inputs_per_request=_capacity.SHAPES[shape], route="/invocations", machine=host,
                        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        torch_threads=threads, rss_mb=round(max(server.rss_ready_mb, server.rss_mb()), 1),
                        p95_target_ms=p95_ms, levels=tuple(levels), tokens_per_input=tokens,
                        seconds_per_level=seconds))
            finally:
                server.stop()
    return measurements


def table(measurements: list[_capacity.Measurement]) -> str:
    """The capacity table README.md quotes: sustained figures at each measurement's p95 target."""
    lines = ["| model | backend | machine | request | sustained requests/s | inputs/s | in flight | p95 ms "
             "| best requests/s (any latency) |", "|---|---|---|---|---|---|---|---|---|"]
    for m in sorted(measurements, key=lambda m: m.key):
        level, top = m.sustained(), m.saturation()
        shown = (f"{level.requests_per_s:.1f} | {level.inputs_per_s:.1f} | {level.concurrency} | {level.p95_ms:.0f}"
                 if level else "— | — | — | —")
        lines.append(f"| {m.model} | {m.backend} | {m.machine.label} ({m.machine.cores} vCPU, "
                     f"{m.machine.gpu or 'no GPU'}) | {m.shape}: {m.inputs_per_request} text"
                     f"{'s' * (m.inputs_per_request != 1)} | {shown} | {top.requests_per_s:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instance-type", default=os.environ.get(ENV_INSTANCE_TYPE),
                        help=f"the cloud instance type this machine is (default: ${ENV_INSTANCE_TYPE}; none: 'local')")
    parser.add_argument("--backends", default="torch,onnx-int8",
                        help=f"comma-separated: {', '.join(_capacity.BACKENDS)}")
    parser.add_argument("--shapes", default="query,batch", help=f"comma-separated: {', '.join(_capacity.SHAPES)}")
    parser.add_argument("--p95-ms", type=float, default=_capacity.DEFAULT_P95_MS, help="p95 latency target")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each level")
    parser.add_argument("--threads", type=int, default=0, help="torch/ONNX threads (0: one per core)")
    parser.add_argument("--max-concurrency", type=int, default=LEVELS[-1])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="capacity file to merge into")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [b for b in backends if b not in _capacity.BACKENDS] + [s for s in shapes if s not in _capacity.SHAPES]
    if unknown:
        parser.error(f"unknown backend or shape: {', '.join(unknown)}")
    measurements = run(backends=backends, shapes=shapes, instance_type=args.instance_type, p95_ms=args.p95_ms,
                       seconds=args.seconds, warmup=args.warmup, threads=args.threads,
                       max_concurrency=args.max_concurrency)
    held = _capacity.write(args.out, measurements)
    print(f"\n{table(measurements)}\n\nwritten to {args.out} ({len(held)} measurements in the file)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
