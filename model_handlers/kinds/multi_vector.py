"""Kind `multi-vector`: ColBERT late-interaction models, one vector per token.

Three directory layouts, told apart by their files:
- PyLate's sentence-transformers layout: `modules.json` with a Transformer and its Dense projection(s)
  (`pylate.models.Dense.Dense`), settings in `config_sentence_transformers.json` (`query_prefix`,
  `document_prefix`, `query_length`, `document_length`, `do_query_expansion`, `attend_to_expansion_tokens`,
  `skiplist_words`);
- Stanford `colbert-ai`'s: an `HF_ColBERT` encoder whose weights hold the `linear` projection beside it, settings
  in `artifact.metadata` (`query_token_id`, `doc_token_id`, `query_maxlen`, `doc_maxlen`, `attend_to_mask_tokens`,
  `mask_punctuation`). jina-colbert-v2's encoder, Jina's XLM-RoBERTa flash layout (remote code in its `auto_map`),
  is read natively into transformers' `JinaEmbeddingsV3Model` (model_handlers/jina_layout.py): none of its code
  runs; other remote-code encoders load as model_handlers/model_code.py allows;
- any encoder with `"kind": "multi-vector"` in `searchbox.json` (no projection: the encoder's width).

`searchbox.json` may state any of PyLate's setting names above; it wins over the checkpoint's files, which win
over the defaults of the layout's own library (PyLate: `[Q] `/`[D] ` markers; colbert-ai and searchbox.json:
`[unused0]`/`[unused1]`; both: query length 32, documents 180, queries expanded with the mask token and not
attended to, ASCII punctuation skipped in documents).

How a text becomes token vectors, as PyLate's `ColBERT.encode` does it: the tokenizer's special tokens around the
text, the side's marker token inserted after the first of them, cut to the side's length. A query is padded to
`query_length` with the mask token (expansion); the model attends to those only with `attend_to_expansion_tokens`,
and answers a vector for every query position. A document answers a vector for each token not in the skiplist
(which the model still reads). Vectors are the encoder's last hidden states through the projection(s); the
pipeline cuts `dimensions` and normalises each row.

Weights are read with transformers and safetensors; PyLate itself is never imported. On the ONNX backend the encoder and
its projection(s) run as one graph exported at packaging time (`export_onnx`; packaging/_onnx.py checks it against
torch); the sides are built as above, with neither torch nor transformers on the serve path.
"""

from __future__ import annotations

import importlib
import json
import logging
import string
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Hashable, Mapping, NamedTuple, Sequence

import numpy as np

from model_handlers import adapters, jina_layout, model_code
from model_handlers.errors import InvalidInput, InvalidOption, ModelDirectoryError
from model_handlers.kinds import CsvColumn, CsvLayout, Kind, ModelFiles
from model_handlers.lengths import Lengths
from model_handlers.model_files import read_object
from model_handlers.operations.embed import Prepared
from model_handlers.operations.multi_vector import MULTI_VECTOR
from model_handlers.options import HandlerOptions
from model_handlers.ranking import RerankWork, Scoring, Windowing, windowed
from model_handlers.serving_config import ServingConfig
from model_handlers.tokenization import TokenizerView
from model_handlers.types import TASK_INPUT_TYPES, EmbedRequest, RerankRequest, texts_of

logger = logging.getLogger(__name__)

CONFIG_FILE = "searchbox.json"
COLBERT_METADATA = "artifact.metadata"
ST_CONFIG = "config_sentence_transformers.json"
# What a query or document is when the request says neither.
DEFAULT_INPUT_TYPE = "document"


# --- settings: read from the directory's files, without torch ------------------------------------------------


@dataclass(frozen=True)
class Projection:
    """A linear layer after the encoder: `{prefix}weight` (and `{prefix}bias`) in the weights of `folder`."""

    folder: str
    prefix: str = "linear."
    bias: bool = False
    activation: str = "torch.nn.modules.linear.Identity"
    residual: bool = False  # PyLate's use_residual: + the input (projected by `residual.weight` when widths differ)


@dataclass(frozen=True)
class ColbertSettings:
    layout: str  # where the settings came from, for messages: "PyLate", "colbert-ai" or "searchbox.json"
    encoder_folder: str
    projections: tuple[Projection, ...]
    query_prefix: str  # the query marker token; "" for none
    document_prefix: str
    query_length: int
    document_length: int
    do_query_expansion: bool
    attend_to_expansion_tokens: bool
    skiplist_words: tuple[str, ...]


# Defaults where a checkpoint is silent, by the library that wrote it.
_PYLATE_DEFAULTS = {"query_prefix": "[Q] ", "document_prefix": "[D] "}
_COLBERT_DEFAULTS = {"query_prefix": "[unused0]", "document_prefix": "[unused1]"}
_PUBLISHED_DEFAULTS = {"query_length": 32, "document_length": 180, "do_query_expansion": True,
                       "attend_to_expansion_tokens": False, "skiplist_words": tuple(string.punctuation)}
# The settings searchbox.json may state (PyLate's names), and what each must be.
_SETTING_TYPES = {"query_prefix": str, "document_prefix": str, "query_length": int, "document_length": int,
                  "do_query_expansion": bool, "attend_to_expansion_tokens": bool, "skiplist_words": list}
_MIN_LENGTH = 4


def read_settings(model_dir: Path, explicit: Mapping[str, Any]) -> ColbertSettings:
    """The ColBERT settings of `model_dir`: searchbox.json's, else the checkpoint's, else its library's defaults.

    Raises:
        ModelDirectoryError: a setting of the wrong type, or a projection that cannot be found; naming the file.
    """
    files = ModelFiles.read(model_dir)
    if _is_pylate(files):
        layout, encoder, projections, saved = "PyLate", *_pylate_parts(model_dir, files)
        defaults = {**_PUBLISHED_DEFAULTS, **_PYLATE_DEFAULTS}
    elif _is_colbert_ai(files):
        layout, encoder, projections, saved = "colbert-ai", "", (Projection(""),), _colbert_ai_settings(model_dir)
        defaults = {**_PUBLISHED_DEFAULTS, **_COLBERT_DEFAULTS}
    else:
        layout, encoder, projections, saved = CONFIG_FILE, "", (), {}
        defaults = {**_PUBLISHED_DEFAULTS, **_COLBERT_DEFAULTS}
    chosen = {**defaults, **saved, **_checked(explicit, CONFIG_FILE)}
    if not chosen["do_query_expansion"]:
        chosen["attend_to_expansion_tokens"] = False  # nothing to attend to (PyLate's rule)
    return ColbertSettings(layout=layout, encoder_folder=encoder, projections=projections,
                           query_prefix=chosen["query_prefix"], document_prefix=chosen["document_prefix"],
                           query_length=chosen["query_length"], document_length=chosen["document_length"],
                           do_query_expansion=chosen["do_query_expansion"],
                           attend_to_expansion_tokens=chosen["attend_to_expansion_tokens"],
                           skiplist_words=tuple(chosen["skiplist_words"]))


def _checked(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The settings among `values`, each of its type (a null is no setting)."""
    settings = {}
    for key, kind in _SETTING_TYPES.items():
        value = values.get(key)
        if value is None:
            continue
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < _MIN_LENGTH):
            raise ModelDirectoryError(f"{source}: {key} must be an integer >= {_MIN_LENGTH}, not {value!r}")
        if kind is list and not (isinstance(value, list) and all(isinstance(word, str) for word in value)):
            raise ModelDirectoryError(f"{source}: {key} must be a list of strings, not {value!r}")
        if kind in (str, bool) and not isinstance(value, kind):
            raise ModelDirectoryError(f"{source}: {key} must be a {kind.__name__}, not {value!r}")
        settings[key] = value
    return settings


def _is_pylate(files: ModelFiles) -> bool:
    return (any(str(module.get("type", "")).startswith("pylate.") for module in files.modules)
            or files.sentence_transformers.get("model_type") == "ColBERT"
            or any(key in files.sentence_transformers for key in ("query_prefix", "query_length")))


def _is_colbert_ai(files: ModelFiles) -> bool:
    return "HF_ColBERT" in files.architectures or (files.directory / COLBERT_METADATA).is_file()


def _pylate_parts(model_dir: Path, files: ModelFiles) -> tuple[str, tuple[Projection, ...], dict[str, Any]]:
    """The encoder's folder, the Dense projections after it (in order) and the saved settings.

    Like PyLate, only the Transformer and Dense modules count (a Pooling or Normalize module is no part of a
    ColBERT's token vectors).
    """
    encoder, projections = "", []
    for position, module in enumerate(files.modules):  # in modules.json's order, as sentence-transformers runs them
        kind, folder = str(module.get("type", "")), str(module.get("path", ""))
        if position == 0:
            encoder = folder
        elif kind.endswith("Dense"):
            projections.append(_dense(model_dir, folder))
    return encoder, tuple(projections), _checked(files.sentence_transformers, ST_CONFIG)


def _dense(model_dir: Path, folder: str) -> Projection:
    path = model_dir / folder / "config.json"
    if not path.is_file():
        raise ModelDirectoryError(f"{folder}/config.json: cannot read the Dense projection's config: no such file")
    config = read_object(path)
    activation = str(config.get("activation_function") or "torch.nn.modules.linear.Identity")
    if not activation.startswith("torch.nn."):
        raise ModelDirectoryError(f"{folder}/config.json: activation_function {activation!r} is not a torch.nn "
                                  "module; searchbox runs no other code from a model directory")
    return Projection(folder, bias=bool(config.get("bias", True)), activation=activation,
                      residual=bool(config.get("use_residual", False)))


def _colbert_ai_settings(model_dir: Path) -> dict[str, Any]:
    """colbert-ai's `artifact.metadata` (its ColBERTConfig) in PyLate's names."""
    metadata = read_object(model_dir / COLBERT_METADATA)
    if not metadata:
        return {}
    renamed = {"query_prefix": metadata.get("query_token_id"), "document_prefix": metadata.get("doc_token_id"),
               "query_length": metadata.get("query_maxlen"), "document_length": metadata.get("doc_maxlen"),
               "attend_to_expansion_tokens": metadata.get("attend_to_mask_tokens")}
    if metadata.get("mask_punctuation") is False:
        renamed["skiplist_words"] = []
    return _checked(renamed, COLBERT_METADATA)


# --- the model ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sequence:
    """One model input: a query or one document (window), as the model reads it."""

    ids: np.ndarray
    attended: int  # the model attends to the first `attended` positions (query expansion may follow)
    keep: np.ndarray | None  # positions whose vectors are answered; None: every position
    group: Hashable = "tokens"  # queries and documents share passes: right padding is masked away
    adapter: str | None = None  # the LoRA adapter of this row (rows of different adapters share passes too)

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def vectors(self) -> int:
        return self.length if self.keep is None else len(self.keep)


@dataclass(frozen=True)
class _Side:
    """How texts of one side (queries or documents) become model inputs."""

    name: str
    marker: np.ndarray  # the marker token, or nothing
    length: int  # tokens one input may hold, special tokens and marker included
    expansion_id: int | None  # queries: pad to `length` with this token
    attend_expansion: bool
    skip: np.ndarray | None  # documents: token ids read but answered no vector


class MultiVectorModel:
    """A ColBERT: an encoder, its projection(s), and the query and document sides."""

    rerank_scoring = "late interaction (MaxSim) of query and document token vectors"

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions,
                 encoder: "_TorchColbert | _OnnxColbert | None" = None):
        settings: ColbertSettings = config.kind_settings
        self.config = config
        self.model_name = config.served_model_name
        self._encoder = encoder if encoder is not None else _TorchColbert(model_dir, config, options)
        self.device = self._encoder.device
        self.reentrant = self._encoder.reentrant
        self.adapters = self._encoder.adapters
        self.width = self._encoder.width
        tokens: _TokenFacts = self._encoder.tokens
        documents = min(settings.document_length, tokens.capacity(settings.document_length))
        if config.max_length:
            documents = min(documents, config.max_length)
        queries = min(settings.query_length, documents)
        self.max_length = max(queries, documents)
        self._tokenizer = self._encoder.tokenizer(self.max_length)
        self._query = self._side("query", settings.query_prefix, queries, model_dir,
                                 expansion_id=self._expansion_id(tokens, settings, model_dir),
                                 attend_expansion=settings.attend_to_expansion_tokens)
        self._document = self._side("document", settings.document_prefix, documents, model_dir,
                                    skip=self._skip_ids(tokens, settings))
        logger.info("%s ColBERT: queries %d tokens (%s), documents up to %d, %d-dimensional token vectors",
                    settings.layout, queries, "expanded" if settings.do_query_expansion else "not expanded",
                    documents, self.width)

    def _side(self, name: str, prefix: str, length: int, model_dir: Path, *,
              expansion_id: int | None = None, attend_expansion: bool = False,
              skip: np.ndarray | None = None) -> _Side:
        marker = np.zeros(0, dtype=np.int64)
        if prefix:
            marker_id = self._tokenizer.token_id(prefix)
            if marker_id is None:
                raise ModelDirectoryError(
                    f"{model_dir}: the {name} marker {prefix!r} is not a token of the tokenizer; name the model's "
                    f"marker token in {CONFIG_FILE} (\"{name}_prefix\"), or \"\" for none")
            marker = np.asarray([marker_id], dtype=np.int64)
        if length < self._tokenizer.special_count + len(marker) + 1:
            raise ModelDirectoryError(f"{model_dir}: {name}s of {length} tokens leave no room for text beside the "
                                      f"special tokens; raise {name}_length in {CONFIG_FILE}")
        return _Side(name, marker, length, expansion_id, attend_expansion, skip)

    @staticmethod
    def _expansion_id(tokens: "_TokenFacts", settings: ColbertSettings, model_dir: Path) -> int | None:
        """The token queries are padded with (expansion): PyLate's choice of the mask token (encoders), else
        end-of-sequence (decoders), else padding; None without expansion."""
        if not settings.do_query_expansion:
            return None
        token = next((i for i in (tokens.mask_id, tokens.eos_id, tokens.pad_id) if i is not None), None)
        if token is None:
            raise ModelDirectoryError(f"{model_dir}: the tokenizer has no mask, end or padding token to expand "
                                      f"queries with; set do_query_expansion to false in {CONFIG_FILE}")
        return token

    def _skip_ids(self, tokens: "_TokenFacts", settings: ColbertSettings) -> np.ndarray | None:
        if not settings.skiplist_words:
            return None
        # as PyLate's convert_tokens_to_ids (transformers' fast tokenizer): a word that is no token stands for the
        # unknown token
        ids = [self._tokenizer.token_id(word) for word in settings.skiplist_words]
        ids = [tokens.unk_id if i is None else i for i in ids]
        return np.unique(np.asarray([i for i in ids if i is not None], dtype=np.int64))

    # --- on the caller's thread -----------------------------------------------------------------------

    def prepare_embed(self, request: EmbedRequest) -> Prepared:
        if request.late_chunking:
            raise InvalidOption(f"late_chunking is not available for multi-vector model {self.model_name}: each "
                                "token already has a vector in the context of its whole input; leave it out")
        sequences = self._sequences(request, request.truncate)
        return Prepared(sequences, [s.length for s in sequences],
                        adapters=adapters.held(self.adapters, sequences, request.adapter))

    def vector_count(self, request: EmbedRequest) -> int:
        """The token vectors the answer to `request` holds (inputs cut to length: a refusal comes later, in order)."""
        return sum(s.vectors for s in self._sequences(request, truncate=True))

    def prepare_rerank(self, request: RerankRequest, max_windows: int) -> RerankWork:
        """The query as a query, then every window of every document as a document.

        A document longer than `document_length` is read in overlapping windows, each encoded on its own:
        a token's vector depends on all the tokens around it, so vectors of one window cannot stand in for
        another's (no reuse across windows: it would not be exact). Usage counts every token each input read.
        """
        query_text = texts_of([request.query], self.model_name, "the query")
        documents = texts_of(request.documents, self.model_name, "document")
        spec = self.config.resolve_task(None, adapter=request.adapter)
        prompt = spec.prompt
        query = self._sequence(self._query, self._tokenizer.encode([prompt + query_text[0]])[0], 0, True,
                               spec.adapter)
        prompt_ids = self._tokenizer.encode([prompt])[0] if prompt else np.zeros(0, dtype=np.int64)
        windowing = Windowing.within(self._room(self._document) - len(prompt_ids), self.config)

        def windows(index: int, content: np.ndarray) -> tuple[list[_Sequence], int]:
            pieces = [self._sequence(self._document, np.concatenate([prompt_ids, window]), index, True, spec.adapter)
                      for window in windowing.split(content)]
            return pieces, sum(p.length for p in pieces)

        work = windowed(Scoring.MAXSIM, [query], query.length, self._tokenizer.encode(documents), windows, max_windows)
        return replace(work, adapters=adapters.held(self.adapters, work.items, request.adapter))

    def text_tokenizer(self) -> TokenizerView:
        """The tokenizer it reads texts with (tokenize and segment requests)."""
        return self._tokenizer

    def calibration_item(self, length: int) -> _Sequence:
        filler = self._tokenizer.encode(["a"])[0][:1]
        ids = self._tokenizer.wrap(np.repeat(filler, max(0, length - self._tokenizer.special_count)))
        return _Sequence(ids, len(ids), None)

    def _sequences(self, request: EmbedRequest, truncate: bool) -> list[_Sequence]:
        texts = texts_of(request.inputs, self.model_name)
        side = self._query if (request.effective_input_type or DEFAULT_INPUT_TYPE) == "query" else self._document
        # a retrieval task the model does not declare only says which side (as input_type does)
        task = None if request.task in TASK_INPUT_TYPES and request.task not in self.config.tasks else request.task
        spec = self.config.resolve_task(task, adapter=request.adapter)
        contents = self._tokenizer.encode([spec.prompt + text for text in texts])
        return [self._sequence(side, content, index, truncate, spec.adapter) for index, content in enumerate(contents)]

    def _room(self, side: _Side) -> int:
        return side.length - self._tokenizer.special_count - len(side.marker)

    def _sequence(self, side: _Side, content: np.ndarray, index: int, truncate: bool,
                  adapter: str | None = None) -> _Sequence:
        room = self._room(side)
        if len(content) > room:
            if not truncate:
                total = len(content) + self._tokenizer.special_count + len(side.marker)
                raise InvalidInput(
                    f"input {index} has {total} tokens as a {side.name}, over the model's limit of {side.length}; "
                    "shorten it or set truncate to true", code="INPUT_TOKEN_LIMIT_EXCEEDED")
            content = content[:room]
        wrapped = self._tokenizer.wrap(content)
        # PyLate inserts the marker after the first token (the tokenizer's start token)
        ids = np.concatenate([wrapped[:1], side.marker, wrapped[1:]])
        attended = len(ids)
        if side.expansion_id is not None:
            ids = np.concatenate([ids, np.full(side.length - len(ids), side.expansion_id, dtype=np.int64)])
            if side.attend_expansion:
                attended = len(ids)
        keep = None if side.skip is None else np.flatnonzero(~np.isin(ids, side.skip))
        return _Sequence(ids, attended, keep, adapter=adapter)

    # --- on the batcher's thread ----------------------------------------------------------------------

    def forward(self, sequences: list[_Sequence]) -> list[list[np.ndarray]]:
        padded = self._tokenizer.pad([s.ids for s in sequences])
        for row, sequence in enumerate(sequences):
            padded["attention_mask"][row, sequence.attended:] = 0
        vectors = self._encoder.vectors(padded, [s.adapter for s in sequences])
        out = []
        for row, sequence in enumerate(sequences):
            matrix = vectors[row, : sequence.length]
            # copies: a view would keep the whole pass's array alive as long as the caller holds its rows
            out.append([matrix.copy() if sequence.keep is None else matrix[sequence.keep]])
        return out


@dataclass(frozen=True)
class _TokenFacts:
    """What the sides are made of, beyond tokenizer.json: the special tokens' ids as transformers' tokenizer names
    them, and the lengths the tokenizer and the encoder's positions allow. The torch backend reads them from the
    loaded tokenizer and encoder; an ONNX export writes them into its graph's metadata, for a serve path without
    transformers."""

    mask_id: int | None
    eos_id: int | None
    pad_id: int | None
    unk_id: int | None
    model_max_length: Any  # the tokenizer's, placeholders included (Lengths drops them)
    positions: int | None  # the encoder's position table, less RoBERTa's offset

    def capacity(self, default: int) -> int:
        """Tokens the encoder can read (model_handlers/lengths.py's capacity; PyLate's lengths are the sides')."""
        return Lengths.of(tokenizer=self.model_max_length, positions=self.positions).capacity(default)

    @classmethod
    def of(cls, tokenizer, encoder) -> "_TokenFacts":
        """From a transformers tokenizer and encoder: its position table, less RoBERTa's offset (positions start
        after the padding index)."""
        positions = getattr(encoder.config, "max_position_embeddings", None)
        padding_index = getattr(getattr(encoder, "embeddings", None), "padding_idx", None)
        if isinstance(positions, int) and isinstance(padding_index, int):
            positions -= padding_index + 1
        return cls(tokenizer.mask_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id,
                   getattr(tokenizer, "model_max_length", None), positions if isinstance(positions, int) else None)


class _TorchColbert:
    """The encoder and its projection(s) on torch (with its adapters)."""

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        import torch

        settings: ColbertSettings = config.kind_settings
        self.device = options.resolved_device()
        self._device = torch.device(self.device)
        self._hf_tokenizer, self._encoder, self.reentrant = _tokenizer_and_encoder(model_dir, settings, options,
                                                                                   self.device)
        self.adapters = adapters.attach(self._encoder, options, config.adapters, model_dir)
        # in the encoder's dtype, as PyLate casts its Dense layers
        dtype = next(self._encoder.parameters()).dtype
        self.projections = [_projection(model_dir, p, options.allow_pickle, self._device, dtype)
                            for p in settings.projections]
        hidden = int(getattr(self._encoder.config, "hidden_size", 0) or 0)
        self.width = int(self.projections[-1].out_features) if self.projections else hidden
        self.tokens = _TokenFacts.of(self._hf_tokenizer, self._encoder)

    def tokenizer(self, max_length: int) -> TokenizerView:
        return TokenizerView.from_hf(self._hf_tokenizer, max_length)

    def token_vectors(self, features: Mapping[str, Any]):
        """[batch, seq, width] torch tensor: the encoder's last hidden states through the projection(s)."""
        tokens = self._encoder(**features)[0]
        for projection in self.projections:
            tokens = projection(tokens)
        return tokens

    def vectors(self, padded: Mapping[str, np.ndarray], adapter_names: Sequence[str | None]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            features = {name: torch.from_numpy(array).to(self._device) for name, array in padded.items()}
            with adapters.rows(self.adapters, adapter_names):
                return self.token_vectors(features).float().cpu().numpy()


def _tokenizer_and_encoder(model_dir: Path, settings: ColbertSettings, options: HandlerOptions, device: str):
    """The transformers tokenizer and the encoder (in eval mode) of a ColBERT directory (torch and packaging only), and
    whether its passes may run at once (`_load_encoder`)."""
    from transformers import AutoTokenizer

    encoder_dir = model_dir / settings.encoder_folder
    trust = model_code.trusts(model_dir, options)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir), local_files_only=True, trust_remote_code=trust)
        encoder, reentrant = _load_encoder(encoder_dir, options, trust, device)
    except (OSError, ValueError) as exc:
        raise ModelDirectoryError(f"cannot load {model_dir} as a multi-vector (ColBERT) model: {exc}") from exc
    return tokenizer, encoder.eval(), reentrant


# the graph's metadata: the _TokenFacts of the exported model (JSON), and the projections traced into it
_FACTS_METADATA = "searchbox.colbert_tokens"
_PROJECTIONS_METADATA = "searchbox.colbert_projections"


def _projections_name(settings: ColbertSettings) -> str:
    return json.dumps([[p.folder, p.prefix, p.bias, p.activation, p.residual] for p in settings.projections])


class _OnnxColbert:
    """The encoder and its projection(s) exported to ONNX at packaging time (export_onnx): the graph answers
    [batch, seq, width] token vectors. No torch, no transformers on this path; no adapters (the export refuses models
    that have them)."""

    reentrant = True  # ONNX Runtime runs a session's passes on several threads at once

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        from model_handlers.onnx_runtime import OnnxSession

        settings: ColbertSettings = config.kind_settings
        self._session = OnnxSession.of(model_dir, config, options)
        stated = self._session.stated(_FACTS_METADATA)
        projections = self._session.metadata.get(_PROJECTIONS_METADATA)
        if stated is None or projections != _projections_name(settings):
            raise ModelDirectoryError(f"{model_dir / config.onnx_file} is not the ColBERT export of this directory (its "
                                      "projections or tokens are not the ones it states): rebuild the artifact with "
                                      "packaging/build_artifact.py --backend onnx")
        self.tokens = _TokenFacts(**{key: stated.get(key) for key in _TokenFacts.__dataclass_fields__})
        self.width = int(stated["width"])
        self.device = self._session.device
        self.adapters = None
        self._encoder_dir = model_dir / settings.encoder_folder

    def tokenizer(self, max_length: int) -> TokenizerView:
        return self._session.tokenizer(self._encoder_dir, max_length)

    def vectors(self, padded: Mapping[str, np.ndarray], adapter_names: Sequence[str | None]) -> np.ndarray:
        return self._session.run(padded).astype(np.float32, copy=False)


class _TokenVectors(NamedTuple):
    token_vectors: Any


def export_onnx(model_dir: Path, out_path: Path) -> None:
    """The encoder and its projection(s) as one ONNX graph: the inputs its tokenizer makes -> `token_vectors`
    [batch, seq, width], before the pipeline's cut and normalisation. The markers, query expansion, attention to the
    expansion and the skiplist stay outside it, on the ids and the mask (MultiVectorModel), as on torch; the tokens'
    facts that come from transformers (special ids, lengths) are written into the graph's metadata.

    Raises:
        ModelDirectoryError: the model has adapters, is in jina-colbert-v2's layout, or does not export; the message
            says to serve it with torch.
    """
    import onnx
    import torch

    from model_handlers.onnx_runtime import export_graph, refuse_adapters
    from model_handlers.serving_config import read_serving_config

    config = read_serving_config(model_dir)
    settings: ColbertSettings = config.kind_settings
    refuse_adapters(config)
    if jina_layout.layout(ModelFiles.read(model_dir / settings.encoder_folder).config):
        raise ModelDirectoryError("jina-colbert-v2's layout (Jina's XLM-RoBERTa flash encoder) does not export to "
                                  "ONNX yet: build it with --backend torch")
    colbert = _TorchColbert(model_dir, config, HandlerOptions(device="cpu"))

    class Exported(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = colbert._encoder

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return _TokenVectors(colbert.token_vectors({"input_ids": input_ids, "attention_mask": attention_mask,
                                                        **extra}))

    example = colbert._hf_tokenizer(["searchbox exports this model", "a second, somewhat longer example sentence"],
                                    padding=True, return_tensors="np")
    export_graph(Exported(), "token_vectors", {name: example[name].astype(np.int64) for name in example}, out_path)
    graph = onnx.load(str(out_path))
    facts = {**colbert.tokens.__dict__, "width": colbert.width}
    onnx.helper.set_model_props(graph, {_FACTS_METADATA: json.dumps(facts),
                                        _PROJECTIONS_METADATA: _projections_name(settings)})
    onnx.save(graph, str(out_path))


def _load_encoder(encoder_dir: Path, options: HandlerOptions, trust: bool, device: str):
    """The encoder on `device`, in eval mode, its missing weights refused: random weights would serve plausible
    nonsense, and whether its passes may run at once. Jina's flash checkpoints (jina-colbert-v2) are read natively
    (model_handlers/jina_layout.py). transformers' own classes keep nothing of a pass; a directory's own code (`trust`)
    might, so it runs one pass at a time.

    transformers' own load report is kept quiet: in colbert-ai's layout the projection's `linear.weight` sits
    beside the encoder's weights, which it calls unexpected, and the pooler it adds (a ColBERT never uses it)
    missing; what is really wrong is said here instead.
    """
    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    if jina_layout.layout(ModelFiles.read(encoder_dir).config):
        encoder, unused = jina_layout.load(encoder_dir, jina_layout.ENCODER, device=device,
                                           allow_pickle=options.allow_pickle)
        _warn_unused(encoder_dir, unused)
        return encoder, True
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        encoder, info = AutoModel.from_pretrained(str(encoder_dir), local_files_only=True, trust_remote_code=trust,
                                                  use_safetensors=not options.allow_pickle or None,
                                                  output_loading_info=True)
    finally:
        transformers_logging.set_verbosity(verbosity)
    missing = sorted(key for key in info.get("missing_keys", ()) if not key.startswith("pooler."))
    if missing or info.get("mismatched_keys"):
        wrong = ", ".join(missing[:5] + [str(key) for key in list(info.get("mismatched_keys") or ())[:5]])
        raise ModelDirectoryError(f"{encoder_dir}: the encoder's weights are missing or of the wrong shape in the "
                                  f"checkpoint ({wrong}); it would answer random vectors")
    _warn_unused(encoder_dir, info.get("unexpected_keys", ()))
    return encoder.to(device).eval(), not trust


def _warn_unused(encoder_dir: Path, keys) -> None:
    unused = sorted(key for key in keys if not key.startswith(("linear.", "residual.", "pooler.")))
    if unused:
        logger.warning("%s: weights not used by the encoder: %s", encoder_dir, ", ".join(unused[:10]))


def _projection(model_dir: Path, projection: Projection, allow_pickle: bool, device, dtype) -> "_Dense":
    """The projection, its weights read from the folder's safetensors (or, when allowed, its pickle)."""
    import torch

    names = [projection.prefix + "weight", projection.prefix + "bias", "residual.weight"]
    weights = _tensors(model_dir / projection.folder, names, allow_pickle)
    weight = weights.get(projection.prefix + "weight")
    if weight is None:
        raise ModelDirectoryError(f"{model_dir / projection.folder}: no {projection.prefix}weight in the weights: "
                                  "the ColBERT projection is missing")
    module_path, _, class_name = projection.activation.rpartition(".")
    activation = getattr(importlib.import_module(module_path), class_name, None)
    if not (isinstance(activation, type) and issubclass(activation, torch.nn.Module)):
        raise ModelDirectoryError(f"{projection.folder}: activation_function {projection.activation!r} is not a "
                                  "torch.nn module")
    bias = weights.get(projection.prefix + "bias") if projection.bias else None
    residual = None
    if projection.residual:
        residual = weights.get("residual.weight") if weight.shape[0] != weight.shape[1] else _IDENTITY
        if residual is None:
            raise ModelDirectoryError(f"{model_dir / projection.folder}: use_residual needs residual.weight")

    def on_device(tensor):
        return tensor if tensor is None or tensor is _IDENTITY else tensor.to(device, dtype)

    return _Dense(on_device(weight), on_device(bias), activation().to(device), on_device(residual))


_IDENTITY = "identity"


@dataclass(frozen=True)
class _Dense:
    """PyLate's Dense: activation(x W^T + b), plus x (or x R^T when the widths differ) with use_residual."""

    weight: Any
    bias: Any
    activation: Any
    residual: Any  # None, _IDENTITY, or R

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def __call__(self, tokens):
        from torch.nn.functional import linear

        projected = self.activation(linear(tokens, self.weight, self.bias))
        if self.residual is None:
            return projected
        return projected + (tokens if self.residual is _IDENTITY else linear(tokens, self.residual))


def _tensors(folder: Path, names: list[str], allow_pickle: bool) -> dict:
    """The tensors called `names` that the folder's weights hold, and only those: in colbert-ai's layout the
    projection shares one file with the whole encoder, which need not be read twice."""
    import torch
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if files:
        found = {}
        for path in files:
            with safe_open(str(path), framework="pt") as weights:
                found.update({name: weights.get_tensor(name) for name in names if name in weights.keys()})
        return found
    pickled = folder / "pytorch_model.bin"
    if pickled.is_file() and allow_pickle:
        state = torch.load(str(pickled), map_location="cpu", weights_only=True)
        return {name: state[name] for name in names if name in state}
    raise ModelDirectoryError(f"{folder}: no safetensors weights for the ColBERT projection"
                              + (" (pytorch_model.bin is there: SEARCHBOX_ALLOW_PICKLE=1 loads it)"
                                 if pickled.is_file() else ""))


KIND = Kind(
    name="multi-vector",
    summary="multi-vector embeddings (ColBERT late interaction)",
    recognizes=lambda files: _is_pylate(files) or _is_colbert_ai(files),
    model=MultiVectorModel,
    csv=CsvLayout(MULTI_VECTOR, (CsvColumn("text"),)),
    backends={"torch": MultiVectorModel,
              "onnx": lambda model_dir, config, options: MultiVectorModel(
                  model_dir, config, options, _OnnxColbert(model_dir, config, options))},
    read_settings=read_settings,
    onnx_export=export_onnx,
)
