"""`make bench`: searchbox against the limit and a peer, side by side in one run, as a Markdown table.

Systems, all on the embedded all-MiniLM-L6-v2 with the same torch threads:
- limit: sentence-transformers `encode` in-process (bench/limit.py, a process of its own);
- searchbox: a real `serve` (gunicorn) on a free port, over HTTP `/invocations`;
- infinity-emb 0.0.78 (torch engine, mean pooling), installed on first use into bench/.peer-venv.
Then images (bench/multimodal.py): a random CLIP through `serve` beside its own forward pass in-process; and task
adapters (bench/adapters.py): five tasks mixed per pass vs one task, and per-row LoRA vs merged weights; four
jina-embeddings-v5-text tasks mixed per pass vs one task on a small decoder.
Multi-vector: a small ColBERT PyLate makes from MiniLM, searchbox over HTTP against PyLate 1.6.0's own
`ColBERT.encode` in-process (bench/colbert_limit.py, in PyLate's venv, made on first use as the tests make it).
Scenarios run in rounds, the three systems back to back inside each round, and the best round of
each system counts: on a shared machine noise only ever slows a system down.

    .venv/bin/python -m bench.run [--seconds 3] [--rounds 3] [--no-peer] [--out bench/results.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import orjson

from bench.loadgen import LoadResult, run_load
from bench.servers import ROOT, SERVER_ENV, Server, free_port, http_status, omp_policy, start_searchbox, start_server
from bench.texts import RERANK_QUERY, SHORT, long_texts
from model_handlers.embedded import embedded_model_dir

PEER_VENV = ROOT / "bench" / ".peer-venv"
# the optimum extra brings infinity's ONNX engine, and sentence-transformers' ONNX backend (the ONNX limit)
PEER_SPEC = ["torch==2.13.0", "infinity-emb[server,torch,optimum]==0.0.78"]
PEER_NAME = "infinity-emb 0.0.78"
PEER_MODEL = "bench-model"


def ensure_peer() -> Path:
    """infinity-emb in its own venv (never a project dependency); installed on first use and when PEER_SPEC changes."""
    executable = PEER_VENV / "bin" / "infinity_emb"
    spec_file = PEER_VENV / ".searchbox-peer-spec"
    wanted = " ".join(PEER_SPEC)
    if not executable.exists() or not spec_file.is_file() or spec_file.read_text() != wanted:
        print(f"installing {PEER_NAME} ({wanted}) into {PEER_VENV}...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "-q", *PEER_SPEC], check=True)
        spec_file.write_text(wanted)
    return executable


def start_peer(executable: Path, model_dir: Path, threads: int, log_dir: Path, engine: str = "torch",
               name: str = PEER_NAME, cwd: Path = ROOT) -> Server:
    port = free_port()
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0",
           "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": str(threads)}
    command = [str(executable), "v2", "--model-id", str(model_dir), "--served-model-name", PEER_MODEL,
               "--engine", engine, "--device", "cpu", "--pooling-method", "mean",
               "--host", "127.0.0.1", "--port", str(port), "--no-model-warmup", "--log-level", "warning"]
    return start_server(name, command, env, port, "/health", log_dir, cwd)




class Limit:
    """The in-process reference (bench/limit.py) in its own process, one JSON command per line.

    `command` runs another reference speaking the same protocol: bench.limit in another interpreter (the peer's,
    for sentence-transformers' ONNX backend), or bench/colbert_limit.py in PyLate's venv.
    `backend`: torch, or onnx (MODEL_DIR/onnx/model.onnx; bench.limit only). `device`, `dtype` (bench.limit only): where
    and in which torch dtype it loads the models (bench/gpu.py).
    """

    def __init__(self, model_dir: Path, threads: int, command: list[str] | None = None, backend: str = "torch",
                 device: str = "cpu", dtype: str | None = None):
        # the same OpenMP wait policy as `serve` sets, so that the limit and searchbox differ only in serving
        env = {**os.environ, "OMP_WAIT_POLICY": omp_policy()}
        command = command or [sys.executable, "-m", "bench.limit"]
        extra = [] if backend == "torch" else [backend]
        extra += [] if device == "cpu" else ["--device", device]
        extra += ["--dtype", dtype] if dtype else []
        self.process = subprocess.Popen([*command, str(model_dir), str(threads), *extra],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        hello = json.loads(self.process.stdout.readline() or '{"ready": false}')
        if not hello.get("ready"):
            raise RuntimeError("the in-process reference failed to start")
        self.rss_ready_mb = hello["rss_mb"]
        self.threads = hello["threads"]

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


# --- measurements --------------------------------------------------------------------------------


@dataclass
class Figure:
    """One system on one scenario: the best round."""

    items_per_s: float = 0.0
    requests_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    note: str = ""
    #: CPU milliseconds the system under test spent per input (excludes the load generator)
    cpu_ms_per_item: float = 0.0

    @classmethod
    def of(cls, requests: int, items: int, seconds: float, latencies: list[float], cpu_s: float,
           errors: int = 0, note: str = "") -> "Figure":
        ordered = sorted(latencies) or [0.0]
        return cls(items / seconds, requests / seconds, 1000 * statistics.median(ordered),
                   1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], errors, note,
                   1000 * cpu_s / max(items, 1))


@dataclass
class Scenario:
    key: str
    title: str
    clients: int
    inputs: list[list[str]]  # the texts of each request body (or documents, for rerank)
    limit_inputs: list[list[str]]  # what the in-process reference encodes per call
    rerank: bool = False
    figures: dict[str, Figure] = field(default_factory=dict)

    def keep(self, system: str, figure: Figure) -> None:
        best = self.figures.get(system)
        if best is None or figure.items_per_s > best.items_per_s:
            self.figures[system] = figure


def windows(texts: list[str], size: int, count: int) -> list[list[str]]:
    return [[texts[(start * size + i) % len(texts)] for i in range(size)] for start in range(count)]


def searchbox_body(texts: list[str], rerank: bool) -> bytes:
    if rerank:
        return orjson.dumps({"data": {"query": RERANK_QUERY, "documents": [{"text": t} for t in texts]}})
    return orjson.dumps({"data": [{"text": t} for t in texts]})


def peer_body(texts: list[str], rerank: bool) -> bytes:
    if rerank:
        return orjson.dumps({"model": PEER_MODEL, "query": RERANK_QUERY, "documents": texts})
    return orjson.dumps({"model": PEER_MODEL, "input": texts})


def measure_http(scenario: Scenario, server: Server, path: str, body: Callable[[list[str], bool], bytes],
                 seconds: float, warmup: float) -> Figure:
    bodies = [body(texts, scenario.rerank) for texts in scenario.inputs]
    cpu = []
    result: LoadResult = run_load(server.url, path, bodies, scenario.clients, seconds, warmup,
                                  on_start=lambda: cpu.append(server.cpu_s()))
    cpu_s = server.cpu_s() - cpu[0]
    per_request = len(scenario.inputs[0])
    note = f"{result.errors} errors, first: {result.first_error}" if result.errors else ""
    return Figure.of(result.requests, (result.requests - result.errors) * per_request, result.seconds,
                     result.latencies, cpu_s, result.errors, note)


def measure_limit(scenario: Scenario, limit: Limit, model_dir: Path | None, seconds: float,
                  warmup: float) -> Figure:
    if scenario.rerank:
        answer = limit.ask(op="rerank", model_dir=str(model_dir), query=RERANK_QUERY,
                           documents=scenario.limit_inputs[0], seconds=seconds, warmup=warmup)
    else:
        answer = limit.ask(op="embed", batches=scenario.limit_inputs, seconds=seconds, warmup=warmup)
    return Figure.of(answer["calls"], answer["items"], answer["seconds"], answer["latencies"], answer["cpu_s"])


def run_round(scenarios: list[Scenario], limit: Limit, servers: dict[str, tuple[Server, str, Callable]],
              model_dir: Path | None, seconds: float, warmup: float) -> None:
    for scenario in scenarios:
        figure = measure_limit(scenario, limit, model_dir, seconds, warmup)
        scenario.keep("limit", figure)
        line = [f"  {scenario.title:<34} limit {figure.items_per_s:7.1f}/s p50 {figure.p50_ms:6.1f} ms "
                f"cpu {figure.cpu_ms_per_item:5.2f} ms/item"]
        for system, (server, path, body) in servers.items():
            time.sleep(0.3)  # let the previous system's threads go idle
            figure = measure_http(scenario, server, path, body, seconds, warmup)
            scenario.keep(system, figure)
            line.append(f"{system.split()[0]} {figure.items_per_s:7.1f}/s p50 {figure.p50_ms:6.1f} ms "
                        f"cpu {figure.cpu_ms_per_item:5.2f} ms/item" + (f" ({figure.errors} errors)" if figure.errors else ""))
        print(" | ".join(line), flush=True)


# --- report --------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "—"


def fmt(value: float | None, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if value else "—"


def report(scenarios: list[Scenario], extra: dict, pending: dict[str, str]) -> tuple[str, list[str]]:
    peer = PEER_NAME
    lines = [
        "## Throughput, latency, memory, start", "",
        f"| scenario | unit | limit (in-process) | searchbox | {peer} | searchbox / limit | searchbox / peer |",
        "|---|---|---|---|---|---|---|",
    ]
    checks: list[str] = []
    by_key = {s.key: s for s in scenarios}
    for scenario in scenarios:
        lim, sb, pr = (scenario.figures.get(k) for k in ("limit", "searchbox", peer))
        if scenario.key in pending:
            lines.append(f"| {scenario.title} | — | — | pending | — | — | — |")
            continue
        unit = "req/s" if scenario.key in ("1x1", "rerank") else "docs/s" if scenario.key in MULTI_VECTOR else "texts/s"
        value = (lambda f: f.requests_per_s) if unit == "req/s" else (lambda f: f.items_per_s)
        batched = " (batches of 32)" if scenario.key == "32x1" else ""
        lines.append(f"| {scenario.title} | {unit} | {fmt(lim and value(lim))}{batched} "
                     f"| {fmt(sb and value(sb))} | {fmt(pr and value(pr))} "
                     f"| {ratio(sb and value(sb), lim and value(lim))} | {ratio(sb and value(sb), pr and value(pr))} |")
        if scenario.key in ("1x1", "rerank"):
            for q in ("p50", "p99"):
                def get(figure, q=q):
                    return getattr(figure, f"{q}_ms")
                delta = f"{get(sb) - get(lim):+.1f} ms" if sb and lim else "—"
                lines.append(f"| {scenario.title}, {q} latency (lower is better) | ms | {fmt(lim and get(lim), 2)} | "
                             f"{fmt(sb and get(sb), 2)} | {fmt(pr and get(pr), 2)} | {delta} | "
                             f"{ratio(sb and get(sb), pr and get(pr))} |")
    lines.append(f"| resident memory, model ready | MB | {fmt(extra.get('limit_rss_ready'), 0)} | "
                 f"{fmt(extra.get('sb_rss_ready'), 0)} | {fmt(extra.get('peer_rss_ready'), 0)} | "
                 f"{_delta_mb(extra.get('sb_rss_ready'), extra.get('limit_rss_ready'))} | |")
    lines.append(f"| resident memory, after the run | MB | {fmt(extra.get('limit_rss_end'), 0)} | "
                 f"{fmt(extra.get('sb_rss_end'), 0)} | {fmt(extra.get('peer_rss_end'), 0)} | "
                 f"{_delta_mb(extra.get('sb_rss_end'), extra.get('limit_rss_end'))} | |")
    lines.append(f"| start to first ready (`/ping` 200; peer `/health`) | s | — | {fmt(extra.get('sb_start'), 2)} | "
                 f"{fmt(extra.get('peer_start'), 2)} | | |")
    lines += ["", "## CPU per input", "",
              "CPU milliseconds the system under test spent per input (the load generator excluded; lower is better):", "",
              f"| scenario | limit | searchbox | {peer} | searchbox / limit |", "|---|---|---|---|---|"]
    for scenario in scenarios:
        if scenario.key in pending:
            continue
        lim, sb, pr = (scenario.figures.get(k) for k in ("limit", "searchbox", peer))
        cpu = [f and f.cpu_ms_per_item for f in (lim, sb, pr)]
        lines.append(f"| {scenario.title} | {fmt(cpu[0], 2)} | {fmt(cpu[1], 2)} | {fmt(cpu[2], 2)} "
                     f"| {ratio(cpu[1], cpu[0])} |")
    for key, why in pending.items():
        lines.append(f"\n{by_key[key].title}: pending — {why}")

    def get(key, system, attr="items_per_s"):
        figure = by_key[key].figures.get(system) if key in by_key else None
        return getattr(figure, attr) if figure else None

    def check(label: str, ok: bool | None, detail: str) -> None:
        mark = "—" if ok is None else ("✅" if ok else "❌")
        checks.append(f"- {mark} {label}: {detail}")

    def ge(a, b, k):
        return None if not a or not b else a >= k * b

    a, b = get("4x32", "searchbox"), get("4x32", "limit")
    check("4 × 32 texts ≥ 1.0 × limit", ge(a, b, 1.0), ratio(a, b))
    a, b, c = get("32x1", "searchbox"), get("32x1", "limit"), get("32x1", peer)
    check("32 × 1 text ≥ 0.9 × batched limit", ge(a, b, 0.9), ratio(a, b))
    check("32 × 1 text ≥ 1.2 × infinity-emb", ge(a, c, 1.2), ratio(a, c))
    a, b = get("rerank", "searchbox"), get("rerank", "limit")
    check("rerank 1 × 20 ≥ 0.95 × limit", ge(a, b, 0.95), ratio(a, b))
    a, b = get("1x1", "searchbox", "p50_ms"), get("1x1", "limit", "p50_ms")
    check("1 × 1 p50 ≤ limit + 3 ms", None if not a or not b else a <= b + 3, f"+{a - b:.2f} ms" if a and b else "—")
    a, b = get("mv4x32", "searchbox"), get("mv4x32", "limit")
    check("multi-vector 4 × 32 documents ≥ 0.90 × PyLate in-process", ge(a, b, 0.90), ratio(a, b))
    a, b = extra.get("sb_rss_end"), extra.get("limit_rss_end")
    check("resident memory ≤ in-process + 150 MB", None if not a or not b else a <= b + 150, _delta_mb(a, b))
    a = extra.get("sb_start")
    check("first /ping 200 within 10 s", None if not a else a <= 10, f"{a:.2f} s" if a else "—")
    return "\n".join(lines), checks


def _delta_mb(a, b) -> str:
    return f"{a - b:+.0f} MB" if a and b else "—"


def machine_line() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs ({cpu}), load average before the run {load}, niceness {os.nice(0)}"


# --- main ----------------------------------------------------------------------------------------


def build_scenarios(model_dir: Path) -> list[Scenario]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_truncation()

    class _Encode:  # long_texts wants `.encode(text, add_special_tokens=False)` returning a sized value
        @staticmethod
        def encode(text, add_special_tokens=False):
            return tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    long = long_texts(_Encode, count=32)
    singles = [[t] for t in SHORT]
    thirty_two = windows(SHORT, 32, 8)
    return [
        Scenario("1x1", "1 client × 1 text", 1, singles, singles),
        Scenario("32x1", "32 clients × 1 text", 32, singles, thirty_two),
        Scenario("1x32", "1 client × 32 texts", 1, thirty_two, thirty_two),
        Scenario("4x32", "4 clients × 32 texts", 4, thirty_two, thirty_two),
        Scenario("long", "4 clients × 8 long texts (~250 tokens)", 4, windows(long, 8, 4), windows(long, 8, 4)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per system per scenario per round")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best round of each system counts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of every system (0: torch's default)")
    parser.add_argument("--no-peer", action="store_true", help=f"skip {PEER_NAME}")
    parser.add_argument("--no-rerank", action="store_true", help="skip the rerank scenario")
    parser.add_argument("--no-multimodal", action="store_true", help="skip the multimodal (images) scenarios")
    parser.add_argument("--no-multi-vector", action="store_true", help="skip the multi-vector (ColBERT) scenarios")
    parser.add_argument("--no-adapters", action="store_true", help="skip the task adapter scenarios")
    parser.add_argument("--only", default="",
                        help="comma-separated scenario keys (1x1,32x1,1x32,4x32,long,rerank,mv1x32,mv4x32,multimodal,adapters)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for searchbox only (repeatable), to try a setting")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=VALUE",
                        help="also measure a second searchbox with this extra environment (console only)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.md"), help="where to write the table ('' for nowhere)")
    args = parser.parse_args(argv)
    SERVER_ENV.update(item.split("=", 1) for item in args.server_env)

    machine = machine_line()
    model_dir = embedded_model_dir()
    log_dir = Path(tempfile.mkdtemp(prefix="searchbox-bench-"))
    started = time.perf_counter()
    print(f"machine: {machine}\nmodel: {model_dir}\nlogs: {log_dir}", flush=True)
    peer_exe = None if args.no_peer else ensure_peer()
    scenarios = build_scenarios(model_dir)
    if args.only:
        keys = set(args.only.split(","))
        scenarios = [s for s in scenarios if s.key in keys]
    extra: dict = {}
    pending: dict[str, str] = {}
    limit = Limit(model_dir, args.threads)
    threads = limit.threads
    extra["limit_rss_ready"] = limit.rss_ready_mb
    servers: dict[str, tuple[Server, str, Callable]] = {}
    try:
        sb = start_searchbox(model_dir, threads, log_dir)
        servers["searchbox"] = (sb, "/invocations", searchbox_body)
        extra.update(sb_start=sb.start_s, sb_rss_ready=sb.rss_ready_mb)
        print(f"searchbox ready in {sb.start_s:.2f} s, {sb.rss_ready_mb:.0f} MB", flush=True)
        if args.variant:
            variant_env = dict(item.split("=", 1) for item in args.variant)
            servers["variant"] = (start_searchbox(model_dir, threads, log_dir, variant_env), "/invocations",
                                  searchbox_body)
        if peer_exe:
            peer = start_peer(peer_exe, model_dir, threads, log_dir)
            servers[PEER_NAME] = (peer, "/embeddings", peer_body)
            extra.update(peer_start=peer.start_s, peer_rss_ready=peer.rss_ready_mb)
            print(f"{PEER_NAME} ready in {peer.start_s:.2f} s, {peer.rss_ready_mb:.0f} MB", flush=True)
        for number in range(args.rounds):
            print(f"round {number + 1}/{args.rounds} ({threads} torch threads everywhere)", flush=True)
            run_round(scenarios, limit, servers, None, args.seconds, args.warmup)
        extra["limit_rss_end"] = limit.ask(op="rss")["rss_mb"]
        extra["sb_rss_end"] = sb.rss_mb()
        print("resident memory after the run: " + ", ".join(
            f"{name} {server.rss_mb():.0f} MB" for name, (server, _, _) in servers.items())
            + f", limit {extra['limit_rss_end']:.0f} MB", flush=True)
        if peer_exe:
            extra["peer_rss_end"] = servers[PEER_NAME][0].rss_mb()
    finally:
        for server, _, _ in servers.values():
            server.stop()
    servers.clear()
    if not args.no_rerank and (not args.only or "rerank" in args.only.split(",")):
        scenarios.append(run_rerank(limit, threads, peer_exe, log_dir, args, pending))
    limit.close()
    if not args.no_multi_vector and (not args.only or set(MULTI_VECTOR) & set(args.only.split(","))):
        scenarios.extend(run_multi_vector(threads, log_dir, args, pending))
    multimodal_section = ""
    if not args.no_multimodal and (not args.only or "multimodal" in args.only.split(",")):
        from bench import multimodal

        os.environ.setdefault("OMP_WAIT_POLICY", omp_policy())  # the in-process limit as `serve` runs torch
        multimodal_section = "\n" + multimodal.run(threads, log_dir, args.seconds, args.warmup, args.rounds,
                                                   start_searchbox)
    if not args.no_adapters and (not args.only or "adapters" in args.only.split(",")):
        from bench import adapters

        multimodal_section += "\n" + adapters.run(args.seconds, args.warmup, args.rounds, threads)
        multimodal_section += "\n" + adapters.run_v5(args.seconds, args.warmup, args.rounds, threads)

    table, checks = report(scenarios, extra, pending)
    header = (f"# searchbox benchmark\n\n`make bench` ({' '.join(sys.argv[1:]) or 'defaults'}), "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.perf_counter() - started:.0f} s.\n\n"
              f"- machine: {machine}\n- model: all-MiniLM-L6-v2 (embedded), {threads} torch threads in every system; OpenMP wait "
              f"policy {omp_policy()} in the limit and searchbox (what `serve` sets), the peer as shipped\n"
              f"- each figure: the best of {args.rounds} rounds of {args.seconds:g} s (after {args.warmup:g} s warm-up); "
              "the systems run back to back within a round, the load generator (asyncio, keep-alive) shares the cores\n"
              "- limit: sentence-transformers `encode` in-process on the same inputs per call (for 32 clients × 1: "
              "batches of 32, the batched limit); searchbox: `serve` (gunicorn) over `/invocations`; "
              f"{PEER_NAME}: torch engine, `--pooling-method mean`, `/embeddings`\n"
              "- multi-vector: a small ColBERT PyLate 1.6.0 makes from MiniLM (Dense 384 → 128); limit: PyLate's "
              "`ColBERT.encode(..., is_query=False)` in-process on the same 32 documents per call; searchbox: the "
              "client's document envelope to `/invocations`, every token vector answered as JSON floats\n\n")
    text = header + table + "\n" + multimodal_section + "\n## Targets\n\n" + "\n".join(checks) + "\n"
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
        print(f"written to {args.out}")
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


# keys of the multi-vector scenarios
MULTI_VECTOR = ("mv1x32", "mv4x32")


def run_multi_vector(threads: int, log_dir: Path, args, pending: dict[str, str]) -> list[Scenario]:
    """ColBERT documents, the client's envelope over HTTP against PyLate's in-process encode (both its own)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from reference_env import ReferenceUnavailable, pylate_python

    documents = windows(SHORT, 32, 8)
    scenarios = [Scenario("mv1x32", "multi-vector 1 client × 32 documents", 1, documents, documents),
                 Scenario("mv4x32", "multi-vector 4 clients × 32 documents", 4, documents, documents)]
    if args.only:
        scenarios = [s for s in scenarios if s.key in args.only.split(",")]
    try:
        python = str(pylate_python())
    except ReferenceUnavailable as exc:
        for scenario in scenarios:
            pending[scenario.key] = f"PyLate's venv cannot be made here ({str(exc).splitlines()[0]})"
        return scenarios
    colbert_dir = log_dir / "colbert"
    subprocess.run([python, "-m", "bench.colbert_limit", "build", str(embedded_model_dir()), str(colbert_dir)],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""})
    limit = Limit(colbert_dir, threads, command=[python, "-m", "bench.colbert_limit", "serve"])
    servers: dict[str, tuple[Server, str, Callable]] = {}
    try:
        sb = start_searchbox(colbert_dir, limit.threads, log_dir)
        servers["searchbox"] = (sb, "/invocations", searchbox_body)
        print(f"multi-vector (ColBERT from MiniLM): searchbox ready in {sb.start_s:.2f} s", flush=True)
        for number in range(args.rounds):
            print(f"multi-vector round {number + 1}/{args.rounds}", flush=True)
            run_round(scenarios, limit, servers, None, args.seconds, args.warmup)
    finally:
        for server, _, _ in servers.values():
            server.stop()
        limit.close()
    return scenarios


def run_rerank(limit: Limit, threads: int, peer_exe: Path | None, log_dir: Path, args,
               pending: dict[str, str]) -> Scenario:
    """Rerank 1 query × 20 documents on a cross-encoder built from MiniLM (its own servers)."""
    documents = windows(SHORT, 20, 4)
    scenario = Scenario("rerank", "rerank 1 query × 20 documents", 1, documents, documents, rerank=True)
    ce_dir = log_dir / "cross-encoder"
    subprocess.run([sys.executable, "-m", "bench.crossencoder", str(ce_dir)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers: dict[str, tuple[Server, str, Callable]] = {}
    try:
        try:
            sb = start_searchbox(ce_dir, threads, log_dir)
        except RuntimeError as exc:
            pending["rerank"] = f"searchbox does not serve the cross-encoder yet ({str(exc).splitlines()[0]})"
            return scenario
        status, body = http_status(sb.url + "/invocations", searchbox_body(documents[0], True))
        if status != 200:
            pending["rerank"] = f"searchbox answers the rerank envelope with {status}: {body[:200].decode(errors='replace')}"
            sb.stop()
            return scenario
        servers["searchbox"] = (sb, "/invocations", searchbox_body)
        if peer_exe:
            peer = start_peer(peer_exe, ce_dir, threads, log_dir)
            servers[PEER_NAME] = (peer, "/rerank", peer_body)
        print("rerank (cross-encoder built from MiniLM, random head)", flush=True)
        for _ in range(args.rounds):
            run_round([scenario], limit, servers, ce_dir, args.seconds, args.warmup)
    finally:
        for server, _, _ in servers.values():
            server.stop()
    return scenario


if __name__ == "__main__":
    sys.exit(main())
