"""Shared fixtures (real `serve` processes on free ports, the models, the reference model) and the test tiers.

Every test is of one tier, a pytest marker (pyproject.toml): `unit` (no model loaded, no server started), `app`
(`create_app` and Flask's test client, or a handler, on a real model in this process), `server` (real processes:
servers, packaging scripts, reference venvs, and the end-to-end builds of artifacts and exports), `soak` (timing,
resident memory and load: `make soak`, not `make test`). A test declares its tier (`pytestmark`, or a marker on
the test), or gets the one its fixtures imply: a test is at least of the tier of every fixture it uses.
`make test-fast` runs `unit` and `app`, `make test` every tier but `soak`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from container.settings import apply_library_environment
from model_handlers.embedded import embedded_model_dir

# The models loaded in this process run as in the server's worker: offline, and torch's OpenMP threads sleeping
# instead of spinning (set before torch is imported; spinning threads slow every pass on a busy machine).
apply_library_environment()

if Path(__file__).resolve().parents[1].name == "mutants":
    # make mutation runs mutmut's copy of the tree: packaging/'s scripts under the names of their mutants
    import mutation_names

    mutation_names.install()

SERVE = str(Path(sys.executable).with_name("serve"))
START_TIMEOUT_S = 120
TIERS = ("unit", "app", "server", "soak")
# The tier a fixture implies: it starts real processes, or loads a model into this process.
FIXTURE_TIERS = {"server": "server", "server_factory": "server", "reranker_server": "server", "colbert": "server",
                 "bge_m3_reference": "server",
                 "app": "app", "client": "app", "runtime": "app", "reference_model": "app", "reranker_dir": "app"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Give each test its tier: the highest of the tiers it declares and the tiers of its fixtures (before `-m`
    selects: `make test-fast` is `-m "not server and not soak"`)."""
    for item in items:
        implied = [FIXTURE_TIERS[name] for name in getattr(item, "fixturenames", ()) if name in FIXTURE_TIERS]
        declared = [marker.name for marker in item.iter_markers() if marker.name in TIERS]
        tier = max([*declared, *implied, "unit"], key=TIERS.index)
        if tier not in declared:
            item.add_marker(tier)
    if os.environ.get("MUTANT_UNDER_TEST"):
        # make mutation (mutmut runs with -x): the tests that load no model first, so a mutant a unit test kills
        # costs no model load, and in each tier the tests written to kill mutants (test_mutation_kills.py) first;
        # sorted() is stable, so the rest keeps its order.
        items[:] = sorted(items, key=lambda item: (TIERS.index(next(
            marker.name for marker in item.iter_markers() if marker.name in TIERS)),
            item.path.name != "test_mutation_kills.py"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One `serve` of the embedded default model, shared by the tests that only read from it."""
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return embedded_model_dir()


@pytest.fixture(scope="session")
def reranker_dir(tmp_path_factory, minilm_dir) -> Path:
    return make_reranker(tmp_path_factory.mktemp("models") / "tiny-reranker", minilm_dir)


def make_reranker(target: Path, minilm_dir: Path) -> Path:
    """A one-label BERT cross-encoder over the MiniLM weights (random head, seeded), as a plain HF directory: no
    trained reranker's weights can be downloaded here, and the code path is a real cross-encoder's."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=1)
    # The seeded head has tiny weights (scores all near 0.5): widen it so scores spread out and ties are rare.
    with torch.no_grad():
        model.classifier.weight.mul_(50)
    model.save_pretrained(str(target), safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, target / name)
    return target


@pytest.fixture(scope="session")
def reranker_server(tmp_path_factory, reranker_dir):
    """One `serve` of the cross-encoder, shared by the tests that only read from it."""
    running = start_server(tmp_path_factory.mktemp("reranker"), {"SEARCHBOX_MODEL_DIR": str(reranker_dir)})
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def colbert(tmp_path_factory, minilm_dir):
    """Small ColBERTs in three layouts and PyLate 1.6.0's token vectors and scores on them (tests/colbert_models.py).

    Without PyPI the reference venv cannot be made: the tests that need it fail, saying so (never a silent skip).
    """
    from colbert_models import make_reference
    from reference_env import ReferenceUnavailable

    try:
        return make_reference(tmp_path_factory.mktemp("colbert"), minilm_dir)
    except ReferenceUnavailable as exc:
        pytest.fail(f"the ColBERT reference (PyLate 1.6.0 in its own venv) cannot be made: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def splade_dir(tmp_path_factory, minilm_dir) -> Path:
    """The tiny SPLADE (random MLM head over MiniLM, saved as a SparseEncoder: tests/sparse_models.py), read-only."""
    from sparse_models import make_splade

    return make_splade(tmp_path_factory.mktemp("sparse") / "tiny-splade", minilm_dir)


@pytest.fixture(scope="session")
def splade_encoder(splade_dir):
    """sentence-transformers' SparseEncoder on it: the sparse kinds' reference."""
    from sentence_transformers import SparseEncoder

    return SparseEncoder(str(splade_dir), device="cpu")


@pytest.fixture(scope="session")
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
