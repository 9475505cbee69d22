"""jina-embeddings-v4's own encode_text / encode_image, re-implemented for the tests from its public code
(jinaai/jina-embeddings-v4: modeling_jina_embeddings_v4.py, custom_lora_module.py), on transformers' own
`Qwen2_5_VLForConditionalGeneration` and the checkpoint's own files. Nothing here comes from searchbox.

Why a re-implementation: the published code imports its own copy of transformers' Qwen2.5-VL module, downloads its
processor and adapters from the Hub, and its processor class needs torchvision (for videos), none of which exists on
an offline machine without torchvision. What it does, step by step, is what this file does:
- the LoRA: Jina's `MultiAdapterLinear` adds `lora_B[task](lora_A[task](x)) * lora_alpha / r` to each adapted
  layer's output, one task for the whole batch (`encode_*` take one task); here a forward hook on each layer does the
  same (the LoRA file's module names are the loaded model's);
- texts (`process_texts`): `f"{prefix}: {text}"` with prefix `Query` or `Passage` (`text-matching`: always `Query`),
  tokenized with padding to the longest, no special tokens added (Qwen's tokenizer adds none);
- images (`process_images`): the fixed user turn with one image, whose `<|image_pad|>` the processor expands into the
  image's visual tokens (grid t*h*w / merge^2) before tokenizing; positions from the model's `get_rope_index`, as
  `get_last_hidden_states` computes them;
- outputs (`forward`): single vector = the last hidden state (`output_hidden_states[-1]`) averaged over the attention
  mask (texts) or over `<|vision_start|>`..`<|vision_end|>` (images), L2-normalised, then cut to `truncate_dim` and
  normalised again; multi-vector = `normalize(multi_vector_projector(hidden))` at each attended position.
It runs in float32 (the published `_process_batches` autocasts to bfloat16 on any device, which only adds rounding).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

IMAGE_TURN = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n"
PREFIXES = {"query": "Query", "passage": "Passage"}


class JinaV4Reference:
    def __init__(self, model_dir: Path, device: str = "cpu", dtype=torch.float32):
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

        model_dir = Path(model_dir)
        self.config = json.loads((model_dir / "config.json").read_text())
        self.device = torch.device(device)
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()
        weights = load_file(str(model_dir / "model.safetensors"))
        projector = weights["multi_vector_projector.weight"]
        self.projector = torch.nn.Linear(projector.shape[1], projector.shape[0])
        with torch.no_grad():
            self.projector.weight.copy_(projector)
            self.projector.bias.copy_(weights["multi_vector_projector.bias"])
        self.projector.to(device, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(model_dir))
        adapter_config = json.loads((model_dir / "adapters" / "adapter_config.json").read_text())
        self.scaling = adapter_config["lora_alpha"] / adapter_config["r"]
        pairs: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
        for key, tensor in load_file(str(model_dir / "adapters" / "adapter_model.safetensors")).items():
            module, _, rest = key.removeprefix("base_model.model.").partition(".lora_")
            part, task, _ = rest.split(".")
            pairs.setdefault(module, {}).setdefault(task, {})[part] = tensor.to(device, dtype)
        self.task: str | None = None
        for module, tasks in pairs.items():
            layer = self.projector if module == "multi_vector_projector" else self.model.get_submodule(module)
            layer.register_forward_hook(self._lora(tasks))

    def _lora(self, tasks):
        def hook(module, inputs, output):
            pair = tasks[self.task]
            return output + (inputs[0] @ pair["A"].T @ pair["B"].T) * self.scaling

        return hook

    @torch.no_grad()
    def _outputs(self, batch, task: str, image: bool, truncate_dim: int | None, multivector: bool):
        self.task = task
        batch = {name: value.to(self.device) for name, value in batch.items()}
        ids, mask = batch["input_ids"], batch["attention_mask"]
        extra = {}
        if image:
            mm = (ids == self.config["image_token_id"]).int()
            position_ids, _ = self.model.model.get_rope_index(ids, mm, image_grid_thw=batch["image_grid_thw"],
                                                              attention_mask=mask)
            extra = dict(pixel_values=batch["pixel_values"].to(self.model.dtype), image_grid_thw=batch["image_grid_thw"],
                         position_ids=position_ids, mm_token_type_ids=mm)
        hidden = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False,
                            **extra).hidden_states[-1]
        if multivector:
            tokens = torch.nn.functional.normalize(self.projector(hidden), dim=-1) * mask.unsqueeze(-1)
            return [row[m.bool()].float().cpu().numpy() for row, m in zip(tokens, mask)]
        if image:
            positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
            start = torch.where(ids == self.config["vision_start_token_id"])[1].unsqueeze(1)
            end = torch.where(ids == self.config["vision_end_token_id"])[1].unsqueeze(1)
            span = ((positions >= start) & (positions <= end)).float()
        else:
            span = mask.float()
        pooled = (hidden * span.unsqueeze(-1)).sum(1) / span.sum(1, keepdim=True)
        vectors = torch.nn.functional.normalize(pooled, dim=-1)
        if truncate_dim is not None:
            vectors = torch.nn.functional.normalize(vectors[:, :truncate_dim], dim=-1)
        return list(vectors.float().cpu().numpy())

    def encode_text(self, texts: list[str], task: str, prompt_name: str = "query", truncate_dim: int | None = None,
                    return_multivector: bool = False) -> list[np.ndarray]:
        prefix = PREFIXES["query"] if task == "text-matching" else PREFIXES[prompt_name]
        batch = self.tokenizer([f"{prefix}: {text}" for text in texts], padding="longest", return_tensors="pt")
        return self._outputs(batch, task, False, truncate_dim, return_multivector)

    def text_tokens(self, text: str, task: str, prompt_name: str = "query") -> int:
        prefix = PREFIXES["query"] if task == "text-matching" else PREFIXES[prompt_name]
        return len(self.tokenizer(f"{prefix}: {text}")["input_ids"])

    def image_batch(self, images):
        pixels = self.image_processor(images=images, return_tensors="pt")
        merge = self.image_processor.merge_size ** 2
        texts = [IMAGE_TURN.replace("<|image_pad|>", "<|image_pad|>" * (int(grid.prod()) // merge))
                 for grid in pixels["image_grid_thw"]]
        batch = dict(self.tokenizer(texts, padding="longest", return_tensors="pt"))
        batch.update(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])
        return batch

    def visual_tokens(self, image) -> int:
        """The image's visual tokens in the language model's sequence."""
        grid = self.image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
        return int(grid.prod()) // self.image_processor.merge_size ** 2

    def encode_image(self, images: list, task: str, truncate_dim: int | None = None,
                     return_multivector: bool = False) -> list[np.ndarray]:
        return self._outputs(self.image_batch(images), task, True, truncate_dim, return_multivector)

    @torch.no_grad()
    def hidden_states(self, text: str, task: str) -> np.ndarray:
        """The last hidden states of one raw text (no prefix added): late chunking's expected values pool these."""
        self.task = task
        batch = {name: value.to(self.device) for name, value in self.tokenizer([text], return_tensors="pt").items()}
        return self.model(**batch, output_hidden_states=True, use_cache=False).hidden_states[-1][0].float().cpu().numpy()
