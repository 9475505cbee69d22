"""jina-reranker-v3 (`JinaForRanking`) checkpoints, served without running the code they ship.

The checkpoint is a Qwen3 causal language model (`model.*` tensors, transformers' own `Qwen3Model` computes them) and a
projector (`projector.0.weight`: hidden -> hidden/2, ReLU, `projector.2.weight`: -> 512, no biases); its `lm_head` is
an identity, so the vectors it ranks with are the last hidden states (after the final norm), projected, at two special
tokens. What its own `modeling.py` does with them, and what this module does the same way (the contract is that
code's `rerank`, contract §3b):

- the prompt (`prompt`): a fixed system turn, the user turn naming the number of passages and the query, an optional
  `<instruct>` part, each document as `<passage id="i">\\n{doc}<|embed_token|>\\n</passage>`, the query again as
  `<query>\\n{query}<|rerank_token|>\\n</query>`, then the assistant turn with an empty think part;
- the blocks (`block_cuts`): the query cut to 512 tokens and each document to 2,048 (a cut text is its head's ids,
  decoded); a block closes at 125 documents or once `model_max_length - 2 * query tokens`, less its documents'
  tokens, is at most 2,048;
- the scores (model_handlers/ranking.py, `Scoring.LISTWISE`): each block's documents by cosine with its query vector;
  the final query vector is the blocks' query vectors averaged with weights `(1 + best score) / 2`, and every
  document is scored by cosine with it.

The tensors are read with safetensors into transformers' classes; nothing from the model directory is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from model_handlers.errors import ModelDirectoryError
from model_handlers.model_files import read_object

ARCHITECTURE = "JinaForRanking"
DOC_TOKEN = "<|embed_token|>"
QUERY_TOKEN = "<|rerank_token|>"
MAX_QUERY_TOKENS = 512
MAX_DOC_TOKENS = 2048
BLOCK_DOCUMENTS = 125
PROJECTOR_WIDTH = 512

_SYSTEM = ("You are a search relevance expert who can determine a ranking of the passages based on how relevant "
           "they are to the query. If the query is a question, how relevant a passage is depends on how well it "
           "answers the question. If not, try to analyze the intent of the query and assess how well each passage "
           "satisfies the intent. If an instruction is provided, you should follow the instruction when determining "
           "the ranking.")


def is_listwise(config: Mapping[str, Any]) -> bool:
    """Whether config.json describes jina-reranker-v3's architecture (read natively here, its auto_map never run)."""
    return list(config.get("architectures") or ()) == [ARCHITECTURE]


def _without_markers(text: str) -> str:
    """`text` with the two marker strings removed, until none is left: a marker spelled around another
    ("<|embed<|embed_token|>_token|>") would otherwise come back once the inner one is removed, and its token would
    stand for a document that is not there."""
    while DOC_TOKEN in text or QUERY_TOKEN in text:
        text = text.replace(QUERY_TOKEN, "").replace(DOC_TOKEN, "")
    return text


def prompt(query: str, documents: Sequence[str], instruction: str | None) -> str:
    """One block's whole context, as the model's own code writes it."""
    query = _without_markers(query)
    passages = "\n".join(f'<passage id="{i}">\n{_without_markers(doc)}{DOC_TOKEN}\n</passage>'
                         for i, doc in enumerate(documents))
    instruct = f"<instruct>\n{_without_markers(instruction)}\n</instruct>\n" if instruction else ""
    return (f"<|im_start|>system\n{_SYSTEM}<|im_end|>\n<|im_start|>user\n"
            f"I will provide you with {len(documents)} passages, each indicated by a numerical identifier. "
            f"Rank the passages based on their relevance to query: {query}\n{instruct}{passages}\n"
            f"<query>\n{query}{QUERY_TOKEN}\n</query><|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


def passage(index: int, document: str) -> str:
    """What one document adds to a block's prompt (its share of the tokens billed)."""
    return f'<passage id="{index}">\n{_without_markers(document)}{DOC_TOKEN}\n</passage>\n'


def block_cuts(query_tokens: int, document_tokens: Sequence[int], model_max_length: int) -> list[int]:
    """Where blocks end: the index after each block's last document."""
    budget = model_max_length - 2 * query_tokens
    ends, count, left = [], 0, budget
    for index, tokens in enumerate(document_tokens):
        count += 1
        left -= tokens
        if count >= BLOCK_DOCUMENTS or left <= MAX_DOC_TOKENS:
            ends.append(index + 1)
            count, left = 0, budget
    if count:
        ends.append(len(document_tokens))
    return ends


def load(model_dir: Path, device: str):
    """transformers' Qwen3Model with the checkpoint's `model.*` weights and the projector, on `device`, in eval mode.

    Returns:
        (backbone, projector).

    Raises:
        ModelDirectoryError: no .safetensors, or tensors that do not fit the config's Qwen3 and the projector.
    """
    import torch
    from safetensors.torch import load_file
    from transformers import Qwen3Config, Qwen3Model

    config = read_object(model_dir / "config.json")
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelDirectoryError(f"{model_dir}: a jina-reranker-v3 checkpoint needs its weights as .safetensors")
    tensors: dict[str, Any] = {}
    for path in files:
        tensors.update(load_file(str(path)))
    backbone_tensors = {key.removeprefix("model."): value for key, value in tensors.items()
                        if key.startswith("model.")}
    projector_tensors = {key.removeprefix("projector."): value for key, value in tensors.items()
                         if key.startswith("projector.")}
    settings = {key: value for key, value in config.items() if key not in ("auto_map", "architectures")}
    native = Qwen3Config(**settings)
    native._attn_implementation = "sdpa"
    dtype = torch.float32 if not str(device).startswith("cuda") else _stored_dtype(tensors)
    with torch.device("meta"):
        backbone = Qwen3Model(native)
        hidden = native.hidden_size
        projector = torch.nn.Sequential(torch.nn.Linear(hidden, hidden // 2, bias=False), torch.nn.ReLU(),
                                        torch.nn.Linear(hidden // 2, PROJECTOR_WIDTH, bias=False))
    for name, module, given in (("Qwen3", backbone, backbone_tensors), ("projector", projector, projector_tensors)):
        expected = set(module.state_dict())
        missing, unexpected = expected - set(given), set(given) - expected
        if missing or unexpected:
            raise ModelDirectoryError(
                f"{model_dir}: the checkpoint's tensors do not fit jina-reranker-v3's {name} (missing "
                f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        shapes = [key for key, value in module.state_dict().items() if tuple(value.shape) != tuple(given[key].shape)]
        if shapes:
            raise ModelDirectoryError(f"{model_dir}: {shapes[0]} has shape {tuple(given[shapes[0]].shape)}, not the "
                                      f"{tuple(module.state_dict()[shapes[0]].shape)} config.json makes")
    backbone.to_empty(device=device)
    projector.to_empty(device=device)
    backbone.load_state_dict(backbone_tensors, strict=True)
    projector.load_state_dict(projector_tensors, strict=True)
    # the rotary frequencies are computed, not stored: made again on the device
    backbone.rotary_emb = type(backbone.rotary_emb)(native).to(device)
    return backbone.to(dtype).eval(), projector.to(dtype).eval()


def _stored_dtype(tensors: Mapping[str, Any]):
    import torch

    floating = {tensor.dtype for tensor in tensors.values() if tensor.is_floating_point()}
    return next(iter(floating)) if len(floating) == 1 else torch.float32
