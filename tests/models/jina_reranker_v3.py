"""The tiny jina-reranker-v3-style checkpoint of examples/tiny_jina_reranker_v3.py (a Qwen3 config naming
`JinaForRanking`, its seeded weights, tests/jina_reranker_v3_reference.py copied in as `modeling.py`, a byte-level BPE
tokenizer trained on the spot with the model's marker tokens at 151670/151671): the example a user runs is the model
the tests serve."""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import tiny_jina_reranker_v3  # noqa: E402
from tiny_jina_reranker_v3 import reference, reference_module  # noqa: E402,F401

MODEL_MAX_LENGTH = tiny_jina_reranker_v3.MODEL_MAX_LENGTH


def build(target: Path, *, seed: int = 11, max_length: int = MODEL_MAX_LENGTH) -> Path:
    """Write the tiny checkpoint to `target` and return it."""
    return tiny_jina_reranker_v3.build(target, "tiny", seed=seed, max_length=max_length)
