"""Decoders on a GPU: served in the checkpoint's dtype (bf16) with SDPA attention, within cosine 0.999 of fp32.

Builds the small decoder models of the tests and examples with bf16 weights (as Qwen3-Embedding, Qwen3-Reranker and
EmbeddingGemma are published), loads each through searchbox on `--device` (cuda by default) and compares its answers
with the library's own model in float32 on the CPU:

- a Qwen3-Embedding-shaped embedder (tests/models/code_embeddings.py `small`): cosine of each vector >= 0.999;
- a Qwen3-Reranker-shaped generative reranker (examples/tiny_generative_reranker.py `small`): scores within 0.01 and
  the same order.

It prints the dtype and attention implementation searchbox loaded, each figure and PASS/FAIL; exits 1 on a FAIL.
On a CPU (`--device cpu`) searchbox loads float32 (options.weights_dtype), and the figures are fp32 against fp32.

    .venv/bin/python -m bench.gpu_dtype [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUERY = "What is the capital of Germany?"
TEXTS = ["Berlin is the capital of Germany.", "The quick brown fox jumps over the lazy dog.",
         "Search engines rank documents by relevance.", "How do rotary position embeddings work?"]


def stored_as(model_dir: Path, model_class, dtype: str = "bfloat16") -> Path:
    """`model_dir`'s transformers weights saved again in `dtype` (a torch dtype's name), its config saying so (what
    transformers' dtype "auto" reads on a GPU); its other files kept."""
    import torch

    model = model_class.from_pretrained(str(model_dir), dtype=torch.float32)
    model.to(getattr(torch, dtype)).save_pretrained(str(model_dir))
    return model_dir


def _loaded(sentence_transformers_model) -> str:
    """The dtype and attention implementation of the transformers model a sentence-transformers model holds (the
    searchbox kinds of these decoders run sentence-transformers' own modules)."""
    backbone = sentence_transformers_model[0].model
    return f"{next(backbone.parameters()).dtype}, attention {backbone.config._attn_implementation}"


def embedder(work: Path, device: str) -> list[str]:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from model_handlers import HandlerOptions, load_handler
    from model_handlers.types import EmbedRequest, TextInput

    sys.path.insert(0, str(ROOT / "tests"))
    from models.code_embeddings import make_qwen3_embedding

    model_dir = stored_as(make_qwen3_embedding(work / "embedder", size="small"), AutoModel)
    reference = SentenceTransformer(str(model_dir), device="cpu", model_kwargs={"dtype": "float32"})
    expected = reference.encode(TEXTS, prompt_name="query")
    handler = load_handler(model_dir, HandlerOptions(device=device))
    try:
        handler.warm_up()
        served = handler.run(EmbedRequest(inputs=tuple(TextInput(t) for t in TEXTS), input_type="query"))
        vectors = [np.asarray(v, dtype=np.float64) for v in served.vectors]
        loaded = _loaded(handler.model._encoder._model)
    finally:
        handler.close()
    worst = min(float(v @ e / np.linalg.norm(v) / np.linalg.norm(e)) for v, e in zip(vectors, expected))
    return [f"embedder ({loaded}): worst cosine against fp32 {worst:.6f} (>= 0.999): "
            + ("PASS" if worst >= 0.999 else "FAIL")]


def reranker(work: Path, device: str) -> list[str]:
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForCausalLM

    from model_handlers import HandlerOptions, load_handler
    from model_handlers.types import RerankRequest, TextInput

    sys.path.insert(0, str(ROOT / "examples"))
    import tiny_generative_reranker

    model_dir = stored_as(tiny_generative_reranker.build(work / "reranker", "small"), AutoModelForCausalLM)
    reference = CrossEncoder(str(model_dir), device="cpu", model_kwargs={"dtype": "float32"})
    expected = reference.predict([(QUERY, text) for text in TEXTS])
    handler = load_handler(model_dir, HandlerOptions(device=device))
    try:
        handler.warm_up()
        served = handler.run(RerankRequest(query=TextInput(QUERY), documents=tuple(TextInput(t) for t in TEXTS)))
        loaded = _loaded(handler.model._encoder)
    finally:
        handler.close()
    scores = {hit.index: hit.relevance_score for hit in served.hits}
    worst = max(abs(scores[i] - float(expected[i])) for i in range(len(TEXTS)))
    same_order = [hit.index for hit in served.hits] == list(np.argsort(-expected, kind="stable"))
    return [f"generative reranker ({loaded}): worst score difference against fp32 {worst:.4f} (<= 0.01), "
            f"same order: {same_order}: " + ("PASS" if worst <= 0.01 and same_order else "FAIL")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="searchbox-gpu-dtype-") as tmp:
        lines = embedder(Path(tmp), args.device) + reranker(Path(tmp), args.device)
    print("\n".join(lines))
    return 1 if any(line.endswith("FAIL") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
