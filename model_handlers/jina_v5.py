"""jina-embeddings-v5-text checkpoints as published, served without running the code they ship.

The published repositories (jina-embeddings-v5-text-small on Qwen3-0.6B-Base, -nano on EuroBERT) hold the base model
in `model.safetensors`, one PEFT LoRA adapter per task in `adapters/<task>/` and a config.json that names Jina's own
class (`architectures: ["JinaEmbeddingsV5Model"]`, `model_type: jina_embeddings_v5`, an `auto_map` into its
`modeling_jina_embeddings_v5.py`) whose config class subclasses the base's config without changing it, plus
`task_names`. Its own `encode(texts, task, prompt_name)` prefixes "Query: " or "Document: " (the prompts of
config_sentence_transformers.json), sets the task's adapter, pools the last real token and L2-normalises (a Matryoshka
cut before).

Here the base is transformers' own `Qwen3Model` or `EuroBertModel` built from config.json's fields; the adapters are
model_handlers/serving_config.py's task matrix of adapter and prompt, applied per row by model_handlers/adapters.py;
pooling and normalisation are the text-embedding kind's (model_handlers/kinds/text_embedding.py). Nothing from the
directory is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from model_handlers.errors import ModelDirectoryError
from model_handlers.model_files import read_object
from model_handlers.options import weights_dtype

ARCHITECTURE = "JinaEmbeddingsV5Model"
# config.json's keys that name Jina's wrapper, not the base model's settings
_WRAPPER_KEYS = ("architectures", "auto_map", "model_type", "transformers_version")


def is_v5(config: Mapping[str, Any]) -> bool:
    """Whether config.json is a published jina-embeddings-v5-text checkpoint's: Jina's class and its task names."""
    return list(config.get("architectures") or ()) == [ARCHITECTURE] and isinstance(config.get("task_names"), list)


def _base_classes(config: Mapping[str, Any], model_dir: Path):
    """transformers' config and model classes of the base, told from the keys only that base's config has."""
    from transformers import EuroBertConfig, EuroBertModel, Qwen3Config, Qwen3Model

    if "max_window_layers" in config or "use_sliding_window" in config:
        return Qwen3Config, Qwen3Model
    if "classifier_pooling" in config or "mask_token_id" in config:
        return EuroBertConfig, EuroBertModel
    raise ModelDirectoryError(f"{model_dir}: config.json names {ARCHITECTURE} but states neither a Qwen3 base "
                              "(max_window_layers, use_sliding_window) nor a EuroBERT one (classifier_pooling, "
                              "mask_token_id); searchbox reads jina-embeddings-v5-text-small and -nano")


def load(model_dir: Path, device: str):
    """The base model with the checkpoint's weights, on `device`, in eval mode (the adapters are added by the caller).

    Raises:
        ModelDirectoryError: an unknown base, or weights that do not fit it.
    """
    config = read_object(model_dir / "config.json")
    config_class, model_class = _base_classes(config, model_dir)
    native = config_class(**{key: value for key, value in config.items() if key not in _WRAPPER_KEYS})
    native._attn_implementation = "sdpa"
    try:
        model = model_class.from_pretrained(str(model_dir), config=native, dtype=weights_dtype(device),
                                            local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ModelDirectoryError(f"cannot load {model_dir} as jina-embeddings-v5-text: {exc}") from exc
    return model.to(device).eval()
