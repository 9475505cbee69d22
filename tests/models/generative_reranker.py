"""The tiny generative reranker of examples/tiny_generative_reranker.py (a Qwen3ForCausalLM, a BPE tokenizer trained on
the spot, Qwen3-Reranker's judge prompt as its chat template, saved as a sentence-transformers CrossEncoder): the
example a user runs is the model the tests serve."""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import tiny_generative_reranker  # noqa: E402


def make_generative_reranker(target: Path, size: str = "tiny") -> Path:
    return tiny_generative_reranker.build(target, size)
