"""Shared fixtures: real `serve` processes (gunicorn) on free ports, and the reference model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from model_handlers.embedded import embedded_model_dir

SERVE = str(Path(sys.executable).with_name("serve"))
START_TIMEOUT_S = 120


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
def reference_model(minilm_dir):
    """sentence-transformers on the same directory: the correctness reference."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu", local_files_only=True)


@pytest.fixture(scope="session")
def runtime():
    """The embedded model loaded once, in this process, as the worker loads it (warm-up included)."""
    from container.runtime import ModelRuntime
    from container.settings import Settings

    loaded = ModelRuntime(Settings.from_env({"SEARCHBOX_MODEL_DIR": str(embedded_model_dir())})).start()
    assert loaded.wait_ready(START_TIMEOUT_S), loaded.load_error
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
