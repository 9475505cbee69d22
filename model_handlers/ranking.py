"""Ranking: the rules every rerank answer follows, whatever scores the documents.

- Long documents are split into windows (`Windowing`), never silently cut to their head; a document
  keeps its best window's score (`best_per_document`). Every kind builds its work the same way (`windowed`):
  the query's own inputs, then each document's pieces (its windows, or an image whole) and their tokens.
- A request may make at most a configured number of model inputs (`check_window_count`).
- Scores: a cross-encoder's own (`Scoring.PAIR`: one score per (query, window) input), the cosine of
  query and window embeddings (`Scoring.COSINE`), or late interaction over token vectors (`Scoring.MAXSIM`:
  for each query token its best cosine over the window's token vectors, summed, as ColBERT scores), or the dot
  product of query and window outputs (`Scoring.DOT`: sparse vectors, as SPLADE scores), or BGE-M3's weighted mean
  of the three (`Scoring.HYBRID`), or a listwise model's blocks (`Scoring.LISTWISE`: each input holds several
  documents, and the blocks' query vectors merge into one before any document is scored).
- Hits are sorted by score, highest first, ties in input order, cut to `top_n` (`rank`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Hashable, Protocol, Sequence, TypeVar

import numpy as np

from model_handlers.errors import TooLarge
from model_handlers.types import RerankHit

Document = TypeVar("Document")


class WindowSettings(Protocol):
    """What `searchbox.json` may say of windows (model_handlers.serving_config.ServingConfig has both)."""

    rerank_window_tokens: int | None
    rerank_window_overlap: int | None


class Scoring(str, enum.Enum):
    """How a model's outputs become window scores."""

    PAIR = "pair"  # each input is (query, window); its output is the score
    COSINE = "cosine"  # the first input is the query; each other input a window; score = cosine with the query
    # the query's and each window's outputs are token vectors (one row each); score = sum over query rows of
    # the row's best cosine over the window's rows
    MAXSIM = "maxsim"
    # the first input is the query; each other input a window; score = dot product with the query's output (sparse
    # models: their weights are the scores, unnormalised)
    DOT = "dot"
    # the query's and each window's outputs are `Hybrid`s (BGE-M3's three outputs of one pass); score = the weighted
    # mean (`RerankWork.weights`) of their dense cosine, sparse dot product and mean late interaction
    HYBRID = "hybrid"
    # each input is a block of documents read with the query in one context (jina-reranker-v3); its output is a
    # matrix: the block's query vector, then one row per document of the block, blocks in document order. The
    # query vectors are averaged with weights (1 + the block's best cosine) / 2, and every document scores by
    # cosine with that average (`listwise_scores`)
    LISTWISE = "listwise"


@dataclass(frozen=True)
class Hybrid:
    """One input's outputs of a model that makes three forms in one pass (BGE-M3), as its `compute_score` reads them."""

    dense: np.ndarray  # a unit vector
    sparse_ids: np.ndarray  # the token ids it weighs, ascending
    sparse_weights: np.ndarray
    tokens: np.ndarray  # unit token vectors, one row each

    def scores(self, window: "Hybrid") -> tuple[float, float, float]:
        """(dense, sparse, late interaction) against a window: the cosine; the dot product of the weights of the token
        ids both hold; each query token's best cosine over the window's, averaged over the query's tokens."""
        dense = float(np.dot(self.dense.astype(np.float64), window.dense))
        _, mine, theirs = np.intersect1d(self.sparse_ids, window.sparse_ids, assume_unique=True, return_indices=True)
        sparse = float(np.dot(self.sparse_weights[mine].astype(np.float64), window.sparse_weights[theirs]))
        late = maxsim(self.tokens, window.tokens) / max(len(self.tokens), 1)
        return dense, sparse, late


@dataclass(frozen=True)
class Windowing:
    """How a document longer than its room is split: windows of `size` tokens overlapping by `overlap`."""

    size: int
    overlap: int

    @classmethod
    def within(cls, room: int, config: WindowSettings) -> "Windowing":
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


@dataclass(frozen=True)
class RerankWork:
    """A rerank request prepared by a model: the inputs to run, and how their outputs become document scores.

    Attributes:
        items: the model inputs (batcher work items), the query's first when `scoring` is COSINE.
        owners: for each input, the index of the document it is a window of (None for the query); LISTWISE: of the
            first document of its block.
        scoring: how outputs become scores.
        query_tokens: tokens billed to the query (`query_usage`).
        document_tokens: tokens billed to each document (its windows, with their special tokens).
        adapters: the LoRA adapters the inputs name (held until the request is answered).
    """

    items: Sequence[Hashable]
    owners: Sequence[int | None]
    scoring: Scoring
    query_tokens: int
    document_tokens: Sequence[int]
    adapters: tuple[str, ...] = ()
    weights: tuple[float, float, float] | None = None  # HYBRID: of the dense, sparse and late-interaction scores


def windowed(scoring: Scoring, query: Sequence[Hashable], query_tokens: int, documents: Sequence[Document],
             pieces: Callable[[int, Document], tuple[Sequence[Hashable], int]], max_windows: int) -> RerankWork:
    """The work of a rerank request: the query's own inputs, then each document's pieces, in document order.

    Args:
        scoring: how the outputs become scores.
        query: the query's own model inputs (none for a cross-encoder, whose pairs hold it), owned by no document.
        query_tokens: the tokens billed to the query.
        documents: the documents, as the model reads them (token ids, inputs).
        pieces: `pieces(index, document)`: the document's model inputs (its windows, `Windowing.split`; an image
            whole) and the tokens billed to it.
        max_windows: the model inputs the documents may make; past it the request is refused at once, before
            the rest of the documents is prepared.

    Raises:
        TooLarge: the documents make more than `max_windows` model inputs.
    """
    items, owners, document_tokens = list(query), [None] * len(query), []
    for index, document in enumerate(documents):
        made, tokens = pieces(index, document)
        items.extend(made)
        owners.extend([index] * len(made))
        document_tokens.append(tokens)
        check_window_count(len(items) - len(query), max_windows)
    return RerankWork(items=items, owners=owners, scoring=scoring, query_tokens=query_tokens,
                      document_tokens=document_tokens)


def check_window_count(windows: int, cap: int) -> None:
    """A rerank request may make at most `cap` model inputs: a huge document is refused, not read for minutes.

    Raises:
        TooLarge: naming the count and how to split.
    """
    if windows > cap:
        raise TooLarge(f"the documents make more than {cap} windows of model input (a long document is read in "
                       f"windows); send fewer or shorter documents per request, at most {cap} windows")


def window_scores(work: RerankWork, outputs: Sequence[np.ndarray]) -> list[float]:
    """One score per window input (query inputs excluded), in input order."""
    if work.scoring is Scoring.PAIR:
        return [float(np.asarray(output).reshape(-1)[0]) for output in outputs]
    if work.scoring is Scoring.HYBRID:
        query, weights = outputs[work.owners.index(None)], np.asarray(work.weights, dtype=np.float64)
        return [float(np.dot(weights, query.scores(outputs[i])) / weights.sum())
                for i, owner in enumerate(work.owners) if owner is not None]
    if work.scoring is Scoring.MAXSIM:
        query = _unit_rows(outputs[work.owners.index(None)])
        return [maxsim(query, _unit_rows(outputs[i])) for i, owner in enumerate(work.owners) if owner is not None]
    vectors = np.stack([np.asarray(output, dtype=np.float64).reshape(-1) for output in outputs])
    if work.scoring is Scoring.DOT:
        query = vectors[work.owners.index(None)]
        return [float(vectors[i] @ query) for i, owner in enumerate(work.owners) if owner is not None]
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    query = vectors[[i for i, owner in enumerate(work.owners) if owner is None][0]]
    return [float(vectors[i] @ query) for i, owner in enumerate(work.owners) if owner is not None]


def maxsim(query: np.ndarray, window: np.ndarray) -> float:
    """Late interaction of unit token vectors: each query row's best cosine over the window's rows, summed.

    A window left without token vectors (every one of its tokens skipped) matches nothing and scores 0.
    """
    if not len(window) or not len(query):
        return 0.0
    return float((query @ window.T).max(axis=1).sum(dtype=np.float64))


def _unit_rows(matrix: np.ndarray, dtype=np.float32) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=dtype)
    return matrix / np.maximum(np.linalg.norm(matrix, axis=-1, keepdims=True), 1e-12)


def listwise_scores(outputs: Sequence[np.ndarray]) -> list[float]:
    """Every document's cosine with the merged query vector of its request's blocks (`Scoring.LISTWISE`): the blocks'
    query vectors averaged, each weighted by (1 + its block's best cosine) / 2."""
    queries, documents, weights = [], [], []
    for block in outputs:
        block = np.asarray(block, dtype=np.float64)
        query, rows = block[0], _unit_rows(block[1:], np.float64)
        weights.append((1.0 + float((rows @ (query / max(np.linalg.norm(query), 1e-12))).max())) / 2.0)
        queries.append(query)
        documents.append(rows)
    merged = np.average(np.stack(queries), axis=0, weights=weights)
    merged /= max(np.linalg.norm(merged), 1e-12)
    return [float(score) for score in np.concatenate(documents) @ merged]


def best_per_document(work: RerankWork, outputs: Sequence[np.ndarray], documents: int) -> list[float]:
    """Each document's best window score (a listwise model's: its one score, `listwise_scores`)."""
    if work.scoring is Scoring.LISTWISE:
        return listwise_scores(outputs)
    best = [float("-inf")] * documents
    owners = [owner for owner in work.owners if owner is not None]
    for owner, score in zip(owners, window_scores(work, outputs)):
        best[owner] = max(best[owner], score)
    return best


def rank(scores: Sequence[float], tokens: Sequence[int], top_n: int | None) -> list[RerankHit]:
    """Hits by score, highest first, ties in input order, cut to `top_n` (clamped to the document count)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # sorted() is stable: ties keep input order
    if top_n is not None:
        order = order[:max(top_n, 0)]
    return [RerankHit(index=i, relevance_score=float(scores[i]), tokens=int(tokens[i])) for i in order]
