"""Runtime options a handler is built with (the server fills them from its settings, once)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HandlerOptions:
    device: str = "auto"
    allow_pickle: bool = False
    # Padded tokens (longest x count) one forward pass may hold.
    max_batch_tokens: int = 16384
    max_batch_items: int = 256
    # How long a caller waits for its rows before getting an Overloaded error.
    request_timeout_s: float = 60.0
    torch_threads: int | None = None
    # The name answered in `model` when searchbox.json gives none.
    served_model_name: str | None = None

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
