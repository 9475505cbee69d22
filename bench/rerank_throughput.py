"""Rerank throughput: the cross-encoder served by searchbox beside sentence-transformers' CrossEncoder.predict.

Both score the same (query, document) pairs with the same weights: a one-label BERT cross-encoder built
from the embedded MiniLM (random head: the scores mean nothing, the compute is a MiniLM-L6 reranker's).
Rounds alternate between the two, in one run, so both see the same machine; the answer is the median
pairs/s of each and their ratio. The server's first answer is also checked against CrossEncoder's scores.

    .venv/bin/python bench/rerank_throughput.py [--requests 48] [--documents 32] [--clients 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
QUERY = "which rivers flow through old market towns in the north"
WORDS = ("the river runs past an old mill where farmers bring grain every autumn while children play near "
         "water and birds sing in tall trees as the baker sells warm bread at the market on sunday morning "
         "before trains leave the station for the coast").split()


def build_cross_encoder(out_dir: Path) -> Path:
    import torch
    from transformers import BertForSequenceClassification

    from model_handlers.embedded import embedded_model_dir

    source = embedded_model_dir()
    torch.manual_seed(0)
    BertForSequenceClassification.from_pretrained(str(source), num_labels=1).save_pretrained(
        str(out_dir), safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, out_dir / name)
    return out_dir


def make_requests(count: int, documents: int, seed: int = 7) -> list[list[str]]:
    """`count` requests of `documents` documents each, 12 to 120 words long (a search result page's snippets)."""
    rng = random.Random(seed)
    return [[" ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 120))) for _ in range(documents)]
            for _ in range(count)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_dir: Path, threads: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "SEARCHBOX_MODEL_DIR": str(model_dir), "SAGEMAKER_BIND_TO_PORT": str(port),
           "SEARCHBOX_TORCH_THREADS": str(threads), "SEARCHBOX_DEVICE": "cpu"}
    process = subprocess.Popen([str(Path(sys.executable).with_name("serve"))], env=env, cwd=ROOT,
                               stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited:\n{log_path.read_text()[-2000:]}")
        try:
            if requests.get(url + "/ping", timeout=2).status_code == 200:
                return process, url
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise RuntimeError("serve did not become ready in 180 s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def server_round(url: str, batches: list[list[str]], clients: int) -> float:
    """Pairs/s with `clients` concurrent callers, each sending whole requests."""
    def call(session_docs):
        session, docs = session_docs
        response = session.post(url + "/v1/rerank", json={"query": QUERY, "documents": docs,
                                                          "return_documents": False}, timeout=300)
        response.raise_for_status()

    sessions = [requests.Session() for _ in range(clients)]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(call, [(sessions[i % clients], docs) for i, docs in enumerate(batches)]))
    return sum(len(b) for b in batches) / (time.perf_counter() - started)


def reference_round(model, batches: list[list[str]], batch_size: int) -> float:
    pairs = [(QUERY, doc) for docs in batches for doc in docs]
    started = time.perf_counter()
    model.predict(pairs, batch_size=batch_size, show_progress_bar=False)
    return len(pairs) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48, help="rerank requests per round")
    parser.add_argument("--documents", type=int, default=32, help="documents per request")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP callers")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="CrossEncoder.predict batch size")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, both sides")
    args = parser.parse_args()

    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="rerank-bench-"))
    model_dir = build_cross_encoder(work / "tiny-reranker")
    batches = make_requests(args.requests, args.documents)
    reference = CrossEncoder(str(model_dir), device="cpu", local_files_only=True)
    process, url = start_server(model_dir, args.threads, work / "serve.log")
    try:
        answer = requests.post(url + "/v1/rerank", json={"query": QUERY, "documents": batches[0]}).json()
        expected = reference.predict([(QUERY, d) for d in batches[0]])
        served = np.zeros(len(batches[0]))
        for result in answer["results"]:
            served[result["index"]] = result["relevance_score"]
        worst = float(np.abs(served - expected).max())
        reference_round(reference, batches[:4], args.batch_size)  # warm both sides up
        server_round(url, batches[:4], args.clients)
        ours, theirs = [], []
        for round_no in range(args.rounds):
            theirs.append(reference_round(reference, batches, args.batch_size))
            ours.append(server_round(url, batches, args.clients))
            print(f"round {round_no + 1}: CrossEncoder.predict {theirs[-1]:8.1f} pairs/s   "
                  f"searchbox HTTP {ours[-1]:8.1f} pairs/s", flush=True)
    finally:
        stop(process)
        shutil.rmtree(work, ignore_errors=True)
    pairs = args.requests * args.documents
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(f"\n{pairs} pairs a round ({args.requests} requests x {args.documents} documents, 12-120 words), "
          f"{args.clients} clients, {args.threads} torch threads, {args.rounds} rounds")
    print(f"CrossEncoder.predict (batch {args.batch_size}, in process): {statistics.median(theirs):8.1f} pairs/s")
    print(f"searchbox /v1/rerank (HTTP, gunicorn):       {statistics.median(ours):8.1f} pairs/s")
    print(f"ratio searchbox / CrossEncoder: {ratio:.2f}   max |score difference|: {worst:.2e}")


if __name__ == "__main__":
    main()
