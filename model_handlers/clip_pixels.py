"""CLIP's image preprocessing in Pillow and numpy: transformers' CLIP image processor, bit for bit, without its copies
and without transformers (the slim image has neither torch nor transformers).

It reproduces transformers' `CLIPImageProcessorPil` (5.x: `PilBackend._preprocess` and image_transforms.py's
`convert_to_rgb`, `resize`, `center_crop`, `rescale`, `normalize`; the processor loaded where torchvision is absent, as
in the images), from the saved processor configuration, step by step in the same order and dtypes: RGB (transparency
composited onto white: images.py's `to_rgb`, the decoder's own rule, which scales 16-bit greyscale where transformers
clips it; a served image reaches this already RGB), Pillow's resize of the shorter side (or to a fixed height and
width) with the configured filter, the centre crop (zero-padded when the image is smaller), float64 times the rescale
factor cast to float32, then `(x - mean) / std` in float32. The processor turns the image into an array, back into a
Pillow image to resize it, back into an array, and casts every value twice (~7 ms of a 640x480 photo, most of it
copies); here the resize runs on the decoded image and, where both rescale and normalise apply to 8-bit levels, the two
casts are a 256-entry table per channel computed with the same arithmetic: every value written is the processor's.

Two users: the multimodal kind's ONNX backend reads it from the directory (`read`; a configuration it does not
reproduce is refused at load, never approximated), and the torch backend takes it in place of its loaded processor
(`of`) only after it gave that processor's exact output on test pictures. tests/test_multimodal_onnx.py and
tests/test_clip_pixels.py compare the arrays with transformers' own.

`shortest_side` is what the decoder may reduce a JPEG to (`ImageReader.decode_reduced`: libjpeg's DCT scaling, by
1/2, 1/4 or 1/8, never below it), since the resize brings the shorter side to it anyway. That changes pixels (a
DCT-domain reduction instead of the bicubic filter's), measured on the benchmark's 640x480 photos: README
"Performance".
"""

from __future__ import annotations

from math import ceil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from model_handlers.errors import ModelDirectoryError
from model_handlers.images import to_rgb
from model_handlers.model_files import read_object

# the processors whose steps these are (the name saved in preprocessor_config.json drops "Pil"; 4.x's slow
# CLIPImageProcessor works the same way)
PROCESSOR_TYPES = frozenset({"CLIPImageProcessor", "CLIPImageProcessorPil"})
# CLIPImageProcessorPil's class defaults, where the saved configuration leaves a key out (OPENAI_CLIP_MEAN / _STD)
_DEFAULTS = {"do_resize": True, "size": {"shortest_edge": 224}, "resample": 3, "do_center_crop": True,
             "crop_size": {"height": 224, "width": 224}, "do_rescale": True, "rescale_factor": 1 / 255,
             "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
             "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True}
_UNSUPPORTED = ("do_pad", "longest_edge", "max_height", "max_width")


class ClipPixels:
    """Called as transformers' image processors are (`images=[...], return_tensors="np"`): `{"pixel_values":
    float32 [n, 3, height, width]}`."""

    def __init__(self, settings: Mapping[str, Any], where: str = "preprocessor_config.json"):
        chosen = {**_DEFAULTS, **{key: value for key, value in settings.items() if value is not None}}
        size, crop = _mapping(chosen["size"]), _mapping(chosen["crop_size"])
        if isinstance(chosen["size"], int):  # older configurations: the shorter side (CLIP does not default to a square)
            size = {"shortest_edge": chosen["size"]}
        if isinstance(chosen["crop_size"], int):
            crop = {"height": chosen["crop_size"], "width": chosen["crop_size"]}
        size = {key: value for key, value in size.items() if value is not None}
        unsupported = [key for key in _UNSUPPORTED if chosen.get(key) or size.get(key)]
        if (unsupported or not (isinstance(size.get("shortest_edge"), int)
                                or (isinstance(size.get("height"), int) and isinstance(size.get("width"), int)))):
            raise ModelDirectoryError(f"{where}: an image processor searchbox does not reproduce without transformers "
                                      f"(size {size!r}{', ' + ', '.join(unsupported) if unsupported else ''}); "
                                      "serve this model with the torch backend")
        self.size = dict(size)  # read by the kind (how large a PDF page is rendered), as a processor's is
        self._crop = (int(crop["height"]), int(crop["width"])) if chosen["do_center_crop"] else None
        self._settings = chosen
        self._mean = np.asarray(chosen["image_mean"], dtype=np.float32)
        self._std = np.asarray(chosen["image_std"], dtype=np.float32)
        self.shortest_side: int | None = size.get("shortest_edge") if chosen["do_resize"] else None
        self._table = None  # (3, 256) float32: the normalised value of each 8-bit level, per channel
        if chosen["do_rescale"] and chosen["do_normalize"] and self._mean.shape == self._std.shape == (3,):
            levels = (np.arange(256, dtype=np.float64) * chosen["rescale_factor"]).astype(np.float32)
            self._table = ((levels[None, :] - self._mean[:, None]) / self._std[:, None]).astype(np.float32)

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

    @classmethod
    def of(cls, processor: Any) -> "ClipPixels | None":
        """These steps in place of a loaded transformers `processor`, or None where it is not one of
        PROCESSOR_TYPES on Pillow, or gave another output on the test pictures (it then keeps its own path)."""
        if type(processor).__name__ not in PROCESSOR_TYPES or getattr(processor, "backend", "pil") != "pil":
            return None
        try:
            ours = cls(processor.to_dict(), type(processor).__name__)
        except (ModelDirectoryError, TypeError, ValueError, KeyError, AttributeError):
            return None
        return ours if ours._agrees(processor) else None

    def __call__(self, images, return_tensors: str = "np") -> dict[str, np.ndarray]:
        return {"pixel_values": np.stack([self.pixels(image) for image in images])}

    def pixels(self, image) -> np.ndarray:
        """One Pillow image -> float32 [3, height, width]."""
        settings = self._settings
        if settings["do_convert_rgb"]:
            image = to_rgb(image)
        if settings["do_resize"]:
            image = image.resize(self._resized(image.size)[::-1], resample=int(settings["resample"]))
        array = np.asarray(image)
        array = np.moveaxis(np.atleast_3d(array), -1, 0)  # a one-band image's [H, W] as [1, H, W]
        if self._crop is not None:
            array = _center_crop(array, *self._crop)
        if self._table is not None and array.dtype == np.uint8 and array.shape[0] == 3:
            pixels = np.empty(array.shape, np.float32)
            for channel in range(3):
                np.take(self._table[channel], array[channel], out=pixels[channel])
            return pixels
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

    def _agrees(self, processor: Any) -> bool:
        """The processor's own output on three pictures (landscape, portrait, one pixel past square), exactly."""
        from PIL import Image

        side = self.shortest_side or 224
        for width, height in ((640, 480), (301, 517), (side, side + 1)):
            x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
            noise = np.random.default_rng(width).integers(0, 40, (height, width))
            image = Image.fromarray(np.stack([x, y, (x + y + noise) % 256], axis=-1).astype(np.uint8))
            expected = processor(images=[image], return_tensors="np")["pixel_values"]
            got = self(images=[image])["pixel_values"]
            if expected.shape != got.shape or not np.array_equal(expected, got):
                return False
        return True


def _mapping(value: Any) -> dict:
    """A size as a dict: saved as a mapping, or transformers' SizeDict on a loaded processor; {} for none."""
    if value is None or isinstance(value, int):
        return {}
    return dict(value.items()) if hasattr(value, "items") else dict(vars(value))


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
