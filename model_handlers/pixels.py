"""Preprocessed pixels waiting for the model, counted across requests: an image is small as a file and large once
preprocessed (float32 patches), so the server caps how much of it waits at once and refuses past the cap at once.
"""

from __future__ import annotations

import threading
import weakref
from typing import Protocol

from model_handlers.errors import Overloaded, TooLarge

# Preprocessed pixels that may wait for the model at once (float32): ~3,500 images of 224 px, ~1,500 of 336.
MAX_HELD_PIXEL_BYTES = 2 << 30


class Sized(Protocol):
    """A preprocessed image: what it takes in memory (it must be weakly referenceable: freed, it is released)."""

    @property
    def nbytes(self) -> int: ...


class HeldPixels:
    """Bytes of preprocessed pixels alive in work items, across requests: freed as the items are."""

    def __init__(self, cap: int):
        self.cap = cap
        self._held = 0
        self._lock = threading.Lock()

    def hold(self, item: Sized, request_bytes: int) -> None:
        """Count `item` until it is garbage; `request_bytes` is what its request already holds.

        Raises:
            TooLarge: the request's images alone exceed the cap. Overloaded: other requests' images fill it.
        """
        size = item.nbytes
        if request_bytes + size > self.cap:
            raise TooLarge(f"this request's images take more than {self.cap >> 20} MiB once preprocessed "
                           f"({size >> 10} KiB each); send at most {max(1, self.cap // size)} images per request")
        with self._lock:
            if self._held + size > self.cap:
                raise Overloaded("the server holds as many images as it may; retry shortly or send fewer images",
                                 retry_after_s=1)
            self._held += size
        weakref.finalize(item, self._release, size)

    def _release(self, size: int) -> None:
        with self._lock:
            self._held -= size
