"""Kind `generative-reranker`: causal language models that judge a (query, document) pair with a next-token logit.

Qwen3-Reranker, bge-reranker-v2-gemma, mxbai-rerank-v2 and their fine-tunes read a judge prompt (the model's chat
template, with the query and the document as messages of their own roles and an optional instruction as the system
message) and answer through the logits of their "yes" and "no" tokens at the last position. sentence-transformers
saves such a model as a `CrossEncoder` of two modules: `Transformer` (text-generation, left padding) and
`LogitScore(true_token_id, false_token_id)`, with its activation (sigmoid unless the directory names another) on
top. That is the reference, and this kind runs that code: the directory is loaded as a `CrossEncoder`, each pair is
rendered and tokenized by its own `Transformer.preprocess` (template, truncation that restores the template's
suffix), and a pass runs its own modules over the batcher's left-padded rows, so a score is what
`CrossEncoder.predict` answers for the same pair.

What searchbox adds is what every reranker here does (model_handlers/ranking.py): a document longer than the room a
pair leaves it is read in windows (its best window's score), never cut to its head; the query takes at most half the
room; many callers' pairs share passes. A window is the text of a run of the document's own tokens, rendered into
the template like a whole document.

Token accounting: every token the model reads is billed. The query's tokens go to `query_tokens` once per pair; the
rest of each pair (the template, the instruction, the window) to the document it reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable

import numpy as np

from model_handlers import model_code
from model_handlers.errors import InvalidOption, ModelDirectoryError
from model_handlers.kinds import CsvColumn, CsvLayout, Kind, ModelFiles
from model_handlers.lengths import LANGUAGE_MODEL_LENGTH, Lengths
from model_handlers.operations.rerank import RERANK
from model_handlers.options import HandlerOptions, weights_dtype
from model_handlers.ranking import RerankWork, Scoring, Windowing, windowed
from model_handlers.serving_config import ServingConfig
from model_handlers.tokenization import TokenizerView
from model_handlers.types import RerankRequest, texts_of

_LOGIT_SCORE = "LogitScore"


@dataclass(frozen=True)
class _Prompt:
    """One rendered judge prompt: the template holding the query and one window of one document."""

    ids: np.ndarray
    group: Hashable = "prompt"

    @property
    def length(self) -> int:
        return len(self.ids)


class GenerativeRerankerModel:
    """Serves a sentence-transformers `CrossEncoder` over a causal language model (`Transformer` + `LogitScore`)."""

    reentrant = False  # one pass at a time: passes at once not measured for this kind on torch yet

    width = None  # it makes scores, no vectors
    takes_instruction = True
    rerank_scoring = "generative, pointwise: a language model's yes/no judgement of each (query, document) pair"

    def __init__(self, model_dir: Path, config: ServingConfig, options: HandlerOptions):
        from sentence_transformers import CrossEncoder
        from sentence_transformers.cross_encoder.modules import LogitScore

        self.config = config
        self.device = options.resolved_device()
        try:
            self._encoder = CrossEncoder(str(model_dir), device=self.device, local_files_only=True,
                                         trust_remote_code=model_code.trusts(model_dir, options),
                                         model_kwargs={"dtype": weights_dtype(self.device)})
        except (OSError, ValueError) as exc:
            raise ModelDirectoryError(f"cannot load {model_dir} as a generative reranker: {exc}") from exc
        self._encoder.eval()
        if not any(isinstance(module, LogitScore) for module in self._encoder):
            raise ModelDirectoryError(f"{model_dir}: a generative reranker reads its score with sentence-transformers' "
                                      "LogitScore module, and this directory's modules.json has none")
        self._transformer = self._encoder[0]
        hf_tokenizer = self._transformer.tokenizer
        if hf_tokenizer is None or hf_tokenizer.pad_token_id is None:
            raise ModelDirectoryError(f"{model_dir}: the tokenizer names no pad token, which left padding needs")
        self._pad_id = int(hf_tokenizer.pad_token_id)
        self._hf_tokenizer = hf_tokenizer
        model_config = self._transformer.model.config
        declared = Lengths.of(tokenizer=getattr(hf_tokenizer, "model_max_length", None),
                              positions=getattr(model_config, "max_position_embeddings", None))
        self.max_length = config.max_length or min(declared.capacity(LANGUAGE_MODEL_LENGTH), LANGUAGE_MODEL_LENGTH)
        # its own truncation (which keeps the template's suffix) cuts where searchbox serves
        self._transformer.max_seq_length = self.max_length
        self._tokenizer = TokenizerView.from_hf(hf_tokenizer, self.max_length)
        self.default_instruction = self._encoder.prompts.get(self._encoder.default_prompt_name) \
            if self._encoder.default_prompt_name else None
        try:
            self._bare = self._render([("", "")], self.default_instruction)[0]
        except ValueError as exc:  # sentence-transformers' own check: a template without query/document roles
            raise ModelDirectoryError(f"{model_dir}: {exc}") from exc
        if len(self._bare) >= self.max_length:
            raise ModelDirectoryError(f"{model_dir}: its judge prompt alone takes {len(self._bare)} tokens, as many as "
                                      f"a pair may hold ({self.max_length}); set a larger max_length in searchbox.json")

    # --- on the caller's thread -----------------------------------------------------------------------

    def prepare_rerank(self, request: RerankRequest, max_windows: int) -> RerankWork:
        """One judge prompt per window of each document (a document that fits is one window, sent as it is)."""
        query_text = texts_of([request.query], self.config.served_model_name, "the query")[0]
        documents = texts_of(request.documents, self.config.served_model_name, "document")
        instruction = request.instruction if request.instruction is not None else self.default_instruction
        overhead = len(self._bare if instruction == self.default_instruction else
                       self._render([("", "")], instruction)[0])
        room = self.max_length - overhead
        if room < 2:
            raise InvalidOption(f"the judge prompt with this instruction takes {overhead} tokens of the "
                                f"{self.max_length} a pair may hold; send a shorter `instruction`")
        query_ids = self._tokenizer.encode([query_text])[0]
        max_query = max(1, min(self.config.max_query_tokens or room // 2, room - 1))
        if len(query_ids) > max_query:
            query_ids = query_ids[:max_query]
            query_text = self._hf_tokenizer.decode(query_ids)
        windowing = Windowing.within(room - len(query_ids), self.config)
        contents = self._tokenizer.encode(documents)

        def pieces(index: int, content: np.ndarray) -> tuple[list[str], int]:
            if len(content) <= windowing.size:
                return [documents[index]], 0
            return [self._hf_tokenizer.decode(window) for window in windowing.split(content)], 0

        work = windowed(Scoring.PAIR, (), 0, contents, pieces, max_windows)
        prompts = [_Prompt(ids) for ids in self._render([(query_text, text) for text in work.items], instruction)]
        # the query's tokens once per prompt; everything else a prompt reads is its document's
        per_document = [0] * len(documents)
        for owner, prompt in zip(work.owners, prompts):
            per_document[owner] += prompt.length - len(query_ids)
        return dataclasses.replace(work, items=prompts, query_tokens=len(query_ids) * len(prompts),
                                   document_tokens=per_document)

    def text_tokenizer(self) -> TokenizerView:
        """The tokenizer it reads texts with (tokenize and segment requests)."""
        return self._tokenizer

    def calibration_item(self, length: int) -> _Prompt:
        return _Prompt(np.resize(self._bare, length))

    def _render(self, pairs: list[tuple[str, str]], instruction: str | None) -> list[np.ndarray]:
        """Each pair's judge prompt as the model's own preprocessing tokenizes it, padding taken off."""
        features = self._transformer.preprocess(pairs, prompt=instruction)
        ids, mask = features["input_ids"].numpy(), features["attention_mask"].numpy().astype(bool)
        return [row[keep] for row, keep in zip(ids, mask)]

    # --- on the batcher's thread ----------------------------------------------------------------------

    def forward(self, prompts: list[_Prompt]) -> list[list[np.ndarray]]:
        import torch

        longest = max(prompt.length for prompt in prompts)
        ids = np.full((len(prompts), longest), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(prompts), longest), dtype=np.int64)
        for row, prompt in enumerate(prompts):  # left padding: the score is read at the last position
            ids[row, longest - prompt.length:] = prompt.ids
            mask[row, longest - prompt.length:] = 1
        device = torch.device(self.device)
        with torch.inference_mode():
            features = {"input_ids": torch.from_numpy(ids).to(device),
                        "attention_mask": torch.from_numpy(mask).to(device),
                        "modality": "message", "logits_to_keep": 1}
            scores = self._encoder(features)["scores"].float()
            if self._encoder.activation_fn is not None:
                scores = self._encoder.activation_fn(scores)
            scores = scores.reshape(len(prompts)).cpu().numpy().astype(np.float32)
        return [[score] for score in scores]


def _is_generative_reranker(files: ModelFiles) -> bool:
    return (any(architecture.endswith("ForCausalLM") for architecture in files.architectures)
            and any(str(module.get("type", "")).endswith(_LOGIT_SCORE) for module in files.modules))


KIND = Kind(
    name="generative-reranker",
    summary="a generative reranker (a language model's yes/no judgement of each pair)",
    recognizes=_is_generative_reranker,
    model=GenerativeRerankerModel,
    csv=CsvLayout(RERANK, (CsvColumn("query"), CsvColumn("documents", json=True),
                           CsvColumn("top_n", optional=True))),
    backends={"torch": GenerativeRerankerModel},
)
