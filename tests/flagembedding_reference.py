"""Run in the FlagEmbedding 1.4.2 venv (tests/reference_env.py), never in the project's: BGEM3FlagModel's answers
on the tiny BGE-M3 of tests/models/bge_m3.py, written for the tests to compare with.

Usage: python flagembedding_reference.py spec.json (keys: models, workdir, texts, rerank {query, documents,
weights}).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from FlagEmbedding import BGEM3FlagModel


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    for model_dir in spec["models"]:
        answer(Path(model_dir), spec, Path(spec["workdir"]))


def answer(model_dir: Path, spec: dict, workdir: Path) -> None:
    """`<model name>.npz` (dense, colbert_<i>, score_<mode>) and `<model name>.lexical.json` in `workdir`."""
    model = BGEM3FlagModel(str(model_dir), use_fp16=False, devices="cpu", normalize_embeddings=True)
    encoded = model.encode(spec["texts"], batch_size=4, max_length=512, return_dense=True, return_sparse=True,
                           return_colbert_vecs=True)
    rerank = spec["rerank"]
    pairs = [(rerank["query"], document) for document in rerank["documents"]]
    scores = model.compute_score(pairs, max_query_length=512, max_passage_length=512,
                                 weights_for_different_modes=rerank["weights"])
    arrays = {"dense": np.asarray(encoded["dense_vecs"], dtype=np.float32)}
    for index, vectors in enumerate(encoded["colbert_vecs"]):
        arrays[f"colbert_{index}"] = np.asarray(vectors, dtype=np.float32)
    for mode, values in scores.items():
        arrays[f"score_{mode}"] = np.asarray(values, dtype=np.float64)
    np.savez(workdir / f"{model_dir.name}.npz", **arrays)
    lexical = [{str(token): float(weight) for token, weight in weights.items()}
               for weights in encoded["lexical_weights"]]
    (workdir / f"{model_dir.name}.lexical.json").write_text(json.dumps(lexical))


if __name__ == "__main__":
    main()
