"""Kind `embedding`: sentence-transformers directories (or plain Hugging Face encoders) that pool one vector per text.

The catch-all kind: any directory no other kind recognises is served as a text embedding model. It
reranks by the cosine of query and document embeddings (its `retrieval.*` prompts when it has them).

The model prepares on the caller's thread (`prepare_embed`: prompts, tokenizing, length checks, late
chunking's packing) and runs on the batcher's thread (`forward`) one of three encoders:
- sentence-transformers' own modules: those before pooling, the pooling the model declares, those after it but a
  final Normalize (the pipeline normalises when asked, so that `normalized: false` can skip it);
- a jina-embeddings-v3 checkpoint on transformers' native architecture (model_handlers/jina_v3.py), pooled as
  its 1_Pooling (or v3's mean) says;
- the ONNX graph exported at packaging time, pooled likewise.

Task adapters apply per input row (model_handlers/adapters.py), on an encoder or a decoder (jina-embeddings-v5-text:
a Qwen3 base with its adapters/<task>/ folders): a pass mixes rows of different tasks and adapters,
each row computed as its own adapter (or the base model) would. A directory that runs its own code for the tasks its
config.json declares (v3 with searchbox.json `"model_code": "remote"`, or a class of any other name) gets the same
per-row ids as `adapter_mask`; code whose forward takes none is refused at load.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Hashable

import numpy as np

from model_handlers import adapters, jina_v3, jina_v5, model_code
from model_handlers.adapters import RowAdapters
from model_handlers.errors import ModelDirectoryError
from model_handlers.kinds import CsvColumn, CsvLayout, Kind
from model_handlers.lengths import Lengths
from model_handlers.model_files import read_list, read_object
from model_handlers.onnx_runtime import OnnxSession, export_graph
from model_handlers.operations.embed import EMBED, Prepared
from model_handlers.options import HandlerOptions, weights_dtype
from model_handlers.ranking import RerankWork, Scoring, Windowing, windowed
from model_handlers.serving_config import ServingConfig, TaskSpec, read_serving_config
from model_handlers.tokenization import TokenizerView
from model_handlers.types import EmbedRequest, RerankRequest, texts_of

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
    """One sentence-transformers (or plain encoder, or jina-embeddings-v3) model directory, on torch or ONNX."""

    rerank_scoring = "the cosine of query and document embeddings"

    def __init__(self, encoder: "_TorchEncoder | _OnnxEncoder | _JinaV3Encoder", config: ServingConfig):
        self.config = config
        self.model_name = config.served_model_name
        self._encoder = encoder
        self.width = self._encoder.width
        self.max_length = self._encoder.max_length
        self.device = self._encoder.device
        self.reentrant = self._encoder.reentrant
        # The adapters applied per row, when the encoder holds any (None: tasks only select prompts, or the
        # directory's own code applies them).
        self.adapters: RowAdapters | None = self._encoder.adapters
        self._tokenizer = self._encoder.tokenizer
        self._include_prompt = self._encoder.include_prompt

    # --- on the caller's thread -----------------------------------------------------------------------

    def prepare_embed(self, request: EmbedRequest) -> Prepared:
        texts = texts_of(request.inputs, self.model_name)
        spec = self.config.resolve_task(request.task, request.input_type, request.adapter)
        if request.late_chunking:
            prepared = self._prepare_late_chunking(texts, spec, request.truncate)
        else:
            prepared = self._prepare_each(texts, spec, request.truncate)
        return replace(prepared, adapters=adapters.held(self.adapters, prepared.items, request.adapter))

    def prepare_rerank(self, request: RerankRequest, max_windows: int) -> RerankWork:
        """The query, then every window of every document, embedded with the `retrieval.*` tasks' prompts.

        A document longer than the model's max length is embedded in overlapping windows; usage counts
        every sequence embedded, special tokens included.
        """
        query_text = texts_of([request.query], self.model_name, "the query")
        documents = texts_of(request.documents, self.model_name, "document")
        query = self._prepare_each(query_text, self.config.resolve_task("retrieval.query", adapter=request.adapter),
                                   truncate=True)
        spec = self.config.resolve_task("retrieval.passage", adapter=request.adapter)
        prompt = self._tokenizer.encode([spec.prompt])[0] if spec.prompt else np.zeros(0, dtype=np.int64)
        windowing = Windowing.within(self._tokenizer.room - len(prompt), self.config)
        prompt_length = self._prompt_length(spec)
        group = self._group("each", spec, prompt_length)

        def windows(index: int, content: np.ndarray) -> tuple[list[_Sequence], int]:
            pieces = [_Sequence(self._tokenizer.wrap(np.concatenate([prompt, w])), group,
                                prompt_length=prompt_length, adapter=spec.adapter) for w in windowing.split(content)]
            return pieces, sum(p.length for p in pieces)

        work = windowed(Scoring.COSINE, query.items, query.token_counts[0], self._tokenizer.encode(documents), windows,
                        max_windows)
        return replace(work, adapters=adapters.held(self.adapters, work.items, request.adapter))

    def classification_scale(self) -> float | None:
        """None: its cosines are softmaxed at the default scale (operations/classify.py)."""
        return None

    def text_tokenizer(self) -> TokenizerView:
        """The tokenizer it reads texts with (tokenize and segment requests)."""
        return self._tokenizer

    def calibration_item(self, length: int) -> _Sequence:
        filler = self._tokenizer.encode(["a"])[0][:1]
        return _Sequence(self._tokenizer.wrap(np.repeat(filler, max(0, length - self._tokenizer.special_count))),
                         self._group("each", TaskSpec(), 0))

    def _group(self, layout: str, spec: TaskSpec, prompt_length: int = 0) -> Hashable:
        """What a sequence may share a forward pass with: the same layout and pooled span; rows of different
        adapters share passes (each row takes its own), except where the directory's code takes one task per pass
        (its sentence-transformers module reads a `task` string) or no task for a whole pass."""
        return (layout, prompt_length, self._encoder.pass_key(spec.adapter))

    def _prepare_each(self, texts: list[str], spec: TaskSpec, truncate: bool) -> Prepared:
        contents = self._tokenizer.encode([spec.prompt + text for text in texts])
        prompt_length = self._prompt_length(spec)
        group = self._group("each", spec, prompt_length)
        sequences = []
        for index, content in enumerate(contents):
            content = self._tokenizer.fit(content, truncate, f"input {index}")
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
        contents = [self._tokenizer.fit(c, truncate, f"input {i}", room)
                    for i, c in enumerate(self._tokenizer.encode(texts))]
        group = self._group("late", spec)
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

    def _prompt_length(self, spec: TaskSpec) -> int:
        """Prompt tokens the pooling must skip; 0 when the model pools over its prompt (the usual case)."""
        if not spec.prompt or self._include_prompt:
            return 0
        return len(self._tokenizer.prefix) + len(self._tokenizer.encode([spec.prompt])[0])

    # --- on the batcher's thread ----------------------------------------------------------------------

    def forward(self, sequences: list[_Sequence]) -> list[list[np.ndarray]]:
        return self._encoder.forward(sequences)


class _TorchEncoder:
    """sentence-transformers' own modules: those before pooling, the pooling the model declares, those after it
    but a final Normalize (the pipeline normalises when asked, so that `normalized: false` can skip it).

    Adapters: PEFT LoRA directories `searchbox.json` names (and any registered at run time) go into the
    transformer's own model; a directory whose code applies adapters itself gets each row's id as `adapter_mask`
    (a model whose forward takes it), or the pass's task as the `task` feature (a module that reads it)."""

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules.normalize import Normalize
        from sentence_transformers.sentence_transformer.modules.pooling import Pooling

        # Passes may run on several threads at once: sentence-transformers' modules keep nothing of a pass, and
        # peft's per-row adapters hold their own lock for one; a directory's own code might, so it runs one at a time.
        trusted = model_code.trusts(model_dir, options)
        self.reentrant = not trusted
        device = options.resolved_device()
        model_kwargs = {"dtype": weights_dtype(device),
                        **({} if options.allow_pickle else {"use_safetensors": True})}
        try:
            self._model = SentenceTransformer(
                str(model_dir), device=device, local_files_only=True,
                trust_remote_code=trusted, model_kwargs=model_kwargs,
            )
        except (OSError, ValueError) as exc:
            raise ModelDirectoryError(f"cannot load {model_dir} as an embedding model: {exc}") from exc
        self._model.eval()
        modules = list(self._model.children())
        pooling_at = next((i for i, m in enumerate(modules) if isinstance(m, Pooling)), None)
        if pooling_at is None:
            raise ModelDirectoryError(f"{model_dir}: no pooling module; searchbox serves pooled embedding models")
        if isinstance(modules[-1], Normalize):
            modules = modules[:-1]
        self._encoder_modules = modules[:pooling_at]
        self._pooling = modules[pooling_at]
        self._post_pooling_modules = modules[pooling_at + 1:]
        self.include_prompt = bool(getattr(self._pooling, "include_prompt", True))
        self.width = int(self._model.get_embedding_dimension())
        # sentence-transformers' own max_seq_length: what its library cuts at for this directory
        self.max_length = Lengths.of(sentence_transformers=self._model.max_seq_length).served(config.max_length)
        self.tokenizer = TokenizerView.from_hf(self._model.tokenizer, self.max_length)
        self._device = self._model.device
        self.device = str(self._device)
        transformer = _inner_model(self._encoder_modules[0]) if self._encoder_modules else None
        # the directory's own code takes one adapter id per row (jina-embeddings-v3's `adapter_mask`)
        self._adapter_ids = _adapter_ids(transformer, model_dir)
        self.adapters = adapters.attach(transformer, options, config.adapters, model_dir)

    def pass_key(self, adapter: str | None) -> Hashable:
        if self._adapter_ids is not None:
            return adapter is None  # an adapter_mask names a task for every row, or the pass has none
        if self.adapters is not None and (adapter is None or adapter in self.adapters.names):
            return None  # peft's layers apply each row's own
        return adapter  # the module reads one `task` per pass

    def forward(self, sequences: list[_Sequence]) -> list[list[np.ndarray]]:
        import torch

        with torch.inference_mode():
            padded = self.tokenizer.pad([s.ids for s in sequences])
            features = {name: torch.from_numpy(array).to(self._device) for name, array in padded.items()}
            first = sequences[0]
            rows = [s.adapter for s in sequences]
            if self._adapter_ids is not None:
                if first.adapter is not None:
                    features["adapter_mask"] = torch.tensor([self._adapter_ids[a] for a in rows], dtype=torch.int32,
                                                            device=self._device)
            elif first.adapter is not None and (self.adapters is None or first.adapter not in self.adapters.names):
                features["task"] = first.adapter
            if first.prompt_length:
                features["prompt_length"] = first.prompt_length
            with adapters.rows(self.adapters, rows):
                for module in self._encoder_modules:
                    features = module(features)
            if first.spans is None:
                pooled = self._post_pool(self._pooling(features))
                return [[row] for row in pooled]
            tokens = features["token_embeddings"]
            means = [tokens[row, start:end].mean(dim=0) if end > start else tokens[row, :sequence.length].mean(dim=0)
                     for row, sequence in enumerate(sequences) for start, end in sequence.spans]
            pooled = self._post_pool({"sentence_embedding": torch.stack(means)})
            return _split_spans(sequences, pooled)

    def _post_pool(self, features: dict) -> np.ndarray:
        for module in self._post_pooling_modules:
            features = module(features)
        return features["sentence_embedding"].float().cpu().numpy()


class _PooledTokens:
    """Token vectors from a backend (`_tokens`), pooled here in numpy as 1_Pooling/config.json declares (mean for
    a directory without one), each packed input's own span for late chunking."""

    include_prompt: bool
    tokenizer: TokenizerView
    _pooling: "PoolingSpec"
    adapters: RowAdapters | None = None

    def pass_key(self, adapter: str | None) -> Hashable:
        return None  # every row takes its own adapter (or none)

    def _tokens(self, padded: dict[str, np.ndarray], sequences: list[_Sequence]) -> np.ndarray:
        raise NotImplementedError

    def forward(self, sequences: list[_Sequence]) -> list[list[np.ndarray]]:
        padded = self.tokenizer.pad([s.ids for s in sequences])
        tokens = self._tokens(padded, sequences).astype(np.float32, copy=False)
        first = sequences[0]
        if first.spans is None:
            mask = padded["attention_mask"].astype(np.float32)
            if first.prompt_length:
                mask[:, :first.prompt_length] = 0  # the pooling skips the prompt (include_prompt false)
            return [[row] for row in self._pooling.pool(tokens, mask)]
        means = [tokens[row, start:end].mean(axis=0) if end > start else tokens[row, :sequence.length].mean(axis=0)
                 for row, sequence in enumerate(sequences) for start, end in sequence.spans]
        return _split_spans(sequences, np.stack(means))


class _OnnxEncoder(_PooledTokens):
    """The transformer exported to ONNX at packaging time, run by ONNX Runtime. No torch, no transformers: the slim
    image has neither. Only Transformer -> Pooling (-> Normalize) pipelines export (build_artifact refuses others
    by name, and models whose tasks select adapters)."""

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        self._session = OnnxSession.of(model_dir, config, options)
        self.device = self._session.device
        self.reentrant = True
        self._pooling = PoolingSpec.read(model_dir)
        self.include_prompt = self._pooling.include_prompt
        self.width = self._pooling.width or int(read_object(model_dir / "config.json").get("hidden_size") or 0)
        self.max_length = Lengths.read(model_dir).served(config.max_length)
        self.tokenizer = self._session.tokenizer(model_dir, self.max_length)

    def _tokens(self, padded: dict[str, np.ndarray], sequences: list[_Sequence]) -> np.ndarray:
        return self._session.run(padded)


class _NativeEncoder(_PooledTokens):
    """A transformers model searchbox builds itself from a Jina checkpoint (`_model`), its LoRA adapters applied per
    row by peft: one pass gives the token vectors, pooled by `_PooledTokens`."""

    _model: Any
    device: str
    reentrant = False  # peft's adapters applied by searchbox's own code

    def _tokens(self, padded: dict[str, np.ndarray], sequences: list[_Sequence]) -> np.ndarray:
        import torch

        with torch.inference_mode(), adapters.rows(self.adapters, [s.adapter for s in sequences]):
            features = {name: torch.from_numpy(array).to(self.device) for name, array in padded.items()}
            return self._model(**features).last_hidden_state.float().cpu().numpy()


class _JinaV3Encoder(_NativeEncoder):
    """A jina-embeddings-v3 checkpoint on transformers' native architecture, its task adapters applied per row by
    peft (model_handlers/jina_v3.py); no code from the directory runs."""

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        self.device = options.resolved_device()
        self._model, installs = jina_v3.load(model_dir, self.device)
        self.adapters = RowAdapters(self._model, max_loaded=options.max_adapters, allow_pickle=options.allow_pickle)
        for task, install in installs.items():
            self.adapters.add_builtin(jina_v3.adapter_name(task), f"{model_dir.name}: task {task}", install)
        for name, directory in config.adapters.items():
            self.adapters.add_directory(name, directory, builtin=True)
        self._pooling = PoolingSpec.read(model_dir)
        self.include_prompt = self._pooling.include_prompt
        self.width = self._pooling.width or int(read_object(model_dir / "config.json")["hidden_size"])
        self.max_length = Lengths.read(model_dir).served(config.max_length)
        self.tokenizer = TokenizerView.from_directory(model_dir, self.max_length, with_type_ids=False)


class _JinaV5Encoder(_NativeEncoder):
    """A published jina-embeddings-v5-text checkpoint on transformers' own base class (model_handlers/jina_v5.py), its
    task adapters (serving_config's task matrix) applied per row by peft, the last real token pooled; no code from the
    directory runs."""

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        self.device = options.resolved_device()
        self._model = jina_v5.load(model_dir, self.device)
        self.adapters = adapters.attach(self._model, options, config.adapters, model_dir)
        self._pooling = PoolingSpec(("lasttoken",))  # its own encode: the hidden state at the last attended position
        self.include_prompt = True
        self.width = int(self._model.config.hidden_size)
        self.max_length = Lengths.read(model_dir).served(config.max_length)
        self.tokenizer = TokenizerView.from_directory(model_dir, self.max_length, with_type_ids=False)


def _torch_encoder(model_dir: Path, config: ServingConfig, options: HandlerOptions):
    """A jina-embeddings-v3 or a published jina-embeddings-v5-text checkpoint on transformers' native architectures
    (unless searchbox.json asks for its own code), else sentence-transformers' modules."""
    hf_config = read_object(model_dir / "config.json")
    if config.model_code != "remote":
        if jina_v3.is_v3(hf_config):
            return _JinaV3Encoder(model_dir, config, options)
        if jina_v5.is_v5(hf_config):
            return _JinaV5Encoder(model_dir, config, options)
    return _TorchEncoder(model_dir, config, options)


def _inner_model(module):
    """The transformers model inside a sentence-transformers module: sentence-transformers' own Transformer holds it
    as `model`, a directory's own module (jina-embeddings-v3's custom_st.py) as `auto_model`."""
    inner = getattr(module, "model", None)
    return inner if inner is not None else getattr(module, "auto_model", None)


def _adapter_ids(transformer, model_dir: Path) -> dict[str, int] | None:
    """{adapter name: id} for a directory whose config.json declares tasks (`lora_adaptations`, id = list index) and
    whose own code takes one adapter id per row (`adapter_mask`, as jina-embeddings-v3's remote code does), whatever
    its class is called; None for a model that declares no tasks.

    Raises:
        ModelDirectoryError: tasks are declared, but the model's forward takes no `adapter_mask` to apply them.
    """
    config = read_object(model_dir / "config.json")
    if not jina_v3.declares_tasks(config):
        return None
    tasks = jina_v3.read_tasks(config).names
    forward = getattr(transformer, "forward", None)
    if forward is None or "adapter_mask" not in inspect.signature(forward).parameters:
        raise ModelDirectoryError(
            f"{model_dir}: config.json declares tasks (lora_adaptations: {', '.join(tasks)}), but the model's code "
            f"({type(transformer).__name__}.forward) takes no adapter_mask, so searchbox cannot apply them per row; "
            "served, every task would answer the base model's vectors")
    return {jina_v3.adapter_name(task): index for index, task in enumerate(tasks)}


@dataclass(frozen=True)
class PoolingSpec:
    """sentence-transformers' Pooling settings (1_Pooling/config.json), for pooling outside torch."""

    modes: tuple[str, ...]
    include_prompt: bool = True
    width: int = 0

    _MODES = ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
    # sentence-transformers 6's names of them (its `pooling_mode`)
    _SAVED_NAMES = {"cls": "cls_token", "max": "max_tokens", "mean": "mean_tokens",
                    "mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "weightedmean": "weightedmean_tokens",
                    "lasttoken": "lasttoken"}

    @classmethod
    def read(cls, model_dir: Path) -> "PoolingSpec":
        """The directory's pooling; a plain Hugging Face encoder (no modules.json) pools by mean, as
        sentence-transformers does for it."""
        module = next((m for m in read_list(model_dir / "modules.json") if str(m.get("type", "")).endswith("Pooling")),
                      None)
        if module is None:
            return cls(("mean_tokens",))
        settings = read_object(model_dir / module.get("path", "") / "config.json")
        named = settings.get("pooling_mode")  # sentence-transformers 6: a mode or a list, in concatenation order
        if named is not None:
            names = [named] if isinstance(named, str) else list(named) if isinstance(named, list) else [None]
            unknown = [name for name in names if name not in cls._SAVED_NAMES]
            if unknown or not names:
                raise ModelDirectoryError(f"{model_dir}: the pooling config's pooling_mode {named!r} is not one of "
                                          f"{', '.join(cls._SAVED_NAMES)}")
            modes = tuple(cls._SAVED_NAMES[name] for name in names)
        else:  # before 6: a `pooling_mode_<mode>` flag per mode, concatenated in _MODES' order
            modes = tuple(mode for mode in cls._MODES if settings.get(f"pooling_mode_{mode}"))
        if not modes:
            raise ModelDirectoryError(f"{model_dir}: the pooling config names no pooling mode")
        width = int(settings.get("embedding_dimension") or settings.get("word_embedding_dimension") or 0) * len(modes)
        return cls(modes, bool(settings.get("include_prompt", True)), width)

    def pool(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """[batch, seq, dim] token vectors and their [batch, seq] mask -> [batch, dim x modes], as the modes say."""
        weights = mask[:, :, None]
        counts = np.clip(weights.sum(axis=1), 1e-9, None)
        parts = []
        for mode in self.modes:
            if mode == "cls_token":
                parts.append(tokens[:, 0])
            elif mode == "max_tokens":
                parts.append(np.where(weights > 0, tokens, -1e9).max(axis=1))
            elif mode == "mean_tokens":
                parts.append((tokens * weights).sum(axis=1) / counts)
            elif mode == "mean_sqrt_len_tokens":
                parts.append((tokens * weights).sum(axis=1) / np.sqrt(counts))
            elif mode == "weightedmean_tokens":
                position = np.arange(1, tokens.shape[1] + 1, dtype=np.float32)[None, :, None] * weights
                parts.append((tokens * position).sum(axis=1) / np.clip(position.sum(axis=1), 1e-9, None))
            else:  # lasttoken: the last token the mask keeps
                last = np.maximum(mask.shape[1] - 1 - np.argmax(mask[:, ::-1] > 0, axis=1), 0)
                parts.append(tokens[np.arange(tokens.shape[0]), last])
        return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


def _split_spans(sequences: list[_Sequence], pooled: np.ndarray) -> list[list[np.ndarray]]:
    counts = [len(sequence.spans) for sequence in sequences]
    return [list(part) for part in np.split(pooled, np.cumsum(counts)[:-1])]


# sentence-transformers modules the ONNX backend reproduces: the transformer (exported), pooling and
# normalisation (done in numpy); anything else (a Dense projection, a router) keeps the model on torch.
_ONNX_MODULES = ("Transformer", "Pooling", "Normalize")


def export_onnx(model_dir: Path, out_path: Path) -> None:
    """The model's transformer as ONNX: the inputs its tokenizer makes -> token embeddings (`last_hidden_state`).

    Raises:
        ModelDirectoryError: the model has modules the ONNX backend does not reproduce, adapters, or does not
            export; the message names what and says to serve it with torch.
    """
    from transformers import AutoModel, AutoTokenizer

    modules = read_list(model_dir / "modules.json")
    other = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules
             if not str(m.get("type", "")).endswith(_ONNX_MODULES)]
    if other:
        raise ModelDirectoryError(f"the ONNX backend serves Transformer -> Pooling (-> Normalize) models; this one also "
                                  f"has {', '.join(other)}: build it with --backend torch")
    adapters = [name for name, spec in read_serving_config(model_dir).tasks.items() if spec.adapter]
    if adapters:
        raise ModelDirectoryError(f"tasks {', '.join(adapters)} select adapters, which the exported graph does not hold: "
                                  "build it with --backend torch")
    transformer = next((m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Transformer")), "")
    source = model_dir / transformer
    trust = model_code.trusts(model_dir, HandlerOptions())
    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True, trust_remote_code=trust)
    try:  # eager attention traces to the MatMul-Softmax-MatMul graph ONNX Runtime fuses (export_graph's torchscript)
        model = AutoModel.from_pretrained(str(source), local_files_only=True, trust_remote_code=trust,
                                          attn_implementation="eager")
    except (ValueError, TypeError):  # a model's own code that knows no eager attention: its default
        model = AutoModel.from_pretrained(str(source), local_files_only=True, trust_remote_code=trust)

    example = tokenizer(["searchbox exports this model", "a second, somewhat longer example sentence"],
                        padding=True, return_tensors="np")
    export_graph(model, "last_hidden_state", {name: example[name].astype(np.int64) for name in example}, out_path,
                 torchscript=True)


KIND = Kind(
    name="embedding",
    summary="text embeddings",
    recognizes=lambda files: True,  # the catch-all: registered last
    model=TextEmbeddingModel,
    csv=CsvLayout(EMBED, (CsvColumn("text"),)),
    backends={"torch": lambda model_dir, config, options: TextEmbeddingModel(_torch_encoder(model_dir, config, options),
                                                                              config),
              "onnx": lambda model_dir, config, options: TextEmbeddingModel(_OnnxEncoder(model_dir, config, options),
                                                                             config)},
    onnx_export=export_onnx,
)
