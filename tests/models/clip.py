"""The tiny CLIP of examples/tiny_clip.py (transformers' own classes, 32-wide towers, 32 px images): the example a
user runs is the model the tests serve."""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import tiny_clip  # noqa: E402

SIZES = tiny_clip.SIZES
clip_tokenizer = tiny_clip.clip_tokenizer


def make_clip(target: Path, size: str = "tiny") -> Path:
    return tiny_clip.build(target, size)
