"""Operation `tokenize`: each text's tokens as the served model reads them, so a client can budget a request before
sending it (issue 24; Jina's Segmenter counts with tiktoken, which an offline endpoint does not have).

A text counts its own tokens plus the special tokens the model wraps every input in (`[CLS]` ... `[SEP]`): what the
usage of an embeddings request reports for it, before any truncation at the model's `max_length` (answered beside the
counts). A task's prompt and ColBERT's query and document markers are not included. Nothing runs on the model and
nothing is billed: answers report `usage` 0 and bill no inputs (`OperationSpec.metered`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import numpy as np

from model_handlers.batching import Timing
from model_handlers.deadline import Deadline
from model_handlers.operations import OperationSpec, Runner
from model_handlers.types import EmbedInput, TextInput, unsupported, where

if TYPE_CHECKING:
    from model_handlers.tokenization import TokenizerView

TOKENIZE = "tokenize"


@runtime_checkable
class Tokenizes(Protocol):
    """What a kind's model has to answer tokenize and segment requests: the tokenizer it reads texts with."""

    def text_tokenizer(self) -> "TokenizerView": ...


@dataclass(frozen=True)
class TokenizeRequest:
    inputs: tuple[EmbedInput, ...]
    return_tokens: bool = False
    # SageMaker's adapter header may name one (engine.with_adapter); adapters change no token
    adapter: str | None = None

    operation: ClassVar[str] = TOKENIZE


@dataclass(frozen=True)
class Tokenized:
    """One text as the model reads it: its token ids, special tokens included, and (when asked) their vocabulary
    strings."""

    ids: np.ndarray
    tokens: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TokenizeResult:
    items: list[Tokenized]
    max_length: int  # tokens one model input holds; a text counted longer is truncated (or refused) by embeddings
    model: str

    operation: ClassVar[str] = TOKENIZE

    @property
    def total_tokens(self) -> int:
        """Counting tokens is not billed."""
        return 0


def run(pipeline: Runner, request: TokenizeRequest, deadline: Deadline, timing: Timing | None) -> TokenizeResult:
    """Each text's token ids, wrapped in the model's special tokens."""
    tokenizer = pipeline.model.text_tokenizer()
    texts = []
    for index, item in enumerate(request.inputs):
        if not isinstance(item, TextInput):
            raise unsupported(item, where("input", index), pipeline.model_name, "texts only to tokenize")
        texts.append(item.text)
    items = []
    for content in tokenizer.encode(texts):
        ids = tokenizer.wrap(content)
        items.append(Tokenized(ids, tuple(tokenizer.vocabulary(ids)) if request.return_tokens else None))
    return TokenizeResult(items=items, max_length=tokenizer.max_length, model=pipeline.model_name)


def _summary(request: TokenizeRequest, result: TokenizeResult) -> str:
    return f"tokenized {len(result.items)} texts into {sum(len(item.ids) for item in result.items)} tokens"


SPEC = OperationSpec(
    name=TOKENIZE,
    noun="tokenize",
    request_type=TokenizeRequest,
    model=Tokenizes,
    run=run,
    inputs=lambda request: len(request.inputs),
    input_word="inputs",
    warm_up=lambda: TokenizeRequest(inputs=(TextInput("warm up the tokenizer"),)),
    summary=_summary,
    metered=False,
)
