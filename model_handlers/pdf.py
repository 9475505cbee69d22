"""PDF inputs: a PDF's bytes in, its pages out as RGB Pillow images, one per page, in page order.

A model that reads images reads a PDF as its pages (every page is an input: an embeddings answer has a row per page,
a rerank document scores as its best page). The bytes come as an image's do (`images.ImageReader`: base64, a data URI
`data:application/pdf;base64,...`, or a URL when fetching is on); this module opens, checks and renders them with
PDFium (pypdfium2). Two steps, so that every limit is checked before any page is rendered:

- `read(data, at, resolution, options)`: opens the PDF, counts its pages (at most `ImageOptions.pdf_max_pages`),
  and works out each page's rendered size (at most `ImageOptions.max_pixels`, an image's limit). Nothing is rendered.
- `Pdf.render()`: the pages, rendered one at a time at those sizes.

A kind that reads images calls `read_inputs` on a request's inputs (inside the `Fetches` of its image inputs, which
holds the PDFs' sources too), then renders each PDF's pages where the PDF stands, as images of its own; the rows it
answers say where they came from (`types.Origin`). The size a page is rendered at is the model's to choose
(`Resolution`): about a pixel budget (a vision-language processor's `max_pixels`), or its shorter side at least a
length (CLIP's processor resizes the shorter side to its `image_size`, then crops): rendering larger only costs
time, rendering smaller loses detail the model would read.

PDFium is not thread-safe: "It is not allowed to call pdfium functions simultaneously across different threads, not
even with different documents ... you may still use pdfium in a threaded context if it is ensured that only a single
pdfium call can be made at a time (e.g. via mutex)" (pypdfium2's Python API docs, "Incompatibility with Threading").
Every PDFium call here runs under one process-wide lock (`_PDFIUM`), and every PDFium object is closed explicitly
under it (a garbage-collection finalizer would otherwise close it on whatever thread it runs on).

Every refusal is an `InvalidInput` naming the input (`at`): INVALID_PDF (not a PDF, corrupt, encrypted, no pages),
PDF_TOO_MANY_PAGES, IMAGE_TOO_LARGE (a page whose rendering would be over the pixel limit). pypdfium2 is imported
when a PDF is read, never at import.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

from model_handlers.errors import InvalidInput
from model_handlers.options import ImageOptions
from model_handlers.types import EmbedInput, OtherInput, unsupported, where

if TYPE_CHECKING:
    from PIL import Image

    from model_handlers.images import Fetches

# One lock for every PDFium call of the process, across documents and models (see the module's docstring). Reentrant:
# a generator's `finally` may run from a garbage collection on a thread that already holds it.
_PDFIUM = threading.RLock()
# PDF 1.7 (ISO 32000-1, 7.5.2): the file begins with the header `%PDF-`; readers accept it within the first 1024 bytes.
_MAGIC = b"%PDF-"
_MAGIC_WITHIN = 1024
# PDFium's FPDF_GetLastError codes for a document that does not open (fpdfview.h).
_PASSWORD = 4
_SECURITY = 5


def pdf_error(at: str, detail: str, code: str = "INVALID_PDF") -> InvalidInput:
    return InvalidInput(f"{at}: {detail}", code=code)


@dataclass(frozen=True)
class Resolution:
    """How large a page is rendered: scaled so that it has about `pixels` pixels, or so that its shorter side is at
    least `shortest_side` pixels, whichever is larger (0: that rule is not asked)."""

    pixels: int = 0
    shortest_side: int = 0

    def scale(self, width_pt: float, height_pt: float) -> float:
        """Pixels per PDF point (1/72 inch) for a page of that size."""
        by_pixels = math.sqrt(self.pixels / (width_pt * height_pt)) if self.pixels > 0 else 0.0
        by_side = self.shortest_side / min(width_pt, height_pt) if self.shortest_side > 0 else 0.0
        return max(by_pixels, by_side) or 1.0


@dataclass(frozen=True)
class Pdf:
    """A PDF that opened, its pages counted and each page's rendered size known; nothing rendered yet."""

    data: bytes
    at: str
    scales: tuple[float, ...]  # each page's pixels per point
    sizes: tuple[tuple[int, int], ...]  # each page's rendered (width, height) in pixels

    @property
    def pages(self) -> int:
        return len(self.sizes)

    def render(self) -> Iterator["Image.Image"]:
        """Each page as an RGB image, in page order, rendered when it is asked for (one page held at a time).

        Raises:
            InvalidInput: INVALID_PDF, a page that opened but cannot be rendered.
        """
        import pypdfium2

        with _PDFIUM:
            document = _open(self.data, self.at)
        try:
            for number, scale in enumerate(self.scales, start=1):
                with _PDFIUM:
                    try:
                        page = document[number - 1]
                        try:
                            bitmap = page.render(scale=scale)
                            try:
                                # a copy: to_pil's image shares the bitmap's buffer, which close() frees
                                image = bitmap.to_pil().convert("RGB")
                            finally:
                                bitmap.close()
                        finally:
                            page.close()
                    except pypdfium2.PdfiumError as exc:
                        raise pdf_error(self.at, f"page {number} of the PDF cannot be rendered ({exc})") from None
                yield image
        finally:
            with _PDFIUM:
                document.close()


def read_inputs(inputs: Sequence[EmbedInput], what: str, fetches: "Fetches", resolution: Resolution,
                options: ImageOptions, max_rows: int | None = None) -> dict[int, Pdf]:
    """The PDF inputs of `inputs` by index, each decoded or fetched (`fetches`, whose sources hold theirs), opened,
    counted and checked (`read`): every limit of every PDF of a request is checked before any page is rendered.

    Args:
        what: how `inputs` are named in errors ("input", "document").
        max_rows: the rows an answer may have, each PDF counting its pages (the request's input limit); None: no
            such check (a rerank's pages are counted as its windows).

    Raises:
        InvalidInput: as `read` does, naming the input; INVALID_PDF for a source that is no base64, data URI or URL
            (the image reader's other refusals keep their codes: a URL not allowed, a body over its cap);
            TOO_MANY_INPUTS past `max_rows`.
    """
    found = {}
    for index, item in enumerate(inputs):
        if not (isinstance(item, OtherInput) and item.kind == "pdf"):
            continue
        at = where(what, index)
        if not item.source:
            raise pdf_error(at, "the `pdf` value is empty or not a string: send the PDF as base64, a data URI "
                                "(data:application/pdf;base64,...) or a URL")
        try:
            data = fetches.data(at)
        except InvalidInput as exc:
            if exc.code == "INVALID_IMAGE":  # the source itself is unreadable: for a PDF input, INVALID_PDF
                exc.code = "INVALID_PDF"
            raise
        found[index] = read(data, at, resolution, options)
    rows = len(inputs) + sum(document.pages - 1 for document in found.values())
    if max_rows is not None and rows > max_rows:
        raise InvalidInput(f"the request's inputs make {rows} rows (each page of a PDF is an input); at most "
                           f"{max_rows} are allowed per request, split it into several requests",
                           code="TOO_MANY_INPUTS")
    return found


def unplaced(item: EmbedInput, at: str, model_name: str) -> InvalidInput:
    """The refusal of a PDF where an answer has no place for its pages (a rerank query, an input to classify, another
    project's body of one vector per input): 400 UNSUPPORTED_INPUT."""
    return unsupported(item, at, model_name, "text and images here: a PDF is read as its pages, which this answers "
                                             "no place for (a PDF is an embeddings input, answered a row per page, "
                                             "or a rerank document)")


def read(data: bytes, at: str, resolution: Resolution, options: ImageOptions) -> Pdf:
    """The PDF in `data`, opened and checked against the limits; no page rendered.

    Raises:
        InvalidInput: INVALID_PDF (not a PDF, corrupt, encrypted, no pages), PDF_TOO_MANY_PAGES (more than
            `options.pdf_max_pages`), IMAGE_TOO_LARGE (a page that would render over `options.max_pixels`).
    """
    if not data:
        raise pdf_error(at, "the PDF is empty")
    if _MAGIC not in data[:_MAGIC_WITHIN]:
        raise pdf_error(at, "not a PDF (a PDF file begins with %PDF-)")
    import pypdfium2

    with _PDFIUM:
        document = _open(data, at)
        try:
            pages = len(document)
            if pages > options.pdf_max_pages:
                raise pdf_error(at, f"the PDF has {pages} pages, over the limit of {options.pdf_max_pages} pages per "
                                    "PDF; send fewer pages (split the PDF)", "PDF_TOO_MANY_PAGES")
            points = [document.get_page_size(index) for index in range(pages)]
        except pypdfium2.PdfiumError as exc:
            raise pdf_error(at, f"the PDF's pages cannot be read ({str(exc)[:200]}); send the whole file") from None
        finally:
            document.close()
    if not pages:
        raise pdf_error(at, "the PDF has no pages")
    scales, sizes = [], []
    for number, (width_pt, height_pt) in enumerate(points, start=1):
        if not (width_pt > 0 and height_pt > 0 and math.isfinite(width_pt * height_pt)):
            raise pdf_error(at, f"page {number} of the PDF has no size ({width_pt:g} x {height_pt:g} points)")
        scale = resolution.scale(width_pt, height_pt)
        # pypdfium2 renders ceil(points x scale) pixels a side
        width, height = math.ceil(width_pt * scale), math.ceil(height_pt * scale)
        if width * height > options.max_pixels:
            raise pdf_error(at, f"page {number} of the PDF would render as {width}x{height} = {width * height:,} "
                                f"pixels, over the limit of {options.max_pixels:,} (its sides are "
                                f"{width_pt:g} x {height_pt:g} points)", "IMAGE_TOO_LARGE")
        scales.append(scale)
        sizes.append((width, height))
    return Pdf(data, at, tuple(scales), tuple(sizes))


def _open(data: bytes, at: str):
    """The PDFium document of `data` (the caller holds `_PDFIUM`, and closes it)."""
    import pypdfium2

    try:
        return pypdfium2.PdfDocument(data)
    except pypdfium2.PdfiumError as exc:
        if getattr(exc, "err_code", None) in (_PASSWORD, _SECURITY):
            raise pdf_error(at, "the PDF is encrypted (it needs a password); send it unencrypted") from None
        raise pdf_error(at, f"the PDF cannot be read ({str(exc)[:200]}); send the whole file") from None
    except Exception as exc:  # noqa: BLE001 - a malformed file can make the binding raise anything
        raise pdf_error(at, f"the PDF cannot be read ({type(exc).__name__}); send the whole file") from None
