"""Kind `bge-m3`: BGE-M3 (M3-Embedding), one encoder pass giving a dense vector, sparse weights and ColBERT vectors.

Layout (FlagEmbedding's `EncoderOnlyEmbedderM3Model.save`): an XLM-R (or BERT) encoder directory, with beside it
`colbert_linear` (an nn.Linear(hidden, colbert_dim) state dict) and `sparse_linear` (nn.Linear(hidden, 1)), saved
as `colbert_linear.pt` and `sparse_linear.pt`. Those are pickles: they load only with SEARCHBOX_ALLOW_PICKLE, as
every pickle does (model_handlers/model_code.py); `colbert_linear.safetensors` / `sparse_linear.safetensors` (the
same tensors, `weight` and `bias`) load without it, and packaging/build_artifact.py ships only those.

What one pass gives, as FlagEmbedding 1.4.2 computes it (FlagEmbedding/finetune/embedder/encoder_only/m3/modeling.py
`_dense_embedding`, `_sparse_embedding`, `_colbert_embedding`; inference/embedder/encoder_only/m3.py
`_process_token_weights`, `_process_colbert_vecs`):
- dense: the first token's (CLS) hidden state; L2-normalised by operations/embed.py as any vector;
- sparse: ReLU(sparse_linear(hidden state)) of each token, the largest per token id, the tokenizer's cls, eos, pad
  and unk ids dropped, weights above zero kept (operations/sparse.py);
- ColBERT: colbert_linear of the hidden states after the first token, one vector per real token after it (the
  input's tokens less one), each L2-normalised.

Requests of every form share forward passes, and a request asking several (`EmbedRequest.also`) costs one pass.
Rerank combines the three scores as BGE-M3's `compute_score` does (M3Embedder.compute_score_single_device):
(w_dense * dense + w_sparse * sparse + w_colbert * colbert) / (w_dense + w_sparse + w_colbert), with the README's
hybrid example weights 0.4, 0.2, 0.4 unless `searchbox.json` says `rerank_weights`.

On the ONNX backend the encoder and both heads run as one graph exported at packaging time (`export_onnx`) with three
outputs (dense, sparse token weights, ColBERT vectors), post-processed as above; neither torch nor transformers is on
the serve path.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Hashable, Mapping, NamedTuple, Sequence

import numpy as np

from model_handlers.errors import InvalidOption, ModelDirectoryError
from model_handlers.kinds import CsvColumn, CsvLayout, Kind, ModelFiles
from model_handlers.lengths import Lengths
from model_handlers.model_code import ENV_ALLOW_PICKLE
from model_handlers.operations.embed import EMBED, Prepared
from model_handlers.operations.multi_vector import MULTI_VECTOR
from model_handlers.operations.sparse import SPARSE, SparseVector
from model_handlers.options import HandlerOptions
from model_handlers.ranking import Hybrid, RerankWork, Scoring, Windowing, windowed
from model_handlers.serving_config import ServingConfig
from model_handlers.tokenization import TokenizerView
from model_handlers.types import EmbedRequest, RerankRequest, texts_of

logger = logging.getLogger(__name__)

HEADS = ("colbert_linear", "sparse_linear")
# BGE-M3's README, "Compute score for text pairs": weights_for_different_modes=[0.4, 0.2, 0.4] (dense, sparse, colbert)
DEFAULT_RERANK_WEIGHTS = (0.4, 0.2, 0.4)
_WEIGHT_NAMES = ("dense", "sparse", "colbert")
_HYBRID = "hybrid"  # what a rerank input asks of the pass: all three, as `ranking.Hybrid`
FORMS = frozenset({EMBED, SPARSE, MULTI_VECTOR})


# --- settings: read from the directory's files, without torch ------------------------------------------------


@dataclass(frozen=True)
class M3Settings:
    heads: Mapping[str, Path]  # head name -> its weights file (.safetensors, else .pt)
    rerank_weights: tuple[float, float, float]  # dense, sparse, colbert


def _head_file(model_dir: Path, head: str) -> Path | None:
    for suffix in (".safetensors", ".pt"):
        if (model_dir / (head + suffix)).is_file():
            return model_dir / (head + suffix)
    return None


def _is_m3(files: ModelFiles) -> bool:
    return bool(files.config) and all(_head_file(files.directory, head) for head in HEADS)


def read_settings(model_dir: Path, explicit: Mapping[str, Any]) -> M3Settings:
    """The heads' files, and the rerank weights (`searchbox.json`'s `rerank_weights`: {"dense", "sparse", "colbert"}).

    Raises:
        ModelDirectoryError: a head missing, or weights that are not three non-negative numbers with a positive sum.
    """
    heads = {head: _head_file(model_dir, head) for head in HEADS}
    missing = [head for head, path in heads.items() if path is None]
    if missing:
        raise ModelDirectoryError(f"{model_dir}: a BGE-M3 directory holds {' and '.join(h + '.pt' for h in missing)} "
                                  "(or .safetensors) beside the encoder")
    given = explicit.get("rerank_weights")
    weights = DEFAULT_RERANK_WEIGHTS
    if given is not None:
        if not isinstance(given, dict) or set(given) - set(_WEIGHT_NAMES):
            raise ModelDirectoryError(f"{model_dir}: rerank_weights must be an object with dense, sparse and colbert")
        weights = tuple(given.get(name, default) for name, default in zip(_WEIGHT_NAMES, DEFAULT_RERANK_WEIGHTS))
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights) \
                or sum(weights) <= 0:
            raise ModelDirectoryError(f"{model_dir}: rerank_weights must be numbers >= 0 with a sum above 0")
    return M3Settings(heads, tuple(float(w) for w in weights))


# --- the model ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sequence:
    """One model input: token ids with the special tokens around them, and what its pass answers for it."""

    ids: np.ndarray
    wants: tuple[str, ...]  # operation names (or _HYBRID); one output, else a mapping of them
    group: Hashable = "tokens"  # every form shares passes: right padding is masked away

    @property
    def length(self) -> int:
        return len(self.ids)


class BgeM3Model:
    """An encoder and BGE-M3's two heads."""

    rerank_scoring = "BGE-M3's weighted mean of its dense, sparse and late-interaction scores"

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions,
                 encoder: "_TorchM3 | _OnnxM3 | None" = None):
        settings: M3Settings = config.kind_settings
        self.config = config
        self.model_name = config.served_model_name
        self._encoder = encoder if encoder is not None else _TorchM3(model_dir, config, options)
        self.device = self._encoder.device
        self.reentrant = self._encoder.reentrant
        self._weights = settings.rerank_weights
        facts: _M3Facts = self._encoder.facts
        # FlagEmbedding cuts where the tokenizer says (it reads no sentence-transformers settings)
        lengths = Lengths.of(tokenizer=facts.model_max_length, positions=facts.positions)
        self.max_length = lengths.served(config.max_length)
        self.width = facts.hidden
        self._tokenizer = self._encoder.tokenizer(self.max_length)
        self._vocabulary = self._tokenizer.vocabulary(range(facts.vocabulary_size))
        self.sparse_width = facts.vocabulary_size  # the ids sparse weights may name (width is the dense vector's)
        # FlagEmbedding drops the ids of these special tokens from the sparse weights, whichever the tokenizer has
        self._unused = np.asarray(facts.unused_ids, dtype=np.int64)
        logger.info("BGE-M3: dense %d, ColBERT %d dimensions, sparse over %d ids, up to %d tokens",
                    facts.hidden, facts.colbert_width, len(self._vocabulary), self.max_length)

    def forms_of_one_pass(self) -> frozenset[str]:
        return FORMS

    # --- on the caller's thread -----------------------------------------------------------------------

    def prepare_embed(self, request: EmbedRequest) -> Prepared:
        if request.late_chunking:
            raise InvalidOption(f"late_chunking is not available for BGE-M3 model {self.model_name}; leave it out")
        wants = (request.operation, *request.also)
        sequences = [_Sequence(ids, wants) for ids in self._sequences(request, request.truncate)]
        return Prepared(sequences, [s.length for s in sequences])

    def vector_count(self, request: EmbedRequest) -> int:
        """The token vectors the answer holds: each input's tokens less the first (inputs cut to length)."""
        return sum(len(ids) - 1 for ids in self._sequences(request, truncate=True))

    def token_strings(self, indices: Sequence[int]) -> tuple[str, ...]:
        return tuple(self._vocabulary[int(i)] if int(i) < len(self._vocabulary) else "" for i in indices)

    def prepare_rerank(self, request: RerankRequest, max_windows: int) -> RerankWork:
        """The query, then every window of every document, each with its three outputs, scored as `compute_score`."""
        query_text = texts_of([request.query], self.model_name, "the query")[0]
        documents = texts_of(request.documents, self.model_name, "document")
        query = _Sequence(self._tokenizer.wrap(self._tokenizer.encode([query_text])[0][: self._tokenizer.room]),
                          (_HYBRID,))
        windowing = Windowing.within(self._tokenizer.room, self.config)

        def windows(index: int, content: np.ndarray) -> tuple[list[_Sequence], int]:
            pieces = [_Sequence(self._tokenizer.wrap(window), (_HYBRID,)) for window in windowing.split(content)]
            return pieces, sum(p.length for p in pieces)

        work = windowed(Scoring.HYBRID, [query], query.length, self._tokenizer.encode(documents), windows,
                        max_windows)
        return replace(work, weights=self._weights)

    def calibration_item(self, length: int) -> _Sequence:
        filler = self._tokenizer.encode(["a"])[0][:1]
        return _Sequence(self._tokenizer.wrap(np.repeat(filler, max(0, length - self._tokenizer.special_count))),
                         (EMBED, SPARSE, MULTI_VECTOR))

    def _sequences(self, request: EmbedRequest, truncate: bool) -> list[np.ndarray]:
        texts = texts_of(request.inputs, self.model_name)
        spec = self.config.resolve_task(request.task, request.input_type, request.adapter)
        if spec.adapter is not None:
            raise InvalidOption(f"model {self.model_name} holds no LoRA adapters (adapter {spec.adapter!r})",
                                code="UNKNOWN_ADAPTER")
        contents = self._tokenizer.encode([spec.prompt + text for text in texts])
        return [self._tokenizer.wrap(self._tokenizer.fit(content, truncate, f"input {index}"))
                for index, content in enumerate(contents)]

    # --- on the batcher's thread ----------------------------------------------------------------------

    def forward(self, sequences: list[_Sequence]) -> list[list[Any]]:
        wanted = {want for s in sequences for want in s.wants}
        padded = self._tokenizer.pad([s.ids for s in sequences])
        dense, weights, colbert = self._encoder.outputs(padded, sparse=bool(wanted & {SPARSE, _HYBRID}),
                                                        colbert=bool(wanted & {MULTI_VECTOR, _HYBRID}))
        out = []
        for row, sequence in enumerate(sequences):
            length = sequence.length

            def sparse() -> SparseVector:
                return self._lexical(sequence.ids, weights[row, :length])

            outputs = {}
            for want in sequence.wants:
                if want == EMBED:
                    outputs[want] = dense[row].copy()
                elif want == SPARSE:
                    outputs[want] = sparse()
                elif want == MULTI_VECTOR:
                    outputs[want] = colbert[row, : length - 1].copy()
                else:
                    lexical = sparse()
                    outputs[want] = Hybrid(_unit(dense[row]), lexical.indices, lexical.values,
                                           _unit(colbert[row, : length - 1]))
            out.append([outputs[sequence.wants[0]] if len(outputs) == 1 else outputs])
        return out

    def _lexical(self, ids: np.ndarray, weights: np.ndarray) -> SparseVector:
        """Each token id's largest weight, the unused special ids dropped, the entries above zero kept."""
        keep = ~np.isin(ids, self._unused)
        ids, weights = ids[keep], weights[keep]
        order = np.argsort(ids, kind="stable")
        ids, weights = ids[order], weights[order]
        unique, starts = np.unique(ids, return_index=True)
        best = np.maximum.reduceat(weights, starts) if len(ids) else np.zeros(0, dtype=np.float32)
        above = best > 0
        return SparseVector(unique[above].astype(np.int64), best[above].astype(np.float32))


def _unit(array: np.ndarray) -> np.ndarray:
    return array / np.maximum(np.linalg.norm(array, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class _M3Facts:
    """What the model is made of beyond tokenizer.json and the graph: read from the loaded transformers tokenizer and
    encoder on torch; an ONNX export writes them into its graph's metadata, for a serve path without transformers."""

    hidden: int
    colbert_width: int
    vocabulary_size: int  # len(tokenizer): the ids the sparse weights may name, added tokens included
    unused_ids: tuple[int, ...]  # the cls, eos, pad and unk ids the tokenizer has (dropped from the sparse weights)
    model_max_length: Any  # the tokenizer's, placeholders included (Lengths drops them)
    positions: int | None  # the encoder config's max_position_embeddings


class _TorchM3:
    """The encoder and the two heads on torch."""

    reentrant = True  # transformers' own class (no directory code runs) and two linear heads keep nothing of a pass

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        import torch
        from transformers import AutoModel, AutoTokenizer

        settings: M3Settings = config.kind_settings
        self.device = options.resolved_device()
        self._device = torch.device(self.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
            self.encoder, info = AutoModel.from_pretrained(
                str(model_dir), local_files_only=True, use_safetensors=not options.allow_pickle or None,
                output_loading_info=True)
        except (OSError, ValueError) as exc:
            raise ModelDirectoryError(f"cannot load {model_dir} as a BGE-M3 encoder: {exc}") from exc
        missing = [key for key in info.get("missing_keys", ()) if not key.startswith("pooler.")]
        if missing or info.get("mismatched_keys"):
            raise ModelDirectoryError(f"{model_dir}: the encoder's weights are missing or of the wrong shape "
                                      f"({', '.join(missing[:5])}); it would answer random vectors")
        self.encoder.to(self._device).eval()
        self.hf_tokenizer = tokenizer
        dtype = next(self.encoder.parameters()).dtype
        hidden = int(self.encoder.config.hidden_size)
        self.colbert = _linear(settings.heads["colbert_linear"], hidden, None, options.allow_pickle, self._device,
                               dtype)
        self.sparse = _linear(settings.heads["sparse_linear"], hidden, 1, options.allow_pickle, self._device, dtype)
        unused = {tokenizer.convert_tokens_to_ids(tokenizer.special_tokens_map[name])
                  for name in ("cls_token", "eos_token", "pad_token", "unk_token")
                  if name in tokenizer.special_tokens_map}
        self.facts = _M3Facts(hidden, int(self.colbert[0].shape[0]), len(tokenizer), tuple(sorted(unused)),
                              getattr(tokenizer, "model_max_length", None),
                              getattr(self.encoder.config, "max_position_embeddings", None))

    def tokenizer(self, max_length: int) -> TokenizerView:
        return TokenizerView.from_hf(self.hf_tokenizer, max_length)

    def heads(self, features: Mapping[str, Any], sparse: bool = True, colbert: bool = True):
        """(dense [batch, hidden], sparse token weights [batch, seq], ColBERT vectors [batch, seq - 1, width]) torch
        tensors as FlagEmbedding computes them, the heads not asked for None; the ONNX export traces this."""
        from torch.nn.functional import linear

        hidden = self.encoder(**features, return_dict=True).last_hidden_state
        weights = vectors = None
        if sparse:
            weights = linear(hidden, *self.sparse).relu().squeeze(-1)
        if colbert:
            mask = features["attention_mask"][:, 1:, None].to(hidden.dtype)
            vectors = linear(hidden[:, 1:], *self.colbert) * mask
        return hidden[:, 0], weights, vectors

    def outputs(self, padded: Mapping[str, np.ndarray], sparse: bool, colbert: bool):
        import torch

        with torch.inference_mode():
            features = {name: torch.from_numpy(array).to(self._device) for name, array in padded.items()}
            heads = self.heads(features, sparse, colbert)
            return tuple(None if t is None else t.float().cpu().numpy() for t in heads)


# the graph's metadata: the _M3Facts of the exported model (JSON)
_FACTS_METADATA = "searchbox.bge_m3"


class _OnnxM3:
    """The encoder and both heads exported to ONNX at packaging time (export_onnx): one graph, three outputs (dense,
    sparse token weights, ColBERT vectors), always all three. No torch, no transformers on this path."""

    reentrant = True  # ONNX Runtime runs a session's passes on several threads at once

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        from model_handlers.onnx_runtime import OnnxSession

        self._session = OnnxSession.of(model_dir, config, options)
        facts = self._session.stated(_FACTS_METADATA)
        if facts is None:
            raise ModelDirectoryError(f"{model_dir / config.onnx_file} is not a BGE-M3 export (its metadata does not "
                                      "say so): rebuild the artifact with packaging/build_artifact.py --backend onnx")
        self.facts = _M3Facts(**{**facts, "unused_ids": tuple(facts["unused_ids"])})
        self.device = self._session.device
        self._model_dir = model_dir

    def tokenizer(self, max_length: int) -> TokenizerView:
        return self._session.tokenizer(self._model_dir, max_length)

    def outputs(self, padded: Mapping[str, np.ndarray], sparse: bool, colbert: bool):
        dense, weights, vectors = self._session.run_all(padded)
        return (dense.astype(np.float32, copy=False), weights.astype(np.float32, copy=False),
                vectors.astype(np.float32, copy=False))


class _M3Outputs(NamedTuple):
    dense_vector: Any
    sparse_weights: Any
    colbert_vectors: Any


def export_onnx(model_dir: Path, out_path: Path) -> None:
    """The encoder and both heads as one ONNX graph: the inputs its tokenizer makes -> `dense_vector` [batch, hidden],
    `sparse_weights` [batch, seq] (each token's ReLU(sparse_linear)) and `colbert_vectors` [batch, seq - 1, width]
    (colbert_linear after the first token, padding zeroed), as the torch backend computes them (`_TorchM3.heads`,
    traced). The per-id maximum, the dropped special ids and the normalisations stay outside, as on torch.

    Raises:
        ModelDirectoryError: the model does not export; the message says to serve it with torch.
    """
    import onnx
    import torch

    from model_handlers.onnx_runtime import export_graph
    from model_handlers.serving_config import read_serving_config

    m3 = _TorchM3(model_dir, read_serving_config(model_dir), HandlerOptions(device="cpu"))

    class Exported(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = m3.encoder

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return _M3Outputs(*m3.heads({"input_ids": input_ids, "attention_mask": attention_mask, **extra}))

    example = m3.hf_tokenizer(["searchbox exports this model", "a second, somewhat longer example sentence"],
                              padding=True, return_tensors="np")
    export_graph(Exported(), list(_M3Outputs._fields), {name: example[name].astype(np.int64) for name in example},
                 out_path)
    graph = onnx.load(str(out_path))
    onnx.helper.set_model_props(graph, {_FACTS_METADATA: json.dumps(m3.facts.__dict__)})
    onnx.save(graph, str(out_path))


def _linear(path: Path, hidden: int, out_features: int | None, allow_pickle: bool, device, dtype):
    """A head's (weight, bias) from its safetensors, or (when pickles are allowed) FlagEmbedding's torch.save file.

    Raises:
        ModelDirectoryError: a pickle without the opt-in, or tensors of the wrong shape.
    """
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    elif allow_pickle:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    else:
        raise ModelDirectoryError(f"{path} is pickled (unpickling can run code): set {ENV_ALLOW_PICKLE}=1 if you trust "
                                  f"it, or save its tensors as {path.with_suffix('.safetensors').name} "
                                  "(safetensors.torch.save_file(torch.load(path), ...))")
    weight, bias = state.get("weight"), state.get("bias")
    if weight is None or bias is None or weight.dim() != 2 or weight.shape[1] != hidden \
            or (out_features is not None and weight.shape[0] != out_features) or bias.shape != weight.shape[:1]:
        raise ModelDirectoryError(f"{path}: not an nn.Linear({hidden}, {out_features or 'n'}) state dict "
                                  "(weight and bias)")
    return weight.to(device, dtype), bias.to(device, dtype)


KIND = Kind(
    name="bge-m3",
    summary="dense, sparse and multi-vector embeddings from one pass (BGE-M3)",
    recognizes=_is_m3,
    model=BgeM3Model,
    csv=CsvLayout(EMBED, (CsvColumn("text"),)),
    backends={"torch": BgeM3Model,
              "onnx": lambda model_dir, config, options: BgeM3Model(model_dir, config, options,
                                                                    _OnnxM3(model_dir, config, options))},
    read_settings=read_settings,
    onnx_export=export_onnx,
)
