"""The tiny jina-embeddings-v4-shaped embedder of examples/tiny_jina_vl.py (a Qwen2_5_VLForConditionalGeneration, its
multi-vector projector and one LoRA file of per-task pairs, laid out as the published repository): the example a user
runs is the model the tests serve."""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import tiny_jina_vl  # noqa: E402


def make_v4(target: Path, size: str = "tiny") -> Path:
    return tiny_jina_vl.build_v4(target, size)
