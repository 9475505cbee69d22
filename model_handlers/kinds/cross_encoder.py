"""Kind `reranker`: cross-encoders, `*ForSequenceClassification` directories with one relevance label.

A cross-encoder reads the query and one document together and answers one relevance logit; it makes
no embeddings. `prepare_rerank` cuts the query and windows the documents on the caller's thread; the
batcher runs `forward` over the (query, window) pairs of many callers, packed by tokens; the pipeline
keeps each document's best window and ranks.

Token accounting (contract §3, §6: it is what a buyer is billed for). Every pair the model reads is
`specials + query + window`. The query's tokens go to `query_tokens` once per pair (a document split
into three windows repeats the query three times); a document's own count is its windows' tokens plus
the special tokens of its pairs. `query_tokens + document_tokens` is then exactly what the model
processed, and `document_tokens` is the sum of every document's count.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable

import numpy as np

from model_handlers import jina_layout, model_code
from model_handlers.errors import ModelDirectoryError
from model_handlers.kinds import CsvColumn, CsvLayout, Kind, ModelFiles
from model_handlers.lengths import Lengths
from model_handlers.model_files import read_object
from model_handlers.onnx_runtime import OnnxSession, export_graph
from model_handlers.operations.rerank import RERANK
from model_handlers.options import HandlerOptions
from model_handlers.ranking import RerankWork, Scoring, Windowing, windowed
from model_handlers.serving_config import ServingConfig
from model_handlers.tokenization import TokenizerView
from model_handlers.types import RerankRequest, texts_of


@dataclass(frozen=True)
class _Pair:
    """One model input: the query and one window of one document."""

    ids: np.ndarray
    type_ids: np.ndarray
    group: Hashable = "pair"

    @property
    def length(self) -> int:
        return len(self.ids)


class CrossEncoderModel:
    """Serves a `*ForSequenceClassification` directory with one label as a reranker (torch or ONNX backend)."""

    width = None  # a cross-encoder makes scores, no vectors
    rerank_scoring = "pointwise: a cross-encoder reads each (query, document) pair"

    def __init__(self, model_dir: Path, scorer: "_TorchScorer | _OnnxScorer", config: ServingConfig):
        self.config = config
        self._scorer = scorer
        self.device = self._scorer.device
        self.reentrant = self._scorer.reentrant
        self.max_length = self._scorer.max_length
        self._tokenizer = self._scorer.tokenizer
        if self._tokenizer.pair_special_count is None:
            raise ModelDirectoryError(f"{model_dir}: the tokenizer has no template for (query, document) pairs")
        # Content tokens one pair holds beside its special tokens; the query takes at most its share.
        self._room = self.max_length - self._tokenizer.pair_special_count
        self.max_query_tokens = max(1, min(config.max_query_tokens or self._room // 2, self._room - 1))

    # --- on the caller's thread -----------------------------------------------------------------------

    def prepare_rerank(self, request: RerankRequest, max_windows: int) -> RerankWork:
        """The cut query and one (query, window) pair per window of each document."""
        query_text = texts_of([request.query], self.config.served_model_name, "the query")
        documents = texts_of(request.documents, self.config.served_model_name, "document")
        query = self._tokenizer.encode(query_text)[0][: self.max_query_tokens]
        windowing = Windowing.within(self._room - len(query), self.config)
        specials = self._tokenizer.pair_special_count

        def pairs(index: int, content: np.ndarray) -> tuple[list[_Pair], int]:
            windows = windowing.split(content)
            return ([_Pair(*self._tokenizer.wrap_pair(query, window)) for window in windows],
                    sum(len(w) for w in windows) + specials * len(windows))

        work = windowed(Scoring.PAIR, (), 0, self._tokenizer.encode(documents), pairs, max_windows)
        # every pair reads the query: it is billed once per pair
        return dataclasses.replace(work, query_tokens=len(query) * len(work.items))

    def text_tokenizer(self) -> TokenizerView:
        """The tokenizer it reads texts with (tokenize and segment requests)."""
        return self._tokenizer

    def calibration_item(self, length: int) -> _Pair:
        filler = self._tokenizer.encode(["a"])[0][:1]
        content = max(2, length - self._tokenizer.pair_special_count)
        return _Pair(*self._tokenizer.wrap_pair(np.repeat(filler, content // 2), np.repeat(filler, content - content // 2)))

    # --- on the batcher's thread ----------------------------------------------------------------------

    def forward(self, pairs: list[_Pair]) -> list[list[np.ndarray]]:
        padded = self._tokenizer.pad([p.ids for p in pairs], type_ids=[p.type_ids for p in pairs])
        logits = self._scorer.logits(padded)
        activation = self.config.score_activation
        if activation == "sigmoid":  # tanh's form of the sigmoid: no overflow for very negative logits
            scores = 0.5 * (1.0 + np.tanh(0.5 * logits))
        elif activation == "tanh":
            scores = np.tanh(logits)
        else:
            scores = logits
        return [[score] for score in scores.astype(np.float32)]


class _TorchScorer:
    """transformers' AutoModelForSequenceClassification (or, for Jina's flash checkpoints, the transformers class
    that computes the same): one logit per pair."""

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        import torch

        self.device = options.resolved_device()
        self._device = torch.device(self.device)
        tokenizer, self._model, self.reentrant = _classifier(model_dir, options, self.device)
        labels = int(getattr(self._model.config, "num_labels", 1))
        if labels != 1:
            raise ModelDirectoryError(
                f"{model_dir}: the classifier has {labels} labels; searchbox serves rerankers with one relevance label")
        # transformers' classes cut where the tokenizer and the positions say (no sentence-transformers settings)
        lengths = Lengths.of(tokenizer=getattr(tokenizer, "model_max_length", None),
                             positions=getattr(self._model.config, "max_position_embeddings", None))
        self.max_length = lengths.served(config.max_length)
        self.tokenizer = TokenizerView.from_hf(tokenizer, self.max_length)

    def logits(self, padded: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            features = {name: torch.from_numpy(array).to(self._device) for name, array in padded.items()}
            return self._model(**features).logits[:, 0].float().cpu().numpy()


class _OnnxScorer:
    """The classifier exported to ONNX at packaging time (no torch, no transformers on this path)."""

    reentrant = True  # ONNX Runtime runs a session's passes on several threads at once

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        self._session = OnnxSession.of(model_dir, config, options)
        self.device = self._session.device
        hf_config = read_object(model_dir / "config.json")
        if int(hf_config.get("num_labels") or len(hf_config.get("id2label") or {0: 0})) != 1:
            raise ModelDirectoryError(f"{model_dir}: searchbox serves rerankers with one relevance label")
        self.max_length = Lengths.read(model_dir, sentence_transformers=False).served(config.max_length)
        self.tokenizer = self._session.tokenizer(model_dir, self.max_length)

    def logits(self, padded: dict[str, np.ndarray]) -> np.ndarray:
        return self._session.run(padded)[:, 0].astype(np.float32)


def _classifier(model_dir: Path, options: HandlerOptions, device: str):
    """The tokenizer, the classifier on `device` in eval mode, and whether its passes may run at once: natively for a
    Jina flash checkpoint (model_handlers/jina_layout.py), else through transformers' Auto classes, with remote code
    only as model_handlers/model_code.py allows. transformers' own classes keep nothing of a pass; a directory's own
    code might, so it runs one pass at a time."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    trust = model_code.trusts(model_dir, options)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=trust)
        if jina_layout.layout(read_object(model_dir / "config.json")):
            return tokenizer, jina_layout.load(model_dir, jina_layout.CLASSIFIER, device=device,
                                               allow_pickle=options.allow_pickle)[0], True
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), local_files_only=True, trust_remote_code=trust,
            use_safetensors=not options.allow_pickle or None)
    except (OSError, ValueError) as exc:
        raise ModelDirectoryError(f"cannot load {model_dir} as a cross-encoder reranker: {exc}") from exc
    return tokenizer, model.to(device).eval(), not trust


def export_onnx(model_dir: Path, out_path: Path) -> None:
    """The classifier as ONNX: the inputs its tokenizer makes for a (query, document) pair -> `logits`.

    Raises:
        ModelDirectoryError: the model does not export (the message says why).
    """
    tokenizer, model, _ = _classifier(model_dir, HandlerOptions(), "cpu")
    example = tokenizer(["what does searchbox export?", "which query is this?"],
                        ["the cross-encoder as an ONNX graph", "a second document, a little longer than the first"],
                        padding=True, return_tensors="np")
    export_graph(model, "logits", {name: example[name].astype(np.int64) for name in example}, out_path)


def _is_cross_encoder(files: ModelFiles) -> bool:
    return any(architecture.endswith("ForSequenceClassification") for architecture in files.architectures)


KIND = Kind(
    name="reranker",
    summary="a reranker (cross-encoder)",
    recognizes=_is_cross_encoder,
    model=CrossEncoderModel,
    csv=CsvLayout(RERANK, (CsvColumn("query"), CsvColumn("documents", json=True),
                                     CsvColumn("top_n", optional=True))),
    backends={"torch": lambda model_dir, config, options: CrossEncoderModel(
                  model_dir, _TorchScorer(model_dir, config, options), config),
              "onnx": lambda model_dir, config, options: CrossEncoderModel(
                  model_dir, _OnnxScorer(model_dir, config, options), config)},
    onnx_export=export_onnx,
)
