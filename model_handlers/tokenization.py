"""A thread-safe view of a Hugging Face fast tokenizer.

The wrapper's `__call__` re-configures truncation and padding on the shared Rust tokenizer at each
call, which races between request threads. This view owns a private copy of the backend with
truncation and padding switched off once, encodes without special tokens, and adds them itself,
so every caller can count, cut and pack tokens exactly as it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

from model_handlers.errors import InvalidInput, ModelDirectoryError
from model_handlers.model_files import read_object


class TokenizerView:
    """Args:
        tokenizer: the Rust tokenizer (tokenizer.json); a private copy is configured here.
        max_length: tokens one model input may hold, special tokens included.
        pad_id: the padding token's id.
        with_type_ids: whether the model takes token_type_ids.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int, pad_id: int, with_type_ids: bool):
        self._backend = Tokenizer.from_str(tokenizer.to_str())
        self._backend.no_truncation()
        self._backend.no_padding()
        self.prefix, self.suffix = self._special_tokens()
        self.special_count = len(self.prefix) + len(self.suffix)
        self.max_length = max_length
        # Tokens left for content in one sequence, once the special tokens are in.
        self.room = max_length - self.special_count
        self.pad_id = pad_id
        self._with_type_ids = with_type_ids
        # Cross-encoders take (query, document) pairs; a tokenizer without a pair template serves single texts only.
        self._pair = self._pair_layout()
        self.pair_special_count = None if self._pair is None else sum(len(part) for part in self._pair.ids)

    @classmethod
    def from_hf(cls, hf_tokenizer, max_length: int) -> "TokenizerView":
        """From a loaded transformers tokenizer (the torch backend has one)."""
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ModelDirectoryError("searchbox needs a fast tokenizer (tokenizer.json) in the model directory")
        pad_id = int(hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0)
        return cls(backend, max_length, pad_id, "token_type_ids" in getattr(hf_tokenizer, "model_input_names", ()))

    @classmethod
    def from_directory(cls, model_dir: Path, max_length: int, with_type_ids: bool) -> "TokenizerView":
        """From tokenizer.json and the special tokens the directory names, without transformers (the ONNX backend).

        Raises:
            ModelDirectoryError: no tokenizer.json.
        """
        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            raise ModelDirectoryError(f"{model_dir}: searchbox needs a fast tokenizer (tokenizer.json)")
        tokenizer = Tokenizer.from_file(str(path))
        return cls(tokenizer, max_length, _pad_id(model_dir, tokenizer), with_type_ids)

    def _special_tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """Split what the post-processor adds around one text into the part before and after it."""
        plain = self._backend.encode("a", add_special_tokens=False).ids
        wrapped = self._backend.encode("a", add_special_tokens=True).ids
        start = _find(wrapped, plain, 0)
        if start < 0:
            raise ModelDirectoryError("cannot tell the tokenizer's special tokens apart from the text")
        return (np.asarray(wrapped[:start], dtype=np.int64),
                np.asarray(wrapped[start + len(plain):], dtype=np.int64))

    def _pair_layout(self) -> "_PairLayout | None":
        """The special tokens (and their token type ids) before, between and after the two texts of a pair."""
        first = self._backend.encode("a", add_special_tokens=False).ids
        second = self._backend.encode("b", add_special_tokens=False).ids
        try:
            wrapped = self._backend.encode("a", "b", add_special_tokens=True)
        except Exception:  # no pair template: a pair model cannot be served, single texts still can
            return None
        ids, types = wrapped.ids, wrapped.type_ids
        at_first = _find(ids, first, 0)
        at_second = _find(ids, second, at_first + len(first)) if at_first >= 0 else -1
        if at_second < 0:
            return None
        cuts = [(0, at_first), (at_first + len(first), at_second), (at_second + len(second), len(ids))]
        return _PairLayout(
            ids=tuple(np.asarray(ids[a:b], dtype=np.int64) for a, b in cuts),
            type_ids=tuple(np.asarray(types[a:b], dtype=np.int64) for a, b in cuts),
            first_type=int(types[at_first]) if first else 0,
            second_type=int(types[at_second]) if second else 1,
        )

    def wrap_pair(self, first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One pair input, as the tokenizer's pair template builds it: (input ids, token type ids).

        Raises:
            ModelDirectoryError: the tokenizer has no template for pairs.
        """
        if self._pair is None:
            raise ModelDirectoryError("the tokenizer has no template for text pairs; it cannot serve a cross-encoder")
        (before, between, after), (t_before, t_between, t_after) = self._pair.ids, self._pair.type_ids
        ids = np.concatenate([before, first, between, second, after])
        types = np.concatenate([t_before, np.full(len(first), self._pair.first_type, dtype=np.int64), t_between,
                                np.full(len(second), self._pair.second_type, dtype=np.int64), t_after])
        return ids, types

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each text, without special tokens and without truncation."""
        # the fast variant computes no offsets, which nothing here needs: less time and memory per token
        encodings = self._backend.encode_batch_fast(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def spans(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of one text (without special tokens, without truncation) and, for each, the (start, end)
        character offsets into `text` of what it was read from: Python string indices, whatever the Unicode."""
        encoding = self._backend.encode(text, add_special_tokens=False)
        offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        return np.asarray(encoding.ids, dtype=np.int64), offsets

    def vocabulary(self, ids: Sequence[int]) -> list[str]:
        """The vocabulary strings of token ids ("[CLS]", "##ing")."""
        return [self._backend.id_to_token(int(i)) for i in ids]

    def token_id(self, token: str) -> int | None:
        """The id of one vocabulary entry ("[Q] ", "[MASK]"), added tokens included; None when it is none."""
        return self._backend.token_to_id(token)

    def fit(self, content: np.ndarray, truncate: bool, label: str, room: int | None = None) -> np.ndarray:
        """`content` as one sequence holds it: whole when it fits `room` (the sequence's room unless told), cut when
        `truncate`, else refused naming `label` ("input 3") and the model's limit."""
        room = self.room if room is None else room
        if len(content) <= room:
            return content
        if truncate:
            return content[:room]
        raise InvalidInput(f"{label} has {len(content) + self.special_count} tokens, over the model's limit of "
                           f"{self.max_length}; shorten it or set truncate to true", code="INPUT_TOKEN_LIMIT_EXCEEDED")

    def wrap(self, content: np.ndarray) -> np.ndarray:
        """One model input: the special tokens around `content`."""
        return np.concatenate([self.prefix, content, self.suffix])

    def pad(self, rows: Sequence[np.ndarray], type_ids: Sequence[np.ndarray] | None = None,
            length: int | None = None) -> dict[str, np.ndarray]:
        """Right-pad rows into the arrays a transformer takes (input_ids, attention_mask, token_type_ids).

        `length`: pad to at least this many tokens (models that pool a fixed position, such as SigLIP's text tower).
        """
        longest = max(max(len(r) for r in rows), length or 0)
        ids = np.full((len(rows), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), longest), dtype=np.int64)
        types = np.zeros((len(rows), longest), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
            if type_ids is not None:
                types[i, : len(row)] = type_ids[i]
        features = {"input_ids": ids, "attention_mask": mask}
        if self._with_type_ids:
            features["token_type_ids"] = types
        return features


@dataclass(frozen=True)
class _PairLayout:
    """Special tokens of a pair template: (before, between, after), and the type ids of each part."""

    ids: tuple[np.ndarray, np.ndarray, np.ndarray]
    type_ids: tuple[np.ndarray, np.ndarray, np.ndarray]
    first_type: int
    second_type: int


def _pad_id(model_dir: Path, tokenizer: Tokenizer) -> int:
    """The padding token's id: as tokenizer_config.json or special_tokens_map.json name it, else the tokenizer's
    own padding, else 0 (what transformers falls back to as well)."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        token = read_object(Path(model_dir) / name).get("pad_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
            return int(tokenizer.token_to_id(token))
    padding = tokenizer.padding
    return int(padding["pad_id"]) if padding else 0


def _find(haystack: Sequence[int], needle: Sequence[int], start: int) -> int:
    for at in range(start, len(haystack) - len(needle) + 1):
        if list(haystack[at:at + len(needle)]) == list(needle):
            return at
    return -1
