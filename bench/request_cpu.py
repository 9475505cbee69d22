"""Where a request's CPU goes in a real `serve` under many small requests (32 clients x 1 text by default).

Prints, per request answered: the CPU of each process of the server (gunicorn's master and worker, nginx) and of the
load generator, the worker's busiest threads (the forward pass runs on the batcher's thread and torch's OpenMP
threads; the rest are gunicorn's request threads and the app's), and from /metrics what share of the wall time the
forward pass ran and how many texts a pass held. The profile behind README's "Performance" note on 32 x 1.

    .venv/bin/python -m bench.request_cpu [--clients 32] [--seconds 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

from bench.loadgen import run_load
from bench.servers import cpu_s, process_tree, start_searchbox
from bench.texts import SHORT
from model_handlers.embedded import embedded_model_dir


def _threads(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of `pid`, by thread id."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            found[tid] = cpu_s(f"/proc/{pid}/task/{tid}/stat")
        except OSError:
            pass  # a thread that ended between the listing and the read
    return found


def _metric(url: str, name: str) -> float:
    """A summary's or histogram's `_sum` or `_count`, added over its labels."""
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    return sum(float(value) for value in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def _command(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    args = parser.parse_args()
    bodies = [orjson.dumps({"inputs": [text]}) for text in SHORT]
    with tempfile.TemporaryDirectory(prefix="searchbox-request-cpu-") as logs:
        server = start_searchbox(embedded_model_dir(), args.threads, Path(logs))
        try:
            run_load(server.url, "/invocations", bodies, args.clients, 3.0)  # warm: passes measured, pools full
            pids = process_tree(server.process.pid)
            commands = {pid: _command(pid) for pid in pids}  # read while they run
            before = {pid: cpu_s(f"/proc/{pid}/stat") for pid in pids}
            worker = next(pid for pid in pids if commands[pid].startswith("gunicorn: worker"))
            threads_before = _threads(worker)
            figures = ("searchbox_forward_seconds_sum", "searchbox_batch_inputs_sum", "searchbox_batch_inputs_count")
            figures_before = [_metric(server.url, name) for name in figures]
            started = time.process_time()
            result = run_load(server.url, "/invocations", bodies, args.clients, args.seconds, warmup=0.0)
            loadgen_s = time.process_time() - started
            after = {pid: cpu_s(f"/proc/{pid}/stat") for pid in pids}
            threads_after = _threads(worker)
            forward_s, texts, passes = (_metric(server.url, name) - was for name, was in zip(figures, figures_before))
        finally:
            server.stop()
    count = max(result.requests, 1)
    print(f"{args.clients} clients x 1 text: {result.requests} requests in {result.seconds:.1f} s "
          f"({result.requests / result.seconds:.1f}/s), {result.errors} errors")
    print("CPU ms per request:")
    for pid in pids:
        print(f"  {commands[pid][:50]:50s} {1000 * (after[pid] - before[pid]) / count:6.2f}")
    print(f"  {'load generator':50s} {1000 * loadgen_s / count:6.2f}")
    used = sorted(((seconds - threads_before.get(tid, 0.0), tid) for tid, seconds in threads_after.items()),
                  reverse=True)
    print("the worker's threads, busiest first (CPU ms per request):")
    for seconds, tid in used[:4]:
        print(f"  thread {tid:>8s} {1000 * seconds / count:6.2f}")
    print(f"  {len(used) - 4} others together {1000 * sum(seconds for seconds, _ in used[4:]) / count:6.2f}")
    print(f"forward pass: {100 * forward_s / result.seconds:.0f} % of the wall time, {texts / max(passes, 1):.1f} "
          f"texts a pass, {1000 * forward_s / count:.2f} ms of wall time per request")


if __name__ == "__main__":
    main()
