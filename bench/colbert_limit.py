"""The multi-vector limit: PyLate's `ColBERT.encode` in-process, run by the python of PyLate's own venv.

PyLate pins other library versions than the project (tests/reference_env.py makes its venv), so it runs in a
process of its own, driven like bench/limit.py by JSON lines on stdin:

    python -m bench.colbert_limit build MINILM_DIR OUT_DIR      # a small ColBERT: PyLate's own, from MiniLM
    python -m bench.colbert_limit serve MODEL_DIR THREADS       # then {"op": "embed", "batches", "seconds", "warmup"}
"""

from __future__ import annotations

import json
import os
import sys

from bench.limit import _timed, rss_mb


def build(minilm_dir: str, out_dir: str) -> None:
    import torch
    from pylate import models

    torch.manual_seed(0)
    models.ColBERT(model_name_or_path=minilm_dir, device="cpu").save(out_dir)


def serve(model_dir: str, threads: int) -> None:
    import torch
    from pylate import models

    if threads > 0:
        torch.set_num_threads(threads)
    model = models.ColBERT(model_name_or_path=model_dir, device="cpu")
    model.encode(["warm up the model"], is_query=False, show_progress_bar=False)
    print(json.dumps({"ready": True, "rss_mb": rss_mb(), "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "embed":
            # documents, as the client's default input_type: PyLate returns one float32 matrix per document
            answer = _timed(lambda b: model.encode(b, batch_size=len(b), is_query=False, show_progress_bar=False),
                            command["batches"], command["seconds"], command["warmup"])
        elif command["op"] == "rss":
            answer = {"rss_mb": rss_mb()}
        else:
            answer = {"error": f"unknown op {command['op']}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if sys.argv[1] == "build":
        build(sys.argv[2], sys.argv[3])
    else:
        serve(sys.argv[2], int(sys.argv[3]))
