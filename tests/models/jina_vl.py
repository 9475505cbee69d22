"""The tiny jina-reranker-m0-shaped checkpoint of examples/tiny_jina_vl.py (a Qwen2VLForConditionalGeneration saved by
transformers, plus the `score` head Jina's JinaVLForRanking adds): the example a user runs is the model the tests
serve."""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import tiny_jina_vl  # noqa: E402


def make_m0(target: Path, size: str = "tiny") -> Path:
    return tiny_jina_vl.build_m0(target, size)
