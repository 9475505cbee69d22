"""Processes the benchmarks start and watch: servers on free ports, timed to their first 200, and their resident
memory and CPU from /proc. Shared by bench/run.py, bench/multimodal.py and bench/onnx_bench.py."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from container.settings import LIBRARY_ENVIRONMENT_DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
SERVE = Path(sys.executable).with_name("serve")
START_TIMEOUT_S = 180


# --- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_tree(root_pid: int) -> list[int]:
    """A process and all its descendants (gunicorn master + worker), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_rss_mb(root_pid: int) -> float:
    total = 0.0
    for pid in process_tree(root_pid):
        try:
            with open(f"/proc/{pid}/status") as status:
                total += next((int(line.split()[1]) for line in status if line.startswith("VmRSS:")), 0) / 1024
        except OSError:
            pass
    return total


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(stat_path: str) -> float:
    """User + system CPU seconds of a process or thread so far, from its /proc/.../stat."""
    with open(stat_path) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu_s(root_pid: int) -> float:
    """User + system CPU seconds the process tree has used so far."""
    total = 0.0
    for pid in process_tree(root_pid):
        try:
            total += cpu_s(f"/proc/{pid}/stat")
        except (OSError, IndexError, ValueError):
            pass
    return total


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen
    log_path: Path
    start_s: float = 0.0
    rss_ready_mb: float = 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def rss_mb(self) -> float:
        return tree_rss_mb(self.process.pid)

    def cpu_s(self) -> float:
        return tree_cpu_s(self.process.pid)


def http_status(url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def start_server(name: str, command: list[str], env: dict[str, str], port: int, ready_path: str,
                 log_dir: Path, cwd: Path = ROOT) -> Server:
    """Start a server and time it from the spawn to the first 200 on `ready_path`."""
    log_path = log_dir / f"{name.split()[0]}-{port}.log"
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=cwd)
    server = Server(name, f"http://127.0.0.1:{port}", process, log_path)
    while time.perf_counter() - started < START_TIMEOUT_S:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        if http_status(server.url + ready_path)[0] == 200:
            server.start_s = time.perf_counter() - started
            server.rss_ready_mb = server.rss_mb()
            return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"{name} not ready after {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")


#: extra environment for searchbox only (`--server-env`), to try a setting side by side
SERVER_ENV: dict[str, str] = {}


def start_searchbox(model_dir: Path, threads: int, log_dir: Path, extra_env: dict[str, str] | None = None) -> Server:
    port = free_port()
    env = {"SAGEMAKER_BIND_TO_PORT": str(port), "SEARCHBOX_MODEL_DIR": str(model_dir),
           "SEARCHBOX_TORCH_THREADS": str(threads), **SERVER_ENV, **(extra_env or {})}
    return start_server("searchbox", [str(SERVE)], env, port, "/ping", log_dir)


def omp_policy() -> str:
    return os.environ.get("OMP_WAIT_POLICY", LIBRARY_ENVIRONMENT_DEFAULTS["OMP_WAIT_POLICY"])


def bench_main(description: str, name: str, argv: list[str] | None,
               measure: Callable[[argparse.Namespace, int, Path], str],
               add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """The command line every side-by-side benchmark shares: timing arguments, OMP's wait policy set as `serve` sets
    it (before torch loads here), a temporary directory for the servers' logs; prints what `measure` reports."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads of both systems (0: torch's default)")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", omp_policy())
    import torch

    threads = args.threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix=f"searchbox-bench-{name}-") as tmp:
        print(measure(args, threads, Path(tmp)))
    return 0


def keep_best(best: dict[str, float], figures: dict[str, float], name: str, number: int, rounds: int,
              unit: str = "inputs/s") -> None:
    """Print one round's figures and keep each one's best over the rounds (a busy moment only lowers a round)."""
    print(f"  {name} round {number + 1}/{rounds}: " + ", ".join(
        f"{key} {value:.1f} {unit}" for key, value in figures.items()), flush=True)
    for key, value in figures.items():
        best[key] = max(best.get(key, 0.0), value)


def calls_per_second(call: Callable[[], object], seconds: float, warmup: float) -> float:
    """Calls per second of `call` made one after another for `seconds`, after `warmup` seconds of the same (an
    in-process limit's figure, beside a server's measured with bench/loadgen.py)."""
    stop = time.perf_counter() + warmup
    while time.perf_counter() < stop:
        call()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        calls += 1
    return calls / (time.perf_counter() - start)
