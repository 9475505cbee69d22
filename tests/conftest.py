"""Shared fixtures (real `serve` processes on free ports, the in-process model, the reference model) and the test tiers.

Every test is of one tier, a pytest marker (pyproject.toml, tests/tiers.py): `unit` (no model loaded, no server
started), `app` (`create_app` and Flask's test client, or a handler, on a real model in this process), `server`
(real processes: servers, packaging scripts, reference venvs, and the end-to-end builds of artifacts and exports),
`soak` (timing, resident memory and load: `make soak`, not `make test`). A test declares its tier (`pytestmark`, or
a marker on the test), or gets the one its fixtures imply: each fixture that loads a model or starts a process says
so where it is defined (`@implies(...)`), and a test is at least of the tier of every fixture in its closure.
`make test-fast` runs `unit` and `app`, `make test` every tier but `soak`. The tiny models are built once per
session by tests/models/.

Each `serve` started is counted (with the test or fixture that started it and the settings it started with) and the
count is printed at the session's end: the suite starts few servers, and this is where a new one shows.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from container.settings import apply_library_environment
from model_handlers.embedded import embedded_model_dir
from models.fixtures import (bge_m3_dir, bge_m3_safetensors_dir, clip_dir, code_embeddings_dir,  # noqa: F401
                             colbert, embedding_gemma_dir, generative_reranker_dir, jina_colbert_dir,
                             jina_m0_dir, jina_reranker_dir, jina_reranker_v3_dir, jina_v3_dir, jina_v4_dir,
                             jina_v5_text_dir, reranker_dir, splade_dir, splade_encoder)
from tiers import TIERS, declared_tiers, implies, tier_of

# The models loaded in this process run as in the server's worker: offline, and torch's OpenMP threads sleeping
# instead of spinning (set before torch is imported; spinning threads slow every pass on a busy machine).
apply_library_environment()

if Path(__file__).resolve().parents[1].name == "mutants":
    # make mutation runs mutmut's copy of the tree: packaging/'s scripts under the names of their mutants
    import mutation_names

    mutation_names.install()

SERVE = str(Path(sys.executable).with_name("serve"))
START_TIMEOUT_S = 120
# Each `serve` started this session: (the test running when it started, the settings it was given).
SERVE_LAUNCHES: list[tuple[str, str]] = []
_running: list = [None]  # the test item running now


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Give each test its tier: the highest of the tiers it declares and the tiers its fixtures imply (before `-m`
    selects: `make test-fast` is `-m "not server and not soak"`)."""
    for item in items:
        tier = tier_of(item)
        if tier not in declared_tiers(item):
            item.add_marker(tier)
    if os.environ.get("MUTANT_UNDER_TEST"):
        # make mutation (mutmut runs with -x): the tests that load no model first, so a mutant a unit test kills
        # costs no model load, and in each tier the tests written to kill mutants (test_mutation_kills.py) first;
        # sorted() is stable, so the rest keeps its order.
        items[:] = sorted(items, key=lambda item: (TIERS.index(tier_of(item)),
                                                   item.path.name != "test_mutation_kills.py"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _running[0] = item
    try:
        return (yield)
    finally:
        _running[0] = None


def pytest_terminal_summary(terminalreporter):
    if not SERVE_LAUNCHES:
        return
    per_file = Counter(test.split("::")[0] for test, _ in SERVE_LAUNCHES)
    terminalreporter.write_sep("-", f"{len(SERVE_LAUNCHES)} serve processes started")
    for path, count in sorted(per_file.items()):
        terminalreporter.write_line(f"{count:3d}  {path}")
    if os.environ.get("SEARCHBOX_TEST_LIST_SERVES"):
        for test, settings in SERVE_LAUNCHES:
            terminalreporter.write_line(f"     {test}  {settings}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def emulator_process(command: list[str], ready_url: str, what: str, log_path: Path):
    """`command` (a storage emulator) in a session of its own, its output in `log_path`: entered once `ready_url`
    answers anything, stopped on leaving (killed if it has not exited 10 s after SIGTERM: Azurite waits on its clients'
    kept-alive connections). Fails naming `what` if it exits first (with its log) or has not answered in 30 s."""
    log = log_path.open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"{what} exited:\n{log_path.read_text(errors='replace')}"
            try:
                requests.get(ready_url, timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, f"{what} did not start"
                time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen
    log_path: Path
    ping_history: list[int] = field(default_factory=list)

    def post(self, path: str, body=None, **kwargs) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=120, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(tmp_path: Path, env: dict[str, str] | None = None, *, command: list[str] | None = None,
                 ping_path: str = "/ping", port: int | None = None, wait: bool = True) -> RunningServer:
    """Start `serve` (or `command`) with `env` on a free port and wait until `ping_path` answers 200."""
    port = port or free_port()
    item = _running[0]
    if item is not None and tier_of(item) not in ("server", "soak"):
        # a process started from a test of a faster tier: what it (or its fixture) does must say so
        raise RuntimeError(f"{item.nodeid} starts a process but is of the {tier_of(item)} tier: mark the fixture "
                           "that starts it @implies('server'), or the test @pytest.mark.server")
    if command is None or command[0] == SERVE:
        settings = " ".join(f"{key}={value}" for key, value in sorted((env or {}).items()))
        SERVE_LAUNCHES.append((item.nodeid if item is not None else "(no test)", settings))
    full_env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port), **(env or {})}
    full_env.pop("SEARCHBOX_MODEL_DIR", None) if "SEARCHBOX_MODEL_DIR" not in (env or {}) else None
    log_path = tmp_path / f"server-{port}.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(command or [SERVE], env=full_env, stdout=log_file, stderr=subprocess.STDOUT,
                               start_new_session=True)
    server = RunningServer(f"http://127.0.0.1:{port}", process, log_path)
    if wait:
        wait_until_ready(server, ping_path)
    return server


def wait_until_ready(server: RunningServer, ping_path: str = "/ping", timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()[-3000:]}")
        try:
            status = requests.get(server.url + ping_path, timeout=2).status_code
        except requests.ConnectionError:
            status = 0
        server.ping_history.append(status)
        if status == 200:
            return
        time.sleep(0.1)
    raise RuntimeError(f"server not ready after {timeout} s:\n{server.log()[-3000:]}")


def stop_server(server: RunningServer, timeout: float = 30) -> float:
    """SIGTERM the server's process group; returns how long it took to exit."""
    started = time.monotonic()
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
    return time.monotonic() - started


@pytest.fixture
@implies("server")
def server_factory(tmp_path):
    """Start servers with custom env; all of them are stopped after the test."""
    started: list[RunningServer] = []

    def factory(env: dict[str, str] | None = None, **kwargs) -> RunningServer:
        server = start_server(tmp_path, env, **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        stop_server(server)


@pytest.fixture
@implies("app")
def serving_factory():
    """Serve models in this process (`helpers.serving`) with custom settings; all of them are closed after the test."""
    from helpers import serving

    with ExitStack() as stack:
        yield lambda model_dir, env=None: stack.enter_context(serving(model_dir, env))


@pytest.fixture
@implies("server")
def http_serving_factory():
    """Serve models over HTTP from this process (`helpers.serving_over_http`) with custom settings, for a test whose
    client needs a URL; all of them are closed after the test. Of the `server` tier: a socket, and clients over it."""
    from helpers import serving_over_http

    with ExitStack() as stack:
        yield lambda model_dir, env=None: stack.enter_context(serving_over_http(model_dir, env))


@pytest.fixture(scope="session")
@implies("server")
def server(watched_start):
    """One `serve` of the embedded default model, shared by the tests that only read from it: the one `watched_start`
    watched start (both are `serve` alone), so the suite starts it once."""
    if not watched_start.answers or watched_start.answers[-1][0] != 200:
        wait_until_ready(watched_start.server)  # the watch ended before ready: its readers need it ready all the same
    return watched_start.server


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return embedded_model_dir()


@dataclass
class WatchedStart:
    """A `serve` of the embedded model watched from its first moment: what /ping and /health answered, in order,
    until /ping said 200 (0: not listening yet)."""
    server: RunningServer
    answers: list[tuple[int, dict | int]]


@pytest.fixture(scope="session")
@implies("server")
def watched_start(tmp_path_factory):
    """One `serve` of the embedded model with the default settings, watched while it starts; the tests of what a
    starting server answers read `answers`, and once ready it is the shared `server`."""
    running = start_server(tmp_path_factory.mktemp("watched"), wait=False)
    answers = []
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and running.process.poll() is None:
        try:
            # /ping first: a worker still loading when /health is asked was loading when /ping was asked too (the
            # other order races the end of the load: not ready, then ready, read as "ping 200 while loading")
            ping = requests.get(running.url + "/ping", timeout=2).status_code
            health = requests.get(running.url + "/health", timeout=2)
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or too busy loading to answer
            answers.append((0, 0))
            time.sleep(0.05)
            continue
        answers.append((ping, health.json() if health.status_code == 200 else health.status_code))
        if ping == 200:
            break
        time.sleep(0.05)
    running.ping_history.extend(ping for ping, _ in answers)
    yield WatchedStart(running, answers)
    stop_server(running)


@pytest.fixture(scope="session")
@implies("server")
def one_connection_server(tmp_path_factory):
    """The embedded model behind one inference connection (5 threads, 4 of them kept for the control routes): where
    nginx sheds load. Shared by the tests of that shedding; each counts from what it found."""
    yield from shared_server(tmp_path_factory, "one-connection", None, {"SEARCHBOX_THREADS": "5"})


@pytest.fixture(scope="session")
@implies("server")
def reranker_server(reranker_dir):
    """The cross-encoder over HTTP (`helpers.serving_over_http`), shared by the tests that only read from it."""
    yield from served_over_http(reranker_dir)


def shared_server(tmp_path_factory, name: str, model_dir: Path | None, env: dict[str, str] | None = None):
    """A `serve` of `model_dir` (None: the embedded model, as `serve` alone), stopped when its fixture ends."""
    model = {"SEARCHBOX_MODEL_DIR": str(model_dir)} if model_dir is not None else {}
    running = start_server(tmp_path_factory.mktemp(name), {**model, **(env or {})})
    yield running
    stop_server(running)


def served_over_http(model_dir: Path, env: dict[str, str] | None = None):
    """`model_dir` served over HTTP from this process (`helpers.serving_over_http`), closed when its fixture ends."""
    from helpers import serving_over_http

    with serving_over_http(model_dir, env) as served:
        yield served


# One HTTP server per tiny model, in this process, shared by every file that only reads the model's answers over a
# URL (the listings' clients, README's curls, the end-to-end checks): what they test is the answers, not the process
# (`helpers.serving_over_http` says why). They keep the `server` tier: each opens a socket, and its tests are the
# end-to-end ones (clients, curl, reference venvs) that `make test-fast` leaves out.

@pytest.fixture(scope="session")
@implies("server")
def clip_server(clip_dir):
    yield from served_over_http(clip_dir)


@pytest.fixture(scope="session")
@implies("server")
def jina_v4_server(jina_v4_dir):
    yield from served_over_http(jina_v4_dir)


@pytest.fixture(scope="session")
@implies("server")
def jina_m0_server(jina_m0_dir):
    yield from served_over_http(jina_m0_dir)


@pytest.fixture(scope="session")
@implies("server")
def colbert_server(colbert):
    """The PyLate-layout ColBERT (`colbert.model_dir("pylate")`)."""
    yield from served_over_http(colbert.model_dir("pylate"))


@pytest.fixture(scope="session")
@implies("server")
def splade_server(splade_dir):
    yield from served_over_http(splade_dir)


@pytest.fixture(scope="session")
@implies("server")
def bge_m3_server(bge_m3_safetensors_dir):
    """The tiny BGE-M3 with safetensors heads: served without the pickle opt-in."""
    yield from served_over_http(bge_m3_safetensors_dir)


@pytest.fixture(scope="session")
@implies("app")
def reference_model(minilm_dir):
    """sentence-transformers on the same directory: the correctness reference."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu", local_files_only=True)


def wait_loaded(runtime, timeout: float = START_TIMEOUT_S) -> bool:
    """Whether `runtime` became ready; False as soon as its load fails (not after the whole timeout: a load that
    failed never becomes ready, and make mutation's mutants fail loads by the hundred)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runtime.wait_ready(0.1):
            return True
        if runtime.load_error:
            return False
    return runtime.wait_ready(0)


@pytest.fixture(scope="session")
@implies("app")
def runtime():
    """The embedded model loaded once, in this process, as the worker loads it (warm-up included)."""
    from container.runtime import ModelRuntime
    from container.settings import Settings

    loaded = ModelRuntime(Settings.from_env({"SEARCHBOX_MODEL_DIR": str(embedded_model_dir())})).start()
    assert wait_loaded(loaded), loaded.load_error
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def client(runtime):
    """Flask's test client on `create_app` with the real model: dialect and error tables without a server start."""
    from container.app import create_app
    from container.settings import Settings

    settings = Settings.from_env({"SEARCHBOX_MODEL_DIR": str(embedded_model_dir())})
    return create_app(settings, runtime).test_client()


@pytest.fixture(scope="session")
def app(client):
    """The in-process server: `app.post(path, body)` as `server.post`, through `create_app` and the real model."""
    from helpers import InProcess

    return InProcess(client)


@dataclass
class StorageEmulator:
    """A Cloud Storage emulator: its URL (what STORAGE_EMULATOR_HOST names) and its request log (one line per request,
    its query string and its status included)."""
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


# The buckets the session's Cloud Storage emulator holds: Vertex AI's model copies, the classifier store's tests.
GCS_BUCKETS = ("searchbox-models", "classifiers")


@pytest.fixture(scope="session")
@implies("server")
def gcs_emulator(tmp_path_factory):
    """gcp-storage-emulator (a real HTTP Cloud Storage emulator, from the package registries) on a free port, started
    once for the session through tests/gcs_emulator.py, which makes it refuse what Cloud Storage refuses on a
    generation precondition (412 conditionNotMet); holds the buckets of GCS_BUCKETS."""
    pytest.importorskip("gcp_storage_emulator")
    port = free_port()
    log_path = tmp_path_factory.mktemp("gcs") / "emulator.log"
    url = f"http://127.0.0.1:{port}"
    with emulator_process([sys.executable, str(Path(__file__).with_name("gcs_emulator.py")), str(port), *GCS_BUCKETS],
                          f"{url}/storage/v1/b", "the storage emulator", log_path):
        yield StorageEmulator(url, log_path)
