"""Runtime options a handler is built with (the server fills them from its settings, once)."""

from __future__ import annotations

from dataclasses import dataclass

from model_handlers.deadline import Deadline


GPU_MAX_BATCH_TOKENS = 16384
CPU_MAX_BATCH_TOKENS = 1024


@dataclass(frozen=True)
class HandlerOptions:
    device: str = "auto"
    allow_pickle: bool = False
    # Padded tokens (longest x count) one forward pass may hold; None: the device's default (below).
    max_batch_tokens: int | None = None
    max_batch_items: int = 256
    # How long a caller waits for its rows before getting an Overloaded error, when the server gives no deadline.
    request_timeout_s: float = 60.0
    # Model inputs one rerank request may make (a long document makes one per window).
    max_rerank_windows: int = 4096
    torch_threads: int | None = None
    # The name answered in `model` when searchbox.json gives none.
    served_model_name: str | None = None
    # The `input_type` of requests that give none ("query" or "document"; batch transform CSV rows give none),
    # chosen by the operator for a whole job; None leaves it to searchbox.json, else to the model.
    default_input_type: str | None = None

    def deadline(self) -> Deadline:
        """The deadline of a request the server gave none (warm-up, scripts)."""
        return Deadline.after(self.request_timeout_s)

    def resolved_max_batch_tokens(self, device) -> int:
        """A GPU wants big passes. A CPU is saturated by ~1k tokens, and smaller passes keep it busy
        while earlier callers' answers are written, and bound the activations' resident memory:
        in bench/, 1024 instead of 16384 gave 4 clients x 32 texts 0.90x instead of 0.76x the
        in-process limit, 15% less CPU per text, and the same memory as the 16384 budget plus a
        fixed malloc mmap threshold."""
        if self.max_batch_tokens:
            return self.max_batch_tokens
        return GPU_MAX_BATCH_TOKENS if str(device).startswith("cuda") else CPU_MAX_BATCH_TOKENS

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
