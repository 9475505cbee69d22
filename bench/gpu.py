"""searchbox on a GPU against the in-process limit on the same GPU, in bf16 (or fp16), tokens per second included.

Run it on a machine with a CUDA device (never part of `make test`; `make bench-gpu`):

    .venv/bin/python -m bench.gpu [--dtype bf16] [--seconds 3] [--rounds 2] [--out bench/gpu_results.md]

Models, each stored in `--dtype` (searchbox loads a checkpoint's own dtype on a GPU, options.weights_dtype and
transformers' "auto"; the limit is given the same dtype):
- text: the embedded all-MiniLM-L6-v2, and a BERT-base-sized embedder (BertConfig: 768 wide, 12 layers, 12 heads;
  random weights, MiniLM's tokenizer, mean pooling) saved as a sentence-transformers directory;
- rerank: a BERT-base-sized cross-encoder built the same way (one-logit head);
- CLIP: examples/tiny_clip.py `--size base` (ViT-B/32's vision tower: 224 px images in 32 px patches).

Systems, back to back in each round on the same GPU (each keeps its best round):
- limit: sentence-transformers `encode` / CrossEncoder `predict` in a process of its own (bench/limit.py), CLIP's
  decode + processor + `get_image_features` in this process (bench/multimodal.py);
- searchbox: a real `serve` with SEARCHBOX_DEVICE set and one worker, over HTTP `/invocations` (bench/loadgen.py).
The text scenarios are `make bench`'s (bench/run.py); tokens per second count each input's word pieces as the model
truncates them (special tokens included; an image counts its patches and the class token).

`--dry-run` runs the whole thing on the CPU with tiny models (MiniLM stays; the others 32 wide, 2 layers) and
fractions of a second per figure, in fp32 (searchbox's dtype on a CPU): the test that keeps this script working.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.run import Limit, Scenario, build_scenarios, machine_line, run_round, searchbox_body, windows
from bench.servers import ROOT, Server, bench_main, start_searchbox
from bench.texts import RERANK_QUERY, SHORT

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
#: BertConfig of the BERT-base-sized models, and of their tiny stand-ins in a dry run
BERT_SHAPES = {"base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
               "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
MAX_TOKENS = 512


# --- models --------------------------------------------------------------------------------------


def bert(minilm_dir: Path, target: Path, size: str, classifier: bool) -> Path:
    """A BERT of `size` with random weights and MiniLM's tokenizer: a cross-encoder directory (one logit), or a
    sentence-transformers embedder (mean pooling, normalized)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    plain = target if classifier else target.with_name(target.name + "-backbone")
    plain.mkdir(parents=True, exist_ok=True)
    vocab_size = json.loads((minilm_dir / "config.json").read_text())["vocab_size"]
    config = BertConfig(vocab_size=vocab_size, max_position_embeddings=MAX_TOKENS, num_labels=1, **BERT_SHAPES[size])
    torch.manual_seed(0)
    (BertForSequenceClassification if classifier else BertModel)(config).eval().save_pretrained(str(plain))
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_dir / name, plain / name)
    if classifier:
        return target
    transformer = Transformer(str(plain), max_seq_length=MAX_TOKENS)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu").save(str(target))
    shutil.rmtree(plain)
    return target


def build_models(work: Path, tiny: bool, dtype: str) -> dict[str, Path]:
    """The four model directories, their weights stored in `dtype` (a torch dtype's name)."""
    from transformers import BertForSequenceClassification, BertModel, CLIPModel

    from bench.gpu_dtype import stored_as
    from model_handlers.embedded import embedded_model_dir

    sys.path.insert(0, str(ROOT / "examples"))
    import tiny_clip

    minilm = embedded_model_dir()
    size = "tiny" if tiny else "base"
    models = {
        "minilm": (shutil.copytree(minilm, work / "minilm"), BertModel),
        "bert": (bert(minilm, work / "bert", size, classifier=False), BertModel),
        "reranker": (bert(minilm, work / "reranker", size, classifier=True), BertForSequenceClassification),
        "clip": (tiny_clip.build(work / "clip", size), CLIPModel),
    }
    # built in float32: stored again only for another dtype
    return {key: directory if dtype == "float32" else stored_as(directory, model_class, dtype)
            for key, (directory, model_class) in models.items()}


# --- tokens --------------------------------------------------------------------------------------


def text_tokens(model_dir: Path, scenarios: list[Scenario]) -> dict[str, float]:
    """Word pieces per text of each scenario's requests, as sentence-transformers' own preprocessing cuts them."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    return {s.key: float(sum(model.preprocess(texts)["attention_mask"].sum() for texts in s.inputs))
            / sum(len(texts) for texts in s.inputs) for s in scenarios}


def pair_tokens(model_dir: Path, query: str, documents: list[str]) -> int:
    """Word pieces of each (query, document) pair as a cross-encoder reads it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    tokenized = tokenizer([query] * len(documents), documents, truncation=True, max_length=MAX_TOKENS)
    return sum(len(ids) for ids in tokenized["input_ids"])


def image_tokens(model_dir: Path) -> int:
    vision = json.loads((model_dir / "config.json").read_text())["vision_config"]
    return (vision["image_size"] // vision["patch_size"]) ** 2 + 1


# --- measuring -----------------------------------------------------------------------------------


@dataclass
class Row:
    """One table row: inputs per second of the limit and of searchbox, and what one input costs in tokens."""

    model: str
    title: str
    unit: str
    limit: float
    searchbox: float
    tokens_per_input: float
    limit_p50: float | None = None
    searchbox_p50: float | None = None

    def cells(self) -> list[str]:
        def ms(value):
            return f"{value:.1f}" if value is not None else "—"

        return [self.model, self.title, self.unit, f"{self.limit:.1f}", f"{self.searchbox:.1f}",
                f"{self.searchbox / self.limit:.2f}×", f"{self.limit * self.tokens_per_input:.0f}",
                f"{self.searchbox * self.tokens_per_input:.0f}", ms(self.limit_p50), ms(self.searchbox_p50)]


def _rounds(scenarios: list[Scenario], limit: Limit, server, model_dir: Path | None, args) -> None:
    for number in range(args.rounds):
        print(f"round {number + 1}/{args.rounds}", flush=True)
        run_round(scenarios, limit, {"searchbox": (server, "/invocations", searchbox_body)}, model_dir,
                  args.seconds, args.warmup)
    for scenario in scenarios:
        figure = scenario.figures["searchbox"]
        if figure.errors:
            raise RuntimeError(f"searchbox answered errors on {scenario.title}: {figure.note}")


def _rows(model: str, scenarios: list[Scenario], tokens: dict[str, float]) -> list[Row]:
    rows = []
    for scenario in scenarios:
        limit, served = scenario.figures["limit"], scenario.figures["searchbox"]
        rows.append(Row(model, scenario.title, "texts/s", limit.items_per_s, served.items_per_s,
                        tokens[scenario.key], limit.p50_ms, served.p50_ms))
    return rows


def start_all(models: dict[str, Path], args, threads: int, log_dir: Path) -> tuple[dict[str, Limit], dict[str, Server]]:
    """A limit for each text model (MiniLM's also hosts the cross-encoder) and a `serve` on the device for each model,
    started together and left idle until their turn, so that their starts overlap instead of adding up."""
    dtype = DTYPES[args.dtype]
    with ThreadPoolExecutor(max_workers=len(models) + 2) as pool:
        limits = {key: pool.submit(Limit, models[key], threads, device=args.device, dtype=dtype)
                  for key in ("minilm", "bert")}
        # one worker: on a machine of several GPUs `serve` would otherwise run one per GPU against the limit's one
        env = {"SEARCHBOX_DEVICE": args.device, "SEARCHBOX_WORKERS": "1"}
        servers = {key: pool.submit(start_searchbox, path, threads, log_dir, env) for key, path in models.items()}
    failed = [future.exception() for future in (*limits.values(), *servers.values()) if future.exception()]
    if failed:
        stop_all(*({key: future.result() for key, future in started.items() if not future.exception()}
                   for started in (limits, servers)))
        raise failed[0]
    for key, future in servers.items():
        print(f"{key}: searchbox ready in {future.result().start_s:.1f} s", flush=True)
    return {key: future.result() for key, future in limits.items()}, \
        {key: future.result() for key, future in servers.items()}


def stop_all(limits: dict[str, Limit], servers: dict[str, Server]) -> None:
    """Every process stopped at once (each waits for its own graceful exit)."""
    with ThreadPoolExecutor(max_workers=len(limits) + len(servers) + 1) as pool:
        for done in [pool.submit(server.stop) for server in servers.values()] + \
                [pool.submit(limit.close) for limit in limits.values()]:
            done.result()


def measure_text(model: str, model_dir: Path, limit: Limit, server: Server, args) -> list[Row]:
    """`make bench`'s text scenarios; for 32 clients × 1 text the limit encodes batches of 32, as there."""
    scenarios = build_scenarios(model_dir)
    tokens = text_tokens(model_dir, scenarios)
    _rounds(scenarios, limit, server, None, args)
    return _rows(model, scenarios, tokens)


def measure_rerank(model: str, model_dir: Path, limit: Limit, server: Server, args) -> list[Row]:
    """1 query × 20 documents per request, from 1 and from 4 clients; the limit predicts the 20 pairs per call."""
    documents = windows(SHORT, 20, 4)
    scenarios = [Scenario("rerank1", "rerank 1 client × 20 documents", 1, documents, documents, rerank=True),
                 Scenario("rerank4", "rerank 4 clients × 20 documents", 4, documents, documents, rerank=True)]
    per_document = sum(pair_tokens(model_dir, RERANK_QUERY, batch) for batch in documents) / (20 * len(documents))
    _rounds(scenarios, limit, server, model_dir, args)
    rows = _rows(model, scenarios, {s.key: per_document for s in scenarios})
    for row in rows:
        row.unit = "documents/s"
    return rows


def measure_clip(model: str, model_dir: Path, server: Server, args, threads: int,
                 log_dir: Path) -> tuple[list[Row], float]:
    """bench/multimodal.py's images on the device; the limit decodes and preprocesses too (what a server receiving
    JPEGs must do). Returns the rows and the forward pass's own images/s on images already preprocessed."""
    from bench import multimodal

    best = multimodal.measure(model_dir, threads, log_dir, args.seconds, args.warmup, args.rounds,
                              lambda *_: server, args.device)
    per_image = image_tokens(model_dir)
    rows = [Row(model, f"1 client × {multimodal.IMAGES} images", "images/s", best["limit+pre"], best["1x16"],
                per_image),
            Row(model, f"{multimodal.IMAGES} clients × 1 image", "images/s", best["limit+pre"], best["16x1"],
                per_image)]
    return rows, best["limit"]


# --- report --------------------------------------------------------------------------------------


HEADER = ("| model | scenario | unit | limit (in-process) | searchbox | searchbox / limit | limit tokens/s "
          "| searchbox tokens/s | limit p50 ms | searchbox p50 ms |")


def device_line(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        return (f"{torch.cuda.get_device_name(index)} ({props.total_memory / 2**30:.0f} GiB), torch "
                f"{torch.__version__}, CUDA {torch.version.cuda}")
    return f"CPU: {machine_line()}"


def report(rows: list[Row], forward_only: float, args, threads: int, seconds: float) -> str:
    shape = "tiny stand-ins (dry run)" if args.tiny else "BERT-base-sized (768 wide, 12 layers), CLIP ViT-B/32-sized"
    lines = [
        "# searchbox on a GPU", "",
        f"`{shlex.join(['python', '-m', 'bench.gpu', *args.argv])}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {seconds:.0f} s.", "",
        f"- device: {args.device}, {device_line(args.device)}",
        f"- weights stored and run in {DTYPES[args.dtype]} by both systems; models: all-MiniLM-L6-v2 (embedded), "
        f"{shape}, random weights; {threads} torch threads",
        f"- each figure: the best of {args.rounds} rounds of {args.seconds:g} s (after {args.warmup:g} s warm-up); "
        "limit: sentence-transformers / CrossEncoder in a process of its own on the same inputs per call (32 clients "
        "× 1: batches of 32), CLIP: decode + processor + forward in-process, batches of 16; searchbox: `serve` over "
        "`/invocations`",
        "- tokens/s: inputs/s × the word pieces per input as the model truncates them (special tokens included; "
        "an image: its patches and the class token)", "",
        HEADER, "|" + "---|" * HEADER.count(" | ") + "---|",
    ]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    lines += ["", f"CLIP's forward pass alone on images already preprocessed (batches of 16): {forward_only:.1f} "
              "images/s."]
    return "\n".join(lines) + "\n"


def measure(args, threads: int, log_dir: Path) -> str:
    started = time.perf_counter()
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device here: run this on a GPU machine, or --dry-run to check it on the CPU")
    models = build_models(log_dir / "models", args.tiny, DTYPES[args.dtype])
    print("models: " + ", ".join(f"{key} {path}" for key, path in models.items()), flush=True)
    bert_name = "BERT tiny" if args.tiny else "BERT-base"
    limits, servers = start_all(models, args, threads, log_dir)
    try:
        rows = measure_text("all-MiniLM-L6-v2", models["minilm"], limits["minilm"], servers["minilm"], args)
        rows += measure_text(f"{bert_name} (random)", models["bert"], limits["bert"], servers["bert"], args)
        rows += measure_rerank(f"{bert_name} cross-encoder (random)", models["reranker"], limits["minilm"],
                               servers["reranker"], args)
        clip_rows, forward_only = measure_clip("CLIP tiny" if args.tiny else "CLIP ViT-B/32-sized (random)",
                                               models["clip"], servers["clip"], args, threads, log_dir)
    finally:
        stop_all(limits, servers)
    text = report(rows + clip_rows, forward_only, args, threads, time.perf_counter() - started)
    if args.out:
        Path(args.out).write_text(text)
        print(f"written to {args.out}", flush=True)
    return "\n" + text


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, ... (cpu only to check the script)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="the weights' dtype, both systems")
    parser.add_argument("--tiny", action="store_true", help="tiny stand-ins of the BERT-base and CLIP models")
    parser.add_argument("--dry-run", action="store_true",
                        help="--device cpu --tiny --dtype fp32, 0.3 s per figure, one round, no file: that it runs")
    parser.add_argument("--out", default=None, help="where to write the table (default bench/gpu_results.md; "
                        "a dry run writes none unless given); '' for nowhere")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)

    def run(args, threads: int, log_dir: Path) -> str:
        args.argv = argv
        if args.dry_run:
            args.device, args.tiny, args.dtype = "cpu", True, "fp32"
            args.seconds, args.warmup, args.rounds = 0.3, 0.1, 1
        if not args.device.startswith("cuda") and args.dtype != "fp32":
            # searchbox loads text embedders in float32 on a CPU whatever the checkpoint: not like for like
            raise SystemExit("on a CPU searchbox runs float32: give --dtype fp32 (or --dry-run)")
        if args.out is None:
            args.out = "" if args.dry_run else str(ROOT / "bench" / "gpu_results.md")
        return measure(args, threads, log_dir)

    return bench_main(__doc__, "gpu", argv, run, _arguments)


if __name__ == "__main__":
    sys.exit(main())
