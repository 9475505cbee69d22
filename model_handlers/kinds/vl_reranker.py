"""Kind `vision-language-reranker`: jina-reranker-m0 (`JinaVLForRanking`), a Qwen2-VL that scores a (query, document)
pair, either side a text or an image, from its last position.

What the model computes (read from jinaai/jina-reranker-m0's public `modeling.py`; none of its code runs here): the
Qwen2-VL language model's last hidden state at the last position of a left-padded row, through its `score` head
(Linear, ReLU, Linear), offset and squashed: sigmoid(logit - 2.65). A row is the prompt
`"**Document**:\\n" + document + "\\n**Query**:\\n" + query`, an image side written
`<|vision_start|><|image_pad|><|vision_end|>` (its pad expanded into the image's visual tokens, images in the order
[document's, query's]), then the score token (id 100). Its `compute_score` gives the image processor the pixel bounds
3136..602112 and reads at most 10,240 tokens a pair, cutting a text document to max(10240 - 512, 512) tokens. The
backbone is read with transformers' own classes (model_handlers/qwen_vl.py), the head from the checkpoint's tensors.

What searchbox adds is what every reranker here does (model_handlers/ranking.py): a text document longer than the
room a pair leaves it is read in windows (its best window's score), never cut to its head; the query keeps at most
512 tokens (the model's own `max_query_length`); many callers' pairs, texts and images together, share passes.

On the caller's thread images are read by `images.ImageReader` (decoded, checked, upright, RGB) and preprocessed by
Qwen2-VL's image processor; a bad image fails its own request, naming it, never a batch. A PDF document is read as its
pages (model_handlers/pdf.py, rendered at the processor's pixel budget), each page a window of its document: the
document keeps its best page's score. A work item's length is its row's tokens, images' visual tokens included, so
the batcher's token budget bounds image passes as it bounds text; a request whose rows cannot finish in time is
refused from its images' headers and its pages' sizes, before any pixel is decoded or page rendered.

Token accounting: every token the model reads is billed. The query's (its text tokens, or its image's visual tokens)
go to `query_tokens` once per pair; the rest of each pair (the prompt, the window or the document image's visual
tokens, the vision markers, the score token) to the document it reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from model_handlers import batching, pdf
from model_handlers.errors import InvalidInput, ModelDirectoryError
from model_handlers.images import Fetches
from model_handlers.kinds import CsvColumn, CsvLayout, Kind, ModelFiles
from model_handlers.lengths import Lengths
from model_handlers.operations.rerank import RERANK
from model_handlers.options import HandlerOptions
from model_handlers.qwen_vl import IMAGE_PAD, Pixels
from model_handlers.ranking import RerankWork, Scoring, Windowing, check_window_count, windowed
from model_handlers.serving_config import ServingConfig
from model_handlers.tokenization import TokenizerView
from model_handlers.types import EmbedInput, ImageInput, RerankRequest, TextInput, where
from model_handlers.visual_inputs import VisualInputs

# compute_score's defaults (modeling.py): a pair's tokens, the query's, the processor's pixel bounds
ARCHITECTURE = "JinaVLForRanking"  # read natively (model_handlers/qwen_vl.py's JINA_ARCHITECTURES): no auto_map run
MODEL_LENGTH = 10240
MAX_QUERY_TOKENS = 512
PIXELS = {"min_pixels": 3136, "max_pixels": 602112}
# the token appended to every row, whose position the head reads (`score_token_id`), and the logit's offset
SCORE_TOKEN_ID = 100
SCORE_OFFSET = 2.65
_DOCUMENT = "**Document**:\n"
_QUERY = "\n**Query**:\n"
_TAKES = "text, images and PDFs"
_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"  # an image side of the prompt, its pad expanded


class _Pair:
    """One row: the prompt's token ids (images' pads expanded, the score token last) and its images."""

    __slots__ = ("row", "group", "__weakref__")

    def __init__(self, row):
        self.row = row
        self.group: Hashable = "pair"  # texts and images share passes: each row carries its own images

    @property
    def length(self) -> int:
        return self.row.length


class VisionLanguageRerankerModel:
    """Serves a `JinaVLForRanking` directory natively: transformers' Qwen2-VL and the checkpoint's score head."""

    reentrant = False  # one pass at a time: passes at once not measured for this kind on torch yet

    width = None  # it makes scores, no vectors
    # what it reads (types.reads): a PDF document as its pages, each page an image
    modalities = frozenset({"text", "image", "pdf"})
    rerank_scoring = ("pointwise, multimodal: a vision-language model's score of each (query, document) pair, either "
                      "side a text or an image")

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        from model_handlers.qwen_vl import Backbone

        self.config = config
        self.model_name = config.served_model_name
        self.device = options.resolved_device()
        self._backbone = Backbone(model_dir, self.device, pixels=PIXELS)
        head = self._backbone.tensors("score.")
        missing = {"0.weight", "0.bias", "2.weight", "2.bias"} - set(head)
        if missing:
            raise ModelDirectoryError(f"{model_dir}: the score head lacks {', '.join(sorted(missing))}; "
                                      "jina-reranker-m0's head is score.0 (Linear), ReLU, score.2 (Linear)")
        self._head = head
        tokenizer = self._backbone.tokenizer
        declared = Lengths.of(tokenizer=getattr(tokenizer, "model_max_length", None),
                              positions=getattr(self._backbone.model.config.text_config, "max_position_embeddings",
                                                None))
        self.max_length = config.max_length or min(declared.capacity(MODEL_LENGTH), MODEL_LENGTH)
        self._tokenizer = TokenizerView.from_hf(tokenizer, self.max_length)
        self._bare = self._backbone.encode(_DOCUMENT + _QUERY)
        if len(self._bare) + 3 > self.max_length:
            raise ModelDirectoryError(f"{model_dir}: a pair of {self.max_length} tokens leaves no room for a document;"
                                      " set a larger max_length in searchbox.json")
        # a page rendered at the processor's pixel budget: larger only costs time, smaller loses what it would read
        self._visual = VisualInputs(options, pdf.Resolution(pixels=PIXELS["max_pixels"]), self._backbone.preprocess,
                                    self.model_name, _TAKES, self.modalities)

    # --- on the caller's thread -----------------------------------------------------------------------

    def prepare_rerank(self, request: RerankRequest, max_windows: int) -> RerankWork:
        """One row per (query, window of a text document) and per (query, image document)."""
        self._visual.check([request.query], "the query", pages=False)
        self._visual.check(request.documents, "document", pages=True)
        for what, inputs in (("the query", [request.query]), ("document", request.documents)):
            for index, item in enumerate(inputs):
                if isinstance(item, TextInput) and IMAGE_PAD in item.text:
                    # the tokenizer reads it as the placeholder of an image the row does not hold
                    raise InvalidInput(f"{where(what, index)} holds {IMAGE_PAD}, the model's image placeholder; send "
                                       "images as image items, and texts without it")
        # in the order they are read: the query's image first (every pair holds it), then the documents'
        with self._visual.fetches(("the query", [request.query]), ("document", request.documents)) as fetches:
            return self._prepare(request, max_windows, fetches)

    def _prepare(self, request: RerankRequest, max_windows: int, fetches: Fetches) -> RerankWork:
        backbone = self._backbone
        pdfs = self._visual.pdfs(request.documents, "document", fetches, rows=False)
        # a PDF's pages are its windows: too many are refused before any is rendered
        check_window_count(sum(document.pages for document in pdfs.values()), max_windows)
        held = 0
        query_images: tuple = ()
        if isinstance(request.query, TextInput):
            query_ids = backbone.encode(request.query.text)
            query_part = request.query.text
            if len(query_ids) > MAX_QUERY_TOKENS:
                query_ids = query_ids[:MAX_QUERY_TOKENS]
                query_part = backbone.tokenizer.decode(query_ids)
            query_visual: tuple[int, ...] = ()
            query_tokens = len(query_ids)
        else:
            query_part = _IMAGE
            # from its header when it came in the body; a URL's image is read now
            size = self._visual.header_size("the query", fetches)
            if size is None:
                query_images = (self._visual.image("the query", fetches, held),)
                held += query_images[0].nbytes
                query_tokens = query_images[0].tokens
            else:
                query_tokens = backbone.image_tokens(*size)
            query_visual = (query_tokens,)
        # what a pair holds besides its document: the prompt, the query, the score token
        base = self._length("", query_part, query_visual)
        room = self.max_length - base
        if room < 1:
            raise InvalidInput(f"the query takes {query_tokens} tokens, leaving no room for a document in the "
                               f"{self.max_length} tokens a pair may hold", code="INPUT_TOKEN_LIMIT_EXCEEDED")
        max_doc_length = max(self.max_length - MAX_QUERY_TOKENS, MAX_QUERY_TOKENS)
        windowing = Windowing.within(min(room, max_doc_length), self.config)
        texts = [(i, d.text) for i, d in enumerate(request.documents) if isinstance(d, TextInput)]
        contents = dict(zip((i for i, _ in texts), self._tokenizer.encode([t for _, t in texts])))
        self._foresee(request.documents, fetches, pdfs, contents, windowing, base, query_part, query_visual)
        if query_part == _IMAGE and not query_images:
            query_images = (self._visual.image("the query", fetches, held),)
            held += query_images[0].nbytes

        def image_pair(pixels: Pixels, at: str) -> _Pair:
            pair = self._pair(_IMAGE, query_part, (pixels, *query_images))
            if pair.length > self.max_length:
                raise InvalidInput(f"{at}: the image and the query take {pair.length} tokens, over the "
                                   f"{self.max_length} a pair may hold; send a smaller image",
                                   code="INPUT_TOKEN_LIMIT_EXCEEDED")
            return pair

        def pieces(index: int, document: EmbedInput) -> tuple[list[_Pair], int]:
            nonlocal held
            if index in pdfs:  # each page a window of its document
                pages = self._visual.pages(pdfs[index], held)
                held += sum(page.nbytes for page in pages)
                pairs = [image_pair(page, f"{pdfs[index].at}, page {number}")
                         for number, page in enumerate(pages, start=1)]
                return pairs, sum(pair.length - query_tokens for pair in pairs)
            if isinstance(document, ImageInput):
                pixels = self._visual.image(where("document", index), fetches, held)
                held += pixels.nbytes
                pair = image_pair(pixels, where("document", index))
                return [pair], pair.length - query_tokens
            content = contents[index]
            if len(content) <= windowing.size:
                windows = [(document.text, content)]
            else:
                windows = [(backbone.tokenizer.decode(window), window) for window in windowing.split(content)]
            pairs = [self._fitted(text, window, query_part, query_images) for text, window in windows]
            return pairs, sum(pair.length - query_tokens for pair in pairs)

        work = windowed(Scoring.PAIR, (), 0, request.documents, pieces, max_windows)
        return RerankWork(items=work.items, owners=work.owners, scoring=Scoring.PAIR,
                          query_tokens=query_tokens * len(work.items), document_tokens=work.document_tokens)

    def _length(self, document: str, query: str, visual: Sequence[int]) -> int:
        """The tokens of a pair's row before its images are read: its prompt's, each image's pad counted as the
        image's `visual` tokens (in the order the pads stand), and the score token."""
        return len(self._backbone.encode(_DOCUMENT + document + _QUERY + query)) - len(visual) + sum(visual) + 1

    def _foresee(self, documents: Sequence[EmbedInput], fetches: Fetches, pdfs: Mapping[int, pdf.Pdf],
                 contents: dict[int, np.ndarray], windowing: Windowing, base: int, query: str,
                 query_visual: tuple[int, ...]) -> None:
        """Ask the batcher whether the request's rows can finish before its deadline, before any image is decoded or
        page rendered: each text window's, each image document's that came in the body, from its header's size, and
        each PDF page's, from the size it will be rendered at (a URL's image counts once fetched)."""
        lengths = [base + len(window) for content in contents.values() for window in windowing.split(content)]
        sizes = self._visual.known_sizes(documents, "document", fetches, pdfs)
        if sizes:
            image_base = self._length(_IMAGE, query, (0, *query_visual))
            lengths += [image_base + self._backbone.image_tokens(*size) for size in sizes]
        batching.foresee(lengths)

    def _pair(self, document: str, query: str, images: tuple) -> _Pair:
        row = self._backbone.sequence(_DOCUMENT + document + _QUERY + query, images)
        return _Pair(type(row)(np.append(row.ids, SCORE_TOKEN_ID), row.images))

    def _fitted(self, text: str, window: np.ndarray, query: str, images: tuple) -> _Pair:
        """The pair of a text window; the window shortened by what the prompt's tokens joined across its edges add
        beyond the room (byte-level BPE may merge a window's first or last bytes with the prompt's)."""
        pair = self._pair(text, query, images)
        while pair.length > self.max_length and len(window) > 1:
            window = window[: max(1, len(window) - (pair.length - self.max_length))]
            text = self._backbone.tokenizer.decode(window)
            pair = self._pair(text, query, images)
        return pair

    def text_tokenizer(self) -> TokenizerView:
        """The tokenizer it reads texts with (tokenize and segment requests)."""
        return self._tokenizer

    def calibration_item(self, length: int) -> _Pair:
        row = self._backbone.sequence(np.resize(self._bare, max(1, length - 1)))
        return _Pair(type(row)(np.append(row.ids, SCORE_TOKEN_ID)))

    # --- on the batcher's thread ----------------------------------------------------------------------

    def forward(self, pairs: list[_Pair]) -> list[list[Any]]:
        import torch

        with torch.inference_mode():
            # left padding: every row's score token is the last position
            last = self._backbone.hidden(self._backbone.batch([pair.row for pair in pairs], left=True))[:, -1]
            head = self._head
            hidden = torch.relu(torch.nn.functional.linear(last, head["0.weight"], head["0.bias"]))
            logits = torch.nn.functional.linear(hidden, head["2.weight"], head["2.bias"]).float().reshape(-1)
            scores = torch.sigmoid(logits - SCORE_OFFSET).cpu().numpy().astype(np.float32)
        return [[score] for score in scores]


def _is_vl_reranker(files: ModelFiles) -> bool:
    return files.architectures == (ARCHITECTURE,)


KIND = Kind(
    name="vision-language-reranker",
    summary="a vision-language reranker (jina-reranker-m0: text and image queries; text, image and PDF documents)",
    recognizes=_is_vl_reranker,
    model=VisionLanguageRerankerModel,
    csv=CsvLayout(RERANK, (CsvColumn("query"), CsvColumn("documents", json=True),
                           CsvColumn("top_n", optional=True))),
    backends={"torch": VisionLanguageRerankerModel},
)
