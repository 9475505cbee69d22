"""Kind `listwise-reranker`: jina-reranker-v3 (`JinaForRanking`), which reads the query and many documents in one
causal context (model_handlers/jina_ranking.py says what it computes and where that comes from).

`prepare_rerank` (the caller's thread) cuts the query and the documents, splits the documents into blocks by the
model's own rule and tokenizes each block's whole prompt: one work item per block, holding its token ids and the
positions of its documents' and its query's marker tokens. The batcher's `forward` runs the blocks of many callers in
right-padded passes (a causal model's real tokens never see the padding after them, so a padded block reads as it does
alone) and answers, per block, its query's projected vector and its documents'. The merge of the blocks' query vectors
and the final cosines are the shared ranking's (`ranking.Scoring.LISTWISE`).

Token accounting: the model reads every block's whole prompt, template included; that is what the answer bills
(contract §6). Each document is billed what its passage adds to a prompt (its `<passage>` frame, its text as cut,
its marker), tokenized alone; the query the rest of every block: the template, the query twice, the instruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Hashable

import numpy as np

from model_handlers import jina_ranking
from model_handlers.errors import ModelDirectoryError
from model_handlers.kinds import CsvColumn, CsvLayout, Kind, ModelFiles
from model_handlers.lengths import LANGUAGE_MODEL_LENGTH, Lengths
from model_handlers.operations.rerank import RERANK
from model_handlers.options import HandlerOptions
from model_handlers.ranking import RerankWork, Scoring, check_window_count
from model_handlers.serving_config import ServingConfig
from model_handlers.tokenization import TokenizerView
from model_handlers.types import RerankRequest, texts_of


@dataclass(frozen=True)
class _Block:
    """One block's prompt: its token ids, where its documents' markers are, where its query's marker is."""

    ids: np.ndarray
    documents: np.ndarray
    query: int
    group: Hashable = "block"

    @property
    def length(self) -> int:
        return len(self.ids)


class ListwiseRerankerModel:
    """Serves a `JinaForRanking` directory natively: transformers' Qwen3Model and the checkpoint's projector."""

    reentrant = False  # one pass at a time: passes at once not measured for this kind on torch yet

    width = None  # it answers scores, no vectors
    rerank_scoring = ("listwise: the query and up to 125 documents read in one context per block; each document's "
                      "cosine with the blocks' merged query vector")
    # the prompt's optional `<instruct>` part; without one the model's own prompt has none
    takes_instruction = True
    default_instruction = None

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        import torch
        from transformers import AutoTokenizer

        self.config = config
        self.device = options.resolved_device()
        self._device = torch.device(self.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelDirectoryError(f"cannot load the tokenizer of {model_dir}: {exc}") from exc
        self._decode = tokenizer.decode  # the model's own code decodes a cut text this way
        self._doc_id = self._marker(tokenizer, jina_ranking.DOC_TOKEN, model_dir)
        self._query_id = self._marker(tokenizer, jina_ranking.QUERY_TOKEN, model_dir)
        # the blocks' token budget is the tokenizer's, as the model's own code reads it
        self._model_max_length = int(tokenizer.model_max_length)
        self._backbone, self._projector = jina_ranking.load(model_dir, self.device)
        # the longest pass calibrated: a block holds about the tokenizer's length, bounded by the positions, and by
        # what a language model is calibrated at (longer blocks borrow the longest measured pass's cost per token)
        capacity = Lengths.of(tokenizer=tokenizer.model_max_length,
                              positions=self._backbone.config.max_position_embeddings).capacity(LANGUAGE_MODEL_LENGTH)
        self.max_length = config.max_length or min(capacity, LANGUAGE_MODEL_LENGTH)
        # its own copy of the tokenizer, without truncation or padding, and the special tokens it puts around a text
        self._tokens = TokenizerView.from_hf(tokenizer, self.max_length)

    @staticmethod
    def _marker(tokenizer, token: str, model_dir: Path) -> int:
        index = tokenizer.convert_tokens_to_ids(token)
        if index is None or index == tokenizer.unk_token_id or token not in tokenizer.get_vocab():
            raise ModelDirectoryError(f"{model_dir}: the tokenizer has no {token} token, which jina-reranker-v3 "
                                      "reads its vectors at")
        return int(index)

    # --- on the caller's thread -----------------------------------------------------------------------

    def _cut(self, texts: list[str], limit: int) -> tuple[list[str], list[int]]:
        """Each text as the model reads it (its first `limit` tokens, special tokens included, decoded, when it has
        that many), and the tokens counted for it, as the model's own code counts them."""
        cut, counts = [], []
        specials = self._tokens.special_count
        for text, content in zip(texts, self._tokens.encode(texts)):
            if len(content) + specials >= limit:
                text = self._decode(self._tokens.wrap(content[: limit - specials]).tolist())
            cut.append(text)
            counts.append(min(len(content) + specials, limit))
        return cut, counts

    def prepare_rerank(self, request: RerankRequest, max_windows: int) -> RerankWork:
        """The documents in blocks, each block's prompt tokenized whole."""
        query_text = texts_of([request.query], self.config.served_model_name, "the query")
        documents = texts_of(request.documents, self.config.served_model_name, "document")
        (query,), (query_tokens,) = self._cut(query_text, jina_ranking.MAX_QUERY_TOKENS)
        documents, document_tokens = self._cut(documents, jina_ranking.MAX_DOC_TOKENS)
        ends = jina_ranking.block_cuts(query_tokens, document_tokens, self._model_max_length)
        check_window_count(len(ends), max_windows)
        starts = [0, *ends[:-1]]
        prompts = [jina_ranking.prompt(query, documents[start:end], request.instruction)
                   for start, end in zip(starts, ends)]
        blocks = []
        for (start, end), content in zip(zip(starts, ends), self._tokens.encode(prompts)):
            ids = self._tokens.wrap(content)
            marks, asks = np.flatnonzero(ids == self._doc_id), np.flatnonzero(ids == self._query_id)
            if len(marks) != end - start or len(asks) != 1:
                raise AssertionError(f"a block of {end - start} documents tokenized to {len(marks)} document markers "
                                     f"and {len(asks)} query markers; this is a bug")
            blocks.append(_Block(ids, marks, int(asks[0])))
        passages = self._tokens.encode([jina_ranking.passage(index - start, documents[index])
                                        for start, end in zip(starts, ends) for index in range(start, end)])
        billed = [len(passage) for passage in passages]
        return RerankWork(items=blocks, owners=starts, scoring=Scoring.LISTWISE,
                          query_tokens=sum(block.length for block in blocks) - sum(billed), document_tokens=billed)

    def calibration_item(self, length: int) -> _Block:
        filler = self._tokens.encode(["a"])[0][:1].tolist() or [0]
        ids = np.asarray(filler * max(0, length - 2) + [self._doc_id, self._query_id], dtype=np.int64)[-length:]
        return _Block(ids, np.asarray([max(0, len(ids) - 2)]), len(ids) - 1)

    # --- on the batcher's thread ----------------------------------------------------------------------

    def forward(self, blocks: list[_Block]) -> list[list[np.ndarray]]:
        """Per block, one matrix: its query's projected vector, then its documents', one row each."""
        import torch

        longest = max(block.length for block in blocks)
        ids = np.zeros((len(blocks), longest), dtype=np.int64)
        for row, block in enumerate(blocks):
            ids[row, : block.length] = block.ids
        with torch.inference_mode():
            # No attention mask: the padding is on the right, so the causal mask alone already keeps every real token
            # from it (and positions count from 0 either way). A padding mask would make transformers hand SDPA an
            # explicit mask in place of its causal kernel: the same vectors, a padded pass of 4 blocks of ~3,300 tokens
            # 1.6x slower on CPU (bench/listwise_rerank.py's small model).
            hidden = self._backbone(input_ids=torch.from_numpy(ids).to(self._device),
                                    use_cache=False).last_hidden_state
            rows = [torch.from_numpy(np.concatenate([[block.query], block.documents])).to(self._device)
                    for block in blocks]
            picked = torch.cat([hidden[row, at] for row, at in enumerate(rows)])
            vectors = self._projector(picked).float().cpu().numpy()
        out, at = [], 0
        for row in rows:
            out.append([vectors[at: at + len(row)]])
            at += len(row)
        return out


def _is_listwise(files: ModelFiles) -> bool:
    return files.architectures == (jina_ranking.ARCHITECTURE,)


KIND = Kind(
    name="listwise-reranker",
    summary="a listwise reranker (jina-reranker-v3)",
    recognizes=_is_listwise,
    model=ListwiseRerankerModel,
    csv=CsvLayout(RERANK, (CsvColumn("query"), CsvColumn("documents", json=True),
                           CsvColumn("top_n", optional=True))),
    backends={"torch": ListwiseRerankerModel},
)
