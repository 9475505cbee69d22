"""Make a small Qwen3-Reranker-shaped generative reranker to try the `generative-reranker` kind with, offline (random
weights: the scores mean nothing, the code path is a real generative reranker's).

    .venv/bin/python examples/tiny_generative_reranker.py /tmp/tiny-reranker               # 32 wide, 2 layers: instant
    .venv/bin/python examples/tiny_generative_reranker.py /tmp/small-reranker --size small  # 256 wide, 4 layers

No Qwen3-Reranker weights can be downloaded here, so the directory is built with the libraries' own classes: a
byte-level BPE tokenizer trained on the spot (`tokenizers`) with Qwen's chat tokens and single tokens for "yes" and
"no"; a `Qwen3ForCausalLM` with seeded random weights (transformers); a chat template laid out as Qwen3-Reranker's
model card lays out its judge prompt (a system turn, then `<Instruct>`, `<Query>` and `<Document>` in the user turn,
then the assistant turn with an empty think block), the query and the document read from messages of their own roles
and the instruction from the system message, with the card's default; then `CrossEncoder(directory).save(directory)`,
which finds the causal LM and writes its `Transformer` (text-generation) and `LogitScore(yes, no)` modules. Tests and
the benchmark use it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SIZES = {
    # width, layers, attention heads (half as many key/value heads), the tokenizer's model_max_length (the judge prompt
    # alone is about 130 tokens of this tokenizer)
    "tiny": dict(width=32, layers=2, heads=4, max_length=384),
    "small": dict(width=256, layers=4, heads=4, max_length=1024),
}

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


def bpe_tokenizer(corpus: list[str], max_length: int, vocab_size: int = 1000):
    """A byte-level BPE tokenizer trained on `corpus`, with Qwen's end-of-text (its pad token) and chat tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=max_length)


def build(directory: str | Path, size: str = "tiny", seed: int = 11) -> Path:
    """Write a generative reranker of `size` into `directory` (safetensors, tokenizer, sentence-transformers' modules)
    and return it."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import Qwen3Config, Qwen3ForCausalLM

    shape, target = SIZES[size], Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    tokenizer = bpe_tokenizer(_CORPUS, shape["max_length"])
    tokenizer.chat_template = _TEMPLATE
    tokenizer.save_pretrained(str(target))
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=shape["width"], intermediate_size=2 * shape["width"],
                         num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                         num_key_value_heads=shape["heads"] // 2, head_dim=shape["width"] // shape["heads"],
                         max_position_embeddings=2048,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                         # wider than the default 0.02, so that random pairs score apart (not all about 0.5)
                         initializer_range=0.3)
    torch.manual_seed(seed)
    Qwen3ForCausalLM(config).save_pretrained(str(target))
    CrossEncoder(str(target), device="cpu").save(str(target))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    args = parser.parse_args()
    print(build(args.directory, args.size))


if __name__ == "__main__":
    main()
