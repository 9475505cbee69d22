"""`make mutation`: how many of mutmut's mutants of the core modules the fast tier kills, one module at a time.

mutmut 3 (configured in pyproject.toml's [tool.mutmut]) copies the packages into mutants/, learns once which of the
selected fast-tier tests reach each function, then runs only those tests against each mutant of the module asked.
The modules asked run in one mutmut run (one clean run of the tests, one stats pass), one mutant at a time unless
--max-children says otherwise; a module can be redone alone (`make mutation MUTATION_ARGS="--module
model_handlers/metering.py"`), and `--alive` reruns only the mutants the last results left alive (after tests were
added: a mutant a run already killed stays killed, as tests are only added). Prints a Markdown table (README: Mutation
testing) and the mutants left alive; `.venv/bin/mutmut show NAME` prints one's diff.

A mutant counts as killed when a test failed (or the run timed out: an endless loop is caught too); one that no
selected test reaches ("no tests") counts as surviving.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = Path(sys.executable).with_name("mutmut")
CAUGHT = {"killed", "timeout", "caught by type check"}
NOT_RUN = "not checked"  # a run stopped before it reached the mutant


def core_modules() -> list[str]:
    """The modules [tool.mutmut] only_mutate names (the one list of what is mutated)."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]


def mutant_glob(module: str) -> str:
    """mutmut's names for a module's mutants: `model_handlers.metering.x_parse_metering__mutmut_3`."""
    return module.removesuffix(".py").replace("/", ".") + ".*"


def results() -> dict[str, str]:
    """Every mutant mutmut has a result for: name -> status."""
    out = subprocess.run([str(MUTMUT), "results", "--all", "true"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    statuses = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            statuses[name] = status
    return statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", help="a path from [tool.mutmut] only_mutate (repeatable)")
    parser.add_argument("--report-only", action="store_true", help="print the last results, run nothing")
    parser.add_argument("--alive", action="store_true",
                        help="rerun only the mutants of these modules the last results left alive or never reached")
    parser.add_argument("--max-children", type=int, default=1, help="mutants run at once (default 1)")
    args = parser.parse_args()
    modules = args.module or core_modules()
    unknown = sorted(set(modules) - set(core_modules()))
    if unknown:
        parser.error(f"not in [tool.mutmut] only_mutate: {', '.join(unknown)}")
    names = [mutant_glob(module) for module in modules]
    if args.alive:
        prefixes = tuple(name[:-1] for name in names)
        names = sorted(name for name, status in results().items() if name.startswith(prefixes) and status not in CAUGHT)
    if not args.report_only and names:
        print(f"mutation: {', '.join(modules)}", file=sys.stderr, flush=True)
        subprocess.run([str(MUTMUT), "run", "--max-children", str(args.max_children), *names],
                       cwd=ROOT, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=sys.stderr)
    statuses = results()
    print("| module | mutants | run | killed | alive | kill rate (of those run) |")
    print("|---|---:|---:|---:|---:|---:|")
    alive = []
    for module in modules:
        prefix = mutant_glob(module)[:-1]
        mine = {name: status for name, status in statuses.items() if name.startswith(prefix)}
        ran = {name: status for name, status in mine.items() if status != NOT_RUN}
        caught = sum(status in CAUGHT for status in ran.values())
        rate = f"{100 * caught / len(ran):.1f} %" if ran else "not run"
        print(f"| `{module}` | {len(mine)} | {len(ran)} | {caught} | {len(ran) - caught} | {rate} |")
        alive += sorted(f"{name}: {status}" for name, status in ran.items() if status not in CAUGHT)
    if alive:
        print("\nalive (`.venv/bin/mutmut show NAME`):\n" + "\n".join(alive))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
