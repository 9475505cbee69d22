"""Jina's XLM-RoBERTa "flash" checkpoints, read into transformers' own classes: none of their remote code runs.

jina-reranker-v2, jina-colbert-v2 and jina-embeddings-v3 ship their architecture as remote code: config.json's
`auto_map` names `XLMRobertaFlashConfig` and modules of Jina's XLM-RoBERTa "flash" implementation (published
with the models: jinaai/xlm-roberta-flash-implementation, and the copy inside jina-reranker-v2). Read at that
source, with flash attention off (it is off on CPU, and numerically the same on a GPU) those modules compute what
transformers' own classes compute; only the tensor names differ:

- learned positions (`position_embedding_type: absolute`, jina-reranker-v2): XLM-RoBERTa itself
  (`XLMRobertaModel`, `XLMRobertaForSequenceClassification`), positions counted from the padding index on, as RoBERTa;
- rotary positions (`rotary`, jina-colbert-v2, jina-embeddings-v3's base): transformers' `jina_embeddings_v3`
  (`JinaEmbeddingsV3Model`): rotary over whole heads in GPT-NeoX halves, base `rotary_emb_base`, positions
  0, 1, ... of each sequence, no position table.

Both are post-LN encoders whose attention projects queries, keys and values with one matrix (`Wqkv`, the three
stacked in that order, `(three heads head_dim)`):

| flash checkpoint (under `encoder.layers.N.`) | XLMRoberta* (under `encoder.layer.N.`)   | JinaEmbeddingsV3* (`layers.N.`)  |
|----------------------------------------------|------------------------------------------|----------------------------------|
| `emb_ln` (no layer)                          | `embeddings.LayerNorm`                   | `embeddings.LayerNorm`           |
| `mixer.Wqkv` (q; k; v stacked)               | `attention.self.{query,key,value}`       | `self_attn.{q,k,v}_proj`         |
| `mixer.out_proj`                             | `attention.output.dense`                 | `self_attn.o_proj`               |
| `norm1`                                      | `attention.output.LayerNorm`             | `post_attention_layernorm`       |
| `mlp.fc1` / `mlp.fc2`                        | `intermediate.dense` / `output.dense`    | `mlp.fc1` / `mlp.fc2`            |
| `norm2`                                      | `output.LayerNorm`                       | `post_mlp_layernorm`             |
| `embeddings.*`, `pooler.dense`, `classifier.{dense,out_proj}` (no layer) | the same     | the same                         |

`layout` tells such a checkpoint from its config.json alone (no torch: `serve` asks in the gunicorn master whether
a directory needs remote code); `load` reads one natively. A variant these classes do not compute (LoRA adapters,
ALiBi, partial or interleaved rotary, another activation) is no native layout: it stays remote code, run only as
model_handlers/model_code.py allows. `renamed` is the table above, for any caller with flash tensors in hand.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping, TypeVar

from model_handlers.errors import ModelDirectoryError
from model_handlers.model_files import read_object

logger = logging.getLogger(__name__)

FLASH_CONFIG = "XLMRobertaFlashConfig"
ABSOLUTE = "xlm-roberta"  # learned positions: transformers' XLMRoberta* classes
ROTARY = "jina-embeddings-v3"  # rotary positions: transformers' JinaEmbeddingsV3* classes
CLASSIFIER = "classifier"  # the sequence-classification head on top (a reranker)
ENCODER = "encoder"  # the encoder alone (token vectors)

_CLASSES = {(ABSOLUTE, CLASSIFIER): "XLMRobertaForSequenceClassification", (ABSOLUTE, ENCODER): "XLMRobertaModel",
            (ROTARY, CLASSIFIER): "JinaEmbeddingsV3ForSequenceClassification",
            (ROTARY, ENCODER): "JinaEmbeddingsV3Model"}
# What the flash modules compute for each activation they accept: exact GELU, or its tanh approximation.
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_pytorch_tanh", "gelu_fast": "gelu_pytorch_tanh",
                "gelu_pytorch_tanh": "gelu_pytorch_tanh"}
# Keys whose defaults differ between the published versions of XLMRobertaFlashConfig: a config.json must state them.
_STATED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
           "layer_norm_eps", "pad_token_id", "type_vocab_size", "max_position_embeddings")

_WQKV = re.compile(r"encoder\.layers\.(\d+)\.mixer\.Wqkv\.(weight|bias)$")
_RULES = {
    ABSOLUTE: ((r"(^|\.)emb_ln\.", r"\1embeddings.LayerNorm."),
               (r"encoder\.layers\.(\d+)\.mixer\.out_proj\.", r"encoder.layer.\1.attention.output.dense."),
               (r"encoder\.layers\.(\d+)\.norm1\.", r"encoder.layer.\1.attention.output.LayerNorm."),
               (r"encoder\.layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
               (r"encoder\.layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
               (r"encoder\.layers\.(\d+)\.norm2\.", r"encoder.layer.\1.output.LayerNorm.")),
    ROTARY: ((r"(^|\.)emb_ln\.", r"\1embeddings.LayerNorm."),
             (r"encoder\.layers\.(\d+)\.mixer\.out_proj\.", r"layers.\1.self_attn.o_proj."),
             (r"encoder\.layers\.(\d+)\.norm1\.", r"layers.\1.post_attention_layernorm."),
             (r"encoder\.layers\.(\d+)\.mlp\.", r"layers.\1.mlp."),
             (r"encoder\.layers\.(\d+)\.norm2\.", r"layers.\1.post_mlp_layernorm.")),
}
_QKV = {ABSOLUTE: tuple(f"encoder.layer.{{}}.attention.self.{part}." for part in ("query", "key", "value")),
        ROTARY: tuple(f"layers.{{}}.self_attn.{part}_proj." for part in "qkv")}

Tensor = TypeVar("Tensor")


def layout(config: Mapping[str, Any]) -> str | None:
    """ABSOLUTE or ROTARY when config.json describes a flash checkpoint transformers' classes compute; else None."""
    auto_map = config.get("auto_map")
    if isinstance(auto_map, dict) and (config.get("lora_adaptations")
                                       or any("lora" in str(ref).lower() for ref in auto_map.values())):
        return None  # task adapters on top: model_handlers/jina_v3.py reads v3's, nothing here does
    return base_layout(config)


def base_layout(config: Mapping[str, Any]) -> str | None:
    """ABSOLUTE or ROTARY when config.json describes a flash encoder transformers' classes compute, whatever adapters
    sit on top of it; else None."""
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict) or not str(auto_map.get("AutoConfig") or "").endswith(FLASH_CONFIG):
        return None
    if any(config.get(key) is None for key in _STATED) or config.get("hidden_act", "gelu") not in _ACTIVATIONS:
        return None
    positions = config.get("position_embedding_type")
    if positions == "absolute":
        return ABSOLUTE
    head_dim = int(config["hidden_size"]) / int(config["num_attention_heads"])
    if (positions == "rotary" and config.get("rotary_emb_dim") in (None, head_dim)
            and not config.get("rotary_emb_interleaved") and config.get("rotary_emb_scale_base") is None):
        return ROTARY
    return None


def renamed(state: Mapping[str, Tensor], kind: str) -> dict[str, Tensor]:
    """The flash tensors under the names of transformers' classes for `kind` (ABSOLUTE or ROTARY); `Wqkv` split into
    its three projections. Prefixes (`roberta.`) are kept; names the table does not know pass unchanged."""
    rules, qkv = _RULES[kind], _QKV[kind]
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        split = _WQKV.search(name)
        if split:
            for part, piece in zip(qkv, tensor.chunk(3, dim=0)):
                out[name[:split.start()] + part.format(split[1]) + split[2]] = piece
            continue
        for pattern, replacement in rules:
            name = re.sub(pattern, replacement, name)
        out[name] = tensor
    return out


def native_config(config: Mapping[str, Any], kind: str, *, vocab_size: int | None = None):
    """transformers' configuration of the class that computes what `config` (a flash config.json) describes."""
    import transformers

    values = {key: config[key] for key in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                           "intermediate_size", "layer_norm_eps", "pad_token_id",
                                           "max_position_embeddings")}
    values.update(vocab_size=vocab_size or config["vocab_size"], type_vocab_size=max(1, int(config["type_vocab_size"])),
                  hidden_act=_ACTIVATIONS[config.get("hidden_act", "gelu")],
                  bos_token_id=config.get("bos_token_id", 0), eos_token_id=config.get("eos_token_id", 2),
                  classifier_dropout=config.get("classifier_dropout"))
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range"):
        if config.get(key) is not None:
            values[key] = config[key]
    if isinstance(config.get("id2label"), dict):
        values["id2label"] = {int(index): label for index, label in config["id2label"].items()}
    elif config.get("num_labels") is not None:
        values["num_labels"] = int(config["num_labels"])
    if kind == ABSOLUTE:
        return transformers.XLMRobertaConfig(**values)
    rope = {"rope_type": "default", "rope_theta": float(config.get("rotary_emb_base") or 10000.0)}
    return transformers.JinaEmbeddingsV3Config(**values, rope_parameters=rope)


def load(model_dir: Path, head: str, *, device: str, allow_pickle: bool) -> tuple[Any, list[str]]:
    """The flash checkpoint in `model_dir` as transformers' class for its layout and `head` (CLASSIFIER or ENCODER),
    on `device`, in eval mode, and the checkpoint's tensors it does not use (an ENCODER leaves out the pooler and
    whatever sits beside the encoder, such as a ColBERT projection).

    Raises:
        ModelDirectoryError: not a flash checkpoint read natively, or tensors missing or of the wrong shape.
    """
    import transformers
    from transformers.utils import logging as transformers_logging

    config = read_object(model_dir / "config.json")
    kind = layout(config)
    if kind is None:
        raise ModelDirectoryError(f"{model_dir}: config.json is no Jina XLM-RoBERTa flash checkpoint read natively")
    state = _state(model_dir, allow_pickle)
    unused: list[str] = []
    if head == ENCODER:
        prefixed = any(name.startswith("roberta.") for name in state)
        inside = {name.removeprefix("roberta."): tensor for name, tensor in state.items()
                  if name.startswith("roberta.") or not prefixed}
        unused = sorted(name for name in state if prefixed and not name.startswith("roberta."))
        unused += sorted(name for name in inside if name.startswith("pooler."))
        state = {name: tensor for name, tensor in inside.items() if not name.startswith("pooler.")}
    words = next((tensor for name, tensor in state.items() if name.endswith("word_embeddings.weight")), None)
    if words is None:
        raise ModelDirectoryError(f"{model_dir}: the checkpoint holds no word embeddings of an XLM-RoBERTa encoder")
    state = renamed(state, kind)
    _token_types(state, config, words)
    model_class = getattr(transformers, _CLASSES[(kind, head)], None)
    if model_class is None:
        raise ModelDirectoryError(f"{model_dir}: transformers {transformers.__version__} has no {_CLASSES[(kind, head)]}"
                                  " to read this Jina checkpoint into; install the version requirements.lock pins")
    native = native_config(config, kind, vocab_size=int(words.shape[0]))
    extra = {"add_pooling_layer": False} if head == ENCODER else {}
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # its load report; what is wrong is said below
    try:
        model, info = model_class.from_pretrained(
            None, config=native, state_dict=state, dtype=_dtype(config, device), output_loading_info=True, **extra)
    finally:
        transformers_logging.set_verbosity(verbosity)
    wrong = sorted(info.get("missing_keys") or ()) + sorted(str(key) for key in info.get("mismatched_keys") or ())
    if wrong:
        raise ModelDirectoryError(f"{model_dir}: the flash checkpoint lacks or misshapes tensors its layout needs "
                                  f"({', '.join(wrong[:5])}); it would answer from random weights")
    unused += sorted(info.get("unexpected_keys") or ())
    logger.info("%s: Jina XLM-RoBERTa flash checkpoint read natively as %s (no remote code)", model_dir,
                _CLASSES[(kind, head)])
    return model.to(device).eval(), unused


def _token_types(state: dict, config: Mapping[str, Any], words) -> None:
    """transformers' classes always hold a token-type table; a flash model with none (type_vocab_size 0) adds
    nothing, which is a table of one zero row."""
    if int(config.get("type_vocab_size") or 0) > 0:
        return
    words_name = next(name for name in state if name.endswith("word_embeddings.weight"))
    prefix = words_name.removesuffix("word_embeddings.weight")
    state[prefix + "token_type_embeddings.weight"] = words.new_zeros((1, words.shape[1]))


def _dtype(config: Mapping[str, Any], device: str):
    """The remote code's own choice: the checkpoint's dtype where flash attention runs (a GPU), float32 elsewhere."""
    import torch

    if str(device).startswith("cuda") and config.get("use_flash_attn", True):
        chosen = getattr(torch, str(config.get("torch_dtype") or "float32"), None)
        return chosen if isinstance(chosen, torch.dtype) else torch.float32
    return torch.float32


def _state(model_dir: Path, allow_pickle: bool) -> dict:
    """Every tensor of the checkpoint: its safetensors files, or (only when the operator allows) its pickle."""
    import torch
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        state = {}
        for path in files:
            state.update(load_file(str(path)))
        return state
    pickled = model_dir / "pytorch_model.bin"
    if pickled.is_file() and allow_pickle:
        return torch.load(str(pickled), map_location="cpu", weights_only=True)
    raise ModelDirectoryError(f"{model_dir}: no safetensors weights"
                              + (" (pytorch_model.bin is there: SEARCHBOX_ALLOW_PICKLE=1 loads it)"
                                 if pickled.is_file() else ""))
