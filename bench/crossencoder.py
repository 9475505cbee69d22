"""Build a real cross-encoder directory from the embedded MiniLM: BERT with a one-logit head.

No cross-encoder weights can be downloaded here; the head is random (scores are meaningless), the
compute is exactly a MiniLM-L6 reranker's. The seeded head is widened so that scores spread as a trained
reranker's do (a random head scores every pair within a few thousandths, where any rounding reorders
them and the ONNX int8 gate could not tell quality from noise). Run: `python -m bench.crossencoder OUT_DIR`.
"""

from __future__ import annotations

import sys
from pathlib import Path


def build(minilm_dir: Path, out_dir: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=1)
    with torch.no_grad():
        model.classifier.weight.mul_(50)
    model.save_pretrained(str(out_dir))
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(str(out_dir))
    return out_dir


if __name__ == "__main__":
    from model_handlers.embedded import embedded_model_dir

    build(embedded_model_dir(), Path(sys.argv[1]))
