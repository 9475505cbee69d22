"""jina-embeddings-v4 checkpoints as published, served without running the code they ship.

The published repository (jinaai/jina-embeddings-v4) holds a Qwen2.5-VL-3B in `model.safetensors` under
transformers' checkpoint names, plus `multi_vector_projector` (hidden -> 128); config.json names Jina's class
(`architectures: ["JinaEmbeddingsV4Model"]`, model_type `qwen2_5_vl`, an `auto_map` into its
`modeling_jina_embeddings_v4.py`) and adds `task_names`, `matryoshka_dims` and `multi_vector_projector_dim`. Its task
adapters are one PEFT LoRA file, `adapters/adapter_model.safetensors`, whose every adapted layer holds one A/B pair per
task (`...q_proj.lora_A.retrieval.weight`): Jina's `MultiAdapterLinear` (custom_lora_module.py) adds
`B_task(A_task(x)) * lora_alpha / r` for the task each row names.

Its own code (modeling_jina_embeddings_v4.py), which this module and model_handlers/kinds/vl_embedding.py follow:
- texts: `"Query: "` or `"Passage: "` + text (`prompt_name`, default query; text-matching always `Query`), tokenized
  with no special tokens, up to 32,768 tokens;
- images: the user turn
  `<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\\n`;
- single vector: the last hidden state mean-pooled over the attention mask (texts) or over the image's span from
  `<|vision_start|>` to `<|vision_end|>` (images), L2-normalised; Matryoshka cut, then normalised again;
- multi-vector: `multi_vector_projector` (with the task's LoRA) on every position, L2-normalised, padding zeroed.

Here each task's pairs become a peft LoRA adapter named after the task, put into transformers' own
`Qwen2_5_VLForConditionalGeneration` (the projector attached to it, so its adapters go in the same way), and applied
per row by model_handlers/adapters.py: one pass serves rows of every task.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Mapping

from model_handlers.errors import ModelDirectoryError
from model_handlers.model_files import read_object

ARCHITECTURE = "JinaEmbeddingsV4Model"
# The prompt of each side (its PREFIX_DICT, joined as f"{prefix}: {text}"); text-matching embeds both as queries
PROMPTS = {"query": "Query: ", "document": "Passage: "}
SYMMETRIC_TASKS = frozenset({"text-matching"})
# What its own encode_text does when told nothing: its from_pretrained docstring's task, and prompt_name "query"
DEFAULT_TASK = "retrieval"
DEFAULT_INPUT_TYPE = "query"
IMAGE_PROMPT = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n"
# The text length its processor allows (JinaEmbeddingsV4Processor.text_max_length)
MAX_LENGTH = 32768
PROJECTOR = "multi_vector_projector"
_ADAPTERS = "adapters"
_LORA_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.(?P<task>[^.]+)\.weight")
# Checkpoint (and older transformers') module names -> transformers 5's (its own conversion mapping)
_RENAMES = ((re.compile(r"^visual\."), "model.visual."),
            (re.compile(r"^model\.(?!language_model\.|visual\.)"), "model.language_model."))


def is_v4(config: Mapping[str, Any]) -> bool:
    """Whether config.json is a published jina-embeddings-v4 checkpoint's: Jina's class and its task names."""
    return list(config.get("architectures") or ()) == [ARCHITECTURE] and isinstance(config.get("task_names"), list)


def tasks(config: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """{`<task>_<side>`: (prompt, adapter)}: a task matrix (model_handlers/serving_config.py) over the checkpoint's
    tasks, each task's adapter with the side's prompt."""
    return {f"{task}_{side}": (PROMPTS["query" if task in SYMMETRIC_TASKS else side], str(task))
            for task in config["task_names"] for side in PROMPTS}


def module_name(name: str) -> str:
    """A layer's name in transformers' model, from the checkpoint's or a LoRA file's."""
    for pattern, replacement in _RENAMES:
        name = pattern.sub(replacement, name)
    return name


def adapter_installers(model_dir: Path, task_names: list[str]) -> dict[str, Callable[[Any], None]]:
    """{task: a function putting that task's LoRA pairs into the model as the peft adapter named `task`}.

    Raises:
        ModelDirectoryError: no adapters, or a file whose tasks, keys or shapes do not fit the model's.
    """
    from safetensors.torch import load_file

    folder = model_dir / _ADAPTERS
    settings = read_object(folder / "adapter_config.json")
    weights = folder / "adapter_model.safetensors"
    if not settings or not weights.is_file():
        raise ModelDirectoryError(f"{model_dir}: jina-embeddings-v4 keeps its task adapters in {_ADAPTERS}/ "
                                  "(adapter_config.json, adapter_model.safetensors); they are missing")
    pairs: dict[str, dict[str, dict[str, Any]]] = {}  # task -> module -> {"A", "B"}
    for key, tensor in load_file(str(weights)).items():
        match = _LORA_KEY.fullmatch(key)
        if match is None:
            raise ModelDirectoryError(f"{weights}: {key} is not a LoRA pair of one task (lora_A.<task>.weight)")
        pairs.setdefault(match["task"], {}).setdefault(module_name(match["module"]), {})[match["part"]] = tensor
    if sorted(pairs) != sorted(task_names):
        raise ModelDirectoryError(f"{weights}: adapters for {', '.join(sorted(pairs)) or 'no task'}, but config.json "
                                  f"names tasks {', '.join(task_names)}")
    rank = int(settings.get("r", 0))
    alpha = float(settings.get("lora_alpha", rank))
    if rank <= 0:
        raise ModelDirectoryError(f"{folder / 'adapter_config.json'}: r must be a positive rank, "
                                  f"not {settings.get('r')!r}")
    scaling = "rslora" if settings.get("use_rslora") else "plain"
    return {task: _installer(task, modules, rank, alpha, scaling == "rslora", weights)
            for task, modules in pairs.items()}


def _installer(task: str, modules: Mapping[str, Mapping[str, Any]], rank: int, alpha: float, rslora: bool,
               source: Path) -> Callable[[Any], None]:
    def install(model) -> None:
        import torch
        from peft import LoraConfig

        for name, parts in modules.items():
            if set(parts) != {"A", "B"}:
                raise ModelDirectoryError(f"{source}: {name} of task {task} has no lora_{'AB'[len(parts) % 2]}")
        model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, use_rslora=rslora,
                                     target_modules=sorted(modules)), adapter_name=task)
        with torch.no_grad():
            for name, parts in modules.items():
                layer = model.get_submodule(name)
                a, b = layer.lora_A[task].weight, layer.lora_B[task].weight
                if tuple(a.shape) != tuple(parts["A"].shape) or tuple(b.shape) != tuple(parts["B"].shape):
                    raise ModelDirectoryError(f"{source}: {name} of task {task} has LoRA shapes "
                                              f"{tuple(parts['A'].shape)}, {tuple(parts['B'].shape)}; the model's "
                                              f"layer takes {tuple(a.shape)}, {tuple(b.shape)}")
                a.copy_(parts["A"])
                b.copy_(parts["B"])

    return install
