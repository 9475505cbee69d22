"""Whether the model runs on a GPU, judged without importing torch: the server knows no tensors, and `serve` chooses
its workers before any model loads. One rule for `serve`'s worker slots and the job settings the server asks for
(`GET /execution-parameters`), so that the two never disagree about the same machine."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

_NVIDIA_DEVICE = re.compile(r"nvidia(\d+)")


def visible_gpus(environ: Mapping[str, str] | None = None, dev: Path = Path("/dev")) -> int:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else the NVIDIA device files."""
    env = os.environ if environ is None else environ
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        entries = [entry.strip() for entry in listed.split(",") if entry.strip()]
        # CUDA stops at the first invalid entry; "-1" is the usual way of hiding every GPU
        count = 0
        for entry in entries:
            if entry.startswith("-"):
                break
            count += 1
        return count
    try:
        return sum(1 for path in dev.iterdir() if _NVIDIA_DEVICE.fullmatch(path.name))
    except OSError:
        return 0


def on_gpu(device: str, gpus: int) -> bool:
    """Whether a model on `device` (SEARCHBOX_DEVICE's value) runs on a GPU when `gpus` are visible: a cuda device
    always, auto when there is a GPU to take."""
    return device.startswith("cuda") or (device == "auto" and gpus > 0)
