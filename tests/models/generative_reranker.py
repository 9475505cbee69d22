"""A tiny Qwen3-Reranker-shaped generative reranker, saved as sentence-transformers saves one.

A byte-level BPE tokenizer trained here (the `tokenizers` library) with Qwen's chat tokens and single tokens for
"yes" and "no"; a two-layer `Qwen3ForCausalLM` with seeded random weights (transformers' own class); a chat template
laid out as Qwen3-Reranker's model card lays out its judge prompt (a system turn, then `<Instruct>`, `<Query>` and
`<Document>` in the user turn, then the assistant turn with an empty think block), the query and the document read
from messages of their own roles and the instruction from the system message, with the card's default; then
`CrossEncoder(directory).save(directory)`, which finds the causal LM and writes its `Transformer` (text-generation)
and `LogitScore(yes, no)` modules.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"

_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    '<Instruct>: {{ messages | selectattr("role", "eq", "system") | map(attribute="content") | first'
    f' | default("{DEFAULT_INSTRUCTION}") }}}}\n'
    '<Query>: {{ messages | selectattr("role", "eq", "query") | map(attribute="content") | first }}\n'
    '<Document>: {{ messages | selectattr("role", "eq", "document") | map(attribute="content") | first }}'
    "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
)

_CORPUS = ["yes", "no"] * 50 + [
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided.",
    "Berlin is the capital of Germany. The quick brown fox jumps over the lazy dog. Search engines rank documents.",
    "How do rotary position embeddings work? Rerankers read the query and each document together.",
] * 20


def make_generative_reranker(target: Path, *, max_length: int = 384, seed: int = 11) -> Path:
    """Write the tiny generative reranker to `target` and return it. `max_length`: the tokenizer's model_max_length
    (the judge prompt alone is about 130 tokens of this tokenizer)."""
    import torch
    from sentence_transformers import CrossEncoder
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    target.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_CORPUS, trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        model_max_length=max_length)
    tokenizer.chat_template = _TEMPLATE
    tokenizer.save_pretrained(str(target))
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=2048,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                         # wider than the default 0.02, so that random pairs score apart (not all about 0.5)
                         initializer_range=0.3)
    torch.manual_seed(seed)
    Qwen3ForCausalLM(config).save_pretrained(str(target))
    CrossEncoder(str(target), device="cpu").save(str(target))
    return target
