"""Small SPLADEs built offline with the libraries' own classes: no trained SPLADE weights can be downloaded here.

A seeded random `BertForMaskedLM` over the embedded MiniLM tokenizer, saved as a sentence-transformers
`SparseEncoder` (MLMTransformer + SpladePooling), and the same weights as a bare *ForMaskedLM directory that says
`"kind": "sparse"` in searchbox.json. The MLM head's bias is lowered so that, as a trained SPLADE's, only a few
hundred vocabulary entries of an input are above zero.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def make_masked_lm(target: Path, minilm_dir: Path, seed: int = 0) -> Path:
    """A tiny seeded BertForMaskedLM with the MiniLM tokenizer, as a plain Hugging Face directory."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512, tie_word_embeddings=False)
    model = BertForMaskedLM(config)
    with torch.no_grad():
        # logits of a random head sit near 0, half of them above: spread them and lower the bias so few stay above
        model.cls.predictions.decoder.weight.mul_(10)
        model.cls.predictions.decoder.bias.fill_(-4.5)
        model.cls.predictions.bias.fill_(-4.5)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target), safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_dir / name, target / name)
    return target


def make_splade(target: Path, minilm_dir: Path, pooling: str = "max", activation: str = "relu") -> Path:
    """The tiny MLM saved as sentence-transformers' SparseEncoder (a fill-mask Transformer + SpladePooling with its
    `pooling_strategy` and `activation_function`)."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    plain = make_masked_lm(target.with_name(target.name + "-mlm"), minilm_dir)
    # sentence-transformers 6.2's way (its MLMTransformer is deprecated for this): a fill-mask Transformer
    mlm = Transformer(str(plain), transformer_task="fill-mask", max_seq_length=128)
    pooled = SpladePooling(pooling_strategy=pooling, activation_function=activation)
    encoder = SparseEncoder(modules=[mlm, pooled], device="cpu")
    encoder.save(str(target))
    return target


def make_bare(target: Path, minilm_dir: Path) -> Path:
    """The same weights as a bare BertForMaskedLM directory that says it is a sparse model."""
    make_masked_lm(target, minilm_dir)
    (target / "searchbox.json").write_text(json.dumps({"kind": "sparse"}), encoding="utf-8")
    return target


def make_inference_free(target: Path, minilm_dir: Path) -> Path:
    """An inference-free SPLADE (opensearch-neural-sparse doc-v2/v3 style): a Router whose query route is a
    SparseStaticEmbedding (seeded random IDF-like weights) and whose document route is the tiny MLM + SpladePooling."""
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Router, Transformer
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding, SpladePooling

    plain = make_masked_lm(target.with_name(target.name + "-mlm"), minilm_dir)
    mlm = Transformer(str(plain), transformer_task="fill-mask", max_seq_length=128)
    torch.manual_seed(1)
    static = SparseStaticEmbedding(tokenizer=mlm.tokenizer, weight=torch.rand(mlm.tokenizer.vocab_size) * 3)
    router = Router.for_query_document(query_modules=[static], document_modules=[mlm, SpladePooling("max")])
    SparseEncoder(modules=[router], device="cpu").save(str(target))
    return target
