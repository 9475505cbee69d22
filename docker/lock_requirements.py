"""Write `requirements.lock`: every Python distribution searchbox, its tests and its packaging scripts install.

`make lock` runs this; nothing else writes the lock. The lock is the one source of versions: `make venv`
installs the project with it as pip constraints, the Dockerfile installs the image's runtime closure with
it, CI builds both from it. A fresh machine therefore gets the versions the tests last passed with,
whatever was released since.

How it resolves: pip's own resolver (`pip install --dry-run --report`, nothing is installed) on
`TORCH_SPEC` plus `.[test]` (which pulls the packaging extra), for this interpreter and platform,
through the caller's pip configuration (index, find-links, constraints). Versions already in the lock
are kept as long as they still satisfy pyproject.toml, as pip-compile does: running `make lock` twice in
a row changes nothing, and a new dependency does not move the others. `--upgrade` (`make lock
UPGRADE=1`) drops those preferences and takes the newest versions pip can find.

Before new versions are pinned (`--upgrade`, or any move of the packages that compute a model:
`ARCHITECTURE_PACKAGES`), they are installed into a throwaway venv and `tests/test_jina_architectures.py` runs
there: Jina's architectures, read natively and as remote code, must still load and answer as before. A release
that breaks one leaves the lock as it was, and says so.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PROJECT = "searchbox"
ARCHITECTURE_TESTS = "tests/test_jina_architectures.py"
ARCHITECTURE_PACKAGES = ("torch", "transformers", "sentence-transformers", "tokenizers", "safetensors")
HEADER = """\
# Every Python distribution searchbox, its tests and its packaging scripts install, pinned.
# The one source of versions: `make venv` and the Dockerfile install with it as pip constraints, CI builds from it.
# Written by `make lock` (docker/lock_requirements.py); do not edit by hand.
"""


def canonicalize_name(name: str) -> str:
    """PEP 503's normal form (what packaging.utils does; this script runs on a bare Python, before any venv)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path = LOCK) -> dict[str, str]:
    """name -> version of each `name==version` line of a lock file (empty when there is none)."""
    if not path.is_file():
        return {}
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def render(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def resolve(torch_spec: str, preferences: dict[str, str]) -> dict[str, str]:
    """What pip would install for `torch_spec` and `.[test]`, preferring the given versions.

    Raises:
        subprocess.CalledProcessError: pip found no consistent set (with these preferences).
    """
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "preferences.txt"
        constraints.write_text("".join(f"{name}=={version}\n" for name, version in preferences.items()))
        report = Path(tmp) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-qq",
             "--disable-pip-version-check", "--report", str(report), "-c", str(constraints),
             torch_spec, f"{ROOT}[test]"],
            check=True, cwd=ROOT)
        installs = json.loads(report.read_text())["install"]
    # A local label (torch's `+cpu`, `+cu130`) names a build, not a release: `==2.13.0` admits every build,
    # so the pipconf of a build (CPU or CUDA index) chooses which one, under the same pin.
    pins = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"].split("+")[0]
            for item in installs}
    pins.pop(PROJECT, None)
    return pins


def architectures_hold(torch_spec: str, pins: dict[str, str]) -> bool:
    """Whether ARCHITECTURE_TESTS pass with exactly `pins` installed (a throwaway venv, as `make venv` installs)."""
    with tempfile.TemporaryDirectory(prefix="lock-check-") as tmp:
        venv, constraints = Path(tmp) / "venv", Path(tmp) / "pins.txt"
        constraints.write_text(render(pins))
        python = venv / "bin" / "python"
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                            "-c", str(constraints), torch_spec, "-e", f"{ROOT}[test]"], check=True, cwd=tmp)
        except subprocess.CalledProcessError as exc:
            print(f"lock: the new pins do not install ({exc})", file=sys.stderr)
            return False
        done = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", ARCHITECTURE_TESTS],
                              cwd=ROOT)
        return done.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", default="torch==2.13.0", help="the torch requirement (the Makefile's TORCH_SPEC)")
    parser.add_argument("--upgrade", action="store_true", help="ignore the current pins: newest versions pip finds")
    args = parser.parse_args()
    preferences = {} if args.upgrade else read_pins()
    try:
        pins = resolve(args.torch, preferences)
    except subprocess.CalledProcessError:
        if not preferences:
            return 1
        # pyproject.toml now asks for something the old pins exclude: resolve afresh, say so.
        print("lock: the current pins no longer fit pyproject.toml; resolving without them", file=sys.stderr)
        pins = resolve(args.torch, {})
    old = read_pins()
    moved = [name for name in ARCHITECTURE_PACKAGES if pins.get(name) != old.get(name)]
    if args.upgrade or moved:
        print(f"lock: checking {ARCHITECTURE_TESTS} under the new pins before writing them", file=sys.stderr)
        if not architectures_hold(args.torch, pins):
            for name in moved:
                print(f"lock: {name} {old.get(name, '-')} -> {pins.get(name, '-')}", file=sys.stderr)
            print(f"lock: {ARCHITECTURE_TESTS} fails under these versions: {LOCK.name} is left as it was. Keep the "
                  "failing package below the breaking release in pyproject.toml, or fix the architecture first",
                  file=sys.stderr)
            return 1
    LOCK.write_text(render(pins))
    changed = sorted(name for name in pins.keys() | old.keys() if pins.get(name) != old.get(name))
    for name in changed:
        print(f"lock: {name} {old.get(name, '-')} -> {pins.get(name, '-')}", file=sys.stderr)
    print(f"lock: {LOCK.name} holds {len(pins)} pins, {len(changed)} changed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
