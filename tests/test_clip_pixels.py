"""Images at full speed, answers unchanged: CLIP's pixels written without the processor's copies, JPEGs decoded at a
reduced size, a request's images decoded ahead of the one being read.

The references are transformers' own: `CLIPImageProcessorPil` (the processor a CLIP directory loads where
torchvision is absent, as here) for pixels, `CLIPModel.get_image_features` through the saved processor on the whole
decoded photo for vectors. The photos are the benchmark's 640x480 JPEGs (bench/multimodal.py).
"""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from helpers import assert_error, cosine, serving
from model_handlers.clip_pixels import ClipPixels
from model_handlers.images import ImageReader
from model_handlers.options import ImageOptions
from tiers import implies

ROOT = Path(__file__).resolve().parent.parent
# What a JPEG decoded at a reduced size may move a vector by (measured: the small CLIP's vectors of the benchmark's
# photos stay above 0.99997 of the full decode's).
DRAFT_COSINE = 0.999


def photos() -> list[bytes]:
    sys.path.insert(0, str(ROOT))
    from bench.multimodal import jpegs

    return jpegs()


def turned(data: bytes) -> bytes:
    """The photo stored turned a quarter, with EXIF orientation 6 telling viewers to turn it back upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).transpose(Image.Transpose.ROTATE_270).save(out, "JPEG", quality=92,
                                                                            exif=exif.tobytes())
    return out.getvalue()


@pytest.fixture(scope="module")
@implies("app")
def small_clip(tmp_path_factory):
    """The benchmark's CLIP (examples/tiny_clip.py --size small: 224 px images, CLIP's own processor settings)."""
    sys.path.insert(0, str(ROOT / "examples"))
    import tiny_clip

    return tiny_clip.build(tmp_path_factory.mktemp("clip") / "small-clip", "small")


# --- pixels -----------------------------------------------------------------------------------------


def pictures() -> list[Image.Image]:
    """The photos decoded whole, and pictures of the shapes a resize and a centre crop get wrong first: portrait, odd
    sides, one pixel, a long strip, exactly the crop."""
    rng = np.random.default_rng(3)
    made = [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
            for width, height in ((301, 517), (1, 1), (1000, 9), (224, 224), (225, 224), (48, 40))]
    return [Image.open(io.BytesIO(data)).convert("RGB") for data in photos()[:4]] + made


@pytest.mark.unit
def test_pixels_are_the_processors_own_bit_for_bit():
    from transformers import CLIPImageProcessorPil

    for processor in (CLIPImageProcessorPil(),  # OpenAI CLIP's settings: 224 shorter side, 224 crop
                      CLIPImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 36})):
        fast = ClipPixels.of(processor)
        assert fast is not None
        for image in pictures():
            want = processor(images=[image], return_tensors="np")["pixel_values"]
            got = fast(images=[image], return_tensors="np")["pixel_values"]
            assert got.dtype == np.float32 and got.shape == want.shape, image.size
            assert float(np.abs(got - want).max()) == 0.0, image.size


@pytest.mark.unit
def test_a_processor_of_other_steps_keeps_its_own_path():
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    assert ClipPixels.of(SiglipImageProcessorPil()) is None  # another processor class: its own steps
    assert ClipPixels.of(CLIPImageProcessorPil(do_pad=True)) is None  # a step these do not reproduce
    # CLIP's processor with steps left out or a fixed size: still its output, bit for bit
    for processor in (CLIPImageProcessorPil(do_center_crop=False), CLIPImageProcessorPil(do_normalize=False),
                      CLIPImageProcessorPil(size={"height": 224, "width": 224})):
        fast = ClipPixels.of(processor)
        assert fast is not None
        for image in pictures()[4:7]:
            want = processor(images=[image], return_tensors="np")["pixel_values"]
            assert np.array_equal(fast(images=[image])["pixel_values"], want), image.size


@pytest.mark.unit
def test_an_rgb_png_s_transparent_colour_is_white_as_the_processor_makes_it():
    """An RGB PNG's tRNS colour: transformers' convert_to_rgb composites it onto white as it does an alpha band; the
    decoder (images.py's one RGB rule) does the same, and ClipPixels gives the processor's output from either image."""
    from transformers import CLIPImageProcessorPil

    array = np.random.default_rng(5).integers(40, 256, (40, 48, 3), dtype=np.uint8)  # never the colour below
    array[8:24, 10:30] = (10, 20, 30)
    png = io.BytesIO()
    Image.fromarray(array).save(png, "PNG", transparency=(10, 20, 30))
    decoded = ImageReader(ImageOptions()).decode(png.getvalue(), "input 0")
    expected = array.copy()
    expected[8:24, 10:30] = 255  # transparent over white: white; every other pixel as written
    assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), expected)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 36})
    want = processor(images=[Image.open(io.BytesIO(png.getvalue()))], return_tensors="np")["pixel_values"]
    fast = ClipPixels.of(processor)
    assert np.array_equal(fast(images=[Image.open(io.BytesIO(png.getvalue()))])["pixel_values"], want)
    assert np.array_equal(fast(images=[decoded])["pixel_values"], want)


# --- decoding ---------------------------------------------------------------------------------------


@pytest.mark.unit
def test_a_jpeg_is_decoded_reduced_never_below_the_side_asked_and_keeps_its_whole_size():
    reader = ImageReader(ImageOptions())
    photo = photos()[0]
    image, size = reader.decode_reduced(photo, "input 0", 224)
    # libjpeg scales by 1/2, 1/4 or 1/8: 480 // 224 = 2, so half of 640x480
    assert image.size == (320, 240) and size == (640, 480) and image.mode == "RGB"
    image, size = reader.decode_reduced(turned(photo), "input 0", 224)
    # stored 480x640, shown upright as the 640x480 photo: the size is the upright one, as exif_transpose turns it
    assert image.size == (320, 240) and size == (640, 480)
    image, size = reader.decode_reduced(photo, "input 0", 100)
    assert image.size == (160, 120) and size == (640, 480)  # 480 // 100 = 4
    image, size = reader.decode_reduced(photo, "input 0", 241)
    assert image.size == (640, 480)  # half would be 240 high, below the side asked
    png = io.BytesIO()
    Image.open(io.BytesIO(photo)).save(png, "PNG")
    image, size = reader.decode_reduced(png.getvalue(), "input 0", 100)
    assert image.size == size == (640, 480)  # only JPEG's decoder can scale
    assert reader.decode(photo, "input 0").size == (640, 480)  # the other kinds' decode is unchanged


@pytest.mark.unit
@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_exif_orientation_is_shown_as_pillow_shows_it_and_the_header_size_is_the_shown_one(orientation):
    """A 60x40 JPEG tagged with each EXIF orientation: decoded as ImageOps.exif_transpose shows it, and the size read
    from the header alone (what the kinds estimate work from before decoding) is the shown one."""
    x, y = np.meshgrid(np.arange(60), np.arange(40))
    # a gradient along each side: every flip and turn moves pixels
    picture = Image.fromarray(np.stack([x * 4, y * 6, (x + y) * 2], axis=-1).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = io.BytesIO()
    picture.save(stored, "JPEG", quality=95, exif=exif.tobytes())
    data = stored.getvalue()
    shown = (40, 60) if orientation in (5, 6, 7, 8) else (60, 40)  # a quarter turn swaps width and height
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert reference.size == shown
    reader = ImageReader(ImageOptions())
    assert reader.size(data, "input 0") == shown
    image, size = reader.decode_reduced(data, "input 0", None)
    assert size == shown and np.array_equal(np.asarray(image), np.asarray(reference.convert("RGB")))


# --- served answers ---------------------------------------------------------------------------------


def reference_vectors(model_dir: Path, images: list[Image.Image]) -> np.ndarray:
    from transformers import AutoProcessor, CLIPModel

    model, processor = CLIPModel.from_pretrained(str(model_dir)).eval(), AutoProcessor.from_pretrained(str(model_dir))
    with torch.no_grad():
        return model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output.numpy()


def test_served_photos_match_the_model_on_the_whole_decode(small_clip):
    jpegs = photos()
    jpegs = jpegs + [turned(jpegs[0])]
    whole = [ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB") for data in jpegs]
    want = reference_vectors(small_clip, whole)
    with serving(small_clip) as app:
        answer = app.post("/invocations", {"data": [{"image": base64.b64encode(data).decode()} for data in jpegs]})
        assert answer.status_code == 200, answer.text
        rows = answer.json()["data"]
        for got, expected in zip(rows, want):
            assert cosine(got["embedding"], expected) >= DRAFT_COSINE
        # Jina's tile rule on the whole photo, not the reduced decode: ceil(640/224) * ceil(480/224) = 9 tiles of
        # 1000 tokens (a reduced 320x240 would count 4)
        assert [row["usage"]["total_tokens"] for row in rows] == [9000] * len(jpegs)
        # the same photos one a request: the same vectors whatever shares the request
        alone = [app.post("/invocations", {"data": [{"image": base64.b64encode(data).decode()}]}).json()
                 ["data"][0]["embedding"] for data in jpegs[:3]]
        for got, expected in zip(alone, rows):
            assert cosine(got, expected["embedding"]) >= 0.99999


def test_a_request_of_many_images_is_refused_naming_its_first_bad_one(clip_dir):
    """Later images are decoded ahead of their turn; what the caller hears of is still the first bad input."""
    good = [base64.b64encode(data).decode() for data in photos()[:6]]
    truncated = base64.b64encode(photos()[6][:3000]).decode()
    not_an_image = base64.b64encode(b"hello, not an image").decode()
    with serving(clip_dir) as app:
        for bad, then, mention in ((truncated, not_an_image, "cannot be decoded"),
                                   (not_an_image, truncated, "not a JPEG, PNG, WebP, GIF or BMP image")):
            images = [*good[:3], bad, then, *good[3:]]
            answer = app.post("/invocations", {"data": [{"text": "fine"}, *({"image": image} for image in images)]})
            body = assert_error(answer, 400, "INVALID_IMAGE", "input 4", mention)
            assert "input 5" not in body["detail"]
        # and the same images, all good, answer as each does alone
        together = app.post("/invocations", {"data": [{"image": image} for image in good]}).json()["data"]
        for image, row in zip(good, together):
            alone = app.post("/invocations", {"data": [{"image": image}]}).json()["data"][0]
            assert cosine(alone["embedding"], row["embedding"]) >= 0.99999 and alone["usage"] == row["usage"]


@pytest.mark.unit
def test_base64_in_every_form_clients_write_reads_the_same_bytes():
    """One unbroken standard line is read without a whitespace pass; every other form still as before."""
    reader = ImageReader(ImageOptions())
    photo = photos()[0] + b"\xfb\xff"  # bytes whose standard and URL-safe encodings differ (+/ against -_)
    plain = base64.b64encode(photo).decode()
    assert "+" in plain or "/" in plain
    forms = {
        "one line": plain,
        "MIME lines": base64.encodebytes(photo).decode(),  # a newline every 76 characters
        "spaces around": f"  {plain}\n",
        "URL-safe": base64.urlsafe_b64encode(photo).decode(),
        "unpadded": plain.rstrip("="),
        "data URI": "data:image/jpeg;base64," + plain,
    }
    assert plain.endswith("=")  # so that "unpadded" drops something
    for name, source in forms.items():
        assert reader.data(source, "input 0", 0.0) == photo, name
    with pytest.raises(Exception) as refused:
        reader.data("not base64!", "input 3", 0.0)
    assert "input 3: 'not base64!' is neither base64, a data URI nor an http(s) URL" in str(refused.value)
