"""jina-embeddings-v3 checkpoints, served without running the code they ship.

A v3 checkpoint is an XLM-RoBERTa in Jina's "flash" layout (rotary positions, post-LayerNorm blocks, fused
query/key/value) whose every Linear and Embedding carries one LoRA adapter per task, stored as a torch
parametrization: the base weight as `….parametrizations.weight.original`, the adapters stacked over tasks as
`….parametrizations.weight.0.lora_A` / `lora_B` (Linear: A [tasks, rank, in], B [tasks, out, rank], used as
W + s·B_t·A_t; Embedding: A [tasks, vocab, rank], B [tasks, rank, dim], looked up in W + s·A_t·B_t; s =
lora_alpha / lora_rank). config.json names the tasks (`lora_adaptations`, list index = adapter id) and the
instruction each prepends (`task_instructions`).

Here the base tensors are renamed into transformers' own `JinaEmbeddingsV3Model` (the architecture transformers
ships natively) and each task's slices become a peft LoRA adapter named after the task, which
model_handlers/adapters.py applies per input row. The tensors are read with safetensors; nothing from the model
directory is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from model_handlers import jina_layout
from model_handlers.errors import ModelDirectoryError
from model_handlers.model_files import read_object

# v3's published class: the computation read natively here. Any other class that declares tasks runs its own code,
# which must take one adapter id per row (model_handlers/kinds/text_embedding.py).
ARCHITECTURE = "XLMRobertaLoRA"
_LORA = re.compile(r"^(?P<module>.+)\.parametrizations\.weight\.0\.lora_(?P<part>[AB])$")
_BASE = re.compile(r"^(?P<module>.+)\.parametrizations\.weight\.original$")
_FUSED_QKV = re.compile(r"^encoder\.layers\.(\d+)\.mixer\.Wqkv$")
_EMBEDDINGS = ("embeddings.word_embeddings", "embeddings.token_type_embeddings")


@dataclass(frozen=True)
class V3Tasks:
    """The checkpoint's tasks: names in adapter-id order, and the instruction each prepends."""

    names: tuple[str, ...]
    instructions: Mapping[str, str]


def declares_tasks(config: Mapping[str, Any]) -> bool:
    """Whether config.json declares tasks as LoRA adaptations (`lora_adaptations`), whatever its architecture."""
    return isinstance(config.get("lora_adaptations"), list) and bool(config["lora_adaptations"])


def is_v3(config: Mapping[str, Any]) -> bool:
    """Whether config.json describes a checkpoint read natively here: v3's own class, its tasks as LoRA adaptations
    on a Jina XLM-RoBERTa flash encoder that transformers' JinaEmbeddingsV3Model computes."""
    architectures = config.get("architectures") or ()
    auto_map = config.get("auto_map")
    auto_model = str(auto_map.get("AutoModel", "")) if isinstance(auto_map, dict) else ""
    return (declares_tasks(config) and (ARCHITECTURE in architectures or auto_model.endswith(f".{ARCHITECTURE}"))
            and jina_layout.base_layout(config) == jina_layout.ROTARY)


def adapter_name(task: str) -> str:
    """The name a task's adapter is held under (adapter names take no dots: `retrieval.query` -> `retrieval_query`)."""
    return task.replace(".", "_")


def read_tasks(config: Mapping[str, Any]) -> V3Tasks:
    """The tasks config.json declares.

    Raises:
        ModelDirectoryError: `task_instructions` does not cover the `lora_adaptations` (v3's own code refuses that too).
    """
    names = tuple(str(name) for name in config["lora_adaptations"])
    instructions = config.get("task_instructions") or {}
    if not isinstance(instructions, dict) or set(instructions) != set(names):
        raise ModelDirectoryError("config.json: task_instructions must give one instruction for each of "
                                  f"lora_adaptations ({', '.join(names)})")
    return V3Tasks(names, {name: str(instructions[name]) for name in names})


def load(model_dir: Path, device: str):
    """transformers' JinaEmbeddingsV3Model with the checkpoint's base weights, and its task adapters (one peft LoRA
    adapter per task, named by task), on `device`, in eval mode.

    Returns:
        (model, {task: install function}) where each install function adds that task's adapter to the model
        (model_handlers/adapters.py calls them, so that the adapters are registered like any other).

    Raises:
        ModelDirectoryError: not a v3 checkpoint in the flash layout, or tensors that do not fit its config.
    """
    import torch
    from safetensors.torch import load_file
    from transformers import JinaEmbeddingsV3Model

    config = read_object(model_dir / "config.json")
    tasks = read_tasks(config)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelDirectoryError(f"{model_dir}: a jina-embeddings-v3 checkpoint needs its weights as .safetensors")
    tensors: dict[str, Any] = {}
    for path in files:
        tensors.update(load_file(str(path)))
    base, lora = _split(tensors)
    try:
        native = jina_layout.native_config(config, jina_layout.ROTARY)
    except KeyError as exc:
        raise ModelDirectoryError(f"{model_dir}: config.json does not state {exc.args[0]}") from None
    native._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = JinaEmbeddingsV3Model(native, add_pooling_layer="pooler.dense.weight" in base)
    expected = set(model.state_dict())
    missing, unexpected = expected - set(base), set(base) - expected
    if missing or unexpected:
        raise ModelDirectoryError(f"{model_dir}: the checkpoint's tensors do not fit jina-embeddings-v3's layout "
                                  f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    # built without initialising 570M parameters only to overwrite them; then the checkpoint's, and the buffers
    # that are computed rather than stored
    model.to_empty(device=device)
    model.load_state_dict(base, strict=True)
    with torch.no_grad():
        positions = model.embeddings.position_ids
        positions.copy_(torch.arange(positions.shape[-1], device=positions.device).expand_as(positions))
        model.embeddings.token_type_ids.zero_()
    model.rotary_emb = type(model.rotary_emb)(native).to(device)
    model.eval()
    rank, alpha = int(config.get("lora_rank", 4)), float(config.get("lora_alpha", 1))
    installs = {task: _installer(task, index, lora, rank, alpha) for index, task in enumerate(tasks.names)}
    return model, installs


def _split(tensors: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Base tensors under transformers' names (jina_layout's table), and {flash module: {"A": stacked, "B": stacked}}
    for the adapters."""
    base: dict[str, Any] = {}
    lora: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        key = key.removeprefix("roberta.")
        match = _LORA.match(key)
        if match:
            lora.setdefault(match["module"], {})[match["part"]] = tensor
            continue
        match = _BASE.match(key)
        base[f"{match['module']}.weight" if match else key] = tensor
    return jina_layout.renamed(base, jina_layout.ROTARY), lora


def _native(module: str) -> str:
    """A flash module's name in transformers' JinaEmbeddingsV3Model (jina_layout's table; not the fused Wqkv)."""
    return next(iter(jina_layout.renamed({f"{module}.weight": None}, jina_layout.ROTARY))).removesuffix(".weight")


def _installer(task: str, index: int, lora: Mapping[str, Mapping[str, Any]], rank: int, alpha: float):
    """A function adding task `index`'s slices as the peft LoRA adapter `task` (module by module, by name)."""

    def install(model) -> None:
        import torch
        from peft import LoraConfig

        targets = {}  # native module -> (lora A weight, lora B weight) in peft's shapes
        for module, parts in lora.items():
            a, b = parts["A"][index], parts["B"][index]
            fused = _FUSED_QKV.match(module)
            if fused:
                for part, b_chunk in zip(("q_proj", "k_proj", "v_proj"), b.chunk(3, dim=0)):
                    targets[f"layers.{fused[1]}.self_attn.{part}"] = (a, b_chunk)
            elif _native(module) in _EMBEDDINGS:
                targets[_native(module)] = (a.T, b.T)  # peft: lora_embedding_A [rank, vocab], B [dim, rank]
            else:
                targets[_native(module)] = (a, b)
        adapter = adapter_name(task)
        model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=sorted(targets)),
                          adapter_name=adapter)
        with torch.no_grad():
            for module, (a, b) in targets.items():
                layer = model.get_submodule(module)
                if module in _EMBEDDINGS:
                    layer.lora_embedding_A[adapter].copy_(a)
                    layer.lora_embedding_B[adapter].copy_(b)
                else:
                    layer.lora_A[adapter].weight.copy_(a)
                    layer.lora_B[adapter].weight.copy_(b)

    return install
