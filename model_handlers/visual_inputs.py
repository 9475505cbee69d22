"""The image and PDF inputs of a model that reads them, as every such kind reads them: one `VisualInputs` per model,
shared by the request threads.

- **What it reads** (`check`): a model lists its modalities (`types.reads`); an input of another is a 400
  UNSUPPORTED_INPUT naming it and what the model takes, and a PDF where an answer has no place for its pages (a rerank
  query, an input to classify) is refused by name (pdf.unplaced), all before anything is decoded.
- **Sources** (`fetches`): a request's images and PDFs, base64, data URIs or URLs, under one fetch deadline
  (images.Fetches), in the order they are read.
- **PDFs** (`pdfs`): opened, counted and checked against every limit before any page is rendered
  (model_handlers/pdf.py), each page rendered at the model's `Resolution` (`pages`).
- **Pixels** (`image`, `pages`): decoded (images.ImageReader) and preprocessed by the model's own processor (the
  `preprocess` it is given) at most one per core at once, a refusal of the processor a 400 INVALID_IMAGE naming the
  input, and every preprocessed image held against the server's cap (pixels.HeldPixels) until it is freed.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Callable, Generic, Sequence, TypeVar

from model_handlers import pdf
from model_handlers.errors import InvalidInput
from model_handlers.images import Fetches, ImageReader
from model_handlers.options import HandlerOptions
from model_handlers.pixels import MAX_HELD_PIXEL_BYTES, HeldPixels, Sized
from model_handlers.types import EmbedInput, ImageInput, modality, unsupported, where

if TYPE_CHECKING:
    from PIL import Image

P = TypeVar("P", bound=Sized)


class VisualInputs(Generic[P]):
    """Args:
        options: the server's (image options, the request's input limit).
        resolution: how large a PDF page is rendered for this model.
        preprocess: the model's processor on one RGB image (raising for an image it cannot take); what it returns
            has `nbytes`.
        model_name, takes, modalities: for refusals: the served name, what it takes in words ("text and images"), and
            the modalities it reads.
        held_cap: bytes of preprocessed images that may wait for the model at once (pixels.MAX_HELD_PIXEL_BYTES).
    """

    def __init__(self, options: HandlerOptions, resolution: pdf.Resolution, preprocess: Callable[["Image.Image"], P],
                 model_name: str, takes: str, modalities: frozenset[str], held_cap: int = MAX_HELD_PIXEL_BYTES):
        self.reader = ImageReader(options.images)
        self.resolution = resolution
        self._options = options.images
        self._max_inputs = options.max_inputs
        self._preprocess = preprocess
        self._model_name = model_name
        self._takes = takes
        self._modalities = modalities
        self._held = HeldPixels(held_cap)
        # decoding a large photo takes a few hundred MB for a moment: at most one per core at once
        self._decoding = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))

    def check(self, inputs: Sequence[EmbedInput], what: str, pages: bool) -> None:
        """Refuse what the model cannot read before anything is decoded, naming the first such input; a PDF only where
        its pages have a place (`pages`: an embeddings answer's rows, a rerank document's windows)."""
        for index, item in enumerate(inputs):
            if modality(item) not in self._modalities:
                raise unsupported(item, where(what, index), self._model_name, self._takes)
            if modality(item) == "pdf" and not pages:
                raise pdf.unplaced(item, where(what, index), self._model_name)

    def fetches(self, *groups: tuple[str, Sequence[EmbedInput]]) -> Fetches:
        """The image and PDF inputs of one request, `(what, inputs)` in the order they are read, under one fetch
        deadline."""
        return self.reader.fetches([(item.source, where(what, index)) for what, inputs in groups
                                    for index, item in enumerate(inputs) if modality(item) in ("image", "pdf")])

    def pdfs(self, inputs: Sequence[EmbedInput], what: str, fetches: Fetches, rows: bool) -> dict[int, pdf.Pdf]:
        """The PDFs of `inputs` by index, every limit checked, nothing rendered (pdf.read_inputs); `rows`: each page
        is a row of the answer, counted against the request's input limit."""
        return pdf.read_inputs(inputs, what, fetches, self.resolution, self._options,
                               max_rows=self._max_inputs if rows else None)

    def known_sizes(self, inputs: Sequence[EmbedInput], what: str, fetches: Fetches,
                    pdfs: dict[int, pdf.Pdf]) -> list[tuple[int, int]]:
        """(width, height) of every image the request will decode that is known before decoding anything: each PDF
        page's, at the size it will be rendered at, and each image's that came in the body, from its header alone (a
        URL's is known once fetched): what a kind turns into visual tokens to ask the batcher whether the request can
        finish in time."""
        sizes = [size for document in pdfs.values() for size in document.sizes]
        for index, item in enumerate(inputs):
            if isinstance(item, ImageInput):
                size = self.header_size(where(what, index), fetches)
                if size is not None:
                    sizes.append(size)
        return sizes

    def header_size(self, at: str, fetches: Fetches) -> tuple[int, int] | None:
        """(width, height) of the image input named `at` from its header alone, when it came in the body; None for a
        URL (known once fetched)."""
        data = fetches.inline(at)
        return None if data is None else self.reader.size(data, at)

    def image(self, at: str, fetches: Fetches, held: int) -> P:
        """The preprocessed image of the input named `at`; `held`: what its request already holds."""
        data = fetches.data(at)  # waited for outside the decoding slots: a slow URL holds no core's slot
        with self._decoding:
            return self._preprocessed(self.reader.decode(data, at), at, held)

    def pages(self, document: pdf.Pdf, held: int) -> list[P]:
        """Each page of `document`, rendered and preprocessed, in page order."""
        pages: list[P] = []
        with self._decoding:
            for number, page in enumerate(document.render(), start=1):
                pages.append(self._preprocessed(page, f"{document.at}, page {number}", held))
                held += pages[-1].nbytes
        return pages

    def _preprocessed(self, image: "Image.Image", at: str, held: int) -> P:
        """`image` through the model's processor (closed after), held against the cap."""
        try:
            processed = self._preprocess(image)
        except Exception as exc:  # noqa: BLE001 - the processor refusing one image fails that request only
            width, height = image.size
            raise InvalidInput(f"{at}: the model's image processor cannot take this {width}x{height} image "
                               f"({str(exc)[:200] or type(exc).__name__})", code="INVALID_IMAGE") from None
        finally:
            image.close()
        self._held.hold(processed, held)
        return processed

