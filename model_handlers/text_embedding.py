"""Kind `embedding`: sentence-transformers directories (or plain Hugging Face encoders) that pool one vector per text.

The catch-all kind: any directory no other kind recognises is served as a text embedding model. It
reranks by the cosine of query and document embeddings (its `retrieval.*` prompts when it has them).

The model prepares on the caller's thread (`prepare_embed`: prompts, tokenizing, length checks, late
chunking's packing) and runs sentence-transformers' own modules on the batcher's thread (`forward`):
the modules before pooling, the pooling the model declares, the modules after it but a final Normalize
(the pipeline normalises when asked, so that `normalized: false` can skip it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable

import numpy as np

from model_handlers.errors import InvalidInput, ModelDirectoryError
from model_handlers.kinds import CsvColumn, CsvLayout, Kind, Samples
from model_handlers.options import HandlerOptions
from model_handlers.pipeline import Prepared
from model_handlers.ranking import RerankWork, Scoring, Windowing, check_window_count
from model_handlers.serving_config import ServingConfig, TaskSpec
from model_handlers.tokenization import TokenizerView
from model_handlers.types import EmbedRequest, Operation, RerankRequest, texts_of

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


class TextEmbeddingModel:
    """One sentence-transformers (or plain encoder) model directory."""

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules.normalize import Normalize
        from sentence_transformers.sentence_transformer.modules.pooling import Pooling

        self.config = config
        self.model_name = config.served_model_name
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
        # A trailing Normalize is applied by the pipeline instead, so `normalized: false` can skip it.
        if isinstance(modules[-1], Normalize):
            modules = modules[:-1]
        self._encoder_modules = modules[:pooling_at]
        self._pooling = modules[pooling_at]
        self._post_pooling_modules = modules[pooling_at + 1:]
        self.width = int(self._model.get_embedding_dimension())
        self.max_length = int(config.max_length or self._model.max_seq_length or 512)
        self._tokenizer = TokenizerView(self._model.tokenizer, self.max_length)
        self._device = self._model.device
        self.device = str(self._device)

    # --- on the caller's thread -----------------------------------------------------------------------

    def prepare_embed(self, request: EmbedRequest) -> Prepared:
        texts = texts_of(request.inputs, self.model_name)
        spec = self.config.task_spec(request.effective_task)
        if request.late_chunking:
            return self._prepare_late_chunking(texts, spec, request.truncate)
        return self._prepare_each(texts, spec, request.truncate)

    def prepare_rerank(self, request: RerankRequest, max_windows: int) -> RerankWork:
        """The query, then every window of every document, embedded with the `retrieval.*` tasks' prompts.

        A document longer than the model's max length is embedded in overlapping windows; usage counts
        every sequence embedded, special tokens included.
        """
        query_text = texts_of([request.query], self.model_name, "the query")
        documents = texts_of(request.documents, self.model_name, "document")
        query = self._prepare_each(query_text, self.config.task_spec("retrieval.query"), truncate=True)
        spec = self.config.task_spec("retrieval.passage")
        prompt = self._tokenizer.encode([spec.prompt])[0] if spec.prompt else np.zeros(0, dtype=np.int64)
        windowing = Windowing.within(self._tokenizer.room - len(prompt), self.config)
        prompt_length = self._prompt_length(spec)
        group = ("each", spec.adapter, prompt_length)  # the group _prepare_each gives, so windows batch with the query
        items, owners, doc_tokens = list(query.items), [None], []
        for index, content in enumerate(self._tokenizer.encode(documents)):
            pieces = [_Sequence(self._tokenizer.wrap(np.concatenate([prompt, w])), group,
                                prompt_length=prompt_length, adapter=spec.adapter) for w in windowing.split(content)]
            items.extend(pieces)
            owners.extend([index] * len(pieces))
            doc_tokens.append(sum(p.length for p in pieces))
            check_window_count(len(items) - 1, max_windows)
        return RerankWork(items=items, owners=owners, scoring=Scoring.COSINE, query_tokens=query.token_counts[0],
                          document_tokens=doc_tokens)

    def calibration_item(self, length: int) -> _Sequence:
        filler = self._tokenizer.encode(["a"])[0][:1]
        return _Sequence(self._tokenizer.wrap(np.repeat(filler, max(0, length - self._tokenizer.special_count))),
                         ("each", None, 0))

    def _prepare_each(self, texts: list[str], spec: TaskSpec, truncate: bool) -> Prepared:
        contents = self._tokenizer.encode([spec.prompt + text for text in texts])
        prompt_length = self._prompt_length(spec)
        group = ("each", spec.adapter, prompt_length)
        sequences = []
        for index, content in enumerate(contents):
            content = self._fit(content, self._tokenizer.room, index, truncate)
            sequences.append(_Sequence(self._tokenizer.wrap(content), group,
                                       prompt_length=prompt_length, adapter=spec.adapter))
        return Prepared(sequences, [s.length for s in sequences])

    def _prepare_late_chunking(self, texts: list[str], spec: TaskSpec, truncate: bool) -> Prepared:
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
        return Prepared(sequences, token_counts)

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

    # --- on the batcher's thread ----------------------------------------------------------------------

    def forward(self, sequences: list[_Sequence]) -> list[list[np.ndarray]]:
        import torch

        with torch.inference_mode():
            padded = self._tokenizer.pad([s.ids for s in sequences])
            features = {name: torch.from_numpy(array).to(self._device) for name, array in padded.items()}
            first = sequences[0]
            if first.adapter is not None:
                features["task"] = first.adapter
            if first.prompt_length:
                features["prompt_length"] = first.prompt_length
            for module in self._encoder_modules:
                features = module(features)
            if first.spans is None:
                pooled = self._post_pool(self._pooling(features))
                return [[row] for row in pooled]
            return self._pool_spans(sequences, features["token_embeddings"])

    def _pool_spans(self, sequences: list[_Sequence], tokens) -> list[list[np.ndarray]]:
        import torch

        span_vectors, counts = [], []
        for row, sequence in enumerate(sequences):
            for start, end in sequence.spans:
                # An empty input has no tokens of its own: it takes its whole sequence's mean.
                window = tokens[row, start:end] if end > start else tokens[row, :sequence.length]
                span_vectors.append(window.mean(dim=0))
            counts.append(len(sequence.spans))
        pooled = self._post_pool({"sentence_embedding": torch.stack(span_vectors)})
        return [list(part) for part in np.split(pooled, np.cumsum(counts)[:-1])]

    def _post_pool(self, features: dict) -> np.ndarray:
        for module in self._post_pooling_modules:
            features = module(features)
        return features["sentence_embedding"].float().cpu().numpy()


KIND = Kind(
    name="embedding",
    summary="text embeddings",
    recognizes=lambda files: True,  # the catch-all: registered last
    operations=frozenset({Operation.EMBED, Operation.RERANK}),
    csv=CsvLayout(Operation.EMBED, (CsvColumn("text"),)),
    samples=Samples(
        # the load check sends this to every model of the kind: no option a small model could refuse
        request={"data": [{"text": "hello"}, {"text": "world", "id": "w1"}], "parameters": {"task": "retrieval.query"}},
        response={"data": [{"id": "3f2a9c4e0b1d4e7f8a6b5c4d3e2f1a0b", "embedding": [0.0123, -0.0456, 0.0789],
                            "usage": {"total_tokens": 3}},
                           {"id": "w1", "embedding": [0.0321, 0.0654, -0.0987], "usage": {"total_tokens": 3}}],
                  "parameters": {"task": "retrieval.query"}},
        public_path="/v1/embeddings",
        public_request={"input": ["hello", "world"], "embedding_type": "float", "dimensions": 128},
        csv=("1,When are you open\\, really?\n"
             '"2","Berlin is the capital and largest city of Germany, by both area and population."\n'
             "3,Semantic search finds documents by meaning rather than by keywords.\n"
             '"4","The jina-sagemaker client rewrites every CSV row fully quoted, ""like this""."\n'),
        batch_output=('{"data":[{"id":"1","embedding":[0.0123,-0.0456,0.0789],"usage":{"total_tokens":9}},'
                      '{"id":"2","embedding":[0.0321,0.0654,-0.0987],"usage":{"total_tokens":19}}],"parameters":{}}'),
        client_call='client.embed(texts=["hello", "world"])',
    ),
    load=TextEmbeddingModel,
)
