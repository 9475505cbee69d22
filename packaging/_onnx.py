"""The ONNX build step of build_artifact.py: export, optional int8, and the quality gate that decides.

The kind's own exporter (model_handlers: `Kind.onnx_export`, torch's ONNX exporter) writes `onnx/model.onnx`;
`--quantize int8` adds `onnx/model_int8.onnx` (ONNX Runtime's dynamic int8 of the linear layers). Each file
is then loaded by the server's own code (`load_handler` with the ONNX backend) and compared with the model
on torch on the built-in texts (packaging/_quality_set.py):

- embedding models: fp32 must keep cosine >= 0.9999 against torch on every validation text; int8 >= 0.99
  against fp32 on every validation text, and the same top-10 neighbours for >= 90% of the retrieval queries;
- rerankers: fp32 scores within 1e-4 of torch's; int8 within 0.02 of fp32's, the same top-10 for >= 90% of
  the queries;
- sparse (SPLADE) models, each file against the model on torch (sentence-transformers' SparseEncoder computes the
  same weights: tests/test_sparse.py): fp32 weights within 1e-4 of torch's on every validation text; int8 keeps, on
  average over the validation texts, >= 95% of each text's top-32 vocabulary entries (k = the text's number of
  entries above zero on torch when fewer), and the dot products of every retrieval query with every passage keep
  Spearman and Pearson correlation >= 0.99 with torch's;
- multimodal (CLIP) models, their text and vision graphs (`Kind.onnx_graphs`) each quantized: fp32 must keep cosine
  >= 0.9999 against torch on every validation text and every built-in image (packaging/_quality_set.py draws 25);
  int8 >= 0.99 against fp32 on every text and every image, and the same top-10 neighbours across modalities (each
  image's among the captions and validation texts, each caption's among the images) for >= 90% of them;
- multi-vector (ColBERT) models, each file against the model on torch (PyLate's `ColBERT.encode` computes the same
  vectors: tests/test_multi_vector.py), the validation texts as documents and the retrieval queries as queries: fp32
  keeps cosine >= 0.9999 on every token vector; int8 keeps a mean token cosine >= 0.99, and the MaxSim scores of every
  retrieval query against every passage keep Spearman correlation >= 0.99 with torch's;
- BGE-M3 (one graph, three outputs): each form under its own gate above, dense as embeddings, sparse as SPLADE, its
  ColBERT vectors as multi-vector.

A miss refuses the build with the figures; a pass puts them in the manifest and the listing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

import _quality_set
from model_handlers.operations.embed import EMBED
from model_handlers.operations.multi_vector import MULTI_VECTOR
from model_handlers.operations.rerank import RERANK
from model_handlers.operations.sparse import SPARSE

FP32_FILE = "onnx/model.onnx"
INT8_FILE = "onnx/model_int8.onnx"
TOP_K = 10
SPARSE_TOP_K = 32  # the entries of a sparse vector whose overlap the gate measures (a query's usual length)
IMAGE_COUNT = 25  # len(_quality_set.validation_images()), without drawing them to quote it


@dataclass(frozen=True)
class Gate:
    """What an export must keep to be served (see the module docstring)."""

    fp32_min_cosine: float = 0.9999
    int8_min_cosine: float = 0.99
    fp32_max_score_diff: float = 1e-4
    int8_max_score_diff: float = 0.02
    int8_min_top_k_agreement: float = 0.9
    fp32_max_weight_diff: float = 1e-4
    int8_min_top_k_overlap: float = 0.95
    int8_min_dot_correlation: float = 0.99
    int8_min_image_cosine: float = 0.99
    int8_min_cross_modal_agreement: float = 0.9
    fp32_min_token_cosine: float = 0.9999
    int8_min_mean_token_cosine: float = 0.99
    int8_min_maxsim_spearman: float = 0.99


@dataclass(frozen=True)
class Quality:
    """The figures of one build: the listing quotes them."""

    backend_file: str
    fp32_min_cosine: float | None = None
    fp32_max_score_diff: float | None = None
    int8_min_cosine: float | None = None
    int8_mean_cosine: float | None = None
    int8_max_score_diff: float | None = None
    int8_top_k_agreement: float | None = None
    fp32_max_weight_diff: float | None = None
    int8_top_k_overlap: float | None = None  # mean over the validation texts
    int8_min_top_k_overlap: float | None = None
    int8_dot_spearman: float | None = None
    int8_dot_pearson: float | None = None
    fp32_min_image_cosine: float | None = None
    int8_min_image_cosine: float | None = None
    int8_mean_image_cosine: float | None = None
    int8_cross_modal_agreement: float | None = None  # the share of images and captions with the same top-10
    fp32_min_token_cosine: float | None = None  # multi-vector (ColBERT) token vectors against torch
    int8_mean_token_cosine: float | None = None
    int8_min_token_cosine: float | None = None
    int8_maxsim_spearman: float | None = None

    def as_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, document: dict) -> "Quality":
        """The figures as the manifest holds them (`as_dict`); unknown keys are an artifact from a newer build."""
        known = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in document.items() if key in known})

    def listing_markdown(self) -> str:
        """What a buyer reads about the compute path: which file serves and what it keeps, measured at build."""
        int8 = self.backend_file == INT8_FILE
        served = ("the model exported to ONNX with its linear layers quantized to int8 (ONNX Runtime dynamic "
                  "quantization)" if int8 else "the model exported to ONNX (fp32)")
        checks = []
        if self.fp32_min_cosine is not None:
            checks.append(f"the fp32 export keeps cosine >= {_floor(self.fp32_min_cosine, 6)} against the model on "
                          f"PyTorch on each of {len(_quality_set.VALIDATION_TEXTS)} validation texts")
        if self.fp32_max_score_diff is not None:
            checks.append(f"the fp32 export's scores are within {_ceil(self.fp32_max_score_diff)} of the model's on "
                          "PyTorch")
        if self.int8_mean_cosine is not None:
            checks.append(f"int8 vectors have mean cosine {_floor(self.int8_mean_cosine, 4)} "
                          f"(min {_floor(self.int8_min_cosine, 4)}) against fp32")
        if self.int8_max_score_diff is not None:
            checks.append(f"int8 scores are within {_ceil(self.int8_max_score_diff)} of fp32's")
        if self.int8_top_k_agreement is not None:
            checks.append(f"{self.int8_top_k_agreement:.0%} of {len(_quality_set.QUERIES)} retrieval queries get the "
                          f"same top-{TOP_K} from int8 as from fp32")
        if self.fp32_max_weight_diff is not None:
            checks.append(f"the fp32 export's sparse weights are within {_ceil(self.fp32_max_weight_diff)} of the "
                          f"model's on PyTorch on each of {len(_quality_set.VALIDATION_TEXTS)} validation texts")
        if self.int8_top_k_overlap is not None:
            checks.append(f"int8 keeps {_floor(self.int8_top_k_overlap * 100, 1)}% of each text's top-{SPARSE_TOP_K} "
                          f"vocabulary entries on average (min {_floor(self.int8_min_top_k_overlap * 100, 1)}%) "
                          "against PyTorch")
        if self.int8_dot_spearman is not None:
            checks.append(f"int8 query-passage dot products correlate with PyTorch's at Spearman "
                          f"{_floor(self.int8_dot_spearman, 4)}, Pearson {_floor(self.int8_dot_pearson, 4)}")
        if self.fp32_min_image_cosine is not None:
            checks.append(f"the fp32 export keeps cosine >= {_floor(self.fp32_min_image_cosine, 6)} against the model "
                          f"on PyTorch on each of {IMAGE_COUNT} built-in images")
        if self.int8_mean_image_cosine is not None:
            checks.append(f"int8 image vectors have mean cosine {_floor(self.int8_mean_image_cosine, 4)} "
                          f"(min {_floor(self.int8_min_image_cosine, 4)}) against fp32")
        if self.int8_cross_modal_agreement is not None:
            checks.append(f"{self.int8_cross_modal_agreement:.0%} of the built-in images and their captions get the "
                          f"same top-{TOP_K} neighbours in the other modality from int8 as from fp32")
        if self.fp32_min_token_cosine is not None:
            checks.append(f"the fp32 export's token vectors keep cosine >= {_floor(self.fp32_min_token_cosine, 6)} "
                          "against the model on PyTorch, each token of the validation texts and queries")
        if self.int8_mean_token_cosine is not None:
            checks.append(f"int8 token vectors have mean cosine {_floor(self.int8_mean_token_cosine, 4)} (min "
                          f"{_floor(self.int8_min_token_cosine, 4)}) against PyTorch")
        if self.int8_maxsim_spearman is not None:
            checks.append(f"int8 query-passage MaxSim scores correlate with PyTorch's at Spearman "
                          f"{_floor(self.int8_maxsim_spearman, 4)}")
        return (f"This artifact serves {served} on ONNX Runtime (`{self.backend_file}`). Measured when it was built: "
                + "; ".join(checks) + ".")

    def summary(self) -> str:
        parts = [f"serves {self.backend_file}"]
        if self.fp32_min_cosine is not None:
            parts.append(f"fp32: min cosine {self.fp32_min_cosine:.6f} vs torch")
        if self.fp32_max_score_diff is not None:
            parts.append(f"fp32: scores within {self.fp32_max_score_diff:.1e} of torch")
        if self.int8_mean_cosine is not None:
            parts.append(f"int8: mean cosine {self.int8_mean_cosine:.4f} (min {self.int8_min_cosine:.4f}) vs fp32")
        if self.int8_max_score_diff is not None:
            parts.append(f"int8: scores within {self.int8_max_score_diff:.3f} of fp32")
        if self.int8_top_k_agreement is not None:
            parts.append(f"same top-{TOP_K} for {self.int8_top_k_agreement:.0%} of queries")
        if self.fp32_max_weight_diff is not None:
            parts.append(f"fp32: sparse weights within {self.fp32_max_weight_diff:.1e} of torch")
        if self.int8_top_k_overlap is not None:
            parts.append(f"int8: top-{SPARSE_TOP_K} overlap {self.int8_top_k_overlap:.3f} (min "
                         f"{self.int8_min_top_k_overlap:.3f}) vs torch")
        if self.int8_dot_spearman is not None:
            parts.append(f"int8: dot-product Spearman {self.int8_dot_spearman:.4f}, "
                         f"Pearson {self.int8_dot_pearson:.4f}")
        if self.fp32_min_image_cosine is not None:
            parts.append(f"fp32 images: min cosine {self.fp32_min_image_cosine:.6f} vs torch")
        if self.int8_mean_image_cosine is not None:
            parts.append(f"int8 images: mean cosine {self.int8_mean_image_cosine:.4f} (min "
                         f"{self.int8_min_image_cosine:.4f}) vs fp32")
        if self.int8_cross_modal_agreement is not None:
            parts.append(f"same image<->text top-{TOP_K} for {self.int8_cross_modal_agreement:.0%}")
        if self.fp32_min_token_cosine is not None:
            parts.append(f"fp32: min token cosine {self.fp32_min_token_cosine:.6f} vs torch")
        if self.int8_mean_token_cosine is not None:
            parts.append(f"int8: mean token cosine {self.int8_mean_token_cosine:.4f} (min "
                         f"{self.int8_min_token_cosine:.4f}) vs torch")
        if self.int8_maxsim_spearman is not None:
            parts.append(f"int8: MaxSim Spearman {self.int8_maxsim_spearman:.4f} vs torch")
        return "; ".join(parts)


def _floor(value: float, digits: int) -> str:
    """`value` rounded down: a quality figure quoted to buyers never claims more than was measured."""
    scale = 10 ** digits
    return f"{math.floor(value * scale) / scale:.{digits}f}"


def _ceil(difference: float) -> str:
    """A largest difference to two significant digits, rounded up: never quoted as smaller than it was."""
    if difference <= 0:
        return "0"
    exponent = math.floor(math.log10(difference)) - 1
    return f"{math.ceil(difference / 10 ** exponent) * 10 ** exponent:.2g}"


class GateFailed(Exception):
    """The export does not keep what the gate asks; the message holds the figures."""


def build_onnx(staged: Path, kind, quantize: str | None, gate: Gate, device: str = "auto") -> Quality:
    """Export `staged` (a model directory of `kind`) into its onnx/ folder and check it; returns the figures.

    Raises:
        model_handlers.errors.ModelDirectoryError: the kind or the model does not export (the message says why).
        GateFailed: an exported file does not keep the model's quality.
    """
    from model_handlers.errors import ModelDirectoryError
    from model_handlers.onnx_runtime import quantize_int8

    # the gate of the kind's main output: a combined gate when the kind answers all of its forms (BGE-M3), else the
    # first in _GATES it answers (its embeddings before rerank); a kind that reads images is checked on images too
    gate_of = next((gate for forms, gate in _COMBINED_GATES.items() if all(kind.answers(f) for f in forms)), None)
    gate_of = gate_of or next((gate for name, gate in _GATES.items() if kind.answers(name)), None)
    if gate_of is _embedding_gate and "image" in getattr(kind.model, "modalities", ()):
        gate_of = _multimodal_gate
    if kind.onnx_export is None or gate_of is None:
        raise ModelDirectoryError(f"kind {kind.name} ({kind.summary}) does not export to ONNX yet: build it with "
                                  "--backend torch")
    kind.onnx_export(staged, staged / FP32_FILE)
    if quantize is not None:
        graphs = kind.onnx_graphs or (lambda onnx_file: (onnx_file,))
        for fp32_graph, int8_graph in zip(graphs(FP32_FILE), graphs(INT8_FILE)):
            # the first feed-forward output in fp32: measured for text embeddings; BGE-M3's sparse head lost with it
            quantize_int8(staged / fp32_graph, staged / int8_graph, keep_first_projections=kind.name == "embedding")
    serving = INT8_FILE if quantize else FP32_FILE
    reference = _Runner(staged, "torch", None, device)
    fp32 = _Runner(staged, "onnx", FP32_FILE, device)
    int8 = _Runner(staged, "onnx", INT8_FILE, device) if quantize else None
    try:
        return gate_of(reference, fp32, int8, gate, serving)
    finally:
        for runner in (reference, fp32, int8):
            if runner is not None:
                runner.close()


class _Runner:
    """The staged model loaded by the server's own code on one backend (and ONNX file), behind its pipeline."""

    def __init__(self, model_dir: Path, backend: str, onnx_file: str | None, device: str):
        import dataclasses

        from model_handlers import HandlerOptions
        from model_handlers.loading import load_pipeline
        from model_handlers.serving_config import read_serving_config

        config = dataclasses.replace(read_serving_config(model_dir), backend=backend)
        if onnx_file is not None:  # the file to compare, whatever searchbox.json will finally name
            config = dataclasses.replace(config, onnx_file=onnx_file)
        self._handler = load_pipeline(model_dir, config, HandlerOptions(device=device))

    def embed(self, texts: list[str]) -> np.ndarray:
        from model_handlers.types import EmbedRequest, TextInput

        result = self._handler.run(EmbedRequest(inputs=tuple(TextInput(t) for t in texts)))
        return np.stack(result.vectors).astype(np.float64)

    def embed_images(self, uris: list[str]) -> np.ndarray:
        from model_handlers.types import EmbedRequest, ImageInput

        result = self._handler.run(EmbedRequest(inputs=tuple(ImageInput(uri) for uri in uris)))
        return np.stack(result.vectors).astype(np.float64)

    def sparse(self, texts: list[str]) -> np.ndarray:
        """Each text's weights, one per vocabulary entry (the entries the server answers, zeros elsewhere)."""
        from model_handlers.types import EmbedRequest, TextInput

        result = self._handler.run(EmbedRequest(inputs=tuple(TextInput(t) for t in texts), operation=SPARSE))
        model = self._handler.model
        dense = np.zeros((len(texts), getattr(model, "sparse_width", model.width)))
        for row, vector in zip(dense, result.vectors):
            row[vector.indices] = vector.values
        return dense

    def multi_vector(self, texts: list[str], input_type: str) -> list[np.ndarray]:
        """Each text's token vectors as the server answers them (one row per token), on the given side."""
        from model_handlers.types import EmbedRequest, TextInput

        result = self._handler.run(EmbedRequest(inputs=tuple(TextInput(t) for t in texts), operation=MULTI_VECTOR,
                                                input_type=input_type))
        return [np.asarray(vectors, dtype=np.float64) for vectors in result.vectors]

    def scores(self, query: str, documents: list[str]) -> np.ndarray:
        from model_handlers.types import RerankRequest, TextInput

        documents_in = tuple(TextInput(d) for d in documents)
        result = self._handler.run(RerankRequest(query=TextInput(query), documents=documents_in))
        scores = np.zeros(len(documents))
        for hit in result.hits:
            scores[hit.index] = hit.relevance_score
        return scores

    def close(self) -> None:
        self._handler.close()


def _embedding_gate(reference: _Runner, fp32: _Runner, int8: _Runner | None, gate: Gate, serving: str) -> Quality:
    texts = _quality_set.VALIDATION_TEXTS
    base = fp32.embed(texts)
    fp32_cos = _cosines(reference.embed(texts), base)
    figures = {"backend_file": serving, "fp32_min_cosine": round(float(fp32_cos.min()), 6)}
    if fp32_cos.min() < gate.fp32_min_cosine:
        raise GateFailed(f"the fp32 export drifts from the model: min cosine {fp32_cos.min():.6f} < "
                         f"{gate.fp32_min_cosine} on the validation texts")
    if int8 is None:
        return Quality(**figures)
    int8_cos = _cosines(base, int8.embed(texts))
    agreement = _neighbour_agreement(fp32, int8)
    figures.update(int8_min_cosine=round(float(int8_cos.min()), 4), int8_mean_cosine=round(float(int8_cos.mean()), 4),
                   int8_top_k_agreement=round(agreement, 3))
    problems = []
    if int8_cos.min() < gate.int8_min_cosine:
        worst = texts[int(int8_cos.argmin())]
        problems.append(f"min cosine {int8_cos.min():.4f} < {gate.int8_min_cosine} (on {worst[:60]!r})")
    if agreement < gate.int8_min_top_k_agreement:
        problems.append(f"same top-{TOP_K} neighbours for {agreement:.0%} of queries < "
                        f"{gate.int8_min_top_k_agreement:.0%}")
    if problems:
        raise GateFailed(f"int8 loses too much against fp32: {'; '.join(problems)} (mean cosine "
                         f"{int8_cos.mean():.4f}); build without --quantize to serve fp32")
    return Quality(**figures)


def _rerank_gate(reference: _Runner, fp32: _Runner, int8: _Runner | None, gate: Gate, serving: str) -> Quality:
    pairs = list(zip(_quality_set.QUERIES, _query_documents()))
    base = [fp32.scores(query, documents) for query, documents in pairs]
    fp32_diff = max(float(np.abs(reference.scores(q, d) - b).max()) for (q, d), b in zip(pairs, base))
    figures = {"backend_file": serving, "fp32_max_score_diff": float(f"{fp32_diff:.2e}")}
    if fp32_diff > gate.fp32_max_score_diff:
        raise GateFailed(f"the fp32 export drifts from the model: scores differ by up to {fp32_diff:.2e} > "
                         f"{gate.fp32_max_score_diff}")
    if int8 is None:
        return Quality(**figures)
    quantized = [int8.scores(query, documents) for query, documents in pairs]
    diff = max(float(np.abs(q - b).max()) for q, b in zip(quantized, base))
    agreement = float(np.mean([_top_k(q) == _top_k(b) for q, b in zip(quantized, base)]))
    figures.update(int8_max_score_diff=round(diff, 4), int8_top_k_agreement=round(agreement, 3))
    if diff > gate.int8_max_score_diff or agreement < gate.int8_min_top_k_agreement:
        raise GateFailed(f"int8 loses too much against fp32: scores differ by up to {diff:.4f} (at most "
                         f"{gate.int8_max_score_diff}), same top-{TOP_K} for {agreement:.0%} of queries (at least "
                         f"{gate.int8_min_top_k_agreement:.0%}); build without --quantize to serve fp32")
    return Quality(**figures)


def _sparse_gate(reference: _Runner, fp32: _Runner, int8: _Runner | None, gate: Gate, serving: str) -> Quality:
    texts, queries, passages = _quality_set.VALIDATION_TEXTS, _quality_set.QUERIES, _quality_set.PASSAGES
    expected = reference.sparse(texts)
    fp32_diff = float(np.abs(fp32.sparse(texts) - expected).max())
    figures = {"backend_file": serving, "fp32_max_weight_diff": float(f"{fp32_diff:.2e}")}
    if fp32_diff > gate.fp32_max_weight_diff:
        raise GateFailed(f"the fp32 export drifts from the model: sparse weights differ by up to {fp32_diff:.2e} > "
                         f"{gate.fp32_max_weight_diff}")
    if int8 is None:
        return Quality(**figures)
    overlaps = np.array([sparse_top_k_overlap(a, b) for a, b in zip(int8.sparse(texts), expected)])
    reference_dots = (reference.sparse(queries) @ reference.sparse(passages).T).ravel()
    int8_dots = (int8.sparse(queries) @ int8.sparse(passages).T).ravel()
    from scipy.stats import spearmanr  # scikit-learn's dependency, in the packaging extra

    spearman = float(spearmanr(int8_dots, reference_dots).statistic)  # ties (pairs sharing no entry: 0) ranked mean
    pearson = float(np.corrcoef(int8_dots, reference_dots)[0, 1])
    figures.update(int8_top_k_overlap=_round_down(overlaps.mean(), 4),
                   int8_min_top_k_overlap=_round_down(overlaps.min(), 4),
                   int8_dot_spearman=_round_down(spearman, 4), int8_dot_pearson=_round_down(pearson, 4))
    problems = []
    if overlaps.mean() < gate.int8_min_top_k_overlap:
        worst = texts[int(overlaps.argmin())]
        problems.append(f"top-{SPARSE_TOP_K} overlap {overlaps.mean():.3f} < {gate.int8_min_top_k_overlap} on average "
                        f"(min {overlaps.min():.3f}, on {worst[:60]!r})")
    if min(spearman, pearson) < gate.int8_min_dot_correlation:
        problems.append(f"query-passage dot products correlate at Spearman {spearman:.4f}, Pearson {pearson:.4f} < "
                        f"{gate.int8_min_dot_correlation}")
    if problems:
        raise GateFailed(f"int8 loses too much against the model on torch: {'; '.join(problems)}; build without "
                         "--quantize to serve fp32")
    return Quality(**figures)


def _multimodal_gate(reference: _Runner, fp32: _Runner, int8: _Runner | None, gate: Gate, serving: str) -> Quality:
    texts = _quality_set.VALIDATION_TEXTS
    captions, uris = zip(*_quality_set.validation_images())
    base_texts, base_images = fp32.embed(texts), fp32.embed_images(list(uris))
    fp32_text_cos = _cosines(reference.embed(texts), base_texts)
    fp32_image_cos = _cosines(reference.embed_images(list(uris)), base_images)
    figures = {"backend_file": serving, "fp32_min_cosine": round(float(fp32_text_cos.min()), 6),
               "fp32_min_image_cosine": round(float(fp32_image_cos.min()), 6)}
    if min(fp32_text_cos.min(), fp32_image_cos.min()) < gate.fp32_min_cosine:
        raise GateFailed(f"the fp32 export drifts from the model: min cosine {fp32_text_cos.min():.6f} on the "
                         f"validation texts, {fp32_image_cos.min():.6f} on the built-in images (at least "
                         f"{gate.fp32_min_cosine})")
    if int8 is None:
        return Quality(**figures)
    int8_texts, int8_images = int8.embed(texts), int8.embed_images(list(uris))
    text_cos, image_cos = _cosines(base_texts, int8_texts), _cosines(base_images, int8_images)
    # the texts an image's neighbours are found among: every caption and every validation text
    fp32_captions, int8_captions = fp32.embed(list(captions)), int8.embed(list(captions))
    agreement = _cross_modal_agreement(np.vstack([fp32_captions, base_texts]), base_images,
                                       np.vstack([int8_captions, int8_texts]), int8_images, len(captions))
    figures.update(int8_min_cosine=round(float(text_cos.min()), 4), int8_mean_cosine=round(float(text_cos.mean()), 4),
                   int8_min_image_cosine=round(float(image_cos.min()), 4),
                   int8_mean_image_cosine=round(float(image_cos.mean()), 4),
                   int8_cross_modal_agreement=round(agreement, 3))
    problems = []
    if text_cos.min() < gate.int8_min_cosine:
        problems.append(f"min text cosine {text_cos.min():.4f} < {gate.int8_min_cosine} (on "
                        f"{texts[int(text_cos.argmin())][:60]!r})")
    if image_cos.min() < gate.int8_min_image_cosine:
        problems.append(f"min image cosine {image_cos.min():.4f} < {gate.int8_min_image_cosine} (on "
                        f"{captions[int(image_cos.argmin())]!r})")
    if agreement < gate.int8_min_cross_modal_agreement:
        problems.append(f"same image<->text top-{TOP_K} neighbours for {agreement:.0%} < "
                        f"{gate.int8_min_cross_modal_agreement:.0%}")
    if problems:
        raise GateFailed(f"int8 loses too much against fp32: {'; '.join(problems)} (mean cosine {text_cos.mean():.4f} "
                         f"on texts, {image_cos.mean():.4f} on images); build without --quantize to serve fp32")
    return Quality(**figures)


def _cross_modal_agreement(fp32_texts: np.ndarray, fp32_images: np.ndarray, int8_texts: np.ndarray,
                           int8_images: np.ndarray, captions: int) -> float:
    """The share of images (top-k among all the texts) and captions (the first `captions` texts; top-k among the
    images) whose top-k neighbours in the other modality are the same set under both."""
    def unit(vectors):
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    fp32_scores = unit(fp32_images) @ unit(fp32_texts).T
    int8_scores = unit(int8_images) @ unit(int8_texts).T
    same = [_top_k(a) == _top_k(b) for a, b in zip(fp32_scores, int8_scores)]
    same += [_top_k(a) == _top_k(b) for a, b in zip(fp32_scores.T[:captions], int8_scores.T[:captions])]
    return float(np.mean(same))


def sparse_top_k_overlap(weights: np.ndarray, reference: np.ndarray, k: int = SPARSE_TOP_K) -> float:
    """The share of the reference's top-k entries (k: its entries above zero, when fewer) that `weights` also puts in
    its top-k; 1.0 when the reference has no entry above zero and neither has `weights`."""
    k = min(k, int((reference > 0).sum()))
    if k == 0:
        return float(not (weights > 0).any())
    top = set(np.argsort(-reference, kind="stable")[:k].tolist())
    return len(top & set(np.argsort(-weights, kind="stable")[:k].tolist())) / k


def _round_down(value: float, digits: int) -> float:
    """A figure the manifest records (and the listing quotes): never more than was measured."""
    return float(_floor(float(value), digits))


def _multi_vector_gate(reference: _Runner, fp32: _Runner, int8: _Runner | None, gate: Gate,
                       serving: str) -> Quality:
    """ColBERT token vectors, each file against the model on torch: the validation texts as documents and the retrieval
    queries as queries (markers and expansion included); int8 also keeps the order of MaxSim scores of every query
    against every passage."""
    sides = (("query", _quality_set.QUERIES), ("document", _quality_set.VALIDATION_TEXTS))
    expected = {side: reference.multi_vector(texts, side) for side, texts in sides}

    def token_cosines(runner: _Runner) -> np.ndarray:
        return np.concatenate([_cosines(a, b) for side, texts in sides
                               for a, b in zip(expected[side], runner.multi_vector(texts, side))])

    fp32_cos = token_cosines(fp32)
    figures = {"backend_file": serving, "fp32_min_token_cosine": _round_down(fp32_cos.min(), 6)}
    if fp32_cos.min() < gate.fp32_min_token_cosine:
        raise GateFailed(f"the fp32 export drifts from the model: min token cosine {fp32_cos.min():.6f} < "
                         f"{gate.fp32_min_token_cosine} on the validation texts")
    if int8 is None:
        return Quality(**figures)
    int8_cos = token_cosines(int8)
    from scipy.stats import spearmanr  # scikit-learn's dependency, in the packaging extra

    spearman = float(spearmanr(_maxsim(int8), _maxsim(reference)).statistic)
    figures.update(int8_mean_token_cosine=_round_down(int8_cos.mean(), 4),
                   int8_min_token_cosine=_round_down(int8_cos.min(), 4), int8_maxsim_spearman=_round_down(spearman, 4))
    problems = []
    if int8_cos.mean() < gate.int8_min_mean_token_cosine:
        problems.append(f"mean token cosine {int8_cos.mean():.4f} < {gate.int8_min_mean_token_cosine} (min "
                        f"{int8_cos.min():.4f})")
    if spearman < gate.int8_min_maxsim_spearman:
        problems.append(f"query-passage MaxSim scores correlate at Spearman {spearman:.4f} < "
                        f"{gate.int8_min_maxsim_spearman}")
    if problems:
        raise GateFailed(f"int8 loses too much against the model on torch: {'; '.join(problems)}; build without "
                         "--quantize to serve fp32")
    return Quality(**figures)


def _maxsim(runner: _Runner) -> np.ndarray:
    """Every retrieval query's late-interaction score against every passage (PyLate's colbert_scores: the sum over
    the query's token vectors of each one's best cosine among the passage's), flattened."""
    queries = [_unit_rows(q) for q in runner.multi_vector(_quality_set.QUERIES, "query")]
    passages = [_unit_rows(p) for p in runner.multi_vector(_quality_set.PASSAGES, "document")]
    return np.asarray([(q @ p.T).max(axis=1).sum() for q in queries for p in passages])


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def _m3_gate(reference: _Runner, fp32: _Runner, int8: _Runner | None, gate: Gate, serving: str) -> Quality:
    """BGE-M3's one graph answers three forms: each is held to its own gate (dense as embeddings, sparse as SPLADE,
    ColBERT as multi-vector), the figures of all three recorded."""
    figures = {}
    for form_gate in (_embedding_gate, _sparse_gate, _multi_vector_gate):
        figures.update(form_gate(reference, fp32, int8, gate, serving).as_dict())
    return Quality(**figures)


# How an export is checked against the model on torch: a kind answering every form of a combined gate gets that one;
# else the first gate (in this order) of an operation the kind answers is the one applied (an embedding model's, not
# its rerank's).
_COMBINED_GATES = {frozenset({EMBED, SPARSE, MULTI_VECTOR}): _m3_gate}
_GATES = {EMBED: _embedding_gate, SPARSE: _sparse_gate, MULTI_VECTOR: _multi_vector_gate, RERANK: _rerank_gate}


def _query_documents() -> list[list[str]]:
    """Each query's candidates: every passage (a reranker sees them all, as after a first-stage retrieval)."""
    return [list(_quality_set.PASSAGES) for _ in _quality_set.QUERIES]


def _neighbour_agreement(fp32: _Runner, int8: _Runner) -> float:
    """The share of queries whose top-k passages (as sets) are the same under both."""
    passages, queries = _quality_set.PASSAGES, _quality_set.QUERIES
    fp32_scores = fp32.embed(queries) @ fp32.embed(passages).T
    int8_scores = int8.embed(queries) @ int8.embed(passages).T
    same = [_top_k(a) == _top_k(b) for a, b in zip(fp32_scores, int8_scores)]
    return float(np.mean(same)) if same else math.nan


def _top_k(scores: np.ndarray) -> frozenset[int]:
    return frozenset(int(i) for i in np.argsort(-scores, kind="stable")[:TOP_K])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)
