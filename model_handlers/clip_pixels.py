"""CLIP's image preprocessing without the processor's per-image overhead, and the JPEG draft size that feeds it.

transformers' CLIP image processor (its Pillow backend, the one loaded where torchvision is absent) turns the RGB
image into a channels-first array, back into a Pillow image to resize it (bicubic, shorter side to `shortest_edge`),
back into an array, crops the centre, casts to float64 to rescale, to float32 to normalise: ~7 ms of a 640x480
photo, most of it copies. `ClipPixels` does the same resize on the Pillow image the reader decoded, crops it, and
rescales and normalises through a 256-entry table per channel computed with the processor's own arithmetic (float64
rescale, float32 normalise), so every value it writes is the value the processor writes: the same pixels in, the
same float32 out, bit for bit. It is used only for a processor it recognises (CLIP's Pillow backend, resize to a
shorter side then a centre crop, no padding), and only after it gave the processor's exact output on test pictures
when the model loaded; anything else keeps the processor.

`shortest_side` is what the decoder may reduce a JPEG to (`ImageReader.decode(..., draft=...)`: libjpeg's DCT
scaling, by 1/2, 1/4 or 1/8, never below it), since the resize brings the shorter side to it anyway. That changes
pixels (a DCT-domain reduction instead of the bicubic filter's), measured on the benchmark's 640x480 photos: see
tests/test_multimodal.py and README "Performance".
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

# The processor classes whose steps `ClipPixels` reproduces (transformers 5's Pillow backend of CLIP's processor;
# 4.x's slow CLIPImageProcessor works the same way).
_RECOGNISED = frozenset({"CLIPImageProcessorPil", "CLIPImageProcessor"})
# Largest difference from the processor's output accepted by the load-time check (the arithmetic is the processor's:
# in practice 0).
TOLERANCE = 1e-6


class ClipPixels:
    """The processor's `pixel_values` of one RGB Pillow image, computed in Pillow and numpy."""

    def __init__(self, shortest_edge: int, crop: tuple[int, int], resample: int, table: np.ndarray):
        self.shortest_side = shortest_edge
        self._crop = crop  # (height, width)
        self._resample = resample
        self._table = table  # (3, 256) float32: the normalised value of each 8-bit level, per channel

    @classmethod
    def of(cls, processor: Any) -> "ClipPixels | None":
        """A `ClipPixels` doing exactly what `processor` does, or None when it is not one whose steps it knows or it
        gave another output on the test pictures."""
        try:
            fast = cls._from_settings(processor)
        except (TypeError, ValueError, KeyError, AttributeError):
            return None
        if fast is None or not fast._agrees(processor):
            return None
        return fast

    @classmethod
    def _from_settings(cls, processor: Any) -> "ClipPixels | None":
        if type(processor).__name__ not in _RECOGNISED or getattr(processor, "backend", "pil") != "pil":
            return None
        size, crop = _mapping(getattr(processor, "size", None)), _mapping(getattr(processor, "crop_size", None))
        settings_known = (
            getattr(processor, "do_resize", False) and getattr(processor, "do_center_crop", False)
            and getattr(processor, "do_rescale", False) and getattr(processor, "do_normalize", False)
            and not getattr(processor, "do_pad", False)
            and set(k for k, v in size.items() if v is not None) == {"shortest_edge"}
            and isinstance(crop.get("height"), int) and isinstance(crop.get("width"), int)
            and crop["height"] <= size["shortest_edge"] and crop["width"] <= size["shortest_edge"]
        )
        if not settings_known:
            return None
        mean, std = np.asarray(processor.image_mean, np.float64), np.asarray(processor.image_std, np.float64)
        if mean.shape != (3,) or std.shape != (3,):
            return None
        # The processor's arithmetic on every 8-bit level: astype(float64) * factor, astype(float32), then
        # (x - mean) / std in float32 (transformers.image_transforms.rescale and normalize).
        levels = (np.arange(256, dtype=np.float64) * float(processor.rescale_factor)).astype(np.float32)
        table = (levels[None, :] - mean.astype(np.float32)[:, None]) / std.astype(np.float32)[:, None]
        resample = processor.resample
        return cls(int(size["shortest_edge"]), (crop["height"], crop["width"]),
                   int(getattr(resample, "value", resample)), table.astype(np.float32))

    def __call__(self, image) -> dict[str, np.ndarray]:
        """{"pixel_values": (1, 3, height, width) float32} of the RGB Pillow image `image`."""
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        # transformers' get_resize_output_image_size (default_to_square=False)
        new_short, new_long = self.shortest_side, int(self.shortest_side * long / short)
        new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
        resized = image.resize((new_width, new_height), resample=self._resample)
        crop_height, crop_width = self._crop
        top, left = (new_height - crop_height) // 2, (new_width - crop_width) // 2
        levels = np.asarray(resized)[top:top + crop_height, left:left + crop_width]
        pixels = np.empty((1, 3, crop_height, crop_width), np.float32)
        for channel in range(3):
            np.take(self._table[channel], levels[..., channel], out=pixels[0, channel])
        return {"pixel_values": pixels}

    def _agrees(self, processor: Any) -> bool:
        from PIL import Image

        for width, height in ((640, 480), (301, 517), (self.shortest_side, self.shortest_side + 1)):
            x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
            noise = np.random.default_rng(width).integers(0, 40, (height, width))
            picture = np.stack([x, y, (x + y + noise) % 256], axis=-1).astype(np.uint8)
            image = Image.fromarray(picture)
            expected = processor(images=[image], return_tensors="np")["pixel_values"]
            got = self(image)["pixel_values"]
            if expected.shape != got.shape or float(np.abs(expected - got).max()) > TOLERANCE:
                return False
        return True


def _mapping(value: Any) -> Mapping:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return value
    return dict(value)  # transformers' SizeDict
