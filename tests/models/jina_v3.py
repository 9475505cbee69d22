"""A tiny jina-embeddings-v3-style checkpoint, built here in v3's original tensor layout (tests/jina_v3_remote_code.py).

No v3 weights are on the registries. The directory holds what a v3 artifact holds: config.json with the tasks,
their instructions and an auto_map to the remote code, the remote code itself (`modeling_lora.py`), the weights as
saved by that code (the flash layout with LoRA parametrizations) and a tokenizer (the embedded MiniLM's: v3's own
is a 250k-piece XLM-R vocabulary, too large for a test model; the serving code reads either).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import torch

REMOTE_CODE = Path(__file__).parent.parent / "jina_v3_remote_code.py"
TASKS = ("retrieval.query", "retrieval.passage", "separation", "classification", "text-matching")
# v3's own instructions (its config.json)
INSTRUCTIONS = {
    "retrieval.query": "Represent the query for retrieving evidence documents: ",
    "retrieval.passage": "Represent the document for retrieval: ",
    "separation": "",
    "classification": "",
    "text-matching": "",
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def remote_module(model_dir: Path):
    """The directory's remote code, imported under a name of its own (for building and as the reference)."""
    name = f"jina_v3_remote_{abs(hash(str(model_dir)))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, model_dir / "modeling_lora.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build_v3(target: Path, minilm: Path, *, seed: int = 7, sentence_transformers: bool = False,
             size: dict | None = None) -> Path:
    """Write the tiny v3 checkpoint to `target` and return it.

    `sentence_transformers`: also write v3's sentence-transformers files (modules.json with mean pooling and
    normalisation), as the published checkpoint has them. `size`: config keys for a bigger model (the benchmark's).
    """
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(REMOTE_CODE, target / "modeling_lora.py")
    for name in _TOKENIZER_FILES:
        shutil.copy(minilm / name, target / name)
    tokenizer_config = json.loads((target / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = 8192
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    module = remote_module(target)
    config = module.XLMRobertaFlashConfig(
        lora_adaptations=list(TASKS), task_instructions=INSTRUCTIONS, lora_rank=4, lora_alpha=1,
        matryoshka_dimensions=[8, 16, 32], architectures=["XLMRobertaLoRA"],
        auto_map={"AutoConfig": "modeling_lora.XLMRobertaFlashConfig", "AutoModel": "modeling_lora.XLMRobertaLoRA"},
        **(size or {}),
    )
    torch.manual_seed(seed)
    model = module.XLMRobertaLoRA(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                continue  # the adapters were drawn at random when made
            if name.endswith("original") or name.endswith(".weight"):
                parameter.normal_(0.0, 0.3)
                if "norm" in name or "emb_ln" in name:
                    parameter.add_(1.0)
            else:
                parameter.normal_(0.0, 0.05)
    model.save_pretrained(str(target), safe_serialization=True)
    if sentence_transformers:
        (target / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
        (target / "1_Pooling").mkdir(exist_ok=True)
        (target / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": config.hidden_size, "pooling_mode_mean_tokens": True}))
        (target / "2_Normalize").mkdir(exist_ok=True)
    return target


def reference(model_dir: Path):
    """The checkpoint's own code, loaded from its directory as `AutoModel(trust_remote_code=True)` would."""
    module = remote_module(model_dir)
    return module.XLMRobertaLoRA.from_pretrained(str(model_dir)).eval()
