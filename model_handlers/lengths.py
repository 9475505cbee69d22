"""The one rule for how many tokens a model input may hold (a kind's `max_length`), from what a checkpoint declares.

A checkpoint may say its length three ways: sentence-transformers' `max_seq_length` (sentence_bert_config.json, or
what a loaded SentenceTransformer computed), the tokenizer's `model_max_length` (tokenizer_config.json, or the
loaded tokenizer's), and the model's position table (config.json `max_position_embeddings`). The served length is
the operator's (searchbox.json `max_length`), else sentence-transformers' (what its library cuts at), else the
smaller of the tokenizer's and the positions; positions alone count at most `POSITIONS_ALONE` tokens (a 514-entry
RoBERTa table holds 512, and a long table says what the architecture allows, not what the model was trained on);
with none of them, the kind's own default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_handlers.model_files import read_object

# transformers stores "no limit" as a huge model_max_length (VERY_LARGE_INTEGER, 1e30); at or past this a declared
# length is that placeholder, not the model's length.
NO_LIMIT = 1_000_000
# The most tokens a position table alone (no declared length beside it) stands for.
POSITIONS_ALONE = 512
DEFAULT_LENGTH = 512
# A language model's pass is served (and calibrated) at most this long unless searchbox.json's `max_length` says
# otherwise: their positions go to 32k-128k, and one CPU calibration pass at that length alone takes minutes
# (Qwen3-Reranker's card scores at 8192). Rerankers read longer documents in windows or blocks.
LANGUAGE_MODEL_LENGTH = 8192


def declared(value: Any) -> int | None:
    """A length as stated: a positive whole number below the placeholder; None for anything else (absent, null,
    transformers' "no limit")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < NO_LIMIT:
        return None
    return int(value)


@dataclass(frozen=True)
class Lengths:
    """What a checkpoint declares (each None when it does not): build it from the loaded objects a kind holds, or
    `read` it from the files."""

    sentence_transformers: int | None = None
    tokenizer: int | None = None
    positions: int | None = None

    @classmethod
    def of(cls, sentence_transformers: Any = None, tokenizer: Any = None, positions: Any = None) -> "Lengths":
        """Lengths from raw values (a loaded tokenizer's model_max_length, a config attribute), placeholders dropped."""
        return cls(declared(sentence_transformers), declared(tokenizer), declared(positions))

    @classmethod
    def read(cls, directory: Path, *, sentence_transformers: bool = True) -> "Lengths":
        """Lengths from the directory's files (sentence_bert_config.json's only with `sentence_transformers`: a kind
        whose library does not read that file leaves it out).

        Raises:
            ModelDirectoryError: one of the files is not valid JSON (model_files' policy).
        """
        directory = Path(directory)
        saved = read_object(directory / "sentence_bert_config.json") if sentence_transformers else {}
        return cls.of(saved.get("max_seq_length"),
                      read_object(directory / "tokenizer_config.json").get("model_max_length"),
                      read_object(directory / "config.json").get("max_position_embeddings"))

    def capacity(self, default: int = DEFAULT_LENGTH) -> int:
        """What the tokenizer and the positions allow: the smaller of the two; the positions alone at most
        POSITIONS_ALONE; `default` when neither says."""
        if self.tokenizer is not None:
            return min(self.tokenizer, self.positions) if self.positions is not None else self.tokenizer
        if self.positions is not None:
            return min(self.positions, POSITIONS_ALONE)
        return default

    def served(self, override: int | None = None, default: int = DEFAULT_LENGTH) -> int:
        """The served max length: `override` (searchbox.json's), else sentence-transformers', else `capacity`."""
        return int(override or self.sentence_transformers or self.capacity(default))
