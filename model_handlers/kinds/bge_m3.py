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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

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

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        import torch
        from transformers import AutoModel, AutoTokenizer

        settings: M3Settings = config.kind_settings
        self.config = config
        self.model_name = config.served_model_name
        self.device = options.resolved_device()
        self._device = torch.device(self.device)
        self._weights = settings.rerank_weights
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
            self._encoder, info = AutoModel.from_pretrained(
                str(model_dir), local_files_only=True, use_safetensors=not options.allow_pickle or None,
                output_loading_info=True)
        except (OSError, ValueError) as exc:
            raise ModelDirectoryError(f"cannot load {model_dir} as a BGE-M3 encoder: {exc}") from exc
        missing = [key for key in info.get("missing_keys", ()) if not key.startswith("pooler.")]
        if missing or info.get("mismatched_keys"):
            raise ModelDirectoryError(f"{model_dir}: the encoder's weights are missing or of the wrong shape "
                                      f"({', '.join(missing[:5])}); it would answer random vectors")
        self._encoder.to(self._device).eval()
        dtype = next(self._encoder.parameters()).dtype
        hidden = int(self._encoder.config.hidden_size)
        self._colbert = _linear(settings.heads["colbert_linear"], hidden, None, options.allow_pickle, self._device,
                                dtype)
        self._sparse = _linear(settings.heads["sparse_linear"], hidden, 1, options.allow_pickle, self._device, dtype)
        # FlagEmbedding cuts where the tokenizer says (it reads no sentence-transformers settings)
        lengths = Lengths.of(tokenizer=getattr(tokenizer, "model_max_length", None),
                             positions=getattr(self._encoder.config, "max_position_embeddings", None))
        self.max_length = lengths.served(config.max_length)
        self.width = hidden
        self._tokenizer = TokenizerView.from_hf(tokenizer, self.max_length)
        self._vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        # FlagEmbedding drops the ids of these special tokens from the sparse weights, whichever the tokenizer has
        self._unused = np.asarray(sorted({tokenizer.convert_tokens_to_ids(tokenizer.special_tokens_map[name])
                                          for name in ("cls_token", "eos_token", "pad_token", "unk_token")
                                          if name in tokenizer.special_tokens_map}), dtype=np.int64)
        logger.info("BGE-M3: dense %d, ColBERT %d dimensions, sparse over %d ids, up to %d tokens",
                    hidden, self._colbert[0].shape[0], len(self._vocabulary), self.max_length)

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
        import torch
        from torch.nn.functional import linear

        wanted = {want for s in sequences for want in s.wants}
        with torch.inference_mode():
            padded = self._tokenizer.pad([s.ids for s in sequences])
            features = {name: torch.from_numpy(array).to(self._device) for name, array in padded.items()}
            hidden = self._encoder(**features, return_dict=True).last_hidden_state
            dense = hidden[:, 0].float().cpu().numpy()
            weights = colbert = None
            if wanted & {SPARSE, _HYBRID}:
                weights = linear(hidden, *self._sparse).relu().squeeze(-1).float().cpu().numpy()
            if wanted & {MULTI_VECTOR, _HYBRID}:
                mask = features["attention_mask"][:, 1:, None].to(hidden.dtype)
                colbert = (linear(hidden[:, 1:], *self._colbert) * mask).float().cpu().numpy()
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
    backends={"torch": BgeM3Model},
    read_settings=read_settings,
)
