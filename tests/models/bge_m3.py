"""A tiny BGE-M3 built offline, and FlagEmbedding's answers on it (tests/flagembedding_reference.py).

No BGE-M3 weights are on the registries: the embedded MiniLM's BERT encoder stands in for XLM-R (FlagEmbedding loads
any encoder with AutoModel), and seeded random `colbert_linear` / `sparse_linear` heads are saved beside it with
`torch.save`, as FlagEmbedding's `EncoderOnlyEmbedderM3Model.save` does; a small seeded XLM-RoBERTa encoder (BGE-M3's
own architecture) with heads is the second model. FlagEmbedding 1.4.2, in its own venv
(tests/reference_env.py), encodes the texts below with `BGEM3FlagModel` and scores the rerank pairs with
`compute_score`; the tests compare the server with those arrays.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reference_env import ReferenceUnavailable, flagembedding_python

SCRIPT = Path(__file__).parent.parent / "flagembedding_reference.py"
_TIMEOUT_S = 900

TEXTS = [
    "what do cats like to eat",
    "Dogs, cats & birds: popular pets!!! (mostly...) cats cats",  # repeated tokens: the max per token id
    "",
    "BGE-M3 gives a dense vector, sparse weights and ColBERT vectors from one forward pass.",
    "the river runs past an old mill where farmers bring grain every autumn . " * 40,  # over 512 tokens: cut
]
RERANK_QUERY = "where does the baker sell bread"
RERANK_DOCUMENTS = ["the baker sells warm bread at the market on sunday", "a short note about rain",
                    "farmers bring grain to the mill", "bread bread bakery baker sell"]
RERANK_WEIGHTS = (0.4, 0.2, 0.4)


@dataclass(frozen=True)
class M3Reference:
    workdir: Path

    @property
    def model_dir(self) -> Path:
        """The BERT-encoder model (the embedded MiniLM's weights)."""
        return self.workdir / "tiny-bge-m3"

    @property
    def xlmr_dir(self) -> Path:
        """A seeded random XLM-RoBERTa encoder, BGE-M3's own architecture (its position ids start after padding)."""
        return self.workdir / "tiny-bge-m3-xlmr"

    def arrays(self, name: str = "tiny-bge-m3") -> dict:
        with np.load(self.workdir / f"{name}.npz", allow_pickle=False) as saved:
            arrays = {key: saved[key] for key in saved.files}
        arrays["lexical"] = json.loads((self.workdir / f"{name}.lexical.json").read_text())
        return arrays


def _save_heads(target: Path, hidden: int, seed: int) -> None:
    """Seeded colbert_linear and sparse_linear state dicts, saved with torch.save as FlagEmbedding saves them."""
    import torch

    torch.manual_seed(seed)
    colbert_linear = torch.nn.Linear(hidden, hidden)
    sparse_linear = torch.nn.Linear(hidden, 1)
    with torch.no_grad():  # spread the seeded head so that weights differ and about half the tokens stay above 0
        sparse_linear.weight.mul_(4)
    torch.save(colbert_linear.state_dict(), target / "colbert_linear.pt")
    torch.save(sparse_linear.state_dict(), target / "sparse_linear.pt")


def _save_tokenizer(target: Path, minilm_dir: Path) -> None:
    # XLM-R's tokenizer has an end token (</s>), which FlagEmbedding drops from the sparse weights and which its
    # compute_score needs (it indexes by eos_token_id); BERT's ends with [SEP] but does not call it that
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    tokenizer.add_special_tokens({"eos_token": "[SEP]"})
    tokenizer.save_pretrained(str(target))


def make_model(target: Path, minilm_dir: Path, seed: int = 0) -> Path:
    """The MiniLM encoder with seeded BGE-M3 heads saved as FlagEmbedding saves them (.pt state dicts)."""
    from transformers import BertModel

    encoder = BertModel.from_pretrained(str(minilm_dir))
    target.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(str(target), safe_serialization=True)
    _save_tokenizer(target, minilm_dir)
    _save_heads(target, encoder.config.hidden_size, seed)
    return target


def make_xlmr_model(target: Path, minilm_dir: Path, seed: int = 1) -> Path:
    """A small seeded XLMRobertaModel (the MiniLM tokenizer's vocabulary, its [PAD] as padding) with BGE-M3 heads."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(seed)
    config = XLMRobertaConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=128, max_position_embeddings=514, pad_token_id=0, type_vocab_size=1)
    encoder = XLMRobertaModel(config, add_pooling_layer=False)
    target.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(str(target), safe_serialization=True)
    _save_tokenizer(target, minilm_dir)
    _save_heads(target, config.hidden_size, seed)
    return target


def make_reference(workdir: Path, minilm_dir: Path) -> M3Reference:
    """Build the models and FlagEmbedding's answers on each into `workdir`.

    Raises:
        ReferenceUnavailable: the venv cannot be made, or the script failed; the message says why.
    """
    python = flagembedding_python()
    reference = M3Reference(workdir)
    make_model(reference.model_dir, minilm_dir)
    make_xlmr_model(reference.xlmr_dir, minilm_dir)
    spec = workdir / "spec.json"
    spec.write_text(json.dumps({"models": [str(reference.model_dir), str(reference.xlmr_dir)], "workdir": str(workdir),
                                "texts": TEXTS, "rerank": {"query": RERANK_QUERY, "documents": RERANK_DOCUMENTS,
                                                           "weights": list(RERANK_WEIGHTS)}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": "", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([str(python), str(SCRIPT), str(spec)], capture_output=True, text=True, env=env,
                          timeout=_TIMEOUT_S)
    if done.returncode != 0:
        raise ReferenceUnavailable(f"{SCRIPT.name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return reference
