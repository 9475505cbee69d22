"""Kind `vision-language-embedding`: jina-embeddings-v4, one Qwen2.5-VL that embeds texts and images into one space,
as a single vector and as one vector per token, from the same pass.

Recognised: config.json naming `JinaEmbeddingsV4Model` with its `task_names` (model_handlers/jina_v4.py), or
`"kind": "vision-language-embedding"` in searchbox.json over such a checkpoint.

On the caller's thread, in input order: a text is its task's prompt (`Query: ` / `Passage: `) and the text, tokenized
whole; an image is decoded (model_handlers/images.py) and preprocessed by Qwen2-VL's image processor, and its row is
v4's image prompt with the image's visual tokens. Every row names its task's adapter. On the batcher's thread one pass
takes texts and images of every task together (model_handlers/qwen_vl.py; each row's LoRA by peft, the vision tower's
per patch); a row's single vector is the mean of its last hidden states (texts: every token; images: the span from
`<|vision_start|>` to `<|vision_end|>`), L2-normalised, and its token vectors are the multi-vector projector's,
L2-normalised, one per token.

Answers: `/v1/embeddings` (Matryoshka `dimensions`, normalisation and encodings as for every embedder), token vectors on
`/v1/multi-vector`, or on `/v1/embeddings` with `return_multivector: true` (Jina's API answers them there, under
`embeddings`); `late_chunking` (texts: consecutive inputs read in one sequence, each pooled over its own span); rerank
by late interaction (MaxSim) of the query's and each document's token vectors; zero-shot classification by cosine.

Usage: texts count their tokens, prompt included; an image counts its visual tokens (one per 28x28 pixels of the
image as the processor resizes it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from model_handlers import adapters, batching, jina_v4, pdf
from model_handlers.adapters import RowAdapters
from model_handlers.errors import InvalidOption, ModelDirectoryError
from model_handlers.images import Fetches
from model_handlers.kinds import CsvColumn, CsvLayout, Kind, ModelFiles
from model_handlers.lengths import LANGUAGE_MODEL_LENGTH
from model_handlers.model_files import read_object
from model_handlers.operations.embed import EMBED, Prepared
from model_handlers.operations.multi_vector import MULTI_VECTOR
from model_handlers.options import HandlerOptions
from model_handlers.qwen_vl import Backbone, Pixels, Row
from model_handlers.ranking import RerankWork, Scoring, Windowing, check_window_count, windowed
from model_handlers.serving_config import ServingConfig, TaskSpec
from model_handlers.tokenization import TokenizerView
from model_handlers.types import EmbedInput, EmbedRequest, Origin, RerankRequest, TextInput, modality, where
from model_handlers.visual_inputs import VisualInputs

FORMS = frozenset({EMBED, MULTI_VECTOR})
_TAKES = "text, images and PDFs"
_GROUP = "vision-language"
# the vision tower's layers, whose inputs are image patches rather than rows (transformers' module names)
_VISION = "model.visual."


@dataclass(frozen=True)
class _Item:
    """One row of a pass, and what its outputs are: for each of its inputs, the positions (start, end) its single
    vector is the mean of and those its token vectors are; and the forms asked."""

    row: Row
    adapter: str | None
    pooled: tuple[tuple[int, int], ...]
    vectors: tuple[tuple[int, int], ...]
    wants: tuple[str, ...]
    group: Hashable = _GROUP

    @property
    def length(self) -> int:
        return self.row.length


class VisionLanguageEmbeddingModel:
    """jina-embeddings-v4 on transformers' Qwen2.5-VL, its projector and its task adapters read natively."""

    reentrant = False  # one pass at a time: passes at once not measured for this kind on torch yet

    rerank_scoring = ("late interaction: for each token vector of the query its best cosine over the document's token "
                      "vectors, summed (MaxSim); texts and images alike")
    # what it reads (types.reads): a PDF as its pages, each page an image
    modalities = frozenset({"text", "image", "pdf"})

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        import torch

        self.config = config
        self.model_name = config.served_model_name
        self.device = options.resolved_device()
        hf_config = read_object(model_dir / "config.json")
        if not jina_v4.is_v4(hf_config):
            raise ModelDirectoryError(f"{model_dir}: config.json does not name {jina_v4.ARCHITECTURE} with its "
                                      "task_names; the vision-language-embedding kind serves jina-embeddings-v4")
        self._backbone = backbone = Backbone(model_dir, self.device)
        model = backbone.model
        head = backbone.tensors(f"{jina_v4.PROJECTOR}.")
        projector = torch.nn.Linear(backbone.width, int(head["weight"].shape[0]), device=self.device,
                                    dtype=backbone.dtype)
        with torch.no_grad():
            projector.weight.copy_(head["weight"])
            projector.bias.copy_(head["bias"])
        # a submodule of the model, so that the tasks' LoRA pairs on it go in as on the model's own layers
        model.add_module(jina_v4.PROJECTOR, projector)
        self.adapters = RowAdapters(model, max_loaded=options.max_adapters, allow_pickle=options.allow_pickle,
                                    patches=_VISION)
        for task, install in jina_v4.adapter_installers(model_dir, list(hf_config["task_names"])).items():
            self.adapters.add_builtin(task, f"{model_dir.name}: task {task}", install)
        self.width = backbone.width
        self.token_width = projector.out_features
        self.max_length = config.max_length or min(LANGUAGE_MODEL_LENGTH, jina_v4.MAX_LENGTH)
        self._tokenizer = TokenizerView.from_hf(backbone.tokenizer, self.max_length)
        self._image_prompt = backbone.encode(jina_v4.IMAGE_PROMPT)
        self._pdf_max_pages = options.images.pdf_max_pages
        # a page rendered at the processor's pixel budget: larger only costs time, smaller loses what it would read
        self._visual = VisualInputs(options, pdf.Resolution(pixels=backbone.max_pixels), backbone.preprocess,
                                    self.model_name, _TAKES, self.modalities)

    def forms_of_one_pass(self) -> frozenset[str]:
        return FORMS

    # --- on the caller's thread -----------------------------------------------------------------------------------

    def prepare_embed(self, request: EmbedRequest) -> Prepared:
        self._visual.check(request.inputs, "input", pages=request.pages)
        spec = self.config.resolve_task(request.task, request.input_type, request.adapter)
        wants = (request.operation or EMBED, *request.also)
        if request.late_chunking:
            prepared = self._prepare_late_chunking(request, spec, wants)
        else:
            with self._visual.fetches(("input", request.inputs)) as fetches:
                pdfs = self._visual.pdfs(request.inputs, "input", fetches, rows=True)
                items, tokens, origins = self._prepare(list(request.inputs), spec, request.truncate, "input",
                                                       fetches, wants, pdfs)
            prepared = Prepared(items, tokens, origins=origins if pdfs else ())
        return replace(prepared, adapters=adapters.held(self.adapters, prepared.items, request.adapter))

    def vector_count(self, request: EmbedRequest) -> int:
        """The token vectors an answer holds, at most: a text's tokens; an image's prompt and the most visual tokens
        an image may become, a PDF's as many times as it may have pages (sizes are not read before the request
        runs)."""
        spec = self.config.resolve_task(request.task, request.input_type, request.adapter)
        texts = [spec.prompt + item.text for item in request.inputs if isinstance(item, TextInput)]
        image = len(self._image_prompt) - 1 + self._backbone.max_pixels // (self._backbone.patch
                                                                              * self._backbone.merge) ** 2
        images = sum(self._pdf_max_pages if modality(item) == "pdf" else 1
                     for item in request.inputs if not isinstance(item, TextInput))
        return sum(min(len(ids), self._tokenizer.room) for ids in self._tokenizer.encode(texts)) + image * images

    def prepare_rerank(self, request: RerankRequest, max_windows: int) -> RerankWork:
        """The query (`retrieval.query`), then every document (`retrieval.passage`): an image whole, a text in windows
        that fit the max length, each as token vectors; documents score by MaxSim."""
        self._visual.check([request.query], "the query", pages=False)
        self._visual.check(request.documents, "document", pages=True)
        wants = (MULTI_VECTOR,)
        query_spec = self.config.resolve_task("retrieval.query", adapter=request.adapter)
        spec = self.config.resolve_task("retrieval.passage", adapter=request.adapter)
        prompt = self._backbone.encode(spec.prompt.rstrip())
        windowing = Windowing.within(self._tokenizer.room - len(prompt), self.config)
        with self._visual.fetches(("the query", [request.query]), ("document", request.documents)) as fetches:
            pdfs = self._visual.pdfs(request.documents, "document", fetches, rows=False)
            # a PDF's pages are its windows: too many are refused before any is rendered
            check_window_count(sum(document.pages for document in pdfs.values()), max_windows)
            query, query_tokens, _ = self._prepare([request.query], query_spec, True, "the query", fetches, wants)
            held = sum(image.nbytes for item in query for image in item.row.images)

            def pieces(index: int, document: EmbedInput) -> tuple[list[_Item], int]:
                nonlocal held
                if index in pdfs:
                    pages = self._pages(pdfs[index], held, spec.adapter, wants)
                    held += sum(image.nbytes for item, _ in pages for image in item.row.images)
                    return [item for item, _ in pages], sum(tokens for _, tokens in pages)
                if isinstance(document, TextInput):
                    content = self._backbone.encode(spec.prompt + document.text)[len(prompt):]
                    made = [self._text_item(np.concatenate([prompt, window]), spec.adapter, wants)
                            for window in windowing.split(content)]
                    return made, sum(item.length for item in made)
                item, tokens = self._image_item(where("document", index), fetches, held, spec.adapter, wants)
                held += sum(image.nbytes for image in item.row.images)
                return [item], tokens

            work = windowed(Scoring.MAXSIM, query, query_tokens[0], request.documents, pieces, max_windows)
        return replace(work, adapters=adapters.held(self.adapters, work.items, request.adapter))

    def classification_scale(self) -> float | None:
        """None: its cosines are softmaxed at the default scale (operations/classify.py)."""
        return None

    def text_tokenizer(self) -> TokenizerView:
        return self._tokenizer

    def calibration_item(self, length: int) -> _Item:
        filler = self._tokenizer.encode(["a"])[0][:1]
        ids = np.repeat(filler, max(1, length))
        return _Item(Row(ids), None, ((0, len(ids)),), ((0, len(ids)),), (EMBED,))

    def _prepare(self, inputs: list[EmbedInput], spec: TaskSpec, truncate: bool, what: str, fetches: Fetches,
                 wants: tuple[str, ...], pdfs: Mapping[int, pdf.Pdf] | None = None,
                 ) -> tuple[list[_Item], list[int], tuple[Origin, ...]]:
        """The rows, billed tokens and origins of `inputs` in input order: a row per input, a row per page of a PDF
        (`pdfs`: those of `inputs`, opened by pdf.read_inputs). Refused at once, before any image is decoded or page
        rendered, when the rows cannot finish in time (`_foresee`)."""
        pdfs = pdfs or {}
        texts = [(i, spec.prompt + item.text) for i, item in enumerate(inputs) if isinstance(item, TextInput)]
        contents = dict(zip((i for i, _ in texts), self._tokenizer.encode([text for _, text in texts])))
        self._foresee(inputs, what, fetches, pdfs, [min(len(ids), self._tokenizer.room) for ids in contents.values()])
        rows: list[tuple[_Item, int, Origin]] = []
        held = 0
        for index, item in enumerate(inputs):
            if isinstance(item, TextInput):
                made = self._text_item(self._tokenizer.fit(contents[index], truncate, where(what, index)),
                                       spec.adapter, wants)
                rows.append((made, made.length, Origin(index)))
                continue
            if index in pdfs:
                pages = self._pages(pdfs[index], held, spec.adapter, wants)
                rows += [(page, count, Origin(index, number)) for number, (page, count) in enumerate(pages, start=1)]
            else:
                image, count = self._image_item(where(what, index), fetches, held, spec.adapter, wants)
                rows.append((image, count, Origin(index)))
            held = sum(image.nbytes for row, _, _ in rows for image in row.row.images)
        return [row for row, _, _ in rows], [count for _, count, _ in rows], tuple(origin for _, _, origin in rows)

    def _prepare_late_chunking(self, request: EmbedRequest, spec: TaskSpec, wants: tuple[str, ...]) -> Prepared:
        """Consecutive texts packed into as few rows as fit the max length (the prompt once, at the start of each);
        each input pooled over its own span. Inputs never straddle two rows; one that alone exceeds the room is cut
        (truncate) or refused."""
        if any(not isinstance(item, TextInput) for item in request.inputs):
            raise InvalidOption(f"late_chunking reads texts in one context; model {self.model_name} embeds each image "
                                "alone: leave late_chunking out for requests with images")
        prompt = self._backbone.encode(spec.prompt.rstrip())
        room = self._tokenizer.room - len(prompt)
        # each text as it follows the prompt (its leading space read as the prompt's last character)
        contents = [self._tokenizer.fit(self._backbone.encode(spec.prompt + item.text)[len(prompt):], request.truncate,
                                        where("input", index), room)
                    for index, item in enumerate(request.inputs)]
        items, token_counts, start = [], [], 0
        while start < len(contents):
            end, used = start, 0
            while end < len(contents) and used + len(contents[end]) <= room:
                used += len(contents[end])
                end += 1
            spans, offset = [], len(prompt)
            for content in contents[start:end]:
                spans.append((offset, offset + len(content)))
                offset += len(content)
            items.append(_Item(Row(np.concatenate([prompt, *contents[start:end]])), spec.adapter, tuple(spans),
                               tuple(spans), wants))
            # the prompt is billed once per row, with its first input
            token_counts.extend(len(c) + (len(prompt) if i == 0 else 0) for i, c in enumerate(contents[start:end]))
            start = end
        return Prepared(items, token_counts)

    def _foresee(self, inputs: Sequence[EmbedInput], what: str, fetches: Fetches, pdfs: Mapping[int, pdf.Pdf],
                 texts: list[int]) -> None:
        """Ask the batcher whether rows of these lengths can finish before the request's deadline: the texts', each
        image's that came in the body, from its header's size, and each PDF page's, from the size it will be rendered
        at (a URL's image counts once fetched)."""
        image = len(self._image_prompt) - 1
        lengths = list(texts) + [image + self._backbone.image_tokens(*size)
                                 for size in self._visual.known_sizes(inputs, what, fetches, pdfs)]
        batching.foresee(lengths)

    def _text_item(self, ids: np.ndarray, adapter: str | None, wants: tuple[str, ...]) -> _Item:
        return _Item(Row(ids), adapter, ((0, len(ids)),), ((0, len(ids)),), wants)

    def _image_item(self, at: str, fetches: Fetches, held: int, adapter: str | None,
                    wants: tuple[str, ...]) -> tuple[_Item, int]:
        """The row of the image input named `at`, and its billed tokens (its visual tokens)."""
        return self._image_row(self._visual.image(at, fetches, held), adapter, wants)

    def _pages(self, document: pdf.Pdf, held: int, adapter: str | None,
               wants: tuple[str, ...]) -> list[tuple[_Item, int]]:
        """The row of each page of `document` (each page the image it is), and its billed tokens."""
        return [self._image_row(page, adapter, wants) for page in self._visual.pages(document, held)]

    def _image_row(self, pixels: Pixels, adapter: str | None, wants: tuple[str, ...]) -> tuple[_Item, int]:
        """The row of a preprocessed image, and its visual tokens."""
        row = self._backbone.sequence(self._image_prompt, [pixels])
        start = int(np.flatnonzero(row.ids == self._backbone.vision_start_id)[0])
        end = int(np.flatnonzero(row.ids == self._backbone.vision_end_id)[0])
        # v4 pools an image over its vision span; its token vectors are every position of the row
        return _Item(row, adapter, ((start, end + 1),), ((0, row.length),), wants), pixels.tokens

    # --- on the batcher's thread ----------------------------------------------------------------------------------

    def forward(self, items: list[_Item]) -> list[list[Any]]:
        import torch

        backbone = self._backbone
        rows = [item.adapter for item in items]
        patches = [item.adapter for item in items for image in item.row.images for _ in range(int(image.grid.prod()))]
        tokens_wanted = any(MULTI_VECTOR in item.wants for item in items)
        with torch.inference_mode(), adapters.rows(self.adapters, rows, patches):
            hidden = backbone.hidden(backbone.batch([item.row for item in items], left=False))
            tokens = None
            if tokens_wanted:
                projected = getattr(backbone.model, jina_v4.PROJECTOR)(hidden)
                tokens = torch.nn.functional.normalize(projected, dim=-1).float().cpu().numpy()
            hidden = hidden.float().cpu().numpy()
        out = []
        for index, item in enumerate(items):
            outputs = []
            for (start, end), (first, last) in zip(item.pooled, item.vectors):
                forms: dict[str, np.ndarray] = {}
                if EMBED in item.wants:
                    pooled = hidden[index, start:end].astype(np.float64).mean(axis=0)
                    forms[EMBED] = (pooled / max(np.linalg.norm(pooled), 1e-12)).astype(np.float32)
                if MULTI_VECTOR in item.wants:
                    forms[MULTI_VECTOR] = tokens[index, first:last].copy()
                outputs.append(forms[item.wants[0]] if len(item.wants) == 1 else forms)
            out.append(outputs)
        return out


def _is_v4(files: ModelFiles) -> bool:
    return jina_v4.is_v4(files.config)


KIND = Kind(
    name="vision-language-embedding",
    summary=("multimodal embeddings from a vision-language model (texts, images and PDF pages; single vectors and "
             "token vectors)"),
    recognizes=_is_v4,
    model=VisionLanguageEmbeddingModel,
    csv=CsvLayout(EMBED, (CsvColumn("text"), CsvColumn("url", optional=True), CsvColumn("bytes", optional=True))),
    backends={"torch": VisionLanguageEmbeddingModel},
    instead=frozenset({MULTI_VECTOR}),
)
