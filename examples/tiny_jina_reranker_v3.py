"""Make a small jina-reranker-v3-shaped listwise reranker to try the `listwise-reranker` kind with, offline (random
weights: the scores mean nothing, the code path is a real jina-reranker-v3's).

    .venv/bin/python examples/tiny_jina_reranker_v3.py /tmp/tiny-listwise                # 32 wide, 2 layers: instant
    .venv/bin/python examples/tiny_jina_reranker_v3.py /tmp/small-listwise --size small   # 256 wide, 4 layers

No jina-reranker-v3 weights can be downloaded here, and its 151k-token Qwen tokenizer is not in the image. The directory
holds what the published one holds: config.json (a Qwen3 config, `architectures: ["JinaForRanking"]`, an `auto_map`
to `modeling.JinaForRanking`), the weights saved by that class (`model.*` and `projector.*`, seeded), its code as
`modeling.py` (tests/jina_reranker_v3_reference.py, a re-implementation of the published modeling.py, copied in), and
a fast tokenizer in Qwen's style (byte-level BPE, no special tokens added around a text), trained here on a few
sentences, with `<|im_start|>`, `<|im_end|>` and the model's two tokens at the ids its code hard-codes (151670,
151671). Its `model_max_length` is small, so that a few hundred (`tiny`) or a couple of thousand (`small`) tokens of
documents fill a block. Tests and the benchmark use it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

REFERENCE = Path(__file__).resolve().parent.parent / "tests" / "jina_reranker_v3_reference.py"
DOC_TOKEN_ID, QUERY_TOKEN_ID = 151670, 151671
# A block closes once the tokenizer's model_max_length, less twice the query's tokens, less its documents' tokens, is
# at most 2048: a block takes about model_max_length - 2048 - 2 * query tokens of documents.
SIZES = {
    # width, layers, attention heads (half as many key/value heads), model_max_length (blocks of about 300 document
    # tokens, so that the tests' few short documents already make several), the weights' spread
    "tiny": dict(width=32, layers=2, heads=4, max_length=2048 + 300, spread=0.3),
    # blocks of about 2,000 document tokens: 20 of the benchmark's short passages fit one, 130 make several
    "small": dict(width=256, layers=4, heads=4, max_length=2048 + 2048, spread=0.1),
}
MODEL_MAX_LENGTH = SIZES["tiny"]["max_length"]
CORPUS = ("the river runs past an old mill where farmers bring grain every autumn . children play near the water "
          "while birds sing in tall trees and the baker sells warm bread at the market on sunday . what do cats like "
          "to eat ? cats like fish and chicken ; a kitten drinks milk . passage query rank relevance instruct")


def reference_module(model_dir: Path):
    """The directory's `modeling.py`, imported under a name of its own."""
    name = f"jina_reranker_v3_{abs(hash(str(model_dir)))}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(model_dir) / "modeling.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _tokenizer(target: Path, max_length: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer.train_from_iterator([CORPUS] * 4, trainer)
    document = json.loads(tokenizer.to_str())
    vocab = document["model"]["vocab"]
    specials = {"<|im_start|>": len(vocab), "<|im_end|>": len(vocab) + 1,
                "<|embed_token|>": DOC_TOKEN_ID, "<|rerank_token|>": QUERY_TOKEN_ID}
    for token, index in specials.items():
        # in the model's vocabulary too, so that the added tokens keep these ids rather than the next free ones
        vocab[token] = index
        document["added_tokens"].append({"id": index, "content": token, "single_word": False, "lstrip": False,
                                         "rstrip": False, "normalized": False, "special": True})
    (target / "tokenizer.json").write_text(json.dumps(document))
    (target / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
        "pad_token": "<|endoftext|>", "eos_token": "<|im_end|>", "unk_token": None,
        "clean_up_tokenization_spaces": False}))


def build(directory: str | Path, size: str = "tiny", *, seed: int = 11, max_length: int | None = None) -> Path:
    """Write a jina-reranker-v3-shaped checkpoint of `size` into `directory` and return it (`max_length`: the
    tokenizer's model_max_length, the blocks' budget, when not the size's)."""
    import torch
    from transformers import Qwen3Config

    shape, target = SIZES[size], Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(REFERENCE, target / "modeling.py")
    _tokenizer(target, max_length or shape["max_length"])
    width, heads = shape["width"], shape["heads"]
    config = Qwen3Config(vocab_size=QUERY_TOKEN_ID + 1, hidden_size=width, intermediate_size=2 * width,
                         num_hidden_layers=shape["layers"], num_attention_heads=heads, num_key_value_heads=heads // 2,
                         head_dim=width // heads, max_position_embeddings=4096 if size == "tiny" else 8192,
                         tie_word_embeddings=False, architectures=["JinaForRanking"],
                         auto_map={"AutoModel": "modeling.JinaForRanking"}, pad_token_id=0)
    torch.manual_seed(seed)
    model = reference_module(target).JinaForRanking(config)
    with torch.no_grad():
        # transformers' initialisation (std 0.02) leaves every hidden state almost alike: cosines all near one value
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.normal_(0.0, shape["spread"])
    model.save_pretrained(str(target), safe_serialization=True)
    return target


def reference(model_dir: Path):
    """The checkpoint's own code, loaded from its directory as `AutoModel(trust_remote_code=True)` would."""
    return reference_module(model_dir).JinaForRanking.from_pretrained(str(model_dir)).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    args = parser.parse_args()
    print(build(args.directory, args.size))


if __name__ == "__main__":
    main()
