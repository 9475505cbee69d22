"""A one-label BERT cross-encoder over the MiniLM weights (random head, seeded), as a plain HF directory: no trained
reranker's weights can be downloaded here, and the code path is a real cross-encoder's."""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def make_reranker(target: Path, minilm_dir: Path) -> Path:
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=1)
    # The seeded head has tiny weights (scores all near 0.5): widen it so scores spread out and ties are rare.
    with torch.no_grad():
        model.classifier.weight.mul_(50)
    model.save_pretrained(str(target), safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_dir / name, target / name)
    return target
