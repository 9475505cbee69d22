"""Kind `multimodal`: CLIP-family dual encoders that embed texts and images into one space.

Recognised: transformers `CLIPModel` / SigLIP directories and the other dual encoders transformers ships with
`get_text_features` / `get_image_features` (by config.json's model_type or architectures), sentence-transformers
CLIP directories (the model in the `CLIPModel` module's folder), and remote-code dual encoders (jina-clip's
layout: a config with `text_config` and `vision_config`, loaded with the vendored code the artifact carries).

On the caller's thread (`prepare_embed`, `prepare_rerank`), in input order: texts are tokenized with the
model's tokenizer (task prompts prepended, cut or refused at the max length like any text); images are read by
`images.ImageReader` (decoded, checked, upright, RGB) and preprocessed by the model's own image processor. A PDF is
read as its pages (model_handlers/pdf.py: every PDF of the request opened, counted and checked before any page is
rendered; each page rendered so that its shorter side reaches the processor's size, then read as an image): an
embeddings answer has a row per page, a rerank document scores as its best page. A bad image or PDF fails its own
request, never a batch. On the batcher's thread (`forward`), a pass is all texts (grouped
by fixed-length padding) or all images of one pixel shape: `get_text_features` or `get_image_features`.

Batching: an image counts as the vision tower's sequence length in tokens (patches + class token: 50 for a
ViT-B/32 at 224 px, 197 for a ViT-B/16), since a pass over that many patch tokens costs about what a text pass
of that many tokens does; the padded-token budget then bounds image passes as it bounds text passes (1024 on
CPU: 20 ViT-B/32 images a pass). Usage: texts count their tokens, images Jina's tile rule (serving config).

Preprocessed pixels are float32 (600 KB a 224 px image): at most `MAX_HELD_PIXEL_BYTES` (model_handlers/pixels.py)
of them wait for the model at once, beyond which image requests are refused at once (503, or 413 for a request too
large alone).

ONNX (`OnnxMultimodalModel`): a CLIP's two towers, each with its projection, exported at packaging time
(`export_onnx`, packaging/_onnx.py checks them against torch on texts and images); texts are tokenized from
tokenizer.json and images preprocessed by model_handlers/clip_pixels.py (CLIPImageProcessorPil's steps, without
transformers), so the serve path imports neither torch nor transformers. Everything else above is the same.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, NamedTuple, Sequence

import numpy as np

from model_handlers import adapters, model_code, pdf
from model_handlers.clip_pixels import ClipPixels
from model_handlers.errors import InvalidInput, InvalidOption, ModelDirectoryError
from model_handlers.images import Fetches, ImageReader, is_url, tiles
from model_handlers.kinds import CsvColumn, CsvLayout, Kind, ModelFiles
from model_handlers.lengths import Lengths
from model_handlers.operations.embed import EMBED, Prepared
from model_handlers.options import HandlerOptions
from model_handlers.pixels import MAX_HELD_PIXEL_BYTES, HeldPixels
from model_handlers.ranking import RerankWork, Scoring, Windowing, check_window_count, windowed
from model_handlers.serving_config import ServingConfig, TaskSpec
from model_handlers.tokenization import TokenizerView
from model_handlers.types import (
    EmbedInput, EmbedRequest, ImageInput, Origin, RerankRequest, TextInput, modality, unsupported, where,
)

logger = logging.getLogger(__name__)

# config.json model_type of the dual encoders transformers ships with get_text_features / get_image_features.
_DUAL_ENCODER_TYPES = frozenset({"clip", "siglip", "siglip2", "chinese_clip", "altclip", "metaclip_2",
                                 "vision-text-dual-encoder", "jina_clip"})
_DUAL_ENCODER_ARCHITECTURES = ("CLIPModel", "SiglipModel", "Siglip2Model", "AltCLIPModel", "DualEncoderModel")
# Text towers that pool a fixed position and were trained on inputs padded to the max length (SigLIP: the last).
_FIXED_LENGTH_TEXT = frozenset({"siglip", "siglip2"})
# Text length when neither the config nor the tokenizer tells (CLIP's).
_DEFAULT_TEXT_LENGTH = 77
# Vision sequence length when the config does not tell (a ViT-B/16 at 224 px has 197).
_DEFAULT_IMAGE_LENGTH = 256
_TAKES = "text, images and PDFs"


@dataclass(frozen=True)
class _Text:
    """One tokenized text (special tokens in)."""

    ids: np.ndarray
    group: Hashable
    adapter: str | None = None  # the LoRA adapter of this row

    @property
    def length(self) -> int:
        return len(self.ids)


class _Image:
    """One preprocessed image: the image processor's arrays (leading dimension 1), and its token-equivalent."""

    __slots__ = ("arrays", "length", "group", "adapter", "__weakref__")

    def __init__(self, arrays: Mapping[str, np.ndarray], length: int, adapter: str | None = None):
        self.arrays = dict(arrays)
        self.length = length
        self.adapter = adapter
        self.group = ("image", tuple((name, array.shape[1:]) for name, array in sorted(self.arrays.items())))

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.arrays.values())


class _Towers(NamedTuple):
    """What a backend's load tells the model: the lengths declared, its tokenizer (for a max length), config.json's
    model_type and vision_config (an object with `image_size` and `patch_size` where it says them)."""

    lengths: Lengths
    tokenizer: Callable[[int], TokenizerView]
    model_type: str
    vision_config: Any


class _Ahead:
    """One request's inline images decoded on the model's decode-ahead threads, up to `window` ahead of the one its
    thread reads, so that a request of many images keeps every core decoding instead of one. The request's thread
    still reads them in order (`take`): an image not started yet it decodes itself, a bad image's error is raised
    when its turn comes (the first bad input named, as before), and the pixels are held in order. Leaving the block
    cancels what was not started."""

    def __init__(self, pool: ThreadPoolExecutor, decode, sources: Sequence[tuple[str, str]], window: int):
        self._pool, self._decode, self._window = pool, decode, window
        self._waiting = deque(sources)  # (at, source) in reading order, not started
        self._started: dict[str, Future] = {}

    def __enter__(self) -> "_Ahead":
        return self

    def __exit__(self, *exc) -> None:
        self._waiting.clear()
        for future in self._started.values():
            future.cancel()

    def take(self, at: str):
        """The decoded image named `at` (what `decode` returns), or None: the caller decodes it itself."""
        future = self._started.pop(at, None)
        if self._waiting and self._waiting[0][0] == at:
            self._waiting.popleft()
        while self._waiting and len(self._started) < self._window:
            name, source = self._waiting.popleft()
            self._started[name] = self._pool.submit(self._decode, source, name)
        if future is None or future.cancel():
            return None  # not begun: this thread is free to decode it now
        return future.result()


class MultimodalModel:
    """A dual encoder serving text and image embeddings in one space."""

    reentrant = False  # one pass at a time: passes at once not measured for this kind on torch yet

    rerank_scoring = "the cosine of query and document embeddings in the shared text-image space"
    # what it reads (types.reads): a PDF as its pages, each page an image
    modalities = frozenset({"text", "image", "pdf"})

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        self.config = config
        self.model_name = config.served_model_name
        towers = self._load(model_dir, options)
        self.max_length = towers.lengths.served(config.max_length, default=_DEFAULT_TEXT_LENGTH)
        self._tokenizer = towers.tokenizer(self.max_length)
        self._fixed_length = self.max_length if towers.model_type in _FIXED_LENGTH_TEXT else None
        self._text_group = ("text", self._fixed_length)
        self._image_length = _image_length(towers.vision_config)
        self._reader = ImageReader(options.images)
        self._image_options = options.images
        self._max_inputs = options.max_inputs
        self._page_resolution = _page_resolution(self._image_processor, towers.vision_config)
        # CLIP's processor steps without its copies, where they give its exact output (model_handlers/clip_pixels.py)
        self._pixels = (self._image_processor if isinstance(self._image_processor, ClipPixels)
                        else ClipPixels.of(self._image_processor))
        self._held = HeldPixels(MAX_HELD_PIXEL_BYTES)
        # Decoding a large photo takes a few hundred MB for a moment: at most one per core at once.
        self._decoding = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))
        # A request's next images are decoded here while its own thread reads the one before (`_Ahead`).
        self._ahead_window = os.cpu_count() or 2
        self._ahead_pool = ThreadPoolExecutor(self._ahead_window, thread_name_prefix="decode-ahead")
        self.width = int(self.forward([self.calibration_item(8)])[0][0].shape[-1])

    def _load(self, model_dir: Path, options: HandlerOptions) -> "_Towers":
        """The model on torch with transformers, its tokenizer and its image processor (`_image_processor`)."""
        import torch
        from transformers import AutoModel

        self.device = options.resolved_device()
        self._device = torch.device(self.device)
        hf_dir = transformers_directory(model_dir)
        trust = model_code.trusts(model_dir, options)
        try:
            self._model = AutoModel.from_pretrained(
                str(hf_dir), local_files_only=True, trust_remote_code=trust,
                use_safetensors=not options.allow_pickle or None,
            ).to(self._device)
            tokenizer, self._image_processor = _processors(hf_dir, trust)
        except (OSError, ValueError, ImportError) as exc:
            raise ModelDirectoryError(f"cannot load {model_dir} as a multimodal model: {exc}") from exc
        self._model.eval()
        self.adapters = adapters.attach(self._model, options, self.config.adapters, model_dir)
        for method in ("get_text_features", "get_image_features"):
            if not callable(getattr(self._model, method, None)):
                raise ModelDirectoryError(f"{model_dir}: {type(self._model).__name__} has no {method}; searchbox "
                                          "serves dual encoders that embed texts and images into one space")
        model_config = self._model.config
        self._text_args = _accepted(self._model.get_text_features)
        self._image_args = _accepted(self._model.get_image_features)
        # The text tower's positions and the tokenizer's length (remote-code towers may not say theirs)
        lengths = Lengths.of(tokenizer=getattr(tokenizer, "model_max_length", None),
                             positions=getattr(getattr(model_config, "text_config", None), "max_position_embeddings",
                                               None))
        return _Towers(lengths, lambda max_length: TokenizerView.from_hf(tokenizer, max_length),
                       getattr(model_config, "model_type", ""), getattr(model_config, "vision_config", None))

    # --- on the caller's thread -----------------------------------------------------------------------

    def prepare_embed(self, request: EmbedRequest) -> Prepared:
        if request.late_chunking:
            raise InvalidOption(f"model {self.model_name} embeds each input alone (texts and images): late_chunking "
                                "is not available; leave it out or set it to false", code="UNSUPPORTED_OPTION")
        spec = self.config.resolve_task(request.task, request.input_type, request.adapter)
        self._check_inputs(request.inputs, "input", pages=request.pages)
        with self._fetches(("input", request.inputs)) as fetches:
            pdfs = pdf.read_inputs(request.inputs, "input", fetches, self._page_resolution, self._image_options,
                                   max_rows=self._max_inputs)
            with self._ahead("input", request.inputs, pdfs) as ahead:
                items, tokens, origins = self._prepare(list(request.inputs), spec, request.truncate, "input", fetches,
                                                       pdfs, ahead)
        return Prepared(items, tokens, adapters=adapters.held(self.adapters, items, request.adapter),
                        origins=origins if pdfs else ())

    def prepare_rerank(self, request: RerankRequest, max_windows: int) -> RerankWork:
        """The query, then every document: an image is one input, a long text document one input per window.

        Scores are cosines in the shared space; texts take the `retrieval.*` tasks' prompts when the model has them.
        """
        self._check_inputs([request.query], "the query", pages=False)
        self._check_inputs(request.documents, "document", pages=True)
        with self._fetches(("the query", [request.query]), ("document", request.documents)) as fetches:
            return self._prepare_rerank(request, max_windows, fetches)

    def _prepare_rerank(self, request: RerankRequest, max_windows: int, fetches: Fetches) -> RerankWork:
        pdfs = pdf.read_inputs(request.documents, "document", fetches, self._page_resolution, self._image_options)
        with self._ahead("document", request.documents, pdfs) as ahead:
            return self._rerank_work(request, max_windows, fetches, pdfs, ahead)

    def _rerank_work(self, request: RerankRequest, max_windows: int, fetches: Fetches, pdfs: Mapping[int, pdf.Pdf],
                     ahead: "_Ahead") -> RerankWork:
        # a PDF's pages are its windows: too many are refused before any is rendered
        check_window_count(sum(document.pages for document in pdfs.values()), max_windows)
        query, query_tokens, _ = self._prepare([request.query], self.config.resolve_task("retrieval.query",
                                                                                      adapter=request.adapter),
                                            True, "the query", fetches)
        spec = self.config.resolve_task("retrieval.passage", adapter=request.adapter)
        prompt = self._tokenizer.encode([spec.prompt])[0] if spec.prompt else np.zeros(0, dtype=np.int64)
        windowing = Windowing.within(self._tokenizer.room - len(prompt), self.config)
        texts = [(i, d.text) for i, d in enumerate(request.documents) if isinstance(d, TextInput)]
        contents = dict(zip((i for i, _ in texts), self._tokenizer.encode([t for _, t in texts])))
        held = sum(item.nbytes for item in query if isinstance(item, _Image))

        def pieces(index: int, document: EmbedInput) -> tuple[list[Any], int]:
            nonlocal held
            if isinstance(document, TextInput):
                windows = [_Text(self._tokenizer.wrap(np.concatenate([prompt, window])), self._text_group, spec.adapter)
                           for window in windowing.split(contents[index])]
                return windows, sum(window.length for window in windows)
            if index in pdfs:
                pages, tokens = self._pages(pdfs[index], held, spec.adapter)
                held += sum(page.nbytes for page in pages)
                return pages, sum(tokens)
            image, tokens = self._image(where("document", index), fetches, held, spec.adapter, ahead)
            held += image.nbytes
            return [image], tokens

        work = windowed(Scoring.COSINE, query, query_tokens[0], request.documents, pieces, max_windows)
        return replace(work, adapters=adapters.held(self.adapters, work.items, request.adapter))

    def close(self) -> None:
        self._ahead_pool.shutdown(wait=False, cancel_futures=True)

    def classification_scale(self) -> float | None:
        """The model's own softmax scale, exp(logit_scale), as its `logits_per_image` applies it; None for a model
        that has none."""
        scale = getattr(self._model, "logit_scale", None)
        return None if scale is None else float(scale.detach().float().exp().item())

    def text_tokenizer(self) -> TokenizerView:
        """The tokenizer it reads texts with (tokenize and segment requests)."""
        return self._tokenizer

    def calibration_item(self, length: int) -> _Text:
        filler = self._tokenizer.encode(["a"])[0][:1]
        return _Text(self._tokenizer.wrap(np.repeat(filler, max(0, length - self._tokenizer.special_count))),
                     self._text_group)

    def _fetches(self, *groups: tuple[str, Sequence[EmbedInput]]) -> Fetches:
        """The image inputs of one request, `(what, inputs)` in the order they are read, under one fetch deadline."""
        return self._reader.fetches([(item.source, where(what, index)) for what, inputs in groups
                                     for index, item in enumerate(inputs)
                                     if isinstance(item, ImageInput) or modality(item) == "pdf"])

    def _prepare(self, inputs: list[EmbedInput], spec: TaskSpec, truncate: bool, what: str, fetches: Fetches,
                 pdfs: Mapping[int, pdf.Pdf] | None = None,
                 ahead: "_Ahead | None" = None) -> tuple[list[Any], list[int], tuple[Origin, ...]]:
        """Work items, billed tokens and origins of the rows of `inputs` (checked by `_check_inputs`), in input order:
        a row per input, a row per page of a PDF (`pdfs`: those of `inputs`, opened by `_pdfs`)."""
        texts = [(i, spec.prompt + item.text) for i, item in enumerate(inputs) if isinstance(item, TextInput)]
        contents = dict(zip((i for i, _ in texts), self._tokenizer.encode([t for _, t in texts])))
        items: list[Any] = []
        tokens: list[int] = []
        origins: list[Origin] = []
        held = 0
        for index, item in enumerate(inputs):
            if isinstance(item, TextInput):
                content = self._tokenizer.fit(contents[index], truncate, where(what, index))
                text = _Text(self._tokenizer.wrap(content), self._text_group, spec.adapter)
                items.append(text)
                tokens.append(text.length)
                origins.append(Origin(index))
            elif pdfs and index in pdfs:
                pages, counts = self._pages(pdfs[index], held, spec.adapter)
                held += sum(page.nbytes for page in pages)
                items.extend(pages)
                tokens.extend(counts)
                origins.extend(Origin(index, number) for number in range(1, len(pages) + 1))
            else:
                image, count = self._image(where(what, index), fetches, held, spec.adapter, ahead)
                held += image.nbytes
                items.append(image)
                tokens.append(count)
                origins.append(Origin(index))
        return items, tokens, tuple(origins)

    def _check_inputs(self, inputs, what: str, pages: bool) -> None:
        """Refuse what the model cannot read before any image is decoded, naming the first such input; a PDF only
        where its pages have a place (`pages`: an embeddings answer's rows, a rerank document's windows)."""
        for index, item in enumerate(inputs):
            if modality(item) not in self.modalities:
                raise unsupported(item, where(what, index), self.model_name, _TAKES)
            if modality(item) == "pdf" and not pages:
                raise pdf.unplaced(item, where(what, index), self.model_name)

    def _ahead(self, what: str, inputs: Sequence[EmbedInput], pdfs: Mapping[int, pdf.Pdf]) -> "_Ahead":
        """The inline images of `inputs` (base64, data URIs: not URLs, not PDFs) to decode ahead of their turn."""
        sources = [(where(what, index), item.source) for index, item in enumerate(inputs)
                   if isinstance(item, ImageInput) and index not in pdfs and not is_url(item.source)]
        return _Ahead(self._ahead_pool, self._decoded_inline, sources if len(sources) > 1 else [], self._ahead_window)

    def _image(self, at: str, fetches: Fetches, held: int, adapter: str | None = None,
               ahead: "_Ahead | None" = None) -> tuple[_Image, int]:
        """The preprocessed image of the input named `at` and the tokens it is billed (Jina's tile rule)."""
        done = ahead.take(at) if ahead is not None else None
        if done is None:
            done = self._decoded(fetches.data(at), at)  # a URL waited for outside the decoding slots
        return self._held_image(*done, held, adapter)

    def _decoded_inline(self, source: str, at: str) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
        return self._decoded(self._reader.data(source, at, 0.0), at)  # inline: no fetch, no deadline to keep

    def _decoded(self, data: bytes, at: str) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
        """The processor's arrays of the image in `data` and the whole image's (width, height)."""
        with self._decoding:
            if self._pixels is None:
                return self._arrays(self._reader.decode(data, at), at)
            image, size = self._reader.decode_reduced(data, at, self._pixels.shortest_side)
            return self._arrays(image, at, size)

    def _pages(self, document: pdf.Pdf, held: int, adapter: str | None) -> tuple[list[_Image], list[int]]:
        """The preprocessed pages of `document` and the tokens each is billed (each page the image it is)."""
        pages, tokens = [], []
        with self._decoding:
            for number, page in enumerate(document.render(), start=1):
                image, count = self._processed(page, f"{document.at}, page {number}", held, adapter)
                held += image.nbytes
                pages.append(image)
                tokens.append(count)
        return pages, tokens

    def _processed(self, image, at: str, held: int, adapter: str | None) -> tuple[_Image, int]:
        """`image` through the model's image processor (closed after), held, and the tokens it is billed."""
        return self._held_image(*self._arrays(image, at), held, adapter)

    def _arrays(self, image, at: str,
                size: tuple[int, int] | None = None) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
        """`image` through the model's image processor (closed after), and its size (`size`: the whole image's, when
        it was decoded reduced)."""
        width, height = size or image.size
        try:
            arrays = (self._pixels or self._image_processor)(images=[image], return_tensors="np")
        except Exception as exc:  # noqa: BLE001 - the processor refusing one image fails that request only
            raise InvalidInput(f"{at}: the model's image processor cannot take this {width}x{height} image "
                               f"({str(exc)[:200] or type(exc).__name__})", code="INVALID_IMAGE") from None
        finally:
            image.close()
        return {name: value for name, value in arrays.items() if isinstance(value, np.ndarray)}, (width, height)

    def _held_image(self, arrays: dict[str, np.ndarray], size: tuple[int, int], held: int,
                    adapter: str | None) -> tuple[_Image, int]:
        """The image's arrays as a work item, held (`held`: bytes its request holds already), and its tokens."""
        width, height = size
        processed = _Image(arrays, self._image_length, adapter)
        self._held.hold(processed, held)
        return processed, tiles(width, height, self.config.image_tile_size) * self.config.image_tile_tokens

    # --- on the batcher's thread ----------------------------------------------------------------------

    def forward(self, items: list) -> list[list[np.ndarray]]:
        if isinstance(items[0], _Text):
            arrays = self._tokenizer.pad([item.ids for item in items], length=self._fixed_length)
        else:
            arrays = {name: np.concatenate([item.arrays[name] for item in items]) for name in items[0].arrays}
        vectors = self._vectors(isinstance(items[0], _Text), arrays, [item.adapter for item in items])
        return [[row] for row in vectors]

    def _vectors(self, text: bool, arrays: Mapping[str, np.ndarray], adapter_names: list) -> np.ndarray:
        """The projected embeddings of one pass: padded token ids (`text`) or stacked image arrays."""
        import torch

        with torch.inference_mode(), adapters.rows(self.adapters, adapter_names):
            if text:
                features = self._model.get_text_features(**self._arguments(arrays, self._text_args))
            else:
                features = self._model.get_image_features(**self._arguments(arrays, self._image_args))
            return _embeddings(features).float().cpu().numpy()

    def _arguments(self, arrays: Mapping[str, np.ndarray], accepted: frozenset[str] | None) -> dict:
        import torch

        return {name: torch.from_numpy(np.ascontiguousarray(array)).to(self._device)
                for name, array in arrays.items() if accepted is None or name in accepted}


def transformers_directory(model_dir: Path) -> Path:
    """Where the transformers model lies: the directory, or a sentence-transformers CLIP module's folder."""
    model_dir = Path(model_dir)
    if (model_dir / "config.json").is_file():
        return model_dir
    for module in ModelFiles.read(model_dir).modules:
        if str(module.get("type", "")).endswith("CLIPModel") and (model_dir / str(module.get("path", ""))).is_dir():
            return model_dir / str(module.get("path", ""))
    return model_dir


def _processors(model_dir: Path, trust: bool):
    """The model's tokenizer and image processor, from its processor, else loaded one by one (`trust`: the policy's
    trust_remote_code, model_handlers/model_code.py)."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        processor = AutoProcessor.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=trust)
        tokenizer = getattr(processor, "tokenizer", None)
        image_processor = getattr(processor, "image_processor", None)
        if tokenizer is not None and image_processor is not None:
            return tokenizer, image_processor
    except (OSError, ValueError, TypeError, KeyError):
        pass  # no processor saved: the tokenizer and the image processor may be there alone
    try:
        return (AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=trust),
                AutoImageProcessor.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=trust))
    except (OSError, ValueError) as exc:
        raise ModelDirectoryError(f"{model_dir}: the model's tokenizer and image processor cannot be loaded ({exc}); "
                                  "save them with the model (processor.save_pretrained(dir))") from exc


def _accepted(method) -> frozenset[str] | None:
    """The keyword arguments `method` takes (None: any, it has **kwargs); remote code often takes fewer."""
    parameters = inspect.signature(method).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters)


def _page_resolution(image_processor, vision_config) -> pdf.Resolution:
    """How large a PDF page is rendered for this model: its shorter side at the size the processor resizes the shorter
    side to (CLIP's `shortest_edge`), or as many pixels as the processor's fixed size (SigLIP's height x width), else
    the vision tower's `image_size` a side: never smaller than what the processor makes of it."""
    size = getattr(image_processor, "size", None)
    size = size if isinstance(size, Mapping) else {}
    if isinstance(size.get("shortest_edge"), int):
        return pdf.Resolution(shortest_side=size["shortest_edge"])
    if isinstance(size.get("height"), int) and isinstance(size.get("width"), int):
        return pdf.Resolution(pixels=size["height"] * size["width"], shortest_side=min(size["height"], size["width"]))
    side = getattr(vision_config, "image_size", None)
    return pdf.Resolution(shortest_side=side if isinstance(side, int) else 224)


def _image_length(vision_config) -> int:
    size, patch = getattr(vision_config, "image_size", None), getattr(vision_config, "patch_size", None)
    if isinstance(size, int) and isinstance(patch, int) and patch > 0:
        return (size // patch) ** 2 + 1
    return _DEFAULT_IMAGE_LENGTH


def _embeddings(features):
    """The projected vectors: transformers 5 returns a model output holding them as `pooler_output`, older
    releases and remote code a tensor."""
    if hasattr(features, "pooler_output") and features.pooler_output is not None:
        return features.pooler_output
    if isinstance(features, (tuple, list)):
        return features[0]
    return features


def _is_multimodal(files: ModelFiles) -> bool:
    config = files.config
    if config.get("model_type") in _DUAL_ENCODER_TYPES:
        return True
    if any(architecture.endswith(_DUAL_ENCODER_ARCHITECTURES) for architecture in files.architectures):
        return True
    if any(str(module.get("type", "")).endswith("CLIPModel") for module in files.modules):
        return True  # a sentence-transformers CLIP directory: the model lies in the module's folder
    # Remote-code dual encoders (jina-clip): a text and a vision tower, and no generation head.
    return ("text_config" in config and "vision_config" in config and bool(files.architectures)
            and all(architecture.endswith("Model") for architecture in files.architectures))


# --- the ONNX backend: two graphs, no torch and no transformers on the serve path ------------------------------

# the logit scale (exp(logit_scale)) the export writes beside the text graph: classify's softmax scale
_SCALE_METADATA = "searchbox.logit_scale"
# the model types whose towers and image processor the export and the ONNX backend reproduce
_ONNX_MODEL_TYPES = frozenset({"clip"})


def tower_files(onnx_file: str) -> tuple[str, str]:
    """The text and the vision graphs a served `onnx_file` stands for: its name prefixed by `text_` and `vision_` in
    its folder (onnx/model_int8.onnx: onnx/text_model_int8.onnx and onnx/vision_model_int8.onnx)."""
    folder, _, name = onnx_file.rpartition("/")
    prefix = f"{folder}/" if folder else ""
    return f"{prefix}text_{name}", f"{prefix}vision_{name}"


class OnnxMultimodalModel(MultimodalModel):
    """A CLIP whose text and vision towers, each with its projection, run on ONNX Runtime (`export_onnx`); texts are
    tokenized from tokenizer.json and images preprocessed by model_handlers/clip_pixels.py, so neither torch nor
    transformers is imported. No adapters (the export refuses models that have them)."""

    reentrant = True  # ONNX Runtime runs a session's passes on several threads at once

    def _load(self, model_dir: Path, options: HandlerOptions) -> _Towers:
        from model_handlers.model_files import read_object
        from model_handlers.onnx_runtime import OnnxSession

        hf_dir = transformers_directory(model_dir)
        config = read_object(hf_dir / "config.json")
        if config.get("model_type") not in _ONNX_MODEL_TYPES:
            raise ModelDirectoryError(f"{model_dir}: the ONNX backend serves CLIP models (model_type clip), not "
                                      f"{config.get('model_type') or 'this one'}; serve it with the torch backend")
        text_file, vision_file = tower_files(self.config.onnx_file)
        self._text_session = OnnxSession.of(model_dir, self.config, options, text_file)
        self._vision_session = OnnxSession.of(model_dir, self.config, options, vision_file)
        self.device = self._text_session.device
        self.adapters = None
        self._image_processor = ClipPixels.read(hf_dir)
        text_config = config.get("text_config") or {}
        vision_config = config.get("vision_config") or {}
        lengths = Lengths.of(tokenizer=read_object(hf_dir / "tokenizer_config.json").get("model_max_length"),
                             positions=text_config.get("max_position_embeddings"))
        return _Towers(lengths,
                       lambda max_length: TokenizerView.from_directory(hf_dir, max_length, with_type_ids=False),
                       str(config.get("model_type", "")),
                       _VisionConfig(vision_config.get("image_size"), vision_config.get("patch_size")))

    def _vectors(self, text: bool, arrays: Mapping[str, np.ndarray], adapter_names: list) -> np.ndarray:
        session = self._text_session if text else self._vision_session
        return session.run(arrays).astype(np.float32, copy=False)

    def classification_scale(self) -> float | None:
        scale = self._text_session.metadata.get(_SCALE_METADATA)
        return None if scale is None else float(scale)


class _VisionConfig(NamedTuple):
    image_size: Any
    patch_size: Any


class _Embeds(NamedTuple):
    embeds: Any


def export_onnx(model_dir: Path, out_path: Path) -> None:
    """The text tower and the vision tower, each with its projection, as two ONNX graphs (`tower_files(out_path)`):
    token ids and attention mask -> `embeds` [batch, projection] (what `get_text_features` answers), pixel values
    [batch, 3, size, size] -> `embeds` (`get_image_features`). The text graph's metadata holds the model's logit scale.

    Raises:
        ModelDirectoryError: not a CLIP, remote code, adapters, or the exporter refused it; the message says to serve
            it with torch.
    """
    import onnx
    import torch
    from PIL import Image
    from transformers import AutoModel

    from model_handlers.model_files import read_object
    from model_handlers.onnx_runtime import export_graph, refuse_adapters
    from model_handlers.serving_config import read_serving_config

    config = read_serving_config(model_dir)
    refuse_adapters(config, "graphs")
    hf_dir = transformers_directory(model_dir)
    model_type = read_object(hf_dir / "config.json").get("model_type")
    if model_type not in _ONNX_MODEL_TYPES:
        raise ModelDirectoryError(f"multimodal models of type {model_type or 'unknown'} do not export to ONNX (CLIP "
                                  "does): build it with --backend torch")
    pixels = ClipPixels.read(hf_dir)  # refuses, before any export, a processor the serve path would not reproduce
    try:
        model = AutoModel.from_pretrained(str(hf_dir), local_files_only=True, use_safetensors=True).eval()
    except (OSError, ValueError) as exc:
        raise ModelDirectoryError(f"cannot load {hf_dir} as a CLIP to export: {exc}") from exc
    tokenizer, _ = _processors(hf_dir, False)

    class TextTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return _Embeds(_embeddings(self.model.get_text_features(input_ids=input_ids,
                                                                   attention_mask=attention_mask)))

    class VisionTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return _embeddings(self.model.get_image_features(pixel_values=pixel_values))

    text_path, vision_path = (Path(out_path).parent / Path(name).name for name in tower_files(Path(out_path).name))
    example = tokenizer(["searchbox exports this model", "a second, somewhat longer example sentence"],
                        padding=True, return_tensors="np")
    export_graph(TextTower(), "embeds", {name: example[name].astype(np.int64)
                                         for name in ("input_ids", "attention_mask")}, text_path)
    graph = onnx.load(str(text_path))
    onnx.helper.set_model_props(graph, {_SCALE_METADATA: repr(float(model.logit_scale.detach().float().exp()))})
    onnx.save(graph, str(text_path))
    images = [Image.new("RGB", (40, 30), colour) for colour in ((200, 30, 30), (20, 90, 220))]
    example_pixels = torch.from_numpy(pixels(images=images)["pixel_values"])
    try:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(VisionTower().eval(), args=(), kwargs={"pixel_values": example_pixels},
                              f=str(vision_path), input_names=["pixel_values"], output_names=["embeds"],
                              dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}}, dynamo=True,
                              external_data=False, opset_version=18, verbose=False)
    except Exception as exc:  # the exporter raises many types; any of them means this model does not export
        raise ModelDirectoryError(f"torch's ONNX exporter refused the vision tower: {type(exc).__name__}: "
                                  f"{exc}") from exc


KIND = Kind(
    name="multimodal",
    summary="multimodal embeddings (texts and images in one space)",
    recognizes=_is_multimodal,
    model=MultimodalModel,
    csv=CsvLayout(EMBED, (CsvColumn("text"), CsvColumn("url", optional=True),
                                    CsvColumn("bytes", optional=True))),
    backends={"torch": MultimodalModel, "onnx": OnnxMultimodalModel},
    onnx_export=export_onnx,
    onnx_graphs=tower_files,
)
