"""Cross-encoder rerankers, and the window and ranking rules every rerank answer follows.

A cross-encoder reads the query and one document together and answers one relevance logit. Stages,
as for embeddings: `_prepare` tokenizes, cuts the query and windows the documents on the caller's
thread; the shared `Batcher` runs `_forward` over the (query, window) pairs of many callers, packed by
tokens; `rerank` keeps each document's best window and ranks.

Token accounting (contract §3, §6: it is what a buyer is billed for). Every pair the model reads is
`specials + query + window`. The query's tokens go to `query_tokens` once per pair (a document split
into three windows repeats the query three times); a document's own count (`RerankHit.tokens`) is its
windows' tokens plus the special tokens of its pairs. `query_tokens + document_tokens` is then exactly
what the model processed, and `document_tokens` is the sum of every document's count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Sequence

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from model_handlers.batching import Batcher
from model_handlers.deadline import Deadline
from model_handlers.memory import release_free_memory
from model_handlers.errors import InvalidInput, ModelDirectoryError, TooLarge
from model_handlers.options import HandlerOptions
from model_handlers.serving_config import ModelKind, ServingConfig
from model_handlers.tokenization import TokenizerView
from model_handlers.types import EmbedRequest, EmbedResult, RerankHit, RerankRequest, RerankResult

# Beyond this a tokenizer's model_max_length is a placeholder ("no limit"), not the model's length.
_NO_LIMIT = 1_000_000


@dataclass(frozen=True)
class Windowing:
    """How a document longer than its room is split: windows of `size` tokens overlapping by `overlap`."""

    size: int
    overlap: int

    @classmethod
    def within(cls, room: int, config: ServingConfig) -> "Windowing":
        """The windows for `room` content tokens per model input, as `searchbox.json` asks.

        The window is the configured size, never more than the room (default: the whole room); the
        overlap is the configured one (default: a quarter of the window), never more than half the window.
        """
        size = max(1, min(config.rerank_window_tokens or room, room))
        overlap = size // 4 if config.rerank_window_overlap is None else config.rerank_window_overlap
        return cls(size, min(overlap, size // 2))

    def split(self, content: np.ndarray) -> list[np.ndarray]:
        """Windows at 0, stride, 2*stride, ... and a last one that ends exactly at the document's end."""
        if len(content) <= self.size:
            return [content]
        stride = self.size - self.overlap
        starts = list(range(0, len(content) - self.size, stride)) + [len(content) - self.size]
        return [content[start:start + self.size] for start in starts]


def check_window_count(windows: int, cap: int) -> None:
    """A rerank request may make at most `cap` model inputs: a huge document is refused, not read for minutes.

    Raises:
        TooLarge: naming the count and how to split.
    """
    if windows > cap:
        raise TooLarge(f"the documents make more than {cap} windows of model input (a long document is read in "
                       f"windows); send fewer or shorter documents per request, at most {cap} windows")


def rank(scores: Sequence[float], tokens: Sequence[int], top_n: int | None) -> list[RerankHit]:
    """Hits by score, highest first, ties in input order, cut to `top_n` (clamped to the document count)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # sorted() is stable: ties keep input order
    if top_n is not None:
        order = order[:max(top_n, 0)]
    return [RerankHit(index=i, relevance_score=float(scores[i]), tokens=int(tokens[i])) for i in order]


@dataclass(frozen=True)
class _Pair:
    """One model input: the query and one window of one document."""

    ids: np.ndarray
    type_ids: np.ndarray
    group: Hashable = "pair"

    @property
    def length(self) -> int:
        return len(self.ids)


class CrossEncoderHandler:
    """Serves a `*ForSequenceClassification` directory with one label as a reranker."""

    kind = ModelKind.RERANKER

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        self.config = config
        self.model_name = config.served_model_name
        self._options = options
        device = torch.device(options.resolved_device())
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=True)
            self._model = AutoModelForSequenceClassification.from_pretrained(
                str(model_dir), local_files_only=True, trust_remote_code=True,
                use_safetensors=not options.allow_pickle or None,
            ).to(device)
        except (OSError, ValueError) as exc:
            raise ModelDirectoryError(f"cannot load {model_dir} as a cross-encoder reranker: {exc}") from exc
        self._model.eval()
        labels = int(getattr(self._model.config, "num_labels", 1))
        if labels != 1:
            raise ModelDirectoryError(
                f"{model_dir}: the classifier has {labels} labels; searchbox serves rerankers with one relevance label")
        self.max_length = int(config.max_length or self._default_max_length(tokenizer))
        self._tokenizer = TokenizerView(tokenizer, self.max_length)
        if self._tokenizer.pair_special_count is None:
            raise ModelDirectoryError(f"{model_dir}: the tokenizer has no template for (query, document) pairs")
        # Content tokens one pair holds beside its special tokens; the query takes at most its share.
        self._room = self.max_length - self._tokenizer.pair_special_count
        self.max_query_tokens = max(1, min(config.max_query_tokens or self._room // 2, self._room - 1))
        self._sigmoid = config.score_activation == "sigmoid"
        self._device = device
        self._batcher: Batcher[_Pair, float] = Batcher(
            self._forward,
            max_batch_tokens=options.resolved_max_batch_tokens(device),
            max_batch_items=options.max_batch_items,
            name="rerank-batcher",
            on_idle=release_free_memory,
        )

    def _default_max_length(self, tokenizer) -> int:
        positions = getattr(self._model.config, "max_position_embeddings", None) or 512
        declared = getattr(tokenizer, "model_max_length", None) or _NO_LIMIT
        return int(min(declared, positions)) if declared < _NO_LIMIT else int(positions)

    @property
    def forward_passes(self) -> int:
        return self._batcher.passes

    def embed(self, request: EmbedRequest, deadline: Deadline | None = None) -> EmbedResult:
        raise InvalidInput(
            f"model {self.model_name} is a reranker (cross-encoder): it scores query/document pairs and makes no "
            "embeddings. Send {\"query\": ..., \"documents\": [...]} to /v1/rerank, or "
            "{\"data\": {\"query\": ..., \"documents\": [...]}} to /invocations",
            code="UNSUPPORTED_OPERATION")

    def rerank(self, request: RerankRequest, deadline: Deadline | None = None) -> RerankResult:
        deadline = deadline or self._options.deadline()
        self._batcher.admit(deadline)
        query, pairs, owners, doc_tokens = self._prepare(request)
        scores = self._batcher.run(pairs, deadline)
        best = [float("-inf")] * len(request.documents)
        for owner, score in zip(owners, scores):
            best[owner] = max(best[owner], score)
        return RerankResult(
            hits=rank(best, doc_tokens, request.top_n),
            query_tokens=len(query) * len(pairs),
            document_tokens=sum(doc_tokens),
            model=self.model_name,
            documents=request.documents,
        )

    def warm_up(self) -> None:
        self.rerank(RerankRequest(query="warm up the model", documents=("a first document", "a second one")))
        filler = self._tokenizer.encode(["a"])[0][:1]

        def pair(length: int) -> _Pair:
            content = max(2, length - self._tokenizer.pair_special_count)
            return _Pair(*self._tokenizer.wrap_pair(np.repeat(filler, content // 2),
                                                   np.repeat(filler, content - content // 2)))

        self._batcher.calibrate(pair, self.max_length)

    def admit(self, deadline: Deadline) -> None:
        """Refuse at once (Overloaded) when the queued work alone would outlast `deadline`."""
        self._batcher.admit(deadline)

    def drain(self, grace_s: float) -> None:
        self._batcher.drain(grace_s)

    def close(self) -> None:
        self._batcher.close()

    # --- stage 1: on the caller's thread -------------------------------------------------------

    def _prepare(self, request: RerankRequest) -> tuple[np.ndarray, list[_Pair], list[int], list[int]]:
        """The cut query, the pairs to score, which document each pair belongs to, each document's tokens."""
        query = self._tokenizer.encode([request.query])[0][: self.max_query_tokens]
        contents = self._tokenizer.encode(request.documents) if request.documents else []
        windowing = Windowing.within(self._room - len(query), self.config)
        specials = self._tokenizer.pair_special_count
        pairs, owners, doc_tokens = [], [], []
        for index, content in enumerate(contents):
            windows = windowing.split(content)
            for window in windows:
                pairs.append(_Pair(*self._tokenizer.wrap_pair(query, window)))
                owners.append(index)
            doc_tokens.append(sum(len(w) for w in windows) + specials * len(windows))
            check_window_count(len(pairs), self._options.max_rerank_windows)
        return query, pairs, owners, doc_tokens

    # --- stage 2: on the batcher thread -----------------------------------------------------------

    @torch.inference_mode()
    def _forward(self, pairs: list[_Pair]) -> list[float]:
        features = self._tokenizer.pad([p.ids for p in pairs], self._device, type_ids=[p.type_ids for p in pairs])
        logits = self._model(**features).logits[:, 0].float()
        scores = torch.sigmoid(logits) if self._sigmoid else logits
        return scores.cpu().tolist()
