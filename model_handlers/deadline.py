"""When a caller stops waiting for its answer, and how to tell that it left before then.

The server makes one per request (the request timeout from its arrival, and a check of its
connection); the batcher refuses work that cannot finish before it and drops work nobody will
receive. Nothing here knows what a connection is: `abandoned` is any cheap check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Deadline:
    at: float  # time.monotonic() after which nobody waits for the answer
    abandoned: Callable[[], bool] = _never  # true once the caller is gone (e.g. its connection closed)
    # the server admitted its request already (before reading the body): the operations do not ask the batcher again
    admitted: bool = False

    @classmethod
    def after(cls, seconds: float, abandoned: Callable[[], bool] = _never) -> "Deadline":
        return cls(time.monotonic() + seconds, abandoned)

    def left(self) -> float:
        return self.at - time.monotonic()

    def expired(self) -> bool:
        """Whether the answer can no longer reach anyone: past the deadline, or the caller left."""
        return time.monotonic() >= self.at or self.abandoned()

    def sooner(self, at: float) -> "Deadline":
        return self if at >= self.at else Deadline(at, self.abandoned)
