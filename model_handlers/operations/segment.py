"""Operation `segment`: Jina's Segmenter (contract §2h) with the served model's own tokenizer.

The content's tokens (all of them, or the first / last N: `head` / `tail`), and when asked its chunks: cut at
paragraph, sentence and clause boundaries where they can be (model_handlers/segmenting.py), each within
`max_chunk_length` characters and/or `max_chunk_tokens` tokens, concatenated exactly the content. Offsets are
character offsets (Python string indices) into `content`. Tokens are answered as runs: the text a token covers and its
id, several ids in one run where the tokenizer spends several tokens on one character (a byte-level BPE on an emoji).

`num_tokens` counts the content's tokens (the part `head` / `tail` keep), read whole and without special tokens; a
chunk's tokens are the chunk read alone, as an embedding of it reads it, and that is what `max_chunk_tokens` holds: at
most the model's `max_length` less its special tokens, every chunk is embedded whole. Segmenting runs no model and is
not billed (Jina does not count it): usage 0, no inputs metered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from model_handlers import segmenting
from model_handlers.batching import Timing
from model_handlers.deadline import Deadline
from model_handlers.errors import InvalidOption
from model_handlers.operations import OperationSpec, Runner
from model_handlers.operations.tokenize import Tokenizes

SEGMENT = "segment"
# Jina's default chunk length in characters, when no limit is given
DEFAULT_CHUNK_CHARACTERS = 1000


@dataclass(frozen=True)
class SegmentRequest:
    content: str
    tokenizer: str | None = None  # the served model's name, or None: there is no other tokenizer to choose
    return_tokens: bool = False
    return_chunks: bool = False
    max_chunk_length: int | None = None  # characters; DEFAULT_CHUNK_CHARACTERS when neither limit is given
    max_chunk_tokens: int | None = None
    head: int | None = None
    tail: int | None = None
    # SageMaker's adapter header may name one (engine.with_adapter); adapters change no token
    adapter: str | None = None

    operation: ClassVar[str] = SEGMENT

    @property
    def limits(self) -> segmenting.Limits:
        characters = self.max_chunk_length
        if characters is None and self.max_chunk_tokens is None:
            characters = DEFAULT_CHUNK_CHARACTERS
        return segmenting.Limits(characters=characters, tokens=self.max_chunk_tokens)


@dataclass(frozen=True)
class TokenRun:
    """Tokens read from one stretch of the content: its (start, end) offsets and their ids."""

    start: int
    end: int
    ids: tuple[int, ...]


@dataclass(frozen=True)
class SegmentResult:
    """The part of the content answered (`start`, `end`: all of it, or what head / tail keep), its token count, its
    chunks (None: not asked) and its tokens (None: not asked; one list per chunk, or one for the part)."""

    start: int
    end: int
    num_tokens: int
    chunks: tuple[tuple[int, int], ...] | None
    tokens: tuple[tuple[TokenRun, ...], ...] | None
    model: str

    operation: ClassVar[str] = SEGMENT

    @property
    def total_tokens(self) -> int:
        """Segmenting is not billed."""
        return 0


def run(pipeline: Runner, request: SegmentRequest, deadline: Deadline, timing: Timing | None) -> SegmentResult:
    """The content's tokens and (when asked) chunks, with the model's tokenizer."""
    check(request, pipeline.model_name)
    tokenizer = pipeline.model.text_tokenizer()
    content = request.content
    ids, offsets = tokenizer.spans(content)
    # offsets ascend; made monotonic in case a normalizer reorders what it reads
    starts = np.maximum.accumulate(offsets[:, 0]) if len(offsets) else offsets[:, 0]
    start, end, kept = _kept(request, offsets, len(content))
    chunks = None
    if request.return_chunks:
        def count(text: str) -> int:
            return len(tokenizer.encode([text])[0])

        try:
            chunks = tuple(segmenting.chunk(content, start, end, request.limits, starts, count))
        except segmenting.Unsplittable as exc:
            raise InvalidOption(f"max_chunk_tokens is {request.max_chunk_tokens}, but {exc}; ask for at least "
                                f"{exc.tokens}", code="CHUNK_LIMIT_TOO_SMALL") from None
    tokens = None
    if request.return_tokens:
        if chunks is None:
            tokens = (runs(ids[kept], offsets[kept], 0),)
        else:
            tokens = tuple(runs(*tokenizer.spans(content[a:b]), a) for a, b in chunks)
    return SegmentResult(start=start, end=end, num_tokens=int(kept.sum()), chunks=chunks, tokens=tokens,
                         model=pipeline.model_name)


def check(request: SegmentRequest, model_name: str) -> None:
    """The options this model can honour, each refused naming what to send instead."""
    if request.tokenizer is not None and request.tokenizer.casefold() != model_name.casefold():
        raise InvalidOption(f"this endpoint tokenizes with the served model's own tokenizer ({model_name}); "
                            f"{request.tokenizer!r} is not available (tiktoken's tokenizers need files downloaded at "
                            f"run time, and the endpoint runs offline): leave `tokenizer` out or send {model_name!r}",
                            code="UNKNOWN_TOKENIZER")
    if request.head is not None and request.tail is not None:
        raise InvalidOption("send either head or tail, not both", code="INVALID_OPTION")
    for name in ("head", "tail", "max_chunk_length", "max_chunk_tokens"):
        value = getattr(request, name)
        if value is not None and value < 1:
            raise InvalidOption(f"{name} must be at least 1, got {value}", code="INVALID_OPTION")


def _kept(request: SegmentRequest, offsets: np.ndarray, length: int) -> tuple[int, int, np.ndarray]:
    """The part of the content `head` / `tail` keep: (start, end, which tokens). The cut falls between tokens and never
    inside the run of tokens one character takes, so the part holds at most N tokens."""
    every = np.ones(len(offsets), dtype=bool)
    if request.head is not None and request.head < len(offsets):
        cut = int(offsets[request.head, 0])
        return 0, cut, offsets[:, 1] <= cut
    if request.tail is not None and request.tail < len(offsets):
        cut = int(offsets[len(offsets) - request.tail - 1, 1])
        return cut, length, offsets[:, 0] >= cut
    return 0, length, every


def runs(ids: np.ndarray, offsets: np.ndarray, shift: int) -> tuple[TokenRun, ...]:
    """Tokens grouped by the text they cover: a token that overlaps the previous one's text (several tokens for one
    character), or covers none, joins it. Offsets are shifted by `shift` into the content."""
    grouped: list[list] = []
    for token_id, (start, end) in zip(ids.tolist(), offsets.tolist()):
        if grouped and (start < grouped[-1][1] or end <= start or grouped[-1][0] == grouped[-1][1]):
            last = grouped[-1]
            last[1] = max(last[1], end)
            last[2].append(token_id)
        else:
            grouped.append([start, end, [token_id]])
    return tuple(TokenRun(start + shift, end + shift, tuple(ids_)) for start, end, ids_ in grouped)


def _summary(request: SegmentRequest, result: SegmentResult) -> str:
    chunks = "" if result.chunks is None else f" in {len(result.chunks)} chunks"
    return f"segmented {result.end - result.start} characters ({result.num_tokens} tokens){chunks}"


SPEC = OperationSpec(
    name=SEGMENT,
    noun="segment",
    request_type=SegmentRequest,
    model=Tokenizes,
    run=run,
    inputs=lambda request: 1,
    input_word="contents",
    warm_up=lambda: SegmentRequest(content="Warm up the segmenter. It has two sentences.", return_chunks=True),
    summary=_summary,
    metered=False,
)
