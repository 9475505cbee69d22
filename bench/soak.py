"""`make soak`: hostile and heavy traffic against a real `serve`, as a table (under 15 minutes).

Phases, each against the same server (the embedded model), with `/ping` probed every 100 ms throughout:
- stalled: 500 connections that send part of a request and stall, beside 8 clients of valid traffic;
- overload: 200 clients x 64 long inputs (far more than the CPU can do in 60 s), backing off 0.5 s on 503;
- hostile: malformed framing, bodies over the limit (plain and chunked), long URLs and headers, bad values;
- large: two 2048-input requests (with a 600 s timeout), then idle: does memory come back?
- fuzz: the hypothesis fuzz test of every route and content type, a long run (in-process);
- sigterm: 16 heavy requests in flight, then SIGTERM: is every one answered, and how fast does it exit?

Columns: requests sent, statuses seen, 5xx other than 503 (refused with Retry-After) and 501 (HTTP's answer
to a transfer coding it does not know), dropped (no HTTP answer at all), `/ping` p99
and how many probes failed, worker RSS before / peak / after. Targets: 0 5xx, 0 dropped, ping p99 under
100 ms, memory back within 20% of its baseline.

    .venv/bin/python -m bench.soak [--overload-s 60] [--fuzz-examples 20000]
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import requests

ROOT = Path(__file__).resolve().parent.parent
SERVE = Path(sys.executable).with_name("serve")
LONG = "The quick brown fox jumps over the lazy dog near the quiet river bank at dawn. " * 20


@dataclass
class Phase:
    name: str
    statuses: collections.Counter = field(default_factory=collections.Counter)
    dropped: int = 0
    pings: list[float] = field(default_factory=list)
    ping_failures: int = 0
    rss: list[float] = field(default_factory=list)
    rss_after: float = 0.0
    note: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, status: int | None) -> None:
        with self.lock:
            if status is None:
                self.dropped += 1
            else:
                self.statuses[status] += 1

    def server_errors(self) -> int:
        """5xx answers but 503 (refused: overloaded, stopping) and 501 (HTTP's answer to an unknown transfer coding)."""
        return sum(n for status, n in self.statuses.items()
                   if isinstance(status, int) and status >= 500 and status not in (501, 503))

    def row(self) -> str:
        sent = sum(self.statuses.values()) + self.dropped
        fivexx = self.server_errors()
        statuses = " ".join(f"{status}:{n}" for status, n in sorted(self.statuses.items()))
        pings = sorted(self.pings)
        p99 = f"{pings[min(len(pings) - 1, int(len(pings) * 0.99))] * 1000:.0f} ms" if pings else "-"
        rss = (f"{self.rss[0]:.0f} / {max(self.rss):.0f} / {self.rss_after:.0f}" if self.rss else "-")
        return (f"| {self.name} | {sent} | {statuses} | {fivexx} | {self.dropped} | {p99} ({len(pings)} probes, "
                f"{self.ping_failures} failed) | {rss} | {self.note} |")


class Server:
    def __init__(self, env: dict[str, str]):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(self.port), **env}
        full_env.pop("SEARCHBOX_MODEL_DIR", None)
        self.log = open(ROOT / "bench" / "soak-server.log", "wb")
        self.process = subprocess.Popen([str(SERVE)], env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/ping", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not become ready")

    def worker_rss(self) -> float:
        children = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        for pid in children.split():
            try:
                if b"nginx" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    continue
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")) / 1024
        return 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(60)


class Probe:
    """Pings every 100 ms and samples the worker's memory every 200 ms while a phase runs."""

    def __init__(self, server: Server, phase: Phase):
        self._server, self._phase = server, phase
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._ping), threading.Thread(target=self._memory)]

    def __enter__(self) -> "Probe":
        self._phase.rss.append(self._server.worker_rss())
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _ping(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                ok = session.get(self._server.url + "/ping", timeout=2).status_code == 200
            except requests.RequestException:
                ok = False
            if ok:
                self._phase.pings.append(time.monotonic() - sent)
            else:
                self._phase.ping_failures += 1
            self._stop.wait(0.1)

    def _memory(self) -> None:
        while not self._stop.wait(0.2):
            self._phase.rss.append(self._server.worker_rss())


def post(session: requests.Session, url: str, phase: Phase, timeout: float = 120, **kwargs) -> int | None:
    try:
        status = session.post(url, timeout=timeout, **kwargs).status_code
    except requests.RequestException:
        status = None
    phase.count(status)
    return status


def raw(port: int, data: bytes, phase: Phase) -> None:
    """Send bytes as they are; count the status of the answer, or a drop when none came."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(data)
            head = sock.recv(65536)
        phase.count(int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else None)
    except (OSError, ValueError, IndexError):
        phase.count(None)


def settle(server: Server, phase: Phase, seconds: float = 3.0) -> None:
    time.sleep(seconds)
    phase.rss_after = server.worker_rss()


def run_stalled(server: Server) -> Phase:
    phase = Phase("500 stalled connections + 8 clients", note="stalls: partial line, headers, body")
    stalled = []
    with Probe(server, phase):
        for i in range(500):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall([b"PO", b"POST /invocations HTTP/1.1\r\nHost: a\r\nContent-Length: 99\r\n\r\n",
                          b"POST /invocations HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{"][i % 3])
            stalled.append(sock)
        stop = time.monotonic() + 30

        def client(i: int) -> None:
            session = requests.Session()
            while time.monotonic() < stop:
                post(session, server.url + "/invocations", phase, json={"data": [{"text": f"still served {i}"}]})

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(client, range(8)))
    for sock in stalled:
        sock.close()
    settle(server, phase)
    return phase


def run_overload(server: Server, seconds: float) -> Phase:
    phase = Phase("overload: 200 clients x 64 long inputs")
    body = orjson.dumps({"input": [LONG + str(i) for i in range(64)]})
    first_refusal: list[float] = []
    started = time.monotonic()
    with Probe(server, phase):
        stop = started + seconds

        def client(i: int) -> None:
            session = requests.Session()
            while time.monotonic() < stop:
                status = post(session, server.url + "/v1/embeddings", phase, data=body,
                              headers={"Content-Type": "application/json"})
                if status == 503:
                    if not first_refusal:
                        first_refusal.append(time.monotonic() - started)
                    time.sleep(0.5)

        with ThreadPoolExecutor(200) as pool:
            list(pool.map(client, range(200)))
    settle(server, phase)
    phase.note = f"first 503 after {first_refusal[0]:.1f} s" if first_refusal else "no 503"
    return phase


def run_hostile(server: Server, rounds: int) -> Phase:
    phase = Phase("hostile requests", note="framing, limits, URL, headers, bad values")
    port = server.port
    big = b"x" * (7 * 1024 * 1024)
    chunked = b"".join(b"%x\r\n%s\r\n" % (1 << 20, b"y" * (1 << 20)) for _ in range(7)) + b"0\r\n\r\n"
    bodies = [
        b"POST /invocations HTTP/1.1\r\nHost: a\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked,
        b"POST /invocations HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(big) + big,
        b"POST /invocations HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n",
        b"POST /invocations HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    ]
    jsons = [{"input": ["x"], "dimensions": "\u00b2"}, {"query": "q", "documents": ["a"], "top_n": "+-5"},
             {"data": [{"text": "x", "id": {"deep": [[[[1]]]]}}]}, {"input": ["x"], "dimensions": "9" * 5000},
             {"query": "q", "documents": ["w " * 1_000_000]}, {"input": [LONG] * 2048}]
    csv = "".join(f"{i},x\n" for i in range(60_000)).encode()
    with Probe(server, phase):
        session = requests.Session()
        for _ in range(rounds):
            for data in bodies:
                raw(port, data, phase)
            for body in jsons:
                post(session, server.url + "/invocations", phase, json=body)
            post(session, server.url + "/invocations", phase, data=csv, headers={"Content-Type": "text/csv"})
    settle(server, phase)
    return phase


def run_large(server: Server) -> Phase:
    phase = Phase("2 x 2048 long inputs, then idle", note="SEARCHBOX_REQUEST_TIMEOUT_S=600")
    with Probe(server, phase):
        session = requests.Session()
        for _ in range(2):
            post(session, server.url + "/v1/embeddings", phase, timeout=900,
                 json={"input": [LONG + str(i) for i in range(2048)]})
    settle(server, phase, 5)
    return phase


def run_fuzz(examples: int) -> Phase:
    phase = Phase(f"fuzz: {examples} hypothesis examples", note="in-process, every route and content type")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py"],
                            cwd=ROOT, env={**os.environ, "SEARCHBOX_FUZZ_EXAMPLES": str(examples)},
                            capture_output=True, text=True)
    phase.statuses["passed" if result.returncode == 0 else "FAILED"] = examples
    if result.returncode != 0:
        phase.note = result.stdout[-500:]
    return phase


def run_sigterm(server: Server) -> Phase:
    phase = Phase("SIGTERM with 16 heavy requests in flight")
    phase.rss.append(server.worker_rss())

    def heavy(i: int) -> None:
        post(requests.Session(), server.url + "/v1/embeddings", phase, timeout=60,
             json={"input": [LONG + str(i * 100 + j) for j in range(48)]})

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(heavy, i) for i in range(16)]
        time.sleep(2)
        started = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)
        for future in futures:
            future.result()
        code = server.process.wait(60)
    phase.note = f"exit code {code} after {time.monotonic() - started:.1f} s"
    return phase


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overload-s", type=float, default=60)
    parser.add_argument("--hostile-rounds", type=int, default=20)
    parser.add_argument("--fuzz-examples", type=int, default=20000)
    args = parser.parse_args()
    started = time.monotonic()
    phases = []
    server = Server({"SEARCHBOX_LOG_LEVEL": "WARNING"})
    try:
        phases += [run_stalled(server), run_overload(server, args.overload_s), run_hostile(server, args.hostile_rounds)]
    finally:
        server.stop()
    server = Server({"SEARCHBOX_LOG_LEVEL": "WARNING", "SEARCHBOX_REQUEST_TIMEOUT_S": "600"})
    try:
        phases.append(run_large(server))
    finally:
        server.stop()
    phases.append(run_fuzz(args.fuzz_examples))
    server = Server({"SEARCHBOX_LOG_LEVEL": "WARNING"})
    phases.append(run_sigterm(server))
    print(f"\nmake soak: {time.monotonic() - started:.0f} s on {os.cpu_count()} CPUs, load before "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| phase | requests | statuses | 5xx | dropped | /ping p99 | worker RSS MiB before / peak / after | notes |")
    print("|---|---|---|---|---|---|---|---|")
    for phase in phases:
        print(phase.row())
    failed = any(p.server_errors() or p.dropped or "FAILED" in p.statuses for p in phases)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
