"""jina-reranker-v3's published interface, re-implemented for these tests (tests/models/jina_reranker_v3.py copies
this file into the tiny checkpoint as its remote code, `modeling.py`, which the checkpoint's `auto_map` names).

It follows the `modeling.py` that jinaai/jina-reranker-v3 publishes (class `JinaForRanking`, a transformers
`Qwen3ForCausalLM` subclass); none of that code is copied here, only its behaviour is reproduced:
- the prompt: a fixed system turn, the user turn "I will provide you with {n} passages, each indicated by a numerical
  identifier. Rank the passages based on their relevance to query: {query}\\n", an optional
  `<instruct>\\n{instruction}\\n</instruct>\\n`, the documents as
  `<passage id="{i}">\\n{doc}<|embed_token|>\\n</passage>` joined by newlines and followed by one,
  the query again as `<query>\\n{query}<|rerank_token|>\\n</query>`, then the
  assistant turn with an empty think part; the two special token strings are first removed from the query and the
  documents;
- the model: `lm_head` is an identity, the last hidden states at the token ids 151670 (`<|embed_token|>`, one per
  document) and 151671 (`<|rerank_token|>`, the query) go through a projector (Linear hidden -> hidden/2, ReLU,
  Linear -> 512, no biases); a document's block score is the cosine of its vector with the block's query vector;
- `rerank(query, documents, top_n, return_embeddings)`: the query cut to 512 tokens and each document to 2048 (a cut
  text is the decoded ids of its head), each counted with the tokenizer's own call; documents go into blocks in input
  order, a block closed once it holds 125 documents or once the budget `model_max_length - 2 * query tokens`, less
  the tokens of the documents taken so far, is at most 2048; one forward pass per block (the prompt tokenized alone,
  so no padding); the final query vector is the blocks' query vectors averaged with weights `max((1 + score) / 2)`
  of each block; every document scores by cosine with it, in float32 numpy as the original does; results sorted by
  score, highest first, cut to `top_n`. The original's `rerank` takes no instruction (it passes none); here an
  `instruction` argument (default None: the original's prompt) reaches the same prompt part its
  `_compute_single_batch` fills.
Two places where the version read does not run as written, read by its evident intent: its `rerank` calls `.view(-1)`
on the list of per-row score tensors its `forward` returns (here: that list's one tensor), and it loads the tokenizer
with `fix_mistral_regex=True`, which concerns Mistral's tokenizers only (left out).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn
from transformers import AutoTokenizer, Qwen3ForCausalLM

DOC_TOKEN = "<|embed_token|>"
QUERY_TOKEN = "<|rerank_token|>"
MAX_QUERY_TOKENS = 512
MAX_DOC_TOKENS = 2048
BLOCK_DOCUMENTS = 125

SYSTEM = ("You are a search relevance expert who can determine a ranking of the passages based on how relevant they "
          "are to the query. If the query is a question, how relevant a passage is depends on how well it answers "
          "the question. If not, try to analyze the intent of the query and assess how well each passage satisfies "
          "the intent. If an instruction is provided, you should follow the instruction when determining the ranking.")


def prompt(query: str, documents: list[str], instruction: Optional[str] = None) -> str:
    """The whole context of one block, as the model reads it."""
    def clean(text: str) -> str:
        return text.replace(QUERY_TOKEN, "").replace(DOC_TOKEN, "")

    query = clean(query)
    user = (f"I will provide you with {len(documents)} passages, each indicated by a numerical identifier. "
            f"Rank the passages based on their relevance to query: {query}\n")
    if instruction:
        user += f"<instruct>\n{instruction}\n</instruct>\n"
    passages = [f'<passage id="{i}">\n{clean(doc)}{DOC_TOKEN}\n</passage>' for i, doc in enumerate(documents)]
    user += "\n".join(passages) + "\n" + f"<query>\n{query}{QUERY_TOKEN}\n</query>"
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}"
            "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


class JinaForRanking(Qwen3ForCausalLM):
    doc_token_id = 151670
    query_token_id = 151671

    def __init__(self, config):
        super().__init__(config)
        self.lm_head = nn.Identity()
        half = config.hidden_size // 2
        self.projector = nn.Sequential(nn.Linear(config.hidden_size, half, bias=False), nn.ReLU(),
                                       nn.Linear(half, 512, bias=False))
        self.post_init()

    def block(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """(block scores, projected query vector [1, 512], projected document vectors [n, 512]) of one prompt."""
        outputs = super().forward(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                  output_hidden_states=True)
        last = outputs.hidden_states[-1][0]
        ids = input_ids[0]
        docs = self.projector(last[ids == self.doc_token_id])
        query = self.projector(last[ids == self.query_token_id])
        if query.shape[0] != 1:
            raise RuntimeError(f"expected one query token, found {query.shape[0]}")
        return torch.nn.functional.cosine_similarity(docs, query.expand_as(docs), dim=-1), query, docs

    def _tokenizer(self):
        if getattr(self, "_loaded_tokenizer", None) is None:
            tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.unk_token
            tokenizer.padding_side = "left"
            self._loaded_tokenizer = tokenizer
        return self._loaded_tokenizer

    def _cut(self, text: str, limit: int) -> tuple[str, int]:
        """The text as the model reads it (its first `limit` tokens, decoded, when it has that many) and its tokens."""
        ids = self._tokenizer()(text, truncation=True, max_length=limit)["input_ids"]
        return (self._tokenizer().decode(ids) if len(ids) >= limit else text), len(ids)

    def blocks(self, query: str, documents: list[str]) -> tuple[str, list[list[str]]]:
        """The cut query and the documents (cut) in blocks, by the block rule."""
        query, query_length = self._cut(query, MAX_QUERY_TOKENS)
        budget = self._tokenizer().model_max_length - 2 * query_length
        blocks, current, left = [], [], budget
        for doc in documents:
            text, length = self._cut(doc, MAX_DOC_TOKENS)
            current.append(text)
            left -= length
            if len(current) >= BLOCK_DOCUMENTS or left <= MAX_DOC_TOKENS:
                blocks.append(current)
                current, left = [], budget
        if current:
            blocks.append(current)
        return query, blocks

    @torch.no_grad()
    def rerank(self, query: str, documents: list[str], top_n: Optional[int] = None,
               return_embeddings: bool = False, instruction: Optional[str] = None) -> list[dict]:
        device = next(self.parameters()).device
        query, blocks = self.blocks(query, documents)
        query_vectors, doc_vectors, weights = [], [], []
        for block in blocks:
            batch = self._tokenizer()([prompt(query, block, instruction)], padding=True, return_tensors="pt").to(device)
            scores, query_vector, docs = self.block(batch["input_ids"], batch["attention_mask"])
            query_vectors.append(query_vector[0].cpu().float().numpy())
            doc_vectors.extend(docs.cpu().float().numpy())
            weights.append(((1.0 + scores.cpu().float().numpy()) / 2.0).max())
        merged = np.average(np.array(query_vectors), axis=0, weights=weights)
        doc_matrix = np.array(doc_vectors)
        scores = doc_matrix @ merged / (np.linalg.norm(merged) * np.linalg.norm(doc_matrix, axis=1))
        order = np.argsort(scores)[::-1]
        count = len(documents) if top_n is None else min(top_n, len(documents))
        return [{"document": documents[i], "relevance_score": float(scores[i]), "index": int(i),
                 "embedding": doc_matrix[i] if return_embeddings else None} for i in order[:count]]
