"""State kept beside a loaded model for as long as the model lives, and gone with it: the one place such state is held
(classify's cache of label vectors, the readers of trained classifiers). Keyed by the model object itself (weakly), so
two models served in one process (tests, an instance per model) never share it.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class PerModel(Generic[T]):
    """`state(model)`: the model's own `T`, made by `make()` the first time it is asked for."""

    def __init__(self, make: Callable[[], T]):
        self._make = make
        self._values: "weakref.WeakKeyDictionary[Any, T]" = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self, model: Any) -> T:
        with self._lock:
            value = self._values.get(model)
            if value is None:
                value = self._values[model] = self._make()
            return value
