"""CLIP's image preprocessing without transformers: the multimodal kind's ONNX backend (the slim image has neither
torch nor transformers).

It reproduces transformers' `CLIPImageProcessorPil` (5.x: `PilBackend._preprocess` and image_transforms.py's
`convert_to_rgb`, `resize`, `center_crop`, `rescale`, `normalize`), the processor the torch backend runs when
torchvision is absent, as in the images, from the directory's saved processor configuration, step by step in the same
order and dtypes: RGB (transparency composited onto white), Pillow's resize of the shorter side (or to a fixed height
and width) with the configured filter, the centre crop (zero-padded when the image is smaller), float64 times the
rescale factor cast to float32, then `(x - mean) / std` in float32. tests/test_multimodal_onnx.py checks the arrays
are equal to the processor's. A configuration it does not reproduce is refused at load, never approximated.
"""

from __future__ import annotations

from math import ceil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from model_handlers.errors import ModelDirectoryError
from model_handlers.model_files import read_object

# the processors whose steps these are (the name saved in preprocessor_config.json drops "Pil")
PROCESSOR_TYPES = frozenset({"CLIPImageProcessor", "CLIPImageProcessorPil"})
# CLIPImageProcessorPil's class defaults, where the saved configuration leaves a key out (OPENAI_CLIP_MEAN / _STD)
_DEFAULTS = {"do_resize": True, "size": {"shortest_edge": 224}, "resample": 3, "do_center_crop": True,
             "crop_size": {"height": 224, "width": 224}, "do_rescale": True, "rescale_factor": 1 / 255,
             "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
             "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True}
_UNSUPPORTED = ("do_pad", "longest_edge", "max_height", "max_width")


class ClipPixels:
    """Called as transformers' image processors are (`images=[image], return_tensors="np"`): `{"pixel_values":
    float32 [1, 3, height, width]}`."""

    def __init__(self, settings: Mapping[str, Any], where: str = "preprocessor_config.json"):
        chosen = {**_DEFAULTS, **{key: value for key, value in settings.items() if value is not None}}
        size, crop = chosen["size"], chosen["crop_size"]
        if isinstance(size, int):  # older configurations: the shorter side (CLIP does not default to a square)
            size = {"shortest_edge": size}
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        unsupported = [key for key in _UNSUPPORTED if chosen.get(key) or (isinstance(size, Mapping) and size.get(key))]
        if (unsupported or not isinstance(size, Mapping) or not isinstance(crop, Mapping)
                or not (isinstance(size.get("shortest_edge"), int)
                        or (isinstance(size.get("height"), int) and isinstance(size.get("width"), int)))):
            raise ModelDirectoryError(f"{where}: an image processor searchbox does not reproduce without transformers "
                                      f"(size {size!r}{', ' + ', '.join(unsupported) if unsupported else ''}); "
                                      "serve this model with the torch backend")
        self.size = dict(size)  # read by the kind (how large a PDF page is rendered), as a processor's is
        self._crop = (int(crop["height"]), int(crop["width"]))
        self._settings = chosen
        self._mean = np.asarray(chosen["image_mean"], dtype=np.float32)
        self._std = np.asarray(chosen["image_std"], dtype=np.float32)

    @classmethod
    def read(cls, directory: Path) -> "ClipPixels":
        """The preprocessing the directory describes: preprocessor_config.json, else processor_config.json's
        `image_processor` (where transformers 5 saves a processor's).

        Raises:
            ModelDirectoryError: none, or one of another processor (the message says to serve it on torch).
        """
        path = Path(directory) / "preprocessor_config.json"
        settings = read_object(path)
        if not settings:
            path = Path(directory) / "processor_config.json"
            saved = read_object(path).get("image_processor")
            settings = saved if isinstance(saved, dict) else {}
        kind = settings.get("image_processor_type")
        if kind not in PROCESSOR_TYPES:
            raise ModelDirectoryError(f"{directory}: image processor {kind or 'missing'}; the ONNX backend reproduces "
                                      f"{', '.join(sorted(PROCESSOR_TYPES))} only: serve this model with the torch "
                                      "backend")
        return cls(settings, str(path))

    def __call__(self, images, return_tensors: str = "np") -> dict[str, np.ndarray]:
        return {"pixel_values": np.stack([self.pixels(image) for image in images])}

    def pixels(self, image) -> np.ndarray:
        """One PIL image -> float32 [3, height, width]."""
        settings = self._settings
        if settings["do_convert_rgb"]:
            image = _rgb(image)
        if settings["do_resize"]:
            image = image.resize(self._resized(image.size)[::-1], resample=int(settings["resample"]))
        array = np.asarray(image)
        array = np.moveaxis(array[..., None] if array.ndim == 2 else array, -1, 0)
        if settings["do_center_crop"]:
            array = _center_crop(array, *self._crop)
        if settings["do_rescale"]:
            array = (array.astype(np.float64) * settings["rescale_factor"]).astype(np.float32)
        if settings["do_normalize"]:
            if not np.issubdtype(array.dtype, np.floating):
                array = array.astype(np.float32)
            array = ((array.T - self._mean.astype(array.dtype)) / self._std.astype(array.dtype)).T
        return np.ascontiguousarray(array, dtype=np.float32)

    def _resized(self, size: tuple[int, int]) -> tuple[int, int]:
        """(height, width) after the resize of an image of PIL `size` (width, height): the shorter side at
        `shortest_edge`, the longer scaled and rounded down, as get_resize_output_image_size computes it."""
        if "shortest_edge" not in self.size:
            return int(self.size["height"]), int(self.size["width"])
        width, height = size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.size["shortest_edge"], int(self.size["shortest_edge"] * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)


def _rgb(image):
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        from PIL import Image

        image = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")
    return image.convert("RGB")


def _center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """[C, H, W] cut to `height` x `width` around its centre, zero-padded first where it is smaller."""
    original_height, original_width = array.shape[-2:]
    top, left = (original_height - height) // 2, (original_width - width) // 2
    if top >= 0 and left >= 0:
        return array[..., top:top + height, left:left + width]
    padded_height, padded_width = max(height, original_height), max(width, original_width)
    padded = np.zeros_like(array, shape=array.shape[:-2] + (padded_height, padded_width))
    top_pad, left_pad = ceil((padded_height - original_height) / 2), ceil((padded_width - original_width) / 2)
    padded[..., top_pad:top_pad + original_height, left_pad:left_pad + original_width] = array
    top, left = top + top_pad, left + left_pad
    return padded[..., max(0, top):min(padded_height, top + height), max(0, left):min(padded_width, left + width)]
