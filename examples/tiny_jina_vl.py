"""Make small jina-reranker-m0- and jina-embeddings-v4-shaped checkpoints to try the vision-language kinds with, offline
(random weights: the scores and vectors mean nothing, the code paths are the real models').

    .venv/bin/python examples/tiny_jina_vl.py m0 /tmp/tiny-m0                 # 32 wide, 2 layers: instant
    .venv/bin/python examples/tiny_jina_vl.py v4 /tmp/tiny-v4 --size small    # 256 wide, 4 layers

Neither model's weights can be downloaded here, so each directory is built with transformers' own classes and laid
out as the published repository is (read from the models' public code: jinaai/jina-reranker-m0's `modeling.py`,
jinaai/jina-embeddings-v4's `modeling_jina_embeddings_v4.py` and `custom_lora_module.py`):

- a byte-level BPE tokenizer trained on the spot (examples/tiny_generative_reranker.py) with Qwen's chat and vision
  tokens (`<|vision_start|>`, `<|vision_end|>`, `<|image_pad|>`, `<|video_pad|>`) and Qwen2-VL's image processor
  (14-pixel patches merged 2x2, so one visual token covers 28x28 pixels);
- **m0**: a `Qwen2VLForConditionalGeneration` saved by transformers (its checkpoint names: `model.layers.*`,
  `visual.*`) plus the scoring head Jina's `JinaVLForRanking` adds, `score.0` (hidden -> hidden) and `score.2`
  (hidden -> 1), config.json naming `JinaVLForRanking` with its auto_map to `modeling.py` (here a file that raises
  when imported: searchbox reads the model natively);
- **v4**: a `Qwen2_5_VLForConditionalGeneration` likewise, plus `multi_vector_projector` (hidden -> 128), config.json
  naming `JinaEmbeddingsV4Model` with its `task_names`, `matryoshka_dims` and `multi_vector_projector_dim`, and
  `adapters/`: one PEFT LoRA file whose every adapted layer holds one A/B pair per task (`lora_A.<task>.weight`), as
  Jina's `MultiAdapterLinear` saves them, on the language model's projections, the vision tower's MLPs and the
  multi-vector projector (the target pattern of the published adapter_config.json).

Every weight is seeded; LoRA B matrices are non-zero, so each task answers differently.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_generative_reranker import _CORPUS, bpe_tokenizer  # noqa: E402

SIZES = {
    # language model width, layers, attention heads (half as many key/value heads); vision tower width and depth
    "tiny": dict(width=32, layers=2, heads=4, vision=32, vision_layers=2),
    "small": dict(width=256, layers=4, heads=4, vision=128, vision_layers=4),
}
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
# The pixel bounds jina-reranker-m0's compute_score gives its processor (modeling.py), and v4's preprocessor's.
M0_PIXELS = dict(min_pixels=3136, max_pixels=602112)
V4_PIXELS = dict(min_pixels=3136, max_pixels=602112)
V4_TASKS = ("retrieval", "text-matching", "code")
V4_MATRYOSHKA = (128, 256, 512, 1024, 2048)
_V4_LORA_RANK = 4
_V4_LORA_ALPHA = 8
# The published adapter_config.json's target pattern (jinaai/jina-embeddings-v4 adapters/)
V4_TARGETS = (r"(.*(model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$"
              r"|.*(single_vector_projector|multi_vector_projector).*$)")
_CORPUS_VL = _CORPUS + ["Describe the image.", "Query: Passage: **Document**: **Query**:", "user assistant"] * 20


def tokenizer(max_length: int = 32768, padding_side: str = "right"):
    """The BPE tokenizer with Qwen's vision tokens, as `Qwen2TokenizerFast` would hold them."""
    bpe = bpe_tokenizer(_CORPUS_VL, max_length)
    bpe.add_special_tokens({"additional_special_tokens": list(VISION_TOKENS)})
    bpe.padding_side = padding_side
    return bpe


def _vision_ids(bpe) -> dict[str, int]:
    start, end, image, video = bpe.convert_tokens_to_ids(list(VISION_TOKENS))
    return dict(vision_start_token_id=start, vision_end_token_id=end, image_token_id=image, video_token_id=video)


def _text_config(bpe, shape) -> dict:
    return dict(vocab_size=len(bpe), hidden_size=shape["width"], intermediate_size=2 * shape["width"],
                num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                num_key_value_heads=shape["heads"] // 2, max_position_embeddings=32768,
                rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1] if shape["width"] == 32 else [16, 8, 8]},
                initializer_range=0.3, pad_token_id=bpe.pad_token_id, eos_token_id=bpe.eos_token_id,
                bos_token_id=None)


def _save_image_processor(target: Path, pixels: dict) -> None:
    from transformers import Qwen2VLImageProcessorPil

    Qwen2VLImageProcessorPil(**pixels).save_pretrained(str(target))


def _add_tensors(target: Path, tensors: dict) -> None:
    """Write `tensors` into the checkpoint beside what transformers saved (as the published files hold them)."""
    from safetensors.torch import load_file, save_file

    path = target / "model.safetensors"
    saved = load_file(str(path))
    saved.update({name: tensor.contiguous() for name, tensor in tensors.items()})
    save_file(saved, str(path), metadata={"format": "pt"})


def _edit_config(target: Path, **fields) -> None:
    path = target / "config.json"
    config = json.loads(path.read_text())
    config.update(fields)
    path.write_text(json.dumps(config, indent=2))


def build_m0(directory: str | Path, size: str = "tiny", seed: int = 5) -> Path:
    """Write a jina-reranker-m0-shaped reranker of `size` into `directory` and return it."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    shape, target = SIZES[size], Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    bpe = tokenizer(padding_side="left")
    bpe.save_pretrained(str(target))
    _save_image_processor(target, M0_PIXELS)
    vision = dict(depth=shape["vision_layers"], embed_dim=shape["vision"], hidden_size=shape["width"],
                  num_heads=2, mlp_ratio=2, in_chans=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=_text_config(bpe, shape), vision_config=vision, tie_word_embeddings=True,
                           **_vision_ids(bpe))
    torch.manual_seed(seed)
    Qwen2VLForConditionalGeneration(config).save_pretrained(str(target))
    width = shape["width"]
    generator = torch.Generator().manual_seed(seed + 1)
    _add_tensors(target, {
        "score.0.weight": torch.randn(width, width, generator=generator) / width ** 0.5,
        "score.0.bias": torch.randn(width, generator=generator) * 0.1,
        "score.2.weight": torch.randn(1, width, generator=generator) / width ** 0.5 * 4,
        "score.2.bias": torch.tensor([2.65]),
    })
    _edit_config(target, architectures=["JinaVLForRanking"],
                 auto_map={"AutoModel": "modeling.JinaVLForRanking"})
    # the published repository's code sits beside its auto_map; searchbox never imports it, so this one refuses to be
    (target / "modeling.py").write_text('raise ImportError("the model\'s own modeling.py was imported: searchbox '
                                        'reads JinaVLForRanking natively")\n')
    return target


def build_v4(directory: str | Path, size: str = "tiny", seed: int = 7) -> Path:
    """Write a jina-embeddings-v4-shaped embedder of `size` into `directory` and return it."""
    import re

    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    shape, target = SIZES[size], Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    bpe = tokenizer()
    bpe.save_pretrained(str(target))
    _save_image_processor(target, V4_PIXELS)
    vision = dict(depth=shape["vision_layers"], hidden_size=shape["vision"], out_hidden_size=shape["width"],
                  intermediate_size=2 * shape["vision"], num_heads=2, in_channels=3, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                  fullatt_block_indexes=[shape["vision_layers"] - 1])
    config = Qwen2_5_VLConfig(text_config=_text_config(bpe, shape), vision_config=vision, tie_word_embeddings=True,
                              **_vision_ids(bpe))
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.save_pretrained(str(target))
    width, dim = shape["width"], 128
    generator = torch.Generator().manual_seed(seed + 1)
    _add_tensors(target, {"multi_vector_projector.weight": torch.randn(dim, width, generator=generator) / width ** 0.5,
                          "multi_vector_projector.bias": torch.randn(dim, generator=generator) * 0.1})
    _edit_config(target, architectures=["JinaEmbeddingsV4Model"],
                 auto_map={"AutoConfig": "configuration_jina_embeddings_v4.JinaEmbeddingsV4Config",
                           "AutoModel": "modeling_jina_embeddings_v4.JinaEmbeddingsV4Model"},
                 task_names=list(V4_TASKS), matryoshka_dims=list(V4_MATRYOSHKA), truncate_dim=None,
                 multi_vector_projector_dim=dim, single_vector_pool_strategy="mean")
    # One A/B pair per task on every layer the published pattern targets, named as peft saves Jina's
    # MultiAdapterLinear from the loaded model (transformers' module names)
    linears = {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
               and re.fullmatch(V4_TARGETS, name)}
    linears["multi_vector_projector"] = torch.nn.Linear(width, dim)
    lora = {}
    for name, module in sorted(linears.items()):
        for task in V4_TASKS:
            prefix = f"base_model.model.{name}"
            lora[f"{prefix}.lora_A.{task}.weight"] = torch.randn(_V4_LORA_RANK, module.in_features,
                                                                 generator=generator) / module.in_features ** 0.5
            lora[f"{prefix}.lora_B.{task}.weight"] = torch.randn(module.out_features, _V4_LORA_RANK,
                                                                 generator=generator) * 0.3
    adapters = target / "adapters"
    adapters.mkdir(exist_ok=True)
    save_file(lora, str(adapters / "adapter_model.safetensors"), metadata={"format": "pt"})
    (adapters / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": None, "r": _V4_LORA_RANK, "lora_alpha": _V4_LORA_ALPHA,
        "lora_dropout": 0.0, "bias": "none", "target_modules": V4_TARGETS, "use_rslora": False, "use_dora": False,
        "base_model_name_or_path": "jinaai/jina-embeddings-v4"}, indent=2))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=("m0", "v4"))
    parser.add_argument("directory")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    args = parser.parse_args()
    print((build_m0 if args.model == "m0" else build_v4)(args.directory, args.size))


if __name__ == "__main__":
    main()
