"""Cutting a text into chunks at its natural boundaries, each within a length in characters and/or in tokens.

What Jina's Segmenter does (contract §2h), with two promises of its own: the chunks, concatenated, are the text
(nothing dropped, whitespace included), and no chunk exceeds a limit. Offsets are Python string indices (code points),
exact for any Unicode.

A chunk ends at the strongest boundary inside what fits that fills enough of it (so that short paragraphs are packed
together rather than answered one by one): a blank line (paragraph), a line break, the end of a sentence (Latin and CJK
punctuation), of a clause (comma, semicolon, colon), a space; failing all of them, between two user-perceived characters
(never inside a combining sequence, an emoji's ZWJ sequence, a flag); between two code points only when the window holds
no such place.

A token limit counts a chunk as the model reads it alone (the chunk tokenized by itself, without special tokens). The
window is found from the whole text's token offsets, then each chunk is counted on its own; one that tokenizes longer
alone is cut shorter. Pure text work, no model: the caller hands in the offsets and a counter.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Callable

import numpy as np

# Where a chunk may end (right after a match), strongest first.
_LEVELS = (
    re.compile(r"\n[^\S\n]*\n\s*"),  # a blank line: between paragraphs
    re.compile(r"\n\s*"),  # a line break
    re.compile(r"[.!?…]+[\"'”’»)\]]*\s+|[。！？]+[」』”’）]*\s*"),  # the end of a sentence
    re.compile(r"[,;:]\s+|[，、；：]\s*"),  # the end of a clause
    re.compile(r"\s+"),  # a space
)
# How much of what fits a chunk must fill to end at each level (paragraph, line, sentence, clause, space): a paragraph
# break a quarter of the way in beats a comma at the end, while short paragraphs are still packed together.
_FILLS = (0.25, 0.35, 0.5, 0.6, 0.7)
# A cluster of code points longer than this is no character a reader sees as one (stacked combining marks): it may be
# cut between code points rather than scanned any further.
_LONGEST_CLUSTER = 32
_ZWJ = "\u200d"
# Code points that extend the character before them: variation selectors, emoji skin tones, emoji tags.
_EXTENDERS = ((0xFE00, 0xFE0F), (0xE0100, 0xE01EF), (0x1F3FB, 0x1F3FF), (0xE0020, 0xE007F))


class Unsplittable(Exception):
    """One character alone is over the token limit, so no chunking can hold it."""

    def __init__(self, at: int, tokens: int):
        super().__init__(f"the character at offset {at} takes {tokens} tokens")
        self.at = at
        self.tokens = tokens


@dataclass(frozen=True)
class Limits:
    """What one chunk may hold; None: no limit of that sort."""

    characters: int | None = None
    tokens: int | None = None


class Boundaries:
    """The places `text` may be cut at, by strength."""

    def __init__(self, text: str):
        self.text = text
        self._levels = [np.fromiter((m.end() for m in pattern.finditer(text)), dtype=np.int64) for pattern in _LEVELS]

    def best(self, start: int, end: int) -> int:
        """Where a chunk starting at `start` and holding at most up to `end` (start < end < len(text)) ends: the
        farthest place of the strongest level that fills enough of the window (the weaker the level, the more it
        must fill), else the farthest place of the strongest level there is."""
        for fills in (_FILLS, (0.0,) * len(_FILLS)):
            for positions, fill in zip(self._levels, fills):
                at = int(np.searchsorted(positions, end, side="right")) - 1
                if at >= 0 and max(start + 1, start + fill * (end - start)) <= positions[at] <= end:
                    return int(positions[at])
        return self._between_characters(start, end)

    def _between_characters(self, start: int, end: int) -> int:
        for at in range(end, max(start, end - _LONGEST_CLUSTER), -1):
            if not joined(self.text, at):
                return at
        return end


def joined(text: str, at: int) -> bool:
    """Whether text[at - 1] and text[at] belong to one user-perceived character (the rules of Unicode's grapheme
    clusters, UAX #29, that matter for cutting: CR LF, combining marks, joiners, variation selectors, skin tones,
    emoji tags, flags)."""
    before, after = text[at - 1], text[at]
    if (before, after) == ("\r", "\n") or after == _ZWJ or before == _ZWJ:
        return True
    if unicodedata.category(after) in ("Mn", "Me", "Mc"):
        return True
    if any(low <= ord(after) <= high for low, high in _EXTENDERS):
        return True
    if _regional(before) and _regional(after):
        # flags are pairs of regional indicators: join when an odd number of them precedes
        run = 0
        while at - 1 - run >= 0 and _regional(text[at - 1 - run]):
            run += 1
        return run % 2 == 1
    return False


def _regional(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


def token_reach(token_starts: np.ndarray, start: int, budget: int, end: int) -> int:
    """How far a chunk starting at `start` may run to hold at most `budget` of the text's tokens: up to where the
    first token past the budget starts (`token_starts` ascending), or `end`."""
    first = int(np.searchsorted(token_starts, start, side="left"))
    past = first + budget
    return end if past >= len(token_starts) else min(int(token_starts[past]), end)


def chunk(text: str, start: int, end: int, limits: Limits, token_starts: np.ndarray | None = None,
          count: Callable[[str], int] | None = None) -> list[tuple[int, int]]:
    """The chunks of text[start:end], as (start, end) offsets into `text`: consecutive, covering it exactly.

    Args:
        limits: what one chunk may hold.
        token_starts: where each of the whole text's tokens starts, ascending (needed with a token limit).
        count: the tokens of a text read alone (needed with a token limit).

    Raises:
        Unsplittable: one character alone takes more tokens than the limit.
    """
    if limits.characters is None and limits.tokens is None:
        return [(start, end)] if start < end else []
    boundaries = Boundaries(text)
    chunks = []
    at = start
    while at < end:
        reach = end if limits.characters is None else min(end, at + limits.characters)
        budget = limits.tokens
        while True:
            window = reach if budget is None else max(at + 1, min(reach, token_reach(token_starts, at, budget, end)))
            stop = end if window >= end else boundaries.best(at, window)
            if limits.tokens is None:
                break
            excess = count(text[at:stop]) - limits.tokens
            if excess <= 0:
                break
            if stop - at == 1:
                raise Unsplittable(at, excess + limits.tokens)
            # read alone, the chunk has more tokens than the whole text's offsets said: cut it shorter
            reach = stop - 1
            budget = max(1, budget - excess)
        chunks.append((at, stop))
        at = stop
    return chunks
