"""Inputs checked by flag and outputs written all-or-nothing, for every script beside this file.

A refused run must leave nothing behind: a half-written listing (YAML without its model, a change set
without its artifact) looks finished to whoever finds it later. Imported through the scripts' own
directory on sys.path, like `_catalog`; never a package (see README.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class InputError(ValueError):
    """An input named on the command line is missing or unreadable; the message starts with the flag."""


def require_file(path: str | Path, flag: str, hint: str = "") -> Path:
    """`path` when it is a file; otherwise InputError naming `flag`, the path, and `hint` (what to do)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise InputError(f"{flag}: {path} {what}" + (f"; {hint}" if hint else ""))
    return path


def require_dir(path: str | Path, flag: str, hint: str = "") -> Path:
    """`path` when it is a directory; otherwise InputError naming `flag`, the path, and `hint`."""
    path = Path(path)
    if not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "does not exist"
        raise InputError(f"{flag}: {path} {what}" + (f"; {hint}" if hint else ""))
    return path


@contextlib.contextmanager
def created_dirs(directory: Path) -> Iterator[Path]:
    """Make `directory` and its missing parents; if the block fails, remove the ones made here (when empty)."""
    directory = Path(directory).absolute()
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    try:
        yield directory
    except BaseException:
        for made in missing:  # deepest first; rmdir leaves a directory someone else wrote into
            with contextlib.suppress(OSError):
                made.rmdir()
        raise


@contextlib.contextmanager
def staged_output(out_dir: Path, *, whole: tuple[str, ...] = ()) -> Iterator[Path]:
    """A fresh directory beside `out_dir` to write into, moved into `out_dir` only when the block succeeds.

    Files replace their namesakes in `out_dir`; other files there stay. The directories in `whole`
    (relative paths) replace theirs entirely, so that no stale file of an earlier run survives in them.
    On failure `out_dir` is left as it was (absent, if it was absent).
    """
    out_dir = Path(out_dir).absolute()
    with created_dirs(out_dir.parent):
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
        try:
            yield staging
            _merge(staging, out_dir, "", whole)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _merge(source: Path, target: Path, relative: str, whole: tuple[str, ...]) -> None:
    if target.exists() and not target.is_dir():
        target.unlink()
    target.mkdir(exist_ok=True)
    for entry in sorted(source.iterdir()):
        name = f"{relative}/{entry.name}" if relative else entry.name
        destination = target / entry.name
        if entry.is_dir() and name not in whole:
            _merge(entry, destination, name, whole)
            continue
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        elif entry.is_dir() and (destination.exists() or destination.is_symlink()):
            destination.unlink()  # os.replace puts a directory over nothing or an empty directory only
        os.replace(entry, destination)
