"""Small checkpoints in the original tensor layouts of jina-reranker-v2 and jina-colbert-v2, remote code and all.

Jina publishes these models as Hugging Face remote code: config.json's `auto_map` names modules of Jina's
XLM-RoBERTa "flash" implementation that travel with the weights. No such weights can be had here, so this module
builds small ones the way the originals were made: the test stand-ins of tests/jina_flash/ (written for searchbox
from the published interface, not Jina's code) are copied into the directory as its remote code, and the
checkpoint is their own seeded random weights saved as they name them (`roberta.encoder.layers.N.mixer.Wqkv`,
`norm1`, `mlp.fc1`, `roberta.emb_ln`, `classifier.out_proj` ...), beside config.json with the published keys and an
XLM-R-style tokenizer (<s>=0, <pad>=1, </s>=2, <unk>=3) made from the embedded MiniLM's WordPiece vocabulary.

- `reranker(target, minilm)`: jina-reranker-v2-base-multilingual's layout: `XLMRobertaForSequenceClassification`,
  learned positions (RoBERTa's padding offset), one relevance label.
- `colbert(target, minilm)`: jina-colbert-v2's: colbert-ai's `HF_ColBERT` with the flash XLM-R encoder under
  `roberta.`, rotary positions (base 20000), `linear.weight` beside it, `[QueryMarker]`/`[DocumentMarker]`.
- `remote_code_only(model_dir)`: turns such a directory into a flash variant searchbox does not read natively
  (rotary positions on half of each head, as the remote code's `rotary_emb_dim` allows): it needs its remote code.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import torch

REMOTE_CODE = Path(__file__).parent.parent / "jina_flash"
CODE_FILES = ("configuration_xlm_roberta.py", "modeling_xlm_roberta.py")
AUTO_CONFIG = "configuration_xlm_roberta.XLMRobertaFlashConfig"
_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
_BERT_SPECIALS = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
# the published configs' keys, at a small size
_COMMON = {"attention_probs_dropout_prob": 0.1, "bos_token_id": 0, "classifier_dropout": None, "emb_pooler": None,
           "eos_token_id": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 32,
           "initializer_range": 0.02, "intermediate_size": 64, "layer_norm_eps": 1e-05, "num_attention_heads": 4,
           "num_hidden_layers": 2, "output_past": True, "pad_token_id": 1, "torch_dtype": "float32",
           "type_vocab_size": 1, "use_flash_attn": True}


def _flash_classes():
    """The stand-in modules, imported from tests/ (never from a model directory)."""
    if str(REMOTE_CODE.parent) not in sys.path:
        sys.path.insert(0, str(REMOTE_CODE.parent))
    return (importlib.import_module("jina_flash.configuration_xlm_roberta"),
            importlib.import_module("jina_flash.modeling_xlm_roberta"))


def _tokenizer(minilm: Path, target: Path, max_length: int, markers: tuple[str, ...] = ()) -> int:
    """An XLM-R-style fast tokenizer in `target`; returns its vocabulary size."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    spec = json.loads((minilm / "tokenizer.json").read_text())
    words = [token for token, _ in sorted(spec["model"]["vocab"].items(), key=lambda item: item[1])
             if token not in _BERT_SPECIALS]
    vocab = {token: index for index, token in enumerate([*_SPECIALS, *words, "<mask>"])}
    spec["model"]["vocab"], spec["model"]["unk_token"] = vocab, "<unk>"
    spec["added_tokens"] = [{"id": vocab[token], "content": token, "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False, "special": True}
                            for token in (*_SPECIALS, "<mask>")]
    spec["post_processor"] = spec["padding"] = spec["truncation"] = None
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.add_special_tokens(list(markers))
    tokenizer.post_processor = TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                  special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer.save(str(target / "tokenizer.json"))
    (target / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>",
        "sep_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
        "model_max_length": max_length, "model_input_names": ["input_ids", "attention_mask"]}, indent=2))
    return tokenizer.get_vocab_size()


def _randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every weight drawn (layer norms around 1), so that a tensor read into the wrong place shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith("weight") and ("norm" in name or "emb_ln" in name):
                parameter.copy_(1 + 0.2 * noise)
            elif parameter.dim() == 2 and "embeddings" not in name:
                parameter.copy_(noise / parameter.shape[1] ** 0.5)
            else:
                parameter.copy_(0.5 * noise if "embeddings" in name else 0.1 * noise)
    return model.eval()


def _write(target: Path, config: dict, weights: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({name: tensor.contiguous() for name, tensor in weights.items()}, str(target / "model.safetensors"),
              metadata={"format": "pt"})
    (target / "config.json").write_text(json.dumps(config, indent=2))
    for name in CODE_FILES:
        shutil.copyfile(REMOTE_CODE / name, target / name)


def reranker(target: Path, minilm: Path, seed: int = 7) -> Path:
    """A small jina-reranker-v2 in its published layout (config.json without a model_type, as published)."""
    target.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer(minilm, target, max_length=128)
    config = {"_name_or_path": "jina-reranker-v2-base-multilingual",
              "architectures": ["XLMRobertaForSequenceClassification"],
              "auto_map": {"AutoConfig": AUTO_CONFIG, "AutoModel": "modeling_xlm_roberta.XLMRobertaModel",
                           "AutoModelForSequenceClassification":
                               "modeling_xlm_roberta.XLMRobertaForSequenceClassification"},
              **_COMMON, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}, "max_position_embeddings": 130,
              "position_embedding_type": "absolute", "use_cache": False, "vocab_size": vocab}
    configuration, modeling = _flash_classes()
    flash_config = configuration.XLMRobertaFlashConfig(**{k: v for k, v in config.items() if not k.startswith("_")})
    model = _randomized(modeling.XLMRobertaForSequenceClassification(flash_config), seed)
    _write(target, config, model.state_dict())
    return target


def remote_code_only(model_dir: Path) -> Path:
    config = json.loads((model_dir / "config.json").read_text())
    config["rotary_emb_dim"] = config["hidden_size"] // config["num_attention_heads"] // 2
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    return model_dir


def colbert(target: Path, minilm: Path, seed: int = 11, width: int = 24) -> Path:
    """A small jina-colbert-v2 in its published layout: colbert-ai's HF_ColBERT around the flash encoder."""
    target.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer(minilm, target, max_length=8194, markers=("[QueryMarker]", "[DocumentMarker]"))
    config = {"_name_or_path": "jinaai/jina-colbert-v2", "architectures": ["HF_ColBERT"],
              "auto_map": {"AutoConfig": AUTO_CONFIG, "AutoModel": "modeling_xlm_roberta.XLMRobertaModel"},
              **_COMMON, "max_position_embeddings": 8194, "model_type": "xlm-roberta",
              "position_embedding_type": "rotary", "rotary_emb_base": 20000.0, "use_cache": True,
              "vocab_size": vocab}
    configuration, modeling = _flash_classes()
    flash_config = configuration.XLMRobertaFlashConfig(**{k: v for k, v in config.items() if not k.startswith("_")})
    encoder = _randomized(modeling.XLMRobertaModel(flash_config), seed)
    weights = {f"roberta.{name}": tensor for name, tensor in encoder.state_dict().items()}
    weights["linear.weight"] = torch.randn((width, 32), generator=torch.Generator().manual_seed(seed + 1)) / 32 ** 0.5
    _write(target, config, weights)
    (target / "artifact.metadata").write_text(json.dumps({
        "query_token_id": "[QueryMarker]", "doc_token_id": "[DocumentMarker]", "query_maxlen": 32,
        "doc_maxlen": 300, "attend_to_mask_tokens": True, "mask_punctuation": True, "dim": width}, indent=4))
    return target
