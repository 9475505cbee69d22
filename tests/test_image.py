"""The image's files, checked without building it (docker/container_test.sh builds and runs it):
the Dockerfile lints clean, the dependency lock covers pyproject.toml and is what the venv holds, the entrypoint
starts the server or runs a command and switches CUDA forward compatibility on only when the host
driver is older, and buildspec.yml is a CodeBuild spec that gates the release on the ECR scan.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
BIN = Path(sys.executable).parent


@pytest.mark.server
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


def lock_pins() -> dict[str, str]:
    sys.path.insert(0, str(ROOT / "docker"))
    import lock_requirements

    return lock_requirements.read_pins(ROOT / "requirements.lock")


def project_requirements() -> list[Requirement]:
    """pyproject.toml's dependencies and every extra's (the image takes the first, the venv all of them)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        lines += [line for line in extra if not line.startswith("searchbox")]
    return [Requirement(line) for line in lines]


def test_the_lock_pins_every_dependency_pyproject_names_within_its_range():
    pins = lock_pins()
    assert pins, "requirements.lock is empty: run make lock"
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock: run make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject.toml's {requirement}: run make lock")
    assert "searchbox" not in pins
    # the Makefile's torch (the CPU build kept on this machine kind) is the lock's torch
    makefile_torch = re.search(r"^TORCH_SPEC \?= torch==(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert pins["torch"] == makefile_torch


# Top-level modules of a direct dependency that import only with an extra searchbox does not install:
# google-cloud-aiplatform's Ray on Vertex (its `ray` extra: ray, google-cloud-bigquery-storage).
NEEDS_AN_EXTRA = {"vertex_ray"}


@pytest.mark.server
def test_the_venv_is_the_lock_and_its_dependencies_import():
    """`make venv` installs with the lock as constraints: every locked distribution present here has its
    pinned version, the whole dependency closure is locked, and each direct dependency imports."""
    pins = lock_pins()
    closure: set[str] = set()

    def visit(name: str, extras: frozenset[str]) -> None:
        dist = metadata.distribution(name)
        key = canonicalize_name(dist.metadata["Name"])
        if key in closure and not extras:
            return
        closure.add(key)
        for line in dist.requires or []:
            requirement = Requirement(line)
            environments = [{"extra": extra} for extra in ("", *extras)]
            if requirement.marker is None or any(requirement.marker.evaluate(env) for env in environments):
                visit(requirement.name, frozenset(requirement.extras))

    visit("searchbox", frozenset({"test", "packaging"}))
    closure.discard("searchbox")
    assert closure - set(pins) == set(), "installed but not locked: run make lock"
    for name in closure:
        assert metadata.version(name).split("+")[0] == pins[name], f"{name} is not the locked version: make venv"
    modules = metadata.packages_distributions()
    direct = {canonicalize_name(r.name) for r in project_requirements()}
    to_import = sorted({module for module, dists in modules.items()
                        if any(canonicalize_name(d) in direct for d in dists) and module.isidentifier()
                        and not module.startswith("_") and module not in NEEDS_AN_EXTRA
                        and importlib.util.find_spec(module) is not None})
    result = subprocess.run([sys.executable, "-c", "import importlib, sys\n"
                             "for m in sys.argv[1:]: importlib.import_module(m)", *to_import],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"torch", "transformers", "sentence_transformers", "flask", "boto3", "pytest"} <= set(to_import)


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


def _buildspec_commands() -> list[tuple[str, str]]:
    """(phase, command) of buildspec.yml, in the order CodeBuild runs them."""
    spec = yaml.safe_load((ROOT / "buildspec.yml").read_text())
    assert spec["version"] == 0.2
    phases = spec["phases"]
    assert list(phases) == ["install", "pre_build", "build", "post_build"]
    return [(name, command) for name, phase in phases.items() for command in phase["commands"]]


def _make_recipe(target: str) -> list[str]:
    """The commands of a Makefile target (its tab-indented lines)."""
    lines = (ROOT / "Makefile").read_text().split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_buildspec_tests_builds_both_images_and_gates_the_push_on_the_scan():
    commands = _buildspec_commands()
    by_phase = {phase: "\n".join(c for p, c in commands if p == phase) for phase, _ in commands}
    assert "pytest" in by_phase["pre_build"] and "hadolint" in by_phase["pre_build"]
    assert "aws ecr get-login-password" in by_phase["pre_build"] and "docker login" in by_phase["pre_build"]
    assert "CODEBUILD_RESOLVED_SOURCE_VERSION" in by_phase["pre_build"]
    assert "$CPU_BASE_IMAGE" in by_phase["build"] and "$GPU_BASE_IMAGE" in by_phase["build"]
    post = [c for p, c in commands if p == "post_build"]
    gates = [i for i, c in enumerate(post) if c.startswith("docker/ecr_scan_gate.sh")]
    release_pushes = [i for i, c in enumerate(post) if re.search(r':(cpu|gpu|slim)"$', c)]
    assert len(gates) == 3 and len(release_pushes) == 3 and max(gates) < min(release_pushes)
    assert os.access(ROOT / "docker" / "ecr_scan_gate.sh", os.X_OK)


def test_buildspec_runs_make_tests_tiers_with_nginx_installed_as_the_makefile_does():
    """Every real-server test needs nginx: CodeBuild installs it with `make nginx` (the Makefile's one recipe) before
    the tests, and runs the tiers `make test` runs."""
    commands = [command for _, command in _buildspec_commands()]
    tests = next(i for i, command in enumerate(commands) if "pytest" in command)
    assert "make nginx" in commands[:tests]
    (make_test,) = [line for line in _make_recipe("test") if "pytest" in line]
    markers = re.search(r'-m "([^"]+)"', make_test).group(1)
    assert re.search(rf'-m "{re.escape(markers)}"', commands[tests]), (commands[tests], markers)


def test_buildspec_builds_smoke_tests_and_pushes_the_slim_image():
    """The slim image (Dockerfile's `slim` target) is built beside CPU and GPU, served an ONNX artifact with no network
    and checked as the CPU image is, then pushed, scanned and released like them."""
    commands = _buildspec_commands()
    build = [c for p, c in commands if p == "build"]
    builds = [c for c in build if c.startswith("docker build")]
    assert len(builds) == 3
    (slim_build,) = [c for c in builds if "--target slim" in c]
    assert '-t "$IMAGE_REPO_NAME:slim"' in slim_build and "slim" in re.findall(r"^FROM \S+ AS (\S+)",
                                                                              (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    run = next(i for i, c in enumerate(build) if c.startswith("docker run") and '"$IMAGE_REPO_NAME:slim"' in c)
    assert "--network none" in build[run] and ":/opt/ml/model:ro" in build[run]
    assert any("build_artifact.py" in c and "--backend onnx" in c for c in build[:run])
    name = re.search(r"--name (\S+)", build[run]).group(1)
    after = build[run + 1:]
    for check in ("ping", "sagemaker"):
        assert f"docker exec -i {name} python - {check} < docker/container_checks.py" in after
    assert any(c.startswith("!") and "import torch" in c and name in c for c in after)
    assert any(c.startswith(f"docker stop -t 30 {name}") and "ExitCode" in c for c in after)
    post = [c for p, c in commands if p == "post_build"]
    slim_tag = '"$REPOSITORY_URI:$COMMIT-slim"'
    assert any(c == f'docker tag "$IMAGE_REPO_NAME:slim" {slim_tag}' for c in build)
    push = post.index(f"docker push {slim_tag}")
    gate = post.index('docker/ecr_scan_gate.sh "$IMAGE_REPO_NAME" "$COMMIT-slim"')
    release = next(i for i, c in enumerate(post) if c.endswith('docker push "$REPOSITORY_URI:slim"'))
    assert push < gate < release
