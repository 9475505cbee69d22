"""Under `make mutation`: packaging/'s scripts imported under the names mutmut gives their mutants.

packaging/ is not a package (an `__init__.py` would shadow PyPI's `packaging`), so its tests put the folder on
`sys.path` and `import deployment`. mutmut names a mutant by its file's path (`packaging.deployment.x_check...`) and
runs it only where the function's `__module__` is that name; imported as `deployment`, every mutant of the module
would run the original and survive. This finder loads a script of the folder, when the folder is on `sys.path`,
under `packaging.<name>` and registers it under its plain name too, so each script is still loaded once.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

PACKAGING = Path(__file__).resolve().parent.parent / "packaging"
PREFIX = "packaging."


class _Loader(importlib.machinery.SourceFileLoader):
    def exec_module(self, module) -> None:
        # both names before the code runs: the scripts import each other by their plain names
        sys.modules[module.__name__.removeprefix(PREFIX)] = module
        super().exec_module(module)


class _PackagingScripts(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        script = PACKAGING / f"{name}.py"
        if path is not None or "." in name or not script.is_file():
            return None
        if str(PACKAGING) not in {str(Path(entry).resolve()) for entry in sys.path if entry}:
            return None  # as without mutmut: the scripts import only where a test put the folder on the path
        full = PREFIX + name
        return importlib.util.spec_from_file_location(full, script, loader=_Loader(full, str(script)))


def install() -> None:
    if not any(isinstance(finder, _PackagingScripts) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PackagingScripts())
