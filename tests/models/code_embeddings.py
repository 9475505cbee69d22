"""Tiny last-token decoder embedders, saved by sentence-transformers (seeded random weights, last-token pooling,
normalisation, the byte-level BPE tokenizer of examples/tiny_generative_reranker.py):

- jina-code-embeddings-shaped: transformers' `Qwen2Model` (the 0.5B's Qwen2.5-Coder backbone) with the model card's
  instruction table as its prompts (`<task>_query`, `<task>_document`);
- Qwen3-Embedding-shaped: `Qwen3Model` with its card's `query` prompt (an instruction) and an empty `document` one.
"""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

from tiny_generative_reranker import bpe_tokenizer  # noqa: E402

# jina-code-embeddings' model card: an instruction per task for each side
PROMPTS = {
    "nl2code_query": "Find the most relevant code snippet given the following query:\n",
    "nl2code_document": "Candidate code snippet:\n",
    "qa_query": "Find the most relevant answer given the following question:\n",
    "qa_document": "Candidate answer:\n",
    "code2code_query": "Find an equivalent code snippet given the following code snippet:\n",
    "code2code_document": "Candidate code snippet:\n",
    "code2nl_query": "Find the most relevant comment given the following code snippet:\n",
    "code2nl_document": "Candidate comment:\n",
    "code2completion_query": "Find the most relevant completion given the following start of code snippet:\n",
    "code2completion_document": "Candidate completion:\n",
}
QWEN3_PROMPTS = {"query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
                 "document": ""}
_CORPUS = list(PROMPTS.values()) * 10 + [QWEN3_PROMPTS["query"]] * 10 + [
    "def read_csv(path): return pandas.read_csv(path)", "How do I read a CSV file in Python?",
    "for i in range(10): print(i)", "# sort a list in place\nitems.sort()",
] * 20


def make_code_embeddings(target: Path, seed: int = 5) -> Path:
    from transformers import Qwen2Config, Qwen2Model

    return _last_token_embedder(target, Qwen2Config, Qwen2Model, PROMPTS, seed)


# width, layers, attention heads (half as many key/value heads)
SIZES = {"tiny": (32, 2, 4), "small": (256, 4, 4)}


def make_qwen3_embedding(target: Path, seed: int = 6, size: str = "tiny") -> Path:
    from transformers import Qwen3Config, Qwen3Model

    width, layers, heads = SIZES[size]
    return _last_token_embedder(target, Qwen3Config, Qwen3Model, QWEN3_PROMPTS, seed, head_dim=width // heads,
                                hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                                num_attention_heads=heads, num_key_value_heads=heads // 2)


def _last_token_embedder(target: Path, config_class, model_class, prompts: dict, seed: int, **shape) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    plain = target.with_name(target.name + "-backbone")
    plain.mkdir(parents=True, exist_ok=True)
    tokenizer = bpe_tokenizer(_CORPUS, 512)
    tokenizer.save_pretrained(str(plain))
    shape = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, **shape}
    config = config_class(vocab_size=len(tokenizer), max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id, bos_token_id=None, **shape)
    torch.manual_seed(seed)
    model_class(config).save_pretrained(str(plain))
    transformer = Transformer(str(plain), max_seq_length=512)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    SentenceTransformer(modules=[transformer, pooling, Normalize()], prompts=prompts, device="cpu").save(str(target))
    return target
