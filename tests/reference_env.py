"""Reference implementations that pin other library versions than the project, each in its own venv (PyLate,
FlagEmbedding, the integration clients, jina-sagemaker).

PyLate 1.6.0 pins sentence-transformers 5.3.0 and transformers <= 5.3.0 (and, through fast-plaid, a CUDA
torch): it can never be a project dependency. The test session makes its venv once, in the git-ignored
`.cache/` of the checkout, and reuses it while its install spec is unchanged; a lock file keeps parallel
test runs from building it twice. Without a registry it cannot be made: the reference tests then fail,
naming what to do, since parity that was never checked must not read as passed.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache"
# torch 2.13.0 is the CPU wheel kept on this machine kind (pip's find-links); pylate without its deps,
# whose fast-plaid pin would pull a CUDA torch. The other pins are PyLate 1.6.0's own.
PYLATE_SPEC = (
    ("torch==2.13.0", "sentence-transformers==5.3.0", "transformers==5.3.0", "ujson", "pandas", "datasets",
     "accelerate"),
    ("--no-deps", "pylate==1.6.0"),
)
# The client libraries that call a SageMaker or OpenAI-style endpoint (tests/test_integration_clients.py): their
# pins (langchain-core, pydantic, httpx, numpy ranges) are theirs, not the image's, so they live beside it.
CLIENTS_SPEC = (
    ("openai==3.51.0", "cohere==7.3.1", "langchain-community==0.4.2",
     "llama-index-embeddings-sagemaker-endpoint==0.6.0", "boto3"),
)
# BGE-M3's own code (tests/models/bge_m3.py): FlagEmbedding 1.4.2 and what pip resolved for it on the CPU torch kept
# on this machine kind, pinned so that the reference cannot drift under the tests.
FLAGEMBEDDING_SPEC = (
    ("torch==2.13.0", "transformers==5.25.0", "sentence-transformers==6.3.0", "peft==0.21.2", "accelerate==1.16.0",
     "datasets==5.2.0", "ir-datasets==0.6.3", "sentencepiece==0.2.3", "FlagEmbedding==1.4.2"),
)
# Jina's SageMaker client as buyers install it: 0.0.48 (contract.md §2a, §2d) and the SageMaker SDK its Client
# imports (< 3 by its own requirement), pinned to what pip resolved for it.
JINA_SAGEMAKER_SPEC = (("jina-sagemaker==0.0.48", "sagemaker==2.257.7"),)
_INSTALL_TIMEOUT_S = 1800
# Pins that the project's own venv may already hold at exactly that version: its files are hard-linked into the
# reference venv before pip runs, which then finds the pin satisfied. Unpacking and byte-compiling torch's ~750 MB
# took most of a torch reference venv's minutes; links are the same bytes pip would have written, and stay the
# reference's own when the project's torch is later replaced (pip unlinks files, it never rewrites them in place).
_SHARED_PINS = ("torch",)


class ReferenceUnavailable(RuntimeError):
    """The reference venv cannot be made here; the message says why and how to make it by hand."""


def pylate_python() -> Path:
    """The python of a venv holding PyLate 1.6.0, made on first use (minutes) and reused after."""
    return _venv("pylate-1.6.0", PYLATE_SPEC)


def flagembedding_python() -> Path:
    """The python of a venv holding FlagEmbedding 1.4.2 (BGE-M3's `BGEM3FlagModel`), made on first use."""
    return _venv("flagembedding-1.4.2", FLAGEMBEDDING_SPEC)


def clients_python() -> Path:
    """The python of a venv holding the OpenAI, Cohere, LangChain and LlamaIndex clients, made on first use."""
    return _venv("integration-clients", CLIENTS_SPEC)


def jina_sagemaker_python() -> Path:
    """The python of a venv holding jina-sagemaker 0.0.48 and the SageMaker SDK it needs, made on first use."""
    return _venv("jina-sagemaker-0.0.48", JINA_SAGEMAKER_SPEC)


# Azurite, Microsoft's Azure Storage emulator (the classifier store's az:// tests), from the npm registry: a Node
# package, installed with npm into its own folder of the cache.
AZURITE_SPEC = "azurite@3.37.0"


def azurite_blob() -> Path:
    """The `azurite-blob` command of Azurite, installed with npm into `.cache/` on first use (seconds) and reused."""
    name = AZURITE_SPEC.replace("@", "-")
    target = CACHE / name
    command = target / "node_modules" / ".bin" / "azurite-blob"
    marker = target / ".complete"
    if marker.is_file() and marker.read_text() == AZURITE_SPEC and command.exists():
        return command
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and marker.read_text() == AZURITE_SPEC and command.exists():
            return command
        npm = shutil.which("npm")
        if npm is None:
            raise ReferenceUnavailable(f"cannot install {AZURITE_SPEC}: npm is not on PATH (install Node.js)")
        log_path = CACHE / f"{name}.log"
        with log_path.open("w") as log:
            try:
                done = subprocess.run([npm, "install", "--prefix", str(target), "--no-audit", "--no-fund",
                                       AZURITE_SPEC], stdout=log, stderr=subprocess.STDOUT,
                                      timeout=_INSTALL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                done = None
        if done is None or done.returncode != 0 or not command.exists():
            tail = log_path.read_text(errors="replace")[-1500:]
            raise ReferenceUnavailable(f"cannot install {AZURITE_SPEC} with npm (needs the npm registry); full log: "
                                       f"{log_path}\n...{tail}")
        marker.write_text(AZURITE_SPEC)
        return command


def _venv(name: str, installs: tuple[tuple[str, ...], ...], cache: Path = CACHE) -> Path:
    target = cache / name
    python = target / "bin" / "python"
    marker = target / ".complete"
    wanted = repr(installs)
    if marker.is_file() and marker.read_text() == wanted and python.exists():
        return python
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building it: wait, then reuse its work
        if marker.is_file() and marker.read_text() == wanted and python.exists():
            return python
        shutil.rmtree(target, ignore_errors=True)
        log_path = cache / f"{name}.log"
        started = time.monotonic()
        with log_path.open("w") as log:
            steps = [[sys.executable, "-m", "venv", str(target)]]
            steps += [[str(python), "-m", "pip", "install", "--disable-pip-version-check", *args] for args in installs]
            for number, step in enumerate(steps):
                if number == 1:
                    for line in _link_shared_pins(target, installs):
                        log.write(f"{line}\n")
                log.write(f"$ {' '.join(step)}\n")
                log.flush()
                try:
                    done = subprocess.run(step, stdout=log, stderr=subprocess.STDOUT, timeout=_INSTALL_TIMEOUT_S,
                                          env={**os.environ, "PIP_NO_INPUT": "1"})
                except subprocess.TimeoutExpired:
                    done = None
                if done is None or done.returncode != 0:
                    shutil.rmtree(target, ignore_errors=True)
                    tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
                    raise ReferenceUnavailable(
                        f"cannot make the {name} reference venv (needs PyPI through pip); step failed: "
                        f"{' '.join(step)}\nfull log: {log_path}\n...{tail}")
        marker.write_text(wanted)
        print(f"made {target} in {time.monotonic() - started:.0f} s", file=sys.stderr)
        return python


def _link_shared_pins(target: Path, installs: tuple[tuple[str, ...], ...]) -> list[str]:
    """Hard-link into `target` each `_SHARED_PINS` package pinned in `installs` that this interpreter holds at that
    exact version (a local label such as +cpu aside, as pip's `==` reads it). Returns what it did, for the log;
    anything it cannot link (another file system) is left for pip to install."""
    pins = {arg.split("==")[0].lower(): arg.split("==")[1] for args in installs for arg in args if "==" in arg}
    site = target / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    done = []
    for name in _SHARED_PINS:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if name not in pins or dist.version.split("+")[0] != pins[name]:
            continue
        tops = sorted({Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")})
        try:
            for top in tops:
                source = Path(dist.locate_file(top))
                if source.is_dir():
                    shutil.copytree(source, site / top, copy_function=os.link, symlinks=True)
                else:
                    os.link(source, site / top)
        except OSError as exc:
            for top in tops:  # half a package would read as installed: take all of it back
                if (site / top).is_dir():
                    shutil.rmtree(site / top, ignore_errors=True)
                else:
                    (site / top).unlink(missing_ok=True)
            done.append(f"# not linked {name} {dist.version} ({exc}): pip installs it")
            continue
        done.append(f"# linked {name} {dist.version} from {dist.locate_file('')}: {', '.join(tops)}")
    return done
