"""Kind `sparse`: learned-sparse (SPLADE) encoders, one weight per vocabulary entry of each input.

Three directory layouts:
- sentence-transformers' `SparseEncoder`: `modules.json` with an `MLMTransformer` or (6.2) a fill-mask
  `Transformer` (a *ForMaskedLM model) and a `SpladePooling` (its `config.json`: `pooling_strategy` "max" or
  "sum", `activation_function` "relu" or "log1p_relu"), the length in `sentence_bert_config.json` or the
  tokenizer's `model_max_length`, prompts in `config_sentence_transformers.json`;
- an inference-free `SparseEncoder` (opensearch-neural-sparse doc-v2/v3 style): one `Router` module whose
  document route is the above and whose query route is a `SparseStaticEmbedding` (one weight per vocabulary
  entry, e.g. IDF): a query's weights are its tokens' (no special tokens), with no model pass;
- a bare *ForMaskedLM directory with `"kind": "sparse"` in `searchbox.json`, which may also state
  `pooling_strategy` and `activation_function` (default: max of log(1 + ReLU(logits)), SPLADE v2 and later).

How an input becomes weights, as `SpladePooling.forward` computes them (sentence-transformers 6.2): the MLM logits of
every token the model attends to, ReLU then log1p (twice with "log1p_relu"), max (or sum) over the tokens; padding
counts for nothing. The forward pass answers the dense vocabulary-wide vector; operations/sparse.py keeps its
entries above zero. Rerank scores a document by the dot product of its sparse vector with the query's, as
`SparseEncoder.similarity` does (its default similarity is the dot product); long documents are read in windows.

Weights are read with transformers; sentence-transformers itself is never imported. On the ONNX backend the MLM and
its pooling run as one graph exported at packaging time (`export_onnx`; packaging/_onnx.py checks it against torch),
with neither torch nor transformers on the serve path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Hashable, Mapping, NamedTuple, Sequence

import numpy as np

from model_handlers import adapters
from model_handlers.errors import InvalidInput, InvalidOption, ModelDirectoryError
from model_handlers.kinds import CsvColumn, CsvLayout, Kind, ModelFiles
from model_handlers.lengths import Lengths
from model_handlers.model_files import read_object
from model_handlers.operations.embed import Prepared
from model_handlers.operations.sparse import SPARSE
from model_handlers.options import HandlerOptions
from model_handlers.ranking import RerankWork, Scoring, Windowing, windowed
from model_handlers.serving_config import ServingConfig
from model_handlers.tokenization import TokenizerView
from model_handlers.types import EmbedRequest, RerankRequest, texts_of

logger = logging.getLogger(__name__)

CONFIG_FILE = "searchbox.json"
_SPLADE_MODULE = "SpladePooling"
_ROUTER_MODULE = "Router"
_STATIC_MODULE = "SparseStaticEmbedding"
POOLING_STRATEGIES = ("max", "sum")
ACTIVATIONS = ("relu", "log1p_relu")


# --- settings: read from the directory's files, without torch ------------------------------------------------


@dataclass(frozen=True)
class SpladeSettings:
    encoder_folder: str  # the *ForMaskedLM model's folder inside the directory ("" for the directory itself)
    pooling_strategy: str
    activation_function: str
    lengths: Lengths  # what the encoder's folder declares (sentence_bert_config.json, tokenizer, positions)
    # inference-free queries: the folder of the Router's query-side SparseStaticEmbedding (its `weight`: one weight
    # per vocabulary entry, e.g. IDF); None: queries go through the model as documents do
    static_query_folder: str | None = None


def read_settings(model_dir: Path, explicit: Mapping[str, Any]) -> SpladeSettings:
    """The SPLADE settings of `model_dir`: searchbox.json's, else the SpladePooling module's, else SPLADE v2's.

    Raises:
        ModelDirectoryError: a setting that is not one SpladePooling knows, naming the file.
    """
    files = ModelFiles.read(model_dir)
    encoder, pooling, static = "", {}, None
    modules = [(str(module.get("type", "")), str(module.get("path", ""))) for module in files.modules]
    router = _router(model_dir, files)
    if router is not None:
        modules, static = _routes(model_dir, router)
    for position, (kind, folder) in enumerate(modules):  # the first module reads the text: the *ForMaskedLM model
        if position == 0:
            encoder = folder
        elif kind.endswith(_SPLADE_MODULE):
            pooling = read_object(model_dir / folder / "config.json")
    chosen = {"pooling_strategy": "max", "activation_function": "relu", **pooling,
              **{key: explicit[key] for key in ("pooling_strategy", "activation_function") if key in explicit}}
    for key, allowed in (("pooling_strategy", POOLING_STRATEGIES), ("activation_function", ACTIVATIONS)):
        if chosen[key] not in allowed:
            raise ModelDirectoryError(f"{model_dir}: {key} must be one of {', '.join(allowed)}, not {chosen[key]!r}")
    return SpladeSettings(encoder, chosen["pooling_strategy"], chosen["activation_function"],
                          Lengths.read(model_dir / encoder), static)


def _router(model_dir: Path, files: ModelFiles) -> dict | None:
    """router_config.json of a SparseEncoder whose one module is a Router (query and document routes)."""
    if len(files.modules) == 1 and str(files.modules[0].get("type", "")).endswith(_ROUTER_MODULE):
        return read_object(model_dir / str(files.modules[0].get("path", "")) / "router_config.json")
    return None


def _routes(model_dir: Path, router: Mapping[str, Any]) -> tuple[list[tuple[str, str]], str | None]:
    """The document route's modules (type, folder), and the query route's SparseStaticEmbedding folder (None when
    queries take the document route).

    Raises:
        ModelDirectoryError: a query route that is neither a SparseStaticEmbedding nor the document route's.
    """
    types, structure = router.get("types") or {}, router.get("structure") or {}
    document = [(str(types.get(folder, "")), str(folder)) for folder in structure.get("document") or ()]
    query = [(str(types.get(folder, "")), str(folder)) for folder in structure.get("query") or ()]
    if not query or query == document:
        return document, None
    if len(query) == 1 and query[0][0].endswith(_STATIC_MODULE):
        return document, query[0][1]
    raise ModelDirectoryError(f"{model_dir}: the Router's query route ({', '.join(t for t, _ in query)}) is neither "
                              "a SparseStaticEmbedding nor the document route; searchbox serves only those")


def _is_splade(files: ModelFiles) -> bool:
    """A SparseEncoder whose pooling is SpladePooling (its first module an MLMTransformer, or 6.2's fill-mask
    Transformer), or a Router whose document route is one."""
    if any(str(module.get("type", "")).endswith(_SPLADE_MODULE) for module in files.modules):
        return True
    router = _router(files.directory, files) if files.modules else None
    return router is not None and any(str(t).endswith(_SPLADE_MODULE) for t in (router.get("types") or {}).values())


# --- the model ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sequence:
    """One model input: token ids with the special tokens around them."""

    ids: np.ndarray
    group: Hashable = "tokens"  # every input shares passes: right padding is masked away
    adapter: str | None = None

    @property
    def length(self) -> int:
        return len(self.ids)


class SparseModel:
    """A SPLADE: a masked-language model and its pooling of log-saturated logits, on torch or ONNX Runtime."""

    rerank_scoring = "the dot product of query and document sparse vectors"

    def __init__(self, model_dir: Path, config: ServingConfig, encoder: "_TorchWeights | _OnnxWeights"):
        settings: SpladeSettings = config.kind_settings
        self.config = config
        self.model_name = config.served_model_name
        self._encoder = encoder
        self.device = encoder.device
        self.reentrant = encoder.reentrant
        self.adapters = encoder.adapters
        self.max_length = settings.lengths.served(config.max_length)
        self.width = encoder.width
        self._tokenizer = encoder.tokenizer(self.max_length)
        self._static = None
        if settings.static_query_folder is not None:
            self._static = _StaticQueries(model_dir / settings.static_query_folder, self.width)
        logger.info("SPLADE: %s pooling of %s over %d vocabulary entries, up to %d tokens",
                    settings.pooling_strategy, settings.activation_function, self.width, self.max_length)

    # --- on the caller's thread -----------------------------------------------------------------------

    def prepare_embed(self, request: EmbedRequest) -> Prepared:
        if request.late_chunking:
            raise InvalidOption(f"late_chunking is not available for sparse model {self.model_name}; leave it out")
        texts = texts_of(request.inputs, self.model_name)
        if self._static is not None and request.effective_input_type == "query":
            sequences = [self._static.sequence(text, index, request.truncate) for index, text in enumerate(texts)]
            return Prepared(sequences, [s.length for s in sequences])
        spec = self.config.resolve_task(request.task, request.input_type, request.adapter)
        contents = self._tokenizer.encode([spec.prompt + text for text in texts])
        sequences = [_Sequence(self._tokenizer.wrap(self._tokenizer.fit(content, request.truncate, f"input {index}")),
                               adapter=spec.adapter)
                     for index, content in enumerate(contents)]
        return Prepared(sequences, [s.length for s in sequences],
                        adapters=adapters.held(self.adapters, sequences, request.adapter))

    def token_strings(self, indices: Sequence[int]) -> tuple[str, ...]:
        return tuple(token or "" for token in self._tokenizer.vocabulary(indices))  # "": an id past the vocabulary

    def prepare_rerank(self, request: RerankRequest, max_windows: int) -> RerankWork:
        """The query, then every window of every document, each a sparse vector; scored by their dot product."""
        query_text = texts_of([request.query], self.model_name, "the query")[0]
        documents = texts_of(request.documents, self.model_name, "document")
        query_spec = self.config.resolve_task(None, "query", request.adapter)
        document_spec = self.config.resolve_task(None, "document", request.adapter)
        if self._static is not None:
            query = self._static.sequence(query_text, 0, True)
        else:
            query_ids = self._tokenizer.encode([query_spec.prompt + query_text])[0][: self._tokenizer.room]
            query = _Sequence(self._tokenizer.wrap(query_ids), adapter=query_spec.adapter)
        prompt = (self._tokenizer.encode([document_spec.prompt])[0] if document_spec.prompt
                  else np.zeros(0, dtype=np.int64))
        windowing = Windowing.within(self._tokenizer.room - len(prompt), self.config)

        def windows(index: int, content: np.ndarray) -> tuple[list[_Sequence], int]:
            pieces = [_Sequence(self._tokenizer.wrap(np.concatenate([prompt, window])), adapter=document_spec.adapter)
                      for window in windowing.split(content)]
            return pieces, sum(p.length for p in pieces)

        work = windowed(Scoring.DOT, [query], query.length, self._tokenizer.encode(documents), windows, max_windows)
        return replace(work, adapters=adapters.held(self.adapters, work.items, request.adapter))

    def text_tokenizer(self) -> TokenizerView:
        """The tokenizer it reads texts with (tokenize and segment requests)."""
        return self._tokenizer

    def calibration_item(self, length: int) -> _Sequence:
        filler = self._tokenizer.encode(["a"])[0][:1]
        return _Sequence(self._tokenizer.wrap(np.repeat(filler, max(0, length - self._tokenizer.special_count))))

    # --- on the batcher's thread ----------------------------------------------------------------------

    def forward(self, sequences: list[_Sequence]) -> list[list[np.ndarray]]:
        if sequences[0].group == _STATIC:  # a pass holds one group: inference-free queries only
            return [[self._static.weights_of(s.ids)] for s in sequences]
        padded = self._tokenizer.pad([s.ids for s in sequences])
        return [[row] for row in self._encoder.weights(padded, [s.adapter for s in sequences])]


def splade_pool(logits, attention_mask, settings: SpladeSettings):
    """[batch, seq, vocab] MLM logits and their [batch, seq] mask -> [batch, vocab] weights, as SpladePooling computes
    them: padding's logits zeroed, ReLU, log1p (twice for log1p_relu), max (or sum) over the tokens. The one
    implementation: the torch backend runs it, and the ONNX export traces it into the graph (export_onnx)."""
    # in place on the product (a fresh tensor): the [batch, seq, vocab] activations are the largest a pass holds
    weights = (logits * attention_mask.unsqueeze(-1).to(logits.dtype)).relu_().log1p_()
    if settings.activation_function == "log1p_relu":
        weights = weights.log1p_()
    return weights.amax(dim=1) if settings.pooling_strategy == "max" else weights.sum(dim=1)


class _TorchWeights:
    """The *ForMaskedLM model on torch (with its adapters), pooled by `splade_pool`."""

    reentrant = True  # transformers' own class (a SPLADE never runs a directory's code) keeps nothing of a pass

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        import torch

        settings: SpladeSettings = config.kind_settings
        self.device = options.resolved_device()
        self._device = torch.device(self.device)
        self._settings = settings
        self._hf_tokenizer, self._mlm = _masked_lm(model_dir / settings.encoder_folder, options)
        self._mlm.to(self._device).eval()
        self.adapters = adapters.attach(self._mlm, options, config.adapters, model_dir)
        self.width = int(self._mlm.config.vocab_size)

    def tokenizer(self, max_length: int) -> TokenizerView:
        return TokenizerView.from_hf(self._hf_tokenizer, max_length)

    def weights(self, padded: Mapping[str, np.ndarray], adapter_names: Sequence[str | None]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            features = {name: torch.from_numpy(array).to(self._device) for name, array in padded.items()}
            with adapters.rows(self.adapters, adapter_names):
                logits = self._mlm(**features).logits
            return splade_pool(logits, features["attention_mask"], self._settings).float().cpu().numpy()


class _OnnxWeights:
    """The MLM with its pooling exported to ONNX at packaging time (export_onnx): the graph answers [batch, vocab]
    weights. No torch, no transformers on this path; no adapters (the export refuses models whose tasks select
    them)."""

    reentrant = True  # ONNX Runtime runs a session's passes on several threads at once

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        from model_handlers.onnx_runtime import OnnxSession

        settings: SpladeSettings = config.kind_settings
        self._session = OnnxSession.of(model_dir, config, options)
        exported = self._session.metadata.get(_POOLING_METADATA)
        if exported != _pooling_name(settings):
            raise ModelDirectoryError(f"{model_dir / config.onnx_file} pools {exported or 'an unknown way'}, the "
                                      f"directory says {_pooling_name(settings)}: rebuild the artifact with "
                                      "packaging/build_artifact.py --backend onnx")
        self.device = self._session.device
        self.adapters = None
        self._encoder_dir = model_dir / settings.encoder_folder
        self.width = int(read_object(self._encoder_dir / "config.json").get("vocab_size") or 0)
        if self.width <= 0:
            raise ModelDirectoryError(f"{self._encoder_dir}/config.json states no vocab_size")

    def tokenizer(self, max_length: int) -> TokenizerView:
        return self._session.tokenizer(self._encoder_dir, max_length)

    def weights(self, padded: Mapping[str, np.ndarray], adapter_names: Sequence[str | None]) -> np.ndarray:
        return self._session.run(padded).astype(np.float32, copy=False)


def _masked_lm(encoder_dir: Path, options: HandlerOptions):
    """The tokenizer and the *ForMaskedLM model of `encoder_dir`, with transformers (torch and packaging only)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir), local_files_only=True)
        model = AutoModelForMaskedLM.from_pretrained(
            str(encoder_dir), local_files_only=True, use_safetensors=not options.allow_pickle or None)
    except (OSError, ValueError) as exc:
        raise ModelDirectoryError(f"cannot load {encoder_dir} as a sparse (SPLADE) model: {exc}") from exc
    return tokenizer, model


# the graph's metadata names the pooling traced into it: a directory whose settings say otherwise is refused at load
_POOLING_METADATA = "searchbox.splade_pooling"


def _pooling_name(settings: SpladeSettings) -> str:
    return f"{settings.pooling_strategy} of {settings.activation_function}"


class _PooledWeights(NamedTuple):
    sparse_weights: Any


def export_onnx(model_dir: Path, out_path: Path) -> None:
    """The MLM and its pooling as one ONNX graph: the inputs its tokenizer makes -> `sparse_weights` [batch, vocab].

    The pooling is in the graph (traced from `splade_pool`, the torch backend's own), not left to post-processing
    as sentence-transformers' ONNX backend does (6.2.0, sentence_transformers/backend/load.py: the fill-mask module
    becomes optimum's ORTModelForMaskedLM, whose [batch, seq, vocab] logits SpladePooling pools in torch): the serve
    path has no torch, and a [batch, vocab] answer is sequence-length times smaller than the logits. Its export and
    quantization helpers need optimum, which this project does not carry; torch's exporter (`export_graph`) and
    `quantize_int8` are what dense models already use.

    Raises:
        ModelDirectoryError: the model has adapters, or does not export; the message says to serve it with torch.
    """
    import onnx
    import torch

    from model_handlers.onnx_runtime import export_graph, refuse_adapters
    from model_handlers.serving_config import read_serving_config

    config = read_serving_config(model_dir)
    settings: SpladeSettings = config.kind_settings
    refuse_adapters(config)
    tokenizer, mlm = _masked_lm(model_dir / settings.encoder_folder, HandlerOptions())

    class PooledMLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlm = mlm.eval()

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            logits = self.mlm(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
            return _PooledWeights(splade_pool(logits, attention_mask, settings))

    example = tokenizer(["searchbox exports this model", "a second, somewhat longer example sentence"],
                        padding=True, return_tensors="np")
    export_graph(PooledMLM(), "sparse_weights", {name: example[name].astype(np.int64) for name in example}, out_path)
    graph = onnx.load(str(out_path))
    onnx.helper.set_model_props(graph, {_POOLING_METADATA: _pooling_name(settings)})
    onnx.save(graph, str(out_path))


_STATIC = "static"


class _StaticQueries:
    """The query side of an inference-free SPLADE, as SparseStaticEmbedding computes it: the query's tokens (no
    special tokens, cut at its tokenizer's length), each present id weighted by its static weight; no model runs."""

    def __init__(self, folder: Path, width: int):
        from safetensors.numpy import load_file

        weights = sorted(folder.glob("*.safetensors"))
        if not weights:
            raise ModelDirectoryError(f"{folder}: no safetensors weights for the query-side SparseStaticEmbedding")
        self._weight = np.asarray(load_file(str(weights[0])).get("weight"), dtype=np.float32)
        if self._weight.shape != (width,):
            raise ModelDirectoryError(f"{folder}: the SparseStaticEmbedding weight has shape {self._weight.shape}, "
                                      f"not one weight per vocabulary entry ({width})")
        self._tokenizer = TokenizerView.from_directory(folder, Lengths.read(folder).served(), with_type_ids=False)

    def sequence(self, text: str, index: int, truncate: bool) -> _Sequence:
        ids = self._tokenizer.encode([text])[0]
        if len(ids) > self._tokenizer.max_length and not truncate:
            raise InvalidInput(f"input {index} has {len(ids)} tokens as a query, over the model's limit of "
                               f"{self._tokenizer.max_length}; shorten it or set truncate to true",
                               code="INPUT_TOKEN_LIMIT_EXCEEDED")
        return _Sequence(ids[: self._tokenizer.max_length], group=_STATIC)

    def weights_of(self, ids: np.ndarray) -> np.ndarray:
        vector = np.zeros_like(self._weight)
        vector[ids] = self._weight[ids]
        return vector


KIND = Kind(
    name="sparse",
    summary="learned-sparse embeddings (SPLADE)",
    recognizes=_is_splade,
    model=SparseModel,
    csv=CsvLayout(SPARSE, (CsvColumn("text"),)),
    backends={"torch": lambda model_dir, config, options: SparseModel(model_dir, config,
                                                                      _TorchWeights(model_dir, config, options)),
              "onnx": lambda model_dir, config, options: SparseModel(model_dir, config,
                                                                     _OnnxWeights(model_dir, config, options))},
    read_settings=read_settings,
    onnx_export=export_onnx,
)
