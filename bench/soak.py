"""`make soak`: hostile, heavy and generated traffic against real `serve`s, as a table (about 20 minutes).

Phases, each against a real server (nginx + gunicorn), with `/ping` probed every 100 ms throughout:
- stalled: 500 connections that send part of a request and stall, beside 8 clients of valid traffic;
- overload: 200 clients x 64 long inputs (far more than the CPU can do in the 50 s budget), backing off 0.5 s on
  503: the slowest answer must come within the budget, refusals at once;
- hostile: malformed framing, bodies over the limit (plain and chunked), long URLs and headers, bad values;
- large: two 2048-input requests (with a 600 s timeout), then idle: does memory come back?
- generated: the fuzz's generated requests (tests/fuzz_strategies.py: every route of the route table, every
  content type, every integration shape's keys) against a server of each model kind (text, cross-encoder, CLIP,
  ColBERT, SPLADE), 16 clients; every answer must be the route's format or the contract's JSON error;
- fuzz: the hypothesis fuzz test itself (in-process, every kind), a long run;
- kill: SIGKILL of the worker mid-request under load, as the OOM killer does: every request answered, and how soon
  the worker serves again;
- sigterm: 16 heavy requests in flight, then SIGTERM: is every one answered, and how fast does it exit?

Columns: requests sent, statuses seen, 5xx other than 503 (refused with Retry-After) and 501 (HTTP's answer
to a transfer coding it does not know), dropped (no HTTP answer at all), `/ping` p99
and how many probes failed, worker RSS before / peak / after. Targets: 0 5xx, 0 dropped, ping p99 under
100 ms, memory back within 20% of its baseline, every generated answer keeping the rule.

    .venv/bin/python -m bench.soak [--overload-s 60] [--generated 100000] [--fuzz-examples 4000]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import requests

ROOT = Path(__file__).resolve().parent.parent
SERVE = Path(sys.executable).with_name("serve")
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "examples")]  # the fuzz's bodies and the tests' small models

from helpers import worker_status  # noqa: E402
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
    failed: bool = False  # a phase's own target missed (beyond 5xx and drops)
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
        full_env = {name: value for name, value in os.environ.items() if name != "SEARCHBOX_MODEL_DIR"}
        full_env.update({"SAGEMAKER_BIND_TO_PORT": str(self.port), **env})
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
        workers = worker_status(self.process.pid)
        # a worker just killed has no memory left to report (a zombie until the master reaps it)
        return next((int(status["VmRSS"].split()[0]) / 1024 for status in workers.values() if "VmRSS" in status), 0.0)

    def worker_pid(self) -> int | None:
        return next((pid for pid, status in worker_status(self.process.pid).items() if "VmRSS" in status), None)

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


def run_overload(server: Server, seconds: float, budget_s: float) -> Phase:
    phase = Phase("overload: 200 clients x 64 long inputs")
    body = orjson.dumps({"input": [LONG + str(i) for i in range(64)]})
    took: dict[int | None, list[float]] = collections.defaultdict(list)
    started = time.monotonic()
    with Probe(server, phase):
        stop = started + seconds

        def client(i: int) -> None:
            session = requests.Session()
            while time.monotonic() < stop:
                sent = time.monotonic()
                status = post(session, server.url + "/v1/embeddings", phase, data=body,
                              headers={"Content-Type": "application/json"})
                took[status].append(time.monotonic() - sent)
                if status == 503:
                    time.sleep(0.5)

        with ThreadPoolExecutor(200) as pool:
            list(pool.map(client, range(200)))
    settle(server, phase)
    slowest = max((t for times in took.values() for t in times), default=0.0)
    refusals = sorted(took.get(503, []))
    phase.note = (f"slowest answer {slowest:.1f} s (budget {budget_s:g} s); 503 p50 {percentile(refusals, 0.5):.2f} s, "
                  f"p99 {percentile(refusals, 0.99):.2f} s")
    phase.failed = slowest > budget_s + 1  # an answer after its budget reaches a client that gave up
    return phase


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0


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


def model_dirs(workdir: Path) -> dict[str, dict[str, str]]:
    """A model of each kind, as the tests build them (examples/ and tests/): kind -> the server's environment."""
    from models.colbert import make_reference
    from models.reranker import make_reranker
    from reference_env import ReferenceUnavailable
    from models.sparse import make_splade
    from tiny_clip import build as build_clip

    from model_handlers.embedded import embedded_model_dir

    minilm = embedded_model_dir()
    dirs = {"text": minilm, "cross-encoder": make_reranker(workdir / "reranker", minilm),
            "clip": build_clip(workdir / "clip"), "sparse": make_splade(workdir / "splade", minilm)}
    try:
        (workdir / "colbert").mkdir()
        dirs["colbert"] = make_reference(workdir / "colbert", minilm).model_dir("pylate")
    except ReferenceUnavailable as exc:  # PyLate's venv cannot be made offline: the other kinds still run
        print(f"soak: no ColBERT ({exc})", file=sys.stderr)
    return {kind: {"SEARCHBOX_MODEL_DIR": str(path)} for kind, path in dirs.items()}


def generated_requests(count: int) -> list:
    """`count` requests the fuzz's strategies generate (tests/fuzz_strategies.py)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import Phase as Stage

    import fuzz_strategies

    drawn: list = []

    @settings(max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck),
              phases=[Stage.generate])
    @given(fuzz_strategies.requests)
    def draw(sent) -> None:
        drawn.append(sent)

    draw()
    return drawn


FAILURES = ROOT / "bench" / "soak-failures.jsonl"


def record_failure(kind: str, sent, problem: str) -> None:
    """A generated request whose answer broke the rule, as a JSON line that replays it (bench/soak-failures.jsonl)."""
    import base64

    line = {"kind": kind, "method": sent.method, "path": sent.path, "content_type": sent.content_type,
            "headers": sent.headers, "body_base64": base64.b64encode(sent.body).decode(), "problem": problem}
    with FAILURES.open("ab") as out:
        out.write(orjson.dumps(line) + b"\n")


def run_generated(kind: str, env: dict[str, str], total: int, distinct: int) -> Phase:
    import fuzz_strategies

    pool = generated_requests(distinct)
    phase = Phase(f"generated: {kind}")
    broken: collections.Counter = collections.Counter()
    server = Server({"SEARCHBOX_LOG_LEVEL": "WARNING", "SEARCHBOX_REQUEST_LOG": "off", **env})
    try:
        with Probe(server, phase):
            def client(offset: int) -> None:
                session = requests.Session()
                for i in range(offset, total, 16):
                    sent = pool[i % len(pool)]
                    url = server.url + urllib.parse.quote(sent.path, safe="/")
                    headers = {name: value.encode().decode("latin-1") for name, value in sent.headers.items()}
                    if sent.content_type:
                        headers["Content-Type"] = sent.content_type
                    try:
                        response = session.request(sent.method, url, data=sent.body, headers=headers, timeout=120)
                    except requests.RequestException:
                        phase.count(None)
                        continue
                    phase.count(response.status_code)
                    problem = fuzz_strategies.broken_rule(response.status_code, response.headers.get("X-Request-Id"),
                                                          response.headers.get("Content-Type", "").split(";")[0],
                                                          response.content)
                    if problem:
                        with phase.lock:
                            broken[problem[:80]] += 1
                            record_failure(kind, sent, problem)

            with ThreadPoolExecutor(16) as pool_of_clients:
                list(pool_of_clients.map(client, range(16)))
        settle(server, phase)
    finally:
        server.stop()
    phase.failed = bool(broken)
    phase.note = f"{len(pool)} distinct bodies; rule broken: {sum(broken.values())}" + (
        f" (replay them from {FAILURES.relative_to(ROOT)})" if broken else "")
    return phase


def run_kill(server: Server) -> Phase:
    """SIGKILL of the worker while 8 clients keep requests in flight: every request answered (in-flight ones 503),
    and the seconds until a new worker serves."""
    phase = Phase("kill: SIGKILL the worker mid-request (8 clients)")
    body = orjson.dumps({"input": [LONG + str(i) for i in range(16)]})
    stop = threading.Event()
    with Probe(server, phase):
        def client(i: int) -> None:
            session = requests.Session()
            while not stop.is_set():
                if post(session, server.url + "/v1/embeddings", phase, data=body,
                        headers={"Content-Type": "application/json"}) == 503:
                    time.sleep(0.2)  # as a client honouring Retry-After would, roughly

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(client, i) for i in range(8)]
            time.sleep(5)
            victim = server.worker_pid()
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            back = None
            time.sleep(0.5)  # the master reaps the victim and forks its successor
            while time.monotonic() - killed < 180:
                try:  # served again: a new worker answers a request (its ready file alone may be a moment stale)
                    if server.worker_pid() not in (None, victim) and requests.post(
                            server.url + "/v1/embeddings", json={"input": ["back?"]}, timeout=10).status_code == 200:
                        back = time.monotonic() - killed
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.2)
            time.sleep(5)  # served again: the clients' requests answer 200
            stop.set()
            for future in futures:
                future.result()
    settle(server, phase)
    phase.note = f"worker serving again after {back:.1f} s" if back is not None else "the worker never came back"
    phase.failed = back is None
    return phase


def run_fuzz(examples: int) -> Phase:
    phase = Phase(f"fuzz: {examples} hypothesis examples per model kind",
                  note="in-process, every route, content type and kind")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py"],
                            cwd=ROOT, env={**os.environ, "SEARCHBOX_FUZZ_EXAMPLES": str(examples)},
                            capture_output=True, text=True)
    log = ROOT / "bench" / "soak-fuzz.log"
    log.write_text(result.stdout + result.stderr)
    kinds = re.search(r"(\d+) passed", result.stdout)
    failed = re.search(r"(\d+) failed", result.stdout)
    phase.statuses["passed"] = examples * (int(kinds[1]) if kinds else 0)
    if result.returncode != 0:
        phase.statuses["FAILED"] = examples * (int(failed[1]) if failed else 1)
        phase.note = f"falsifying examples in {log.relative_to(ROOT)}"
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
    from model_handlers.options import HandlerOptions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overload-s", type=float, default=60)
    parser.add_argument("--hostile-rounds", type=int, default=20)
    parser.add_argument("--generated", type=int, default=100_000, help="generated requests, over all model kinds")
    parser.add_argument("--distinct", type=int, default=4000, help="distinct generated bodies per model kind")
    parser.add_argument("--fuzz-examples", type=int, default=4000, help="hypothesis examples per model kind")
    parser.add_argument("--only", nargs="*", help="run only these phases (stalled overload hostile large generated "
                                                  "fuzz kill sigterm)")
    args = parser.parse_args()
    wanted = set(args.only or ["stalled", "overload", "hostile", "large", "generated", "fuzz", "kill", "sigterm"])
    started = time.monotonic()
    phases = []
    if wanted & {"stalled", "overload", "hostile"}:
        server = Server({"SEARCHBOX_LOG_LEVEL": "WARNING"})
        try:
            phases += [run_stalled(server)] if "stalled" in wanted else []
            phases += [run_overload(server, args.overload_s, HandlerOptions.request_timeout_s)] \
                if "overload" in wanted else []
            phases += [run_hostile(server, args.hostile_rounds)] if "hostile" in wanted else []
        finally:
            server.stop()
    if "large" in wanted:
        server = Server({"SEARCHBOX_LOG_LEVEL": "WARNING", "SEARCHBOX_REQUEST_TIMEOUT_S": "600"})
        try:
            phases.append(run_large(server))
        finally:
            server.stop()
    if "generated" in wanted:
        with tempfile.TemporaryDirectory(prefix="soak-models-") as workdir:
            kinds = model_dirs(Path(workdir))
            for kind, env in kinds.items():
                phases.append(run_generated(kind, env, -(-args.generated // len(kinds)), args.distinct))
    if "fuzz" in wanted:
        phases.append(run_fuzz(args.fuzz_examples))
    if "kill" in wanted:
        server = Server({"SEARCHBOX_LOG_LEVEL": "WARNING"})
        try:
            phases.append(run_kill(server))
        finally:
            server.stop()
    if "sigterm" in wanted:
        server = Server({"SEARCHBOX_LOG_LEVEL": "WARNING"})
        phases.append(run_sigterm(server))
    print(f"\nmake soak: {time.monotonic() - started:.0f} s on {os.cpu_count()} CPUs, load before "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| phase | requests | statuses | 5xx | dropped | /ping p99 | worker RSS MiB before / peak / after | notes |")
    print("|---|---|---|---|---|---|---|---|")
    for phase in phases:
        print(phase.row())
    failed = any(p.server_errors() or p.dropped or p.failed or "FAILED" in p.statuses for p in phases)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
