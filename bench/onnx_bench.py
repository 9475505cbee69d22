"""`make bench`, second part: the ONNX backend against the torch server, the ONNX and torch in-process limits
and infinity-emb's ONNX engine, side by side in one run, appended to bench/results.md.

Systems, all on the embedded all-MiniLM-L6-v2 with the same threads:
- torch limit: sentence-transformers `encode` in-process (bench/limit.py);
- ONNX limit: sentence-transformers' ONNX backend in-process on the fp32 graph the artifact carries (it needs
  optimum, which pins older transformers: it runs with the peer's Python);
- searchbox torch, searchbox fp32 ONNX, searchbox int8: `serve` on the embedded directory and on artifacts built
  here with packaging/build_artifact.py --backend onnx [--quantize int8];
- infinity-emb 0.0.78 with its optimum/ONNX engine, on the fp32 artifact directory.
Rerank 1 query x 20 documents: searchbox int8 (fp32 where int8 misses its gate) against CrossEncoder in-process.

    .venv/bin/python -m bench.onnx_bench [--seconds 3] [--rounds 2] [--out bench/results.md]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

from bench.run import (
    PEER_NAME, PEER_VENV, ROOT, Figure, Limit, Scenario, Server, build_scenarios, ensure_peer, fmt, machine_line,
    measure_http, measure_limit, peer_body, ratio, searchbox_body, start_peer, start_searchbox, windows,
)
from bench.texts import SHORT
from model_handlers.embedded import embedded_model_dir

INFINITY_ONNX = f"{PEER_NAME} onnx"
SYSTEMS = ("torch limit", "onnx limit", "searchbox torch", "searchbox fp32", "searchbox int8", INFINITY_ONNX)


def build(model_dir: Path, out: Path, *flags: str) -> Path:
    """An artifact of `model_dir` built by the packaging script, unpacked; the script's report on stdout."""
    archive = out / "model.tar.gz"
    result = subprocess.run([sys.executable, str(ROOT / "packaging" / "build_artifact.py"), str(model_dir), "-o",
                             str(archive), *flags], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "build failed")
    print("  " + " ".join(line.strip() for line in result.stdout.splitlines() if "onnx:" in line), flush=True)
    with tarfile.open(archive) as tar:
        tar.extractall(out / "model", filter="data")
    return out / "model"


def infinity_view(model_dir: Path, view: Path) -> Path:
    """The fp32 artifact as infinity 0.0.78's optimum engine can open it: one model.onnx at the top of a directory
    it is started in (given an absolute path, it passes optimum 2 an absolute file name, which optimum refuses)."""
    view.mkdir()
    for entry in model_dir.iterdir():
        if entry.is_file() and entry.suffix != ".safetensors":
            (view / entry.name).symlink_to(entry)
    (view / "model.onnx").symlink_to(model_dir / "onnx" / "model.onnx")
    return view


def measure(scenarios: list[Scenario], limits: dict[str, tuple[Limit, Path | None]],
            servers: dict[str, tuple[Server, str, Callable]], seconds: float, warmup: float) -> None:
    for scenario in scenarios:
        line = [f"  {scenario.title:<28}"]
        for name, (limit, model_dir) in limits.items():
            figure = measure_limit(scenario, limit, model_dir, seconds, warmup)
            scenario.keep(name, figure)
            line.append(f"{name} {figure.items_per_s:6.1f}/s")
        for name, (server, path, body) in servers.items():
            time.sleep(0.3)
            figure = measure_http(scenario, server, path, body, seconds, warmup)
            scenario.keep(name, figure)
            line.append(f"{name} {figure.items_per_s:6.1f}/s" + (f" ({figure.errors} errors)" if figure.errors else ""))
        print(" | ".join(line), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.md"), help="appended to ('' for nowhere)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    machine = machine_line()
    work = Path(tempfile.mkdtemp(prefix="searchbox-onnx-bench-"))
    model_dir = embedded_model_dir()
    print(f"machine: {machine}\nbuilding the ONNX artifacts in {work}", flush=True)
    fp32_dir = build(model_dir, work / "fp32", "--backend", "onnx")
    int8_dir = build(model_dir, work / "int8", "--backend", "onnx", "--quantize", "int8")
    peer = ensure_peer()
    scenarios = [s for s in build_scenarios(model_dir) if s.key in ("1x1", "32x1", "1x32", "4x32")]
    torch_limit = Limit(model_dir, 0)
    threads = torch_limit.threads
    onnx_limit = Limit(fp32_dir, threads, command=[str(PEER_VENV / "bin" / "python"), "-m", "bench.limit"], backend="onnx")
    limits = {"torch limit": (torch_limit, None), "onnx limit": (onnx_limit, None)}
    servers: dict[str, tuple[Server, str, Callable]] = {}
    memory: dict[str, float] = {}
    try:
        servers["searchbox torch"] = (start_searchbox(model_dir, threads, work), "/invocations", searchbox_body)
        servers["searchbox fp32"] = (start_searchbox(fp32_dir, threads, work), "/invocations", searchbox_body)
        servers["searchbox int8"] = (start_searchbox(int8_dir, threads, work), "/invocations", searchbox_body)
        infinity_dir = infinity_view(fp32_dir, work / "infinity")
        servers[INFINITY_ONNX] = (start_peer(peer, Path("."), threads, work, engine="optimum", name=INFINITY_ONNX,
                                             cwd=infinity_dir), "/embeddings", peer_body)
        starts = {name: server.start_s for name, (server, _, _) in servers.items()}
        for number in range(args.rounds):
            print(f"round {number + 1}/{args.rounds} ({threads} threads everywhere)", flush=True)
            measure(scenarios, limits, servers, args.seconds, args.warmup)
        memory = {name: server.rss_mb() for name, (server, _, _) in servers.items()}
    finally:
        for server, _, _ in servers.values():
            server.stop()
        onnx_limit.close()
    rerank, rerank_note = run_rerank(torch_limit, threads, work, args)
    torch_limit.close()
    text = report(scenarios, rerank, rerank_note, memory, starts, machine, args, time.perf_counter() - started)
    print("\n" + text)
    if args.out:
        with open(args.out, "a") as out:
            out.write("\n" + text)
        print(f"appended to {args.out}")
    return 0


def run_rerank(limit: Limit, threads: int, work: Path, args) -> tuple[Scenario, str]:
    """Rerank 1 x 20 on the MiniLM cross-encoder: searchbox int8 (fp32 if int8 misses its gate) vs CrossEncoder."""
    documents = windows(SHORT, 20, 4)
    scenario = Scenario("rerank", "rerank 1 query × 20 documents", 1, documents, documents, rerank=True)
    source = work / "cross-encoder"
    subprocess.run([sys.executable, "-m", "bench.crossencoder", str(source)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        served, note = build(source, work / "ce-int8", "--backend", "onnx", "--quantize", "int8"), "int8"
    except RuntimeError as exc:
        served, note = build(source, work / "ce-fp32", "--backend", "onnx"), f"fp32 (int8 refused: {exc})"
    server = start_searchbox(served, threads, work)
    try:
        for _ in range(args.rounds):
            figure = measure_limit(scenario, limit, source, args.seconds, args.warmup)
            scenario.keep("torch limit", figure)
            scenario.keep("searchbox int8", measure_http(scenario, server, "/invocations", searchbox_body,
                                                         args.seconds, args.warmup))
    finally:
        server.stop()
    return scenario, note


def report(scenarios: list[Scenario], rerank: Scenario, rerank_note: str, memory: dict[str, float],
           starts: dict[str, float], machine: str, args, seconds: float) -> str:
    names = [name for name in SYSTEMS]
    lines = [
        "# ONNX backend", "",
        f"`make bench` second part (bench/onnx_bench.py), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{seconds:.0f} s; best of {args.rounds} rounds of {args.seconds:g} s.", "",
        f"- machine: {machine}",
        "- onnx limit: sentence-transformers' ONNX backend in-process on the artifact's fp32 graph; searchbox fp32 / "
        f"int8: `serve` on artifacts built by build_artifact.py --backend onnx [--quantize int8]; {INFINITY_ONNX}: "
        "its optimum engine on the fp32 artifact directory", "",
        "| scenario | unit | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    value: dict[str, Callable[[Figure], float]] = {}
    for scenario in scenarios:
        unit = "req/s" if scenario.key == "1x1" else "texts/s"
        pick = (lambda f: f.requests_per_s) if unit == "req/s" else (lambda f: f.items_per_s)
        value[scenario.key] = pick
        cells = [fmt(scenario.figures[n] and pick(scenario.figures[n])) if n in scenario.figures else "—"
                 for n in names]
        lines.append(f"| {scenario.title} | {unit} | " + " | ".join(cells) + " |")
        if scenario.key == "1x1":
            cells = [fmt(scenario.figures[n].p50_ms, 2) if n in scenario.figures else "—" for n in names]
            lines.append(f"| {scenario.title}, p50 latency | ms | " + " | ".join(cells) + " |")
    cells = [fmt(memory.get(n), 0) for n in names]
    lines.append("| resident memory after the run | MB | " + " | ".join(cells) + " |")
    cells = [fmt(starts.get(n), 2) for n in names]
    lines.append("| start to first ready | s | " + " | ".join(cells) + " |")
    by_key = {s.key: s for s in scenarios}

    def get(key: str, system: str, attr: str = "items_per_s") -> float | None:
        figure = by_key.get(key, rerank if key == "rerank" else None)
        figure = figure.figures.get(system) if figure else None
        return getattr(figure, attr) if figure else None

    def target(label: str, a: float | None, b: float | None, k: float, lower_is_better: bool = False) -> str:
        if not a or not b:
            return f"- — {label}: —"
        ok = a <= k * b if lower_is_better else a >= k * b
        return f"- {'✅' if ok else '❌'} {label}: {ratio(a, b)}"

    rerank_line = (f"| rerank 1 query × 20 documents ({rerank_note}) | req/s | "
                   f"{fmt(get('rerank', 'torch limit', 'requests_per_s'))} (CrossEncoder) | — | — | — | "
                   f"{fmt(get('rerank', 'searchbox int8', 'requests_per_s'))} | — |")
    lines += [rerank_line, "", "## ONNX targets", "",
              target("fp32 ≥ 0.95 × ONNX limit at 4 × 32", get("4x32", "searchbox fp32"), get("4x32", "onnx limit"), 0.95),
              target("fp32 ≥ 0.9 × ONNX limit at 32 × 1", get("32x1", "searchbox fp32"), get("32x1", "onnx limit"), 0.9),
              target("int8 ≥ 3.5 × torch limit at 4 × 32", get("4x32", "searchbox int8"), get("4x32", "torch limit"), 3.5),
              target("int8 ≥ 1.2 × infinity ONNX at 4 × 32", get("4x32", "searchbox int8"), get("4x32", INFINITY_ONNX), 1.2),
              target("int8 ≥ 1.2 × infinity ONNX at 32 × 1", get("32x1", "searchbox int8"), get("32x1", INFINITY_ONNX), 1.2),
              target("int8 1 × 1 p50 ≤ 0.6 × torch server's", get("1x1", "searchbox int8", "p50_ms"),
                     get("1x1", "searchbox torch", "p50_ms"), 0.6, lower_is_better=True),
              target("int8 server memory ≤ 0.6 × torch server's", memory.get("searchbox int8"),
                     memory.get("searchbox torch"), 0.6, lower_is_better=True),
              target("rerank 1 × 20 int8 ≥ 1.8 × CrossEncoder in-process", get("rerank", "searchbox int8", "requests_per_s"),
                     get("rerank", "torch limit", "requests_per_s"), 1.8)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
