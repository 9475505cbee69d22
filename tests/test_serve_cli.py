"""`serve` as a command: --help, a port already taken, and a model.tar.gz served directly, on real processes."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import stat
import subprocess
import tarfile
import time

import numpy as np
import pytest

from container.settings import SETTINGS
from conftest import SERVE, free_port, stop_server, wait_until_ready

pytestmark = pytest.mark.server


def run_serve(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {key: value for key, value in os.environ.items() if key != "SEARCHBOX_MODEL_DIR"}
    return subprocess.run([SERVE, *args], env={**full_env, **env}, capture_output=True, text=True, timeout=timeout)


def port_is_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


# --- --help ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_variable_and_starts_nothing(flag):
    port = free_port()
    # a bad setting proves that nothing was read or started: --help answers all the same
    result = run_serve(["serve", flag], {"SAGEMAKER_BIND_TO_PORT": str(port), "SEARCHBOX_THREADS": "0"}, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: serve")
    for setting in SETTINGS:
        assert f"{setting.name} (default: {setting.shown})" in result.stdout, setting.name
    assert "gunicorn" not in result.stderr and "bad setting" not in result.stderr
    assert port_is_closed(port)


# --- port in use ----------------------------------------------------------------------------------

def test_a_port_in_use_is_one_clear_line():
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        # SageMaker's own argument and any other are ignored: the server gets as far as the port check
        result = run_serve(["serve", "--not-an-option"], {"SAGEMAKER_BIND_TO_PORT": str(port)})
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"port {port} is in use; set SAGEMAKER_BIND_TO_PORT to another port" in output
    assert "Can't connect" not in output and "Traceback" not in output
    assert time.monotonic() - started < 30  # not gunicorn's retries


# --- model.tar.gz ---------------------------------------------------------------------------------

def tar_of(directory, archive) -> None:
    """The directory's files at the archive's root, as packaging/build_artifact.py lays out model.tar.gz."""
    with tarfile.open(archive, "w:gz") as tar:
        for child in sorted(directory.iterdir()):
            tar.add(child, arcname=child.name)


def unpacked_dirs(tmpdir) -> list:
    return sorted(tmpdir.glob("searchbox-model-*"))


def test_a_model_archive_is_unpacked_once_and_served(server, server_factory, tmp_path, minilm_dir):
    archive = tmp_path / "dist" / "minilm" / "model.tar.gz"
    archive.parent.mkdir(parents=True)
    tar_of(minilm_dir, archive)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    running = server_factory({"SEARCHBOX_MODEL_DIR": str(archive), "TMPDIR": str(tmpdir)}, command=[SERVE, "serve"])
    [scratch] = unpacked_dirs(tmpdir)
    assert stat.S_IMODE(scratch.stat().st_mode) == 0o700
    assert f"unpacked {archive}" in running.log() and "removed at exit" in running.log()

    text = {"data": [{"text": "What are your opening hours?", "id": "a"}]}
    from_archive = running.post("/invocations", text).json()["data"][0]
    from_directory = server.post("/invocations", text).json()["data"][0]
    assert np.allclose(from_archive["embedding"], from_directory["embedding"], atol=1e-6)
    assert from_archive["usage"] == from_directory["usage"]

    # unpacked once, by the master: a worker that exits (and is replaced) leaves the model in place
    [worker] = re.findall(r"Booting worker with pid: (\d+)", running.log())
    os.kill(int(worker), signal.SIGTERM)
    deadline = time.monotonic() + 60
    while len(re.findall(r"Booting worker with pid", running.log())) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    wait_until_ready(running)
    assert running.post("/invocations", text).status_code == 200
    assert running.log().count("unpacked ") == 1 and scratch.is_dir()

    stop_server(running)
    assert running.process.returncode == 0
    assert unpacked_dirs(tmpdir) == []


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    data = b"{}" if kind == tarfile.REGTYPE else b""
    info.size = len(data)
    return info, data


@pytest.mark.parametrize(("member", "fragment"), [
    (_member("../evil"), "'../evil' would be extracted to"),
    (_member("/etc/evil"), "'/etc/evil' has an absolute path"),
    (_member("evil-link", tarfile.SYMTYPE, "../../../etc/passwd"), "'evil-link' would link to"),
    (_member("evil-device", tarfile.CHRTYPE), "'evil-device' is a special file"),
], ids=["dot-dot", "absolute", "link-outside", "device"])
def test_a_malicious_archive_is_refused(tmp_path, member, fragment):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        config = tarfile.TarInfo("config.json")
        config.size = 2
        tar.addfile(config, io.BytesIO(b"{}"))
        info, data = member
        tar.addfile(info, io.BytesIO(data))
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    result = run_serve([], {"SEARCHBOX_MODEL_DIR": str(archive), "TMPDIR": str(tmpdir),
                            "SAGEMAKER_BIND_TO_PORT": str(free_port())})
    assert result.returncode == 1, result.stderr
    assert f"cannot serve {archive}: refused to unpack the archive: " in result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr and "gunicorn" not in result.stderr.lower()
    assert unpacked_dirs(tmpdir) == [] and not list(tmp_path.rglob("evil*"))


def test_an_archive_with_the_model_one_directory_down_is_refused(tmp_path, minilm_dir):
    archive = tmp_path / "model.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(minilm_dir, arcname="minilm")
    result = run_serve([], {"SEARCHBOX_MODEL_DIR": str(archive), "TMPDIR": str(tmp_path),
                            "SAGEMAKER_BIND_TO_PORT": str(free_port())})
    assert result.returncode == 1, result.stderr
    assert "the archive holds the model under minilm/" in result.stderr
    assert "tar czf model.tar.gz -C minilm ." in result.stderr
    assert unpacked_dirs(tmp_path) == []


@pytest.mark.parametrize("name", ["weights.zip", "model.tar.gz"])
def test_a_file_that_is_no_model_says_so(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"PK\x03\x04 not a tar archive")
    result = run_serve([], {"SEARCHBOX_MODEL_DIR": str(path), "TMPDIR": str(tmp_path),
                            "SAGEMAKER_BIND_TO_PORT": str(free_port())})
    assert result.returncode == 1, result.stderr
    assert "does not exist" not in result.stderr
    expected = "cannot unpack the archive: it is not a tar archive" if name.endswith(".tar.gz") else "is a file, not a model directory"
    assert expected in result.stderr
    assert unpacked_dirs(tmp_path) == []
