"""A tiny EmbeddingGemma-shaped model: transformers' `Gemma3TextModel` with bidirectional attention (seeded random
weights), then sentence-transformers' mean pooling, two `Dense` projections without bias or activation (768 -> 3072
-> 768 in the published model; 32 -> 64 -> 32 here) and normalisation, with the published model's `query` and
`document` prompt names; the byte-level BPE tokenizer of examples/tiny_generative_reranker.py."""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

from tiny_generative_reranker import bpe_tokenizer  # noqa: E402

PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}
_CORPUS = list(PROMPTS.values()) * 10 + ["Berlin is the capital of Germany.", "How do embeddings work?",
                                         "The quick brown fox jumps over the lazy dog."] * 20


def make_embedding_gemma(target: Path, seed: int = 3) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling
    from transformers import Gemma3TextConfig, Gemma3TextModel

    plain = target.with_name(target.name + "-backbone")
    plain.mkdir(parents=True, exist_ok=True)
    tokenizer = bpe_tokenizer(_CORPUS, 256)
    tokenizer.save_pretrained(str(plain))
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                              sliding_window=16, use_bidirectional_attention=True,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                              bos_token_id=None)
    torch.manual_seed(seed)
    Gemma3TextModel(config).save_pretrained(str(plain))
    transformer = Transformer(str(plain), max_seq_length=256)
    width = transformer.get_embedding_dimension()
    modules = [transformer, Pooling(width, pooling_mode="mean"),
               Dense(width, 2 * width, bias=False, activation_function=torch.nn.Identity()),
               Dense(2 * width, width, bias=False, activation_function=torch.nn.Identity()), Normalize()]
    SentenceTransformer(modules=modules, prompts=PROMPTS, device="cpu").save(str(target))
    return target
