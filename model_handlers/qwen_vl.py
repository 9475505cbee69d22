"""The vision-language backbones jina-reranker-m0 (Qwen2-VL) and jina-embeddings-v4 (Qwen2.5-VL) are built on, read
with transformers' own classes: no code from the model directory runs.

What a kind on top gets:
- `Backbone(model_dir, device)`: the checkpoint's `Qwen2VLForConditionalGeneration` or
  `Qwen2_5_VLForConditionalGeneration` (told by config.json's `model_type`; Jina's config names its own wrapper class,
  which only adds heads the kind reads with `tensors`), its tokenizer and Qwen2-VL's image processor (the PIL one:
  transformers' processor class also wants a video processor, which needs torchvision, and no image takes video).
- `image_tokens(width, height)`: the visual tokens an image becomes, from its size alone (the processor's own
  `smart_resize`: sides rounded to 28 pixels, the area brought within the pixel bounds; 14-pixel patches merged 2x2),
  so admission and the batch budget count an image before any pixel is decoded.
- `preprocess(image)` on the caller's thread: the processor's patches and grid for one image (`Pixels`).
- `sequence(prompt, images)`: a prompt's token ids with each `<|image_pad|>` expanded into the image's visual tokens,
  which is what transformers' Qwen2-VL processor does to the text before tokenizing it.
- `hidden(rows, left)` on the batcher's thread: one pass over many rows, the language model's last hidden states
  (after its final norm, what `output_hidden_states[-1]` holds) and the attention mask. Rows are padded on the side
  the model reads from (`left`: the last position is every row's own last token); images' multimodal rotary positions
  are computed by the model from `mm_token_type_ids`, as the processor's output would give them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from model_handlers.errors import ModelDirectoryError
from model_handlers.lengths import NO_LIMIT
from model_handlers.model_files import read_object
from model_handlers.options import weights_dtype
from model_handlers.tokenization import TokenizerView

IMAGE_PAD = "<|image_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
# config.json model_type -> transformers' class of the whole model (vision tower, language model, head)
_CLASSES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}


@dataclass(frozen=True)
class Pixels:
    """One preprocessed image: its patches (float32, one row per 14x14x2 patch) and grid (t, h, w in patches)."""

    values: np.ndarray
    grid: np.ndarray
    tokens: int  # visual tokens in the language model's sequence: t * h * w / merge^2

    @property
    def nbytes(self) -> int:
        return self.values.nbytes


@dataclass(frozen=True)
class Row:
    """One sequence of a pass: token ids (images' pads expanded) and its images, in the order their pads stand."""

    ids: np.ndarray
    images: tuple[Pixels, ...] = ()

    @property
    def length(self) -> int:
        return len(self.ids)


# Jina's classes over these backbones, whose heads and adapters searchbox reads itself (the vision-language kinds)
JINA_ARCHITECTURES = frozenset({"JinaVLForRanking", "JinaEmbeddingsV4Model"})


def read_natively(config: Mapping[str, Any]) -> bool:
    """Whether config.json is a Jina vision-language checkpoint searchbox reads with its own code (its auto_map is
    never followed)."""
    return model_type(config) is not None and bool(JINA_ARCHITECTURES & set(config.get("architectures") or ()))


def model_type(config: Mapping[str, Any]) -> str | None:
    """config.json's model_type when it names a backbone read here (qwen2_vl, qwen2_5_vl), else None."""
    kind = config.get("model_type")
    return kind if kind in _CLASSES else None


class Backbone:
    """A Qwen2-VL-family checkpoint on `device`, in eval mode, with its tokenizer and image processor.

    Args:
        pixels: the image processor's pixel bounds (`min_pixels`, `max_pixels`) where the model's own code sets them
            rather than its preprocessor_config.json (jina-reranker-m0's compute_score).

    Raises:
        ModelDirectoryError: not such a checkpoint, or files missing or unreadable.
    """

    def __init__(self, model_dir: Path, device: str, pixels: Mapping[str, int] | None = None):
        import torch
        import transformers
        from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

        config = read_object(model_dir / "config.json")
        kind = model_type(config)
        if kind is None:
            raise ModelDirectoryError(f"{model_dir}: config.json's model_type is {config.get('model_type')!r}; "
                                      f"searchbox reads vision-language models on {', '.join(_CLASSES)}")
        model_class = getattr(transformers, _CLASSES[kind])
        self.device = device
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # its load report lists Jina's heads, which are read below
        try:
            model, info = model_class.from_pretrained(str(model_dir), dtype=weights_dtype(device),
                                                      attn_implementation="sdpa", local_files_only=True,
                                                      use_safetensors=True, output_loading_info=True)
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
            self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(model_dir), local_files_only=True,
                                                                            **dict(pixels or {}))
        except (OSError, ValueError, KeyError) as exc:
            raise ModelDirectoryError(f"cannot load {model_dir} as a {kind} vision-language model: {exc}") from exc
        finally:
            transformers.logging.set_verbosity(verbosity)
        # a tied output head is no missing weight; any other would answer from random weights
        wrong = sorted(key for key in info.get("missing_keys") or () if key != "lm_head.weight") + sorted(
            str(key) for key in info.get("mismatched_keys") or ())
        if wrong:
            raise ModelDirectoryError(f"{model_dir}: the checkpoint lacks or misshapes tensors the {kind} model needs "
                                      f"({', '.join(wrong[:5])}); it would answer from random weights")
        self.model = model.to(device).eval()
        self.model_dir = model_dir
        self.kind = kind
        self.dtype = next(self.model.parameters()).dtype
        self.width = int(self.model.config.text_config.hidden_size)
        vocabulary = self.tokenizer.get_vocab()
        missing = [token for token in (IMAGE_PAD, VISION_START, VISION_END) if token not in vocabulary]
        if missing:
            raise ModelDirectoryError(f"{model_dir}: the tokenizer has no {', '.join(missing)}; a Qwen2-VL tokenizer "
                                      "marks images with them")
        self.image_token_id = int(vocabulary[IMAGE_PAD])
        self.vision_start_id = int(vocabulary[VISION_START])
        self.vision_end_id = int(vocabulary[VISION_END])
        self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                          else self.tokenizer.eos_token_id)
        self.merge = int(self.image_processor.merge_size)
        self.patch = int(self.image_processor.patch_size)
        size = self.image_processor.size  # transformers 5 holds the pixel bounds as size's edges
        self.min_pixels = int(size["shortest_edge"])
        self.max_pixels = int(size["longest_edge"])
        # tokenizes on request threads: transformers' tokenizer call reconfigures the shared backend each time
        self.text = TokenizerView.from_hf(self.tokenizer, NO_LIMIT)
        self._torch = torch

    # --- on the caller's thread -----------------------------------------------------------------------------------

    def image_tokens(self, width: int, height: int) -> int:
        """Visual tokens an image of this size becomes (before decoding it: its header's size suffices)."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        factor = self.patch * self.merge
        resized_height, resized_width = smart_resize(height, width, factor=factor, min_pixels=self.min_pixels,
                                                     max_pixels=self.max_pixels)
        return (resized_height // factor) * (resized_width // factor)

    def preprocess(self, image) -> Pixels:
        """The processor's patches of one RGB Pillow image.

        Raises whatever the processor raises for an image it cannot take (the caller names the input).
        """
        arrays = self.image_processor(images=[image], return_tensors="np")
        grid = np.asarray(arrays["image_grid_thw"][0], dtype=np.int64)
        return Pixels(np.ascontiguousarray(arrays["pixel_values"], dtype=np.float32), grid,
                      int(grid.prod()) // (self.merge * self.merge))

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text` as the model's tokenizer reads it (no special tokens added: Qwen's add none)."""
        return self.text.encode([text])[0]

    def sequence(self, prompt: str | np.ndarray, images: Sequence[Pixels] = ()) -> Row:
        """The row of `prompt` (text or token ids) holding one `<|image_pad|>` per image of `images`, each expanded
        into that image's visual tokens.

        Raises:
            ValueError: the prompt's pads and the images do not match in number.
        """
        ids = self.encode(prompt) if isinstance(prompt, str) else np.asarray(prompt, dtype=np.int64)
        pads = np.flatnonzero(ids == self.image_token_id)
        if len(pads) != len(images):
            raise ValueError(f"the prompt holds {len(pads)} image pads for {len(images)} images")
        if not len(images):
            return Row(ids)
        pieces, start = [], 0
        for pad, image in zip(pads, images):
            pieces += [ids[start:pad], np.full(image.tokens, self.image_token_id, dtype=np.int64)]
            start = pad + 1
        pieces.append(ids[start:])
        return Row(np.concatenate(pieces), tuple(images))

    # --- on the batcher's thread ----------------------------------------------------------------------------------

    def batch(self, rows: Sequence[Row], left: bool) -> dict[str, Any]:
        """The model's keyword arguments for `rows`, padded on the left or the right."""
        torch = self._torch
        longest = max(row.length for row in rows)
        ids = np.full((len(rows), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), longest), dtype=np.int64)
        for index, row in enumerate(rows):
            place = slice(longest - row.length, longest) if left else slice(0, row.length)
            ids[index, place] = row.ids
            mask[index, place] = 1
        arguments: dict[str, Any] = {"input_ids": torch.from_numpy(ids).to(self.device),
                                     "attention_mask": torch.from_numpy(mask).to(self.device)}
        images = [image for row in rows for image in row.images]
        if images:
            arguments["pixel_values"] = torch.from_numpy(np.concatenate([i.values for i in images])).to(
                self.device, self.dtype)
            arguments["image_grid_thw"] = torch.from_numpy(np.stack([i.grid for i in images])).to(self.device)
            arguments["mm_token_type_ids"] = (arguments["input_ids"] == self.image_token_id).to(torch.int32)
        return arguments

    def hidden(self, arguments: Mapping[str, Any]):
        """The last hidden states (batch, length, width) of a `batch`: the language model's, after its final norm."""
        language = self.model.model
        language.rope_deltas = None  # positions of this pass only (the model keeps them for generation)
        return language(**arguments, use_cache=False).last_hidden_state

    def tensors(self, prefix: str) -> dict[str, Any]:
        """The checkpoint's tensors whose names start with `prefix` (a head Jina's class adds), on the device and in
        the model's dtype, named without the prefix.

        Raises:
            ModelDirectoryError: there are none.
        """
        from safetensors import safe_open

        found = {}
        for path in sorted(self.model_dir.glob("*.safetensors")):
            with safe_open(str(path), "pt") as weights:
                for name in weights.keys():
                    if name.startswith(prefix):
                        found[name[len(prefix):]] = weights.get_tensor(name).to(self.device, self.dtype)
        if not found:
            raise ModelDirectoryError(f"{self.model_dir}: the checkpoint holds no {prefix}* tensors")
        return found
