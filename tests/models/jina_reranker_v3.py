"""A tiny jina-reranker-v3-style checkpoint (tests/jina_reranker_v3_reference.py is its code, copied in as
`modeling.py`).

No jina-reranker-v3 weights are on the registries, and its 151k-token Qwen tokenizer is not in the image. The directory
holds what the published one holds: config.json (a Qwen3 config, `architectures: ["JinaForRanking"]`, an `auto_map`
to `modeling.JinaForRanking`), the weights saved by that class (`model.*` and `projector.*`, seeded), and a fast
tokenizer in Qwen's style (byte-level BPE, no special tokens added around a text), trained here on a few sentences,
with `<|im_start|>`, `<|im_end|>` and the model's two tokens at the ids its code hard-codes (151670, 151671). Its
`model_max_length` is small, so that a few hundred tokens of documents fill a block.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

REFERENCE = Path(__file__).parent.parent / "jina_reranker_v3_reference.py"
DOC_TOKEN_ID, QUERY_TOKEN_ID = 151670, 151671
# The tokenizer's model_max_length: a block's budget is this less twice the query's tokens, closed at 2048 left, so a
# block takes about 300 - 2 * query tokens of documents.
MODEL_MAX_LENGTH = 2048 + 300
CORPUS = ("the river runs past an old mill where farmers bring grain every autumn . children play near the water "
          "while birds sing in tall trees and the baker sells warm bread at the market on sunday . what do cats like "
          "to eat ? cats like fish and chicken ; a kitten drinks milk . passage query rank relevance instruct")


def reference_module(model_dir: Path):
    """The directory's `modeling.py`, imported under a name of its own."""
    name = f"jina_reranker_v3_{abs(hash(str(model_dir)))}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, model_dir / "modeling.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _tokenizer(target: Path) -> None:
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
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": "<|endoftext|>", "eos_token": "<|im_end|>", "unk_token": None,
        "clean_up_tokenization_spaces": False}))


def build(target: Path, *, seed: int = 11, max_length: int = MODEL_MAX_LENGTH) -> Path:
    """Write the tiny checkpoint to `target` and return it."""
    import torch
    from transformers import Qwen3Config

    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(REFERENCE, target / "modeling.py")
    _tokenizer(target)
    if max_length != MODEL_MAX_LENGTH:
        settings = json.loads((target / "tokenizer_config.json").read_text())
        (target / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": max_length}))
    config = Qwen3Config(vocab_size=QUERY_TOKEN_ID + 1, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=4096,
                         tie_word_embeddings=False, architectures=["JinaForRanking"],
                         auto_map={"AutoModel": "modeling.JinaForRanking"}, pad_token_id=0)
    torch.manual_seed(seed)
    model = reference_module(target).JinaForRanking(config)
    with torch.no_grad():
        # transformers' initialisation (std 0.02) leaves every hidden state almost alike: cosines all near one value
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.normal_(0.0, 0.3)
    model.save_pretrained(str(target), safe_serialization=True)
    return target


def reference(model_dir: Path):
    """The checkpoint's own code, loaded from its directory as `AutoModel(trust_remote_code=True)` would."""
    return reference_module(model_dir).JinaForRanking.from_pretrained(str(model_dir)).eval()
