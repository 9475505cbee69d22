"""Small ColBERTs and PyLate's answers on them, made once per test session (tests/pylate_reference.py).

No ColBERT weights are on the registries: PyLate 1.6.0, in its own venv (tests/reference_env.py), makes one from
the embedded MiniLM and also writes colbert-ai's layout of the same weights and a remote-code XLM-R ColBERT in
jina-colbert-v2's layout; then it encodes the texts below with `ColBERT.encode` and scores them with
`colbert_scores`. The tests compare the server with those arrays.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reference_env import ReferenceUnavailable, pylate_python

SCRIPT = Path(__file__).parent.parent / "pylate_reference.py"
LAYOUTS = ("pylate", "colbert-ai", "xlmr-remote-code")
_TIMEOUT_S = 900

FILLER = ("the river runs past an old mill where farmers bring grain every autumn and children play near the "
          "water while birds sing in tall trees . ")
QUERIES = [
    "what do cats like to eat",
    "",
    # longer than 32 tokens: cut to the query length
    "How does late interaction retrieval work? It compares every query token with every document token and keeps "
    "the best match of each, summing them into one relevance score for the whole document",
]
DOCUMENTS = [
    "cats like to eat fish and chicken",
    # punctuation is read but answers no vectors (the skiplist)
    "Dogs, cats & birds: popular pets!!! (mostly...)",
    "",
    "ColBERT encodes every token; MaxSim sums each query token's best match.",
    # longer than 180 tokens: cut to the document length (the XLM-R model's 8192 keep it whole)
    FILLER * 12,
]
# A long document whose relevant passage is at its very end, and two short distractors.
RERANK_QUERY = "where does the baker sell bread"
RERANK_DOCUMENTS = [FILLER * 30 + "the baker sells warm bread at the market on sunday", "a short note about rain",
                    "farmers bring grain to the mill"]


@dataclass(frozen=True)
class ColbertReference:
    workdir: Path

    def model_dir(self, layout: str) -> Path:
        return self.workdir / layout

    def arrays(self, layout: str) -> dict[str, np.ndarray]:
        with np.load(self.workdir / f"{layout}.npz") as saved:
            return {name: saved[name] for name in saved.files}

    def settings(self, layout: str) -> dict:
        return json.loads(str(self.arrays(layout)["settings"]))


def pylate_encode(model_dir: Path, texts: list[str], is_query: bool, workdir: Path) -> list[np.ndarray]:
    """PyLate's `ColBERT.encode` of `texts` on the ColBERT in `model_dir`, in its own venv.

    Raises:
        ReferenceUnavailable: the venv cannot be made, or the script failed; the message says why.
    """
    python = pylate_python()
    spec, out = workdir / "encode.json", workdir / "encoded.npz"
    spec.write_text(json.dumps({"model_dir": str(model_dir), "texts": texts, "is_query": is_query, "out": str(out)}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ""}
    done = subprocess.run([str(python), str(SCRIPT), "--encode", str(spec)], capture_output=True, text=True, env=env,
                          timeout=_TIMEOUT_S)
    if done.returncode != 0:
        raise ReferenceUnavailable(f"{SCRIPT.name} --encode failed ({done.returncode}):\n{done.stderr[-3000:]}")
    with np.load(out) as saved:
        return [saved[f"v{i}"] for i in range(len(texts))]


def make_reference(workdir: Path, minilm_dir: Path) -> ColbertReference:
    """Build the models and PyLate's answers into `workdir` (about 20 s once the venv exists).

    Raises:
        ReferenceUnavailable: the venv cannot be made, or the script failed; the message says why.
    """
    python = pylate_python()
    spec = workdir / "spec.json"
    spec.write_text(json.dumps({"minilm": str(minilm_dir), "workdir": str(workdir), "queries": QUERIES,
                                "documents": DOCUMENTS,
                                "rerank": {"query": RERANK_QUERY, "documents": RERANK_DOCUMENTS}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ""}
    done = subprocess.run([str(python), str(SCRIPT), str(spec)], capture_output=True, text=True, env=env,
                          timeout=_TIMEOUT_S)
    if done.returncode != 0:
        raise ReferenceUnavailable(f"{SCRIPT.name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return ColbertReference(workdir)
