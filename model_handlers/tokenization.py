"""A thread-safe view of a Hugging Face fast tokenizer.

The wrapper's `__call__` re-configures truncation and padding on the shared Rust tokenizer at each
call, which races between request threads. This view owns a private copy of the backend with
truncation and padding switched off once, encodes without special tokens, and adds them itself,
so every caller can count, cut and pack tokens exactly as it needs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tokenizers import Tokenizer

from model_handlers.errors import ModelDirectoryError


class TokenizerView:
    def __init__(self, hf_tokenizer, max_length: int):
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ModelDirectoryError("searchbox needs a fast tokenizer (tokenizer.json) in the model directory")
        self._backend = Tokenizer.from_str(backend.to_str())
        self._backend.no_truncation()
        self._backend.no_padding()
        self.prefix, self.suffix = self._special_tokens()
        self.special_count = len(self.prefix) + len(self.suffix)
        self.max_length = max_length
        # Tokens left for content in one sequence, once the special tokens are in.
        self.room = max_length - self.special_count
        self.pad_id = int(hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0)
        self._with_type_ids = "token_type_ids" in getattr(hf_tokenizer, "model_input_names", ())

    def _special_tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """Split what the post-processor adds around one text into the part before and after it."""
        plain = self._backend.encode("a", add_special_tokens=False).ids
        wrapped = self._backend.encode("a", add_special_tokens=True).ids
        for start in range(len(wrapped) - len(plain) + 1):
            if wrapped[start:start + len(plain)] == plain:
                return (np.asarray(wrapped[:start], dtype=np.int64),
                        np.asarray(wrapped[start + len(plain):], dtype=np.int64))
        raise ModelDirectoryError("cannot tell the tokenizer's special tokens apart from the text")

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each text, without special tokens and without truncation."""
        encodings = self._backend.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def wrap(self, content: np.ndarray) -> np.ndarray:
        """One model input: the special tokens around `content`."""
        return np.concatenate([self.prefix, content, self.suffix])

    def pad(self, rows: Sequence[np.ndarray], device: torch.device,
            type_ids: Sequence[np.ndarray] | None = None) -> dict[str, torch.Tensor]:
        """Right-pad rows into the tensors a transformer takes (input_ids, attention_mask, token_type_ids)."""
        longest = max(len(r) for r in rows)
        ids = np.full((len(rows), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), longest), dtype=np.int64)
        types = np.zeros((len(rows), longest), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
            if type_ids is not None:
                types[i, : len(row)] = type_ids[i]
        features = {"input_ids": torch.from_numpy(ids).to(device),
                    "attention_mask": torch.from_numpy(mask).to(device)}
        if self._with_type_ids:
            features["token_type_ids"] = torch.from_numpy(types).to(device)
        return features
