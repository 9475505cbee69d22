"""Text embedding models: sentence-transformers directories (or plain Hugging Face encoders).

Stages, each its own method: `_prepare` tokenizes and checks a request on the caller's thread,
the batcher runs `_forward` over sequences of many callers, `_finish` cuts, normalises and
encodes each caller's rows. sentence-transformers' own modules do the pooling the model declares.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Sequence

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules.normalize import Normalize
from sentence_transformers.sentence_transformer.modules.pooling import Pooling

from model_handlers.batching import Batcher
from model_handlers.deadline import Deadline
from model_handlers.memory import release_free_memory
from model_handlers.encodings import encode_embedding
from model_handlers.errors import InvalidInput, InvalidOption, ModelDirectoryError
from model_handlers.options import HandlerOptions
from model_handlers.serving_config import ModelKind, ServingConfig, TaskSpec
from model_handlers.tokenization import TokenizerView
from model_handlers.types import EmbedRequest, EmbedResult, RerankRequest, RerankResult, TextInput

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Sequence:
    """One model input row: a tokenized text, or several texts packed for late chunking."""

    ids: np.ndarray
    group: Hashable
    # Late chunking: (start, end) token spans to mean-pool, one per packed input; None: the model pools.
    spans: tuple[tuple[int, int], ...] | None = None
    prompt_length: int = 0
    adapter: str | None = None

    @property
    def length(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class _Prepared:
    sequences: list[_Sequence]
    token_counts: list[int]


class TextEmbeddingHandler:
    """Serves one sentence-transformers (or plain encoder) model directory."""

    kind = ModelKind.EMBEDDING

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        self.config = config
        self.model_name = config.served_model_name
        self._options = options
        model_kwargs = {} if options.allow_pickle else {"use_safetensors": True}
        try:
            self._model = SentenceTransformer(
                str(model_dir), device=options.resolved_device(), local_files_only=True,
                trust_remote_code=True, model_kwargs=model_kwargs,
            )
        except (OSError, ValueError) as exc:
            raise ModelDirectoryError(f"cannot load {model_dir} as an embedding model: {exc}") from exc
        self._model.eval()
        modules = list(self._model.children())
        pooling_at = next((i for i, m in enumerate(modules) if isinstance(m, Pooling)), None)
        if pooling_at is None:
            raise ModelDirectoryError(f"{model_dir}: no pooling module; searchbox serves pooled embedding models")
        # A trailing Normalize is applied by _finish instead, so `normalized: false` can skip it.
        if isinstance(modules[-1], Normalize):
            modules = modules[:-1]
        self._encoder_modules = modules[:pooling_at]
        self._pooling = modules[pooling_at]
        self._post_pooling_modules = modules[pooling_at + 1:]
        self.dimensions = int(self._model.get_embedding_dimension())
        self.max_length = int(config.max_length or self._model.max_seq_length or 512)
        self._tokenizer = TokenizerView(self._model.tokenizer, self.max_length)
        self._device = self._model.device
        self._batcher: Batcher[_Sequence, np.ndarray] = Batcher(
            self._forward,
            max_batch_tokens=options.resolved_max_batch_tokens(self._device),
            max_batch_items=options.max_batch_items,
            name="embedding-batcher",
            on_idle=release_free_memory,
        )

    @property
    def forward_passes(self) -> int:
        return self._batcher.passes

    def embed(self, request: EmbedRequest, deadline: Deadline | None = None) -> EmbedResult:
        deadline = deadline or self._options.deadline()
        self._batcher.admit(deadline)
        prepared = self._prepare(request)
        outputs = self._batcher.run(prepared.sequences, deadline)
        rows = [row for output in outputs for row in output]
        return self._finish(request, rows, prepared.token_counts)

    def rerank(self, request: RerankRequest, deadline: Deadline | None = None) -> RerankResult:
        """Rerank by the cosine of query and document embeddings (the `retrieval.*` tasks when the model has them).

        A document longer than the model's max length is embedded in overlapping windows and scores its
        best window (model_handlers/reranker.py); usage counts every sequence embedded, special tokens included.
        """
        from model_handlers.reranker import Windowing, check_window_count, rank

        if not request.documents:
            return RerankResult(hits=[], query_tokens=0, document_tokens=0, model=self.model_name)
        deadline = deadline or self._options.deadline()
        self._batcher.admit(deadline)
        query = self._prepare_each([request.query], self.config.task_spec("retrieval.query"), truncate=True)
        spec = self.config.task_spec("retrieval.passage")
        prompt = self._tokenizer.encode([spec.prompt])[0] if spec.prompt else np.zeros(0, dtype=np.int64)
        windowing = Windowing.within(self._tokenizer.room - len(prompt), self.config)
        prompt_length = self._prompt_length(spec)
        group = ("each", spec.adapter, prompt_length)  # the group _prepare_each gives, so windows batch with the query
        windows, owners, doc_tokens = [], [], []
        for index, content in enumerate(self._tokenizer.encode(request.documents)):
            pieces = [_Sequence(self._tokenizer.wrap(np.concatenate([prompt, w])), group,
                                prompt_length=prompt_length, adapter=spec.adapter) for w in windowing.split(content)]
            windows.extend(pieces)
            owners.extend([index] * len(pieces))
            doc_tokens.append(sum(p.length for p in pieces))
            check_window_count(len(windows), self._options.max_rerank_windows)
        outputs = self._batcher.run(query.sequences + windows, deadline)
        vectors = np.stack([output[0] for output in outputs]).astype(np.float64)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        best = [float("-inf")] * len(request.documents)
        for owner, similarity in zip(owners, vectors[1:] @ vectors[0]):
            best[owner] = max(best[owner], float(similarity))
        return RerankResult(hits=rank(best, doc_tokens, request.top_n), query_tokens=query.token_counts[0],
                            document_tokens=sum(doc_tokens), model=self.model_name, documents=request.documents)

    def warm_up(self) -> None:
        self.embed(EmbedRequest(inputs=(TextInput("warm up the model"),)))
        filler = self._tokenizer.encode(["a"])[0][:1]
        self._batcher.calibrate(lambda length: _Sequence(
            self._tokenizer.wrap(np.repeat(filler, max(0, length - self._tokenizer.special_count))),
            ("each", None, 0)), self.max_length)

    def admit(self, deadline: Deadline) -> None:
        """Refuse at once (Overloaded) when the queued work alone would outlast `deadline`."""
        self._batcher.admit(deadline)

    def drain(self, grace_s: float) -> None:
        self._batcher.drain(grace_s)

    def close(self) -> None:
        self._batcher.close()

    # --- stage 1: on the caller's thread -------------------------------------------------------

    def _prepare(self, request: EmbedRequest) -> _Prepared:
        texts = []
        for index, item in enumerate(request.inputs):
            if not isinstance(item, TextInput):
                raise InvalidInput(f"input {index} is an image; model {self.model_name} embeds text only",
                                   code="UNSUPPORTED_INPUT_TYPE")
            texts.append(item.text)
        if request.dimensions is not None and not 1 <= request.dimensions <= self.dimensions:
            raise InvalidOption(
                f"dimensions must be between 1 and {self.dimensions} for model {self.model_name}, "
                f"got {request.dimensions}", code="INVALID_DIMENSIONS")
        spec = self.config.task_spec(request.task)
        if request.late_chunking:
            return self._prepare_late_chunking(texts, spec, request.truncate)
        return self._prepare_each(texts, spec, request.truncate)

    def _prepare_each(self, texts: list[str], spec: TaskSpec, truncate: bool) -> _Prepared:
        contents = self._tokenizer.encode([spec.prompt + text for text in texts])
        prompt_length = self._prompt_length(spec)
        group = ("each", spec.adapter, prompt_length)
        sequences = []
        for index, content in enumerate(contents):
            content = self._fit(content, self._tokenizer.room, index, truncate)
            sequences.append(_Sequence(self._tokenizer.wrap(content), group,
                                       prompt_length=prompt_length, adapter=spec.adapter))
        return _Prepared(sequences, [s.length for s in sequences])

    def _prepare_late_chunking(self, texts: list[str], spec: TaskSpec, truncate: bool) -> _Prepared:
        """Pack consecutive inputs into as few sequences as fit the max length; pool each input's span.

        An input that alone exceeds the room is cut (truncate) or refused; inputs never straddle
        two sequences, so each span is seen whole in its context.
        """
        prompt = self._tokenizer.encode([spec.prompt])[0] if spec.prompt else np.zeros(0, dtype=np.int64)
        room = self._tokenizer.room - len(prompt)
        contents = [self._fit(c, room, i, truncate) for i, c in enumerate(self._tokenizer.encode(texts))]
        group = ("late", spec.adapter)
        overhead = self._tokenizer.special_count + len(prompt)
        sequences, token_counts = [], []
        start = 0
        while start < len(contents):
            end, used = start, 0
            while end < len(contents) and used + len(contents[end]) <= room:
                used += len(contents[end])
                end += 1
            offset = len(self._tokenizer.prefix) + len(prompt)
            spans = []
            for content in contents[start:end]:
                spans.append((offset, offset + len(content)))
                offset += len(content)
            ids = self._tokenizer.wrap(np.concatenate([prompt, *contents[start:end]]))
            sequences.append(_Sequence(ids, group, spans=tuple(spans), adapter=spec.adapter))
            # Special and prompt tokens are billed once per sequence, with its first input.
            token_counts.extend(len(c) + (overhead if i == 0 else 0) for i, c in enumerate(contents[start:end]))
            start = end
        return _Prepared(sequences, token_counts)

    def _fit(self, content: np.ndarray, room: int, index: int, truncate: bool) -> np.ndarray:
        if len(content) <= room:
            return content
        if truncate:
            return content[:room]
        total = len(content) + self._tokenizer.special_count
        raise InvalidInput(
            f"input {index} has {total} tokens, over the model's limit of {self.max_length}; "
            "shorten it or set truncate to true", code="INPUT_TOKEN_LIMIT_EXCEEDED")

    def _prompt_length(self, spec: TaskSpec) -> int:
        """Prompt tokens the pooling must skip; 0 when the model pools over its prompt (the usual case)."""
        if not spec.prompt or getattr(self._pooling, "include_prompt", True):
            return 0
        return len(self._tokenizer.prefix) + len(self._tokenizer.encode([spec.prompt])[0])

    # --- stage 2: on the batcher thread -----------------------------------------------------------

    @torch.inference_mode()
    def _forward(self, sequences: list[_Sequence]) -> list[np.ndarray]:
        features = self._tokenizer.pad([s.ids for s in sequences], self._device)
        first = sequences[0]
        if first.adapter is not None:
            features["task"] = first.adapter
        if first.prompt_length:
            features["prompt_length"] = first.prompt_length
        for module in self._encoder_modules:
            features = module(features)
        if first.spans is None:
            features = self._pooling(features)
            pooled = self._post_pool(features)
            return [row[None, :] for row in pooled]
        return self._pool_spans(sequences, features["token_embeddings"])

    def _pool_spans(self, sequences: list[_Sequence], tokens: torch.Tensor) -> list[np.ndarray]:
        span_vectors, counts = [], []
        for row, sequence in enumerate(sequences):
            for start, end in sequence.spans:
                # An empty input has no tokens of its own: it takes its whole sequence's mean.
                window = tokens[row, start:end] if end > start else tokens[row, :sequence.length]
                span_vectors.append(window.mean(dim=0))
            counts.append(len(sequence.spans))
        pooled = self._post_pool({"sentence_embedding": torch.stack(span_vectors)})
        return list(np.split(pooled, np.cumsum(counts)[:-1]))

    def _post_pool(self, features: dict) -> np.ndarray:
        for module in self._post_pooling_modules:
            features = module(features)
        return features["sentence_embedding"].float().cpu().numpy()

    # --- stage 3: on the caller's thread ----------------------------------------------------------

    def _finish(self, request: EmbedRequest, rows: Sequence[np.ndarray], token_counts: list[int]) -> EmbedResult:
        embeddings = []
        for row in rows:
            if request.dimensions is not None:
                row = row[: request.dimensions]
            if request.normalized:
                row = row / max(float(np.linalg.norm(row)), 1e-12)
            embeddings.append(encode_embedding(row, request.embedding_types))
        return EmbedResult(embeddings=embeddings, token_counts=token_counts, model=self.model_name)
