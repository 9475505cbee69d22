"""The ColBERT reference, run by the test session with the python of PyLate 1.6.0's own venv (tests/reference_env.py).

    .cache/pylate-1.6.0/bin/python tests/pylate_reference.py SPEC.json
    .cache/pylate-1.6.0/bin/python tests/pylate_reference.py --encode SPEC.json   (one directory's token vectors)

SPEC: {"minilm": dir, "workdir": dir, "queries": [...], "documents": [...], "rerank": {"query", "documents"}}.
It makes three small ColBERTs in `workdir` and writes, for each, PyLate's token vectors and scores:
- `pylate/`: `pylate.models.ColBERT(model_name_or_path=<MiniLM>)` saved with `.save()` (Dense 384 -> 128,
  `[Q] `/`[D] ` markers added to the vocabulary), PyLate's own layout;
- `colbert-ai/`: the same weights as Stanford colbert-ai saves an `HF_ColBERT`: one safetensors file with `bert.*`
  and `linear.weight`, `artifact.metadata` naming the markers `[unused0]`/`[unused1]` (whose embedding rows take
  the PyLate model's marker rows), MiniLM's own tokenizer;
- `xlmr-remote-code/`: jina-colbert-v2's layout in small: an XLM-RoBERTa encoder whose classes are remote code
  (`auto_map` to modules in the directory), `<s>`/`</s>` special tokens, `[QueryMarker]`/`[DocumentMarker]`
  markers, expansion tokens attended to, 8192-token documents; seeded random weights.
`<name>.npz`: `q{i}`/`d{j}` token vectors (`ColBERT.encode(..., is_query=True/False)`), `scores` (`colbert_scores`
of every query against every document), and for `rerank` each window's score of the long documents, the windows
cut here by README "Rerank"'s rule (written out independently of the server's code).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

REMOTE_CONFIG = '''from transformers import XLMRobertaConfig


class TinyXLMRobertaConfig(XLMRobertaConfig):
    model_type = "tiny_xlm_roberta"
'''
REMOTE_MODEL = '''from transformers import XLMRobertaModel

from .configuration_tiny_xlm_roberta import TinyXLMRobertaConfig


class TinyXLMRobertaModel(XLMRobertaModel):
    config_class = TinyXLMRobertaConfig
'''


def build_pylate(minilm: Path, target: Path):
    from pylate import models

    torch.manual_seed(0)
    model = models.ColBERT(model_name_or_path=str(minilm), device="cpu")
    model.save(str(target))
    return model


def build_colbert_ai(pylate_dir: Path, minilm: Path, target: Path) -> None:
    from safetensors.torch import load_file, save_file

    target.mkdir(parents=True, exist_ok=True)
    encoder = load_file(str(pylate_dir / "model.safetensors"))
    dense = load_file(str(pylate_dir / "1_Dense" / "model.safetensors"))
    vocab = json.loads((minilm / "config.json").read_text())["vocab_size"]
    tokenizer = json.loads((pylate_dir / "tokenizer.json").read_text())
    added = {token["content"]: token["id"] for token in tokenizer["added_tokens"]}
    embeddings = encoder["embeddings.word_embeddings.weight"].clone()
    # colbert-ai marks with vocabulary tokens; their rows take what PyLate learned (here: initialised) for its markers
    unused = {"[Q] ": 1, "[D] ": 2}  # [unused0], [unused1] in the BERT vocabulary
    for marker, row in unused.items():
        embeddings[row] = embeddings[added[marker]]
    encoder["embeddings.word_embeddings.weight"] = embeddings[:vocab].contiguous()
    weights = {f"bert.{name}": tensor.contiguous() for name, tensor in encoder.items()}
    weights["linear.weight"] = dense["linear.weight"].contiguous()
    save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((minilm / "config.json").read_text())
    config["architectures"] = ["HF_ColBERT"]
    (target / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm / name, target / name)
    # ColBERTConfig as colbert-ai's Checkpoint.save writes it (a subset of its keys; the ones read are all here)
    (target / "artifact.metadata").write_text(json.dumps({
        "query_token_id": "[unused0]", "doc_token_id": "[unused1]", "query_token": "[Q]", "doc_token": "[D]",
        "query_maxlen": 32, "doc_maxlen": 180, "attend_to_mask_tokens": False, "mask_punctuation": True,
        "dim": int(dense["linear.weight"].shape[0]), "similarity": "cosine", "interaction": "colbert",
        "checkpoint": "tiny-colbert", "nbits": 2, "kmeans_niters": 4,
    }, indent=4))


def build_xlmr_remote_code(minilm: Path, target: Path) -> None:
    from safetensors.torch import save_file
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import XLMRobertaConfig, XLMRobertaModel

    target.mkdir(parents=True, exist_ok=True)
    # MiniLM's WordPiece vocabulary with XLM-R's special tokens
    spec = json.loads((minilm / "tokenizer.json").read_text())
    renamed = {"[PAD]": "<pad>", "[UNK]": "<unk>", "[CLS]": "<s>", "[SEP]": "</s>", "[MASK]": "<mask>"}
    vocab = {renamed.get(token, token): index for token, index in spec["model"]["vocab"].items()}
    spec["model"]["vocab"] = vocab
    spec["model"]["unk_token"] = "<unk>"
    for token in spec["added_tokens"]:
        token["content"] = renamed.get(token["content"], token["content"])
    spec["post_processor"] = None
    spec["padding"] = spec["truncation"] = None
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.add_special_tokens(["[QueryMarker]", "[DocumentMarker]"])
    tokenizer.post_processor = TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])])
    tokenizer.save(str(target / "tokenizer.json"))
    (target / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>",
        "sep_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
        "model_max_length": 8194, "model_input_names": ["input_ids", "attention_mask"]}))
    torch.manual_seed(1)
    config = XLMRobertaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=64, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=128, max_position_embeddings=514,
                              pad_token_id=vocab["<pad>"], bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
                              type_vocab_size=1)
    encoder = XLMRobertaModel(config, add_pooling_layer=False).eval()
    linear = torch.nn.Linear(64, 96, bias=False)
    weights = {f"roberta.{name}": tensor.contiguous() for name, tensor in encoder.state_dict().items()}
    weights["linear.weight"] = linear.weight.detach().contiguous()
    save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    saved = config.to_dict()
    saved.update(model_type="tiny_xlm_roberta", architectures=["HF_ColBERT"],
                 auto_map={"AutoConfig": "configuration_tiny_xlm_roberta.TinyXLMRobertaConfig",
                           "AutoModel": "modeling_tiny_xlm_roberta.TinyXLMRobertaModel"})
    (target / "config.json").write_text(json.dumps(saved, indent=2))
    (target / "configuration_tiny_xlm_roberta.py").write_text(REMOTE_CONFIG)
    (target / "modeling_tiny_xlm_roberta.py").write_text(REMOTE_MODEL)
    (target / "artifact.metadata").write_text(json.dumps({
        "query_token_id": "[QueryMarker]", "doc_token_id": "[DocumentMarker]", "query_maxlen": 32,
        "doc_maxlen": 8192, "attend_to_mask_tokens": True, "mask_punctuation": True, "dim": 96}, indent=4))


def windows(length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """README "Rerank": windows at 0, size - overlap, ... and a last one that ends at the document's end."""
    if length <= size:
        return [(0, length)]
    starts = list(range(0, length - size, size - overlap)) + [length - size]
    return [(start, start + size) for start in starts]


def reference(model_dir: Path, spec: dict, out: Path, trust_remote_code: bool, rerank: bool) -> None:
    from pylate import models
    from pylate.scores import colbert_scores

    model = models.ColBERT(model_name_or_path=str(model_dir), device="cpu", trust_remote_code=trust_remote_code)
    queries = model.encode(spec["queries"], is_query=True)
    documents = model.encode(spec["documents"], is_query=False)
    arrays = {f"q{i}": np.asarray(v) for i, v in enumerate(queries)}
    arrays.update({f"d{j}": np.asarray(v) for j, v in enumerate(documents)})
    arrays["scores"] = np.asarray([[float(colbert_scores(torch.from_numpy(np.asarray(q))[None],
                                                         torch.from_numpy(np.asarray(d))[None])[0, 0])
                                    for d in documents] for q in queries])
    settings = {"query_length": model.query_length, "document_length": model.document_length,
                "query_prefix": model.query_prefix, "document_prefix": model.document_prefix,
                "attend_to_expansion_tokens": model.attend_to_expansion_tokens}
    arrays["settings"] = np.asarray(json.dumps(settings))
    if rerank:
        arrays.update(rerank_reference(model, spec["rerank"]))
    np.savez(out, **arrays)


def rerank_reference(model, rerank: dict) -> dict[str, np.ndarray]:
    from pylate.scores import colbert_scores

    arrays = {}
    query = model.encode([rerank["query"]], is_query=True)[0]
    tokenizer = model.tokenizer
    # room beside the special tokens (2) and the marker (1)
    size = model.document_length - 3
    best = []
    for index, text in enumerate(rerank["documents"]):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        texts = [tokenizer.decode(ids[a:b]) for a, b in windows(len(ids), size, size // 4)]
        for (a, b), window in zip(windows(len(ids), size, size // 4), texts):
            assert tokenizer(window, add_special_tokens=False)["input_ids"] == ids[a:b], "window must round-trip"
        encoded = model.encode(texts, is_query=False)
        scores = [float(colbert_scores(torch.from_numpy(np.asarray(query))[None],
                                       torch.from_numpy(np.asarray(w))[None])[0, 0]) for w in encoded]
        arrays[f"rerank_windows{index}"] = np.asarray(scores)
        best.append(max(scores))
    arrays["rerank_best"] = np.asarray(best)
    return arrays


def encode(spec: dict) -> None:
    """`--encode SPEC`: PyLate's token vectors of `texts` on the ColBERT in `model_dir`, as `v{i}` in `out`."""
    from pylate import models

    model = models.ColBERT(model_name_or_path=spec["model_dir"], device="cpu")
    vectors = model.encode(spec["texts"], is_query=spec["is_query"])
    np.savez(spec["out"], **{f"v{i}": np.asarray(v) for i, v in enumerate(vectors)})


def main() -> None:
    if sys.argv[1] == "--encode":
        encode(json.loads(Path(sys.argv[2]).read_text()))
        return
    spec = json.loads(Path(sys.argv[1]).read_text())
    minilm, workdir = Path(spec["minilm"]), Path(spec["workdir"])
    build_pylate(minilm, workdir / "pylate")
    build_colbert_ai(workdir / "pylate", minilm, workdir / "colbert-ai")
    build_xlmr_remote_code(minilm, workdir / "xlmr-remote-code")
    # the XLM-R model reads at most 512 positions: PyLate, which cuts only at document_length, is given no longer
    # documents than that, and no long-document rerank
    for name, remote in (("pylate", False), ("colbert-ai", False), ("xlmr-remote-code", True)):
        reference(workdir / name, spec, workdir / f"{name}.npz", trust_remote_code=remote, rerank=name == "pylate")
    print("done", flush=True)


if __name__ == "__main__":
    main()
