"""Handing freed memory back to the system after large requests.

glibc keeps what a large request freed (tokenizer encodings, activations, rendered answers) in its
arenas, so the worker's resident memory stayed at its peak: 553 MiB idle grew to 1,752 MiB after two
2048-input requests and stayed there; with one arena per request thread (up to 16 on 2 cores), twenty
million-token rerank documents took it to 5.4 GiB. Two measures, both measured with `make soak`:
- at most two arenas (`limit_arenas`, in the worker at start): what one request frees, the next reuses;
- `malloc_trim(0)` returns free pages to the system. It costs milliseconds, so it runs only when the
  batcher runs dry after a lot of work, and after a request with a large body.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)


def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc()
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def release_free_memory() -> None:
    """Return freed heap pages to the system (glibc only; elsewhere nothing to do)."""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def limit_arenas(count: int = 2) -> None:
    """Let malloc keep at most `count` arenas in this process (glibc only)."""
    if _LIBC is not None and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(_M_ARENA_MAX, count)
