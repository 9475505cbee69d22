"""Each tiny model built once per test session, read-only, for every test file (tests/conftest.py imports these).

A test that changes a model copies it first. Using any of them makes a test at least `app` (tests/tiers.py);
`colbert` makes its reference in a venv of its own, a real process: `server`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tiers import implies


@pytest.fixture(scope="session")
@implies("app")
def reranker_dir(tmp_path_factory, minilm_dir) -> Path:
    """A one-label BERT cross-encoder over the MiniLM weights (tests/models/reranker.py)."""
    from models.reranker import make_reranker

    return make_reranker(tmp_path_factory.mktemp("models") / "tiny-reranker", minilm_dir)


@pytest.fixture(scope="session")
@implies("app")
def clip_dir(tmp_path_factory) -> Path:
    """The tiny CLIP (examples/tiny_clip.py)."""
    from models.clip import make_clip

    return make_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="session")
@implies("app")
def splade_dir(tmp_path_factory, minilm_dir) -> Path:
    """The tiny SPLADE (random MLM head over MiniLM, saved as a SparseEncoder: tests/models/sparse.py)."""
    from models.sparse import make_splade

    return make_splade(tmp_path_factory.mktemp("models") / "tiny-splade", minilm_dir)


@pytest.fixture(scope="session")
@implies("app")
def splade_encoder(splade_dir):
    """sentence-transformers' SparseEncoder on it: the sparse kinds' reference."""
    from sentence_transformers import SparseEncoder

    return SparseEncoder(str(splade_dir), device="cpu")


@pytest.fixture(scope="session")
@implies("app")
def bge_m3_dir(tmp_path_factory, minilm_dir) -> Path:
    """The tiny BGE-M3 (the embedded encoder with seeded heads saved as .pt, as FlagEmbedding does:
    tests/models/bge_m3.py); serving it needs SEARCHBOX_ALLOW_PICKLE=1."""
    from models.bge_m3 import make_model

    return make_model(tmp_path_factory.mktemp("models") / "tiny-bge-m3", minilm_dir)


@pytest.fixture(scope="session")
@implies("app")
def bge_m3_safetensors_dir(tmp_path_factory, bge_m3_dir) -> Path:
    """The same BGE-M3 with its heads as safetensors (what an artifact ships): no pickle to opt into."""
    import shutil

    import torch
    from safetensors.torch import save_file

    target = shutil.copytree(bge_m3_dir, tmp_path_factory.mktemp("models") / "tiny-bge-m3-safetensors")
    for head in ("colbert_linear", "sparse_linear"):
        save_file(torch.load(str(target / f"{head}.pt"), weights_only=True), str(target / f"{head}.safetensors"))
        (target / f"{head}.pt").unlink()
    return target


@pytest.fixture(scope="session")
@implies("app")
def jina_reranker_dir(tmp_path_factory, minilm_dir) -> Path:
    """jina-reranker-v2's layout, remote code and all (tests/models/jina.py)."""
    from models import jina

    return jina.reranker(tmp_path_factory.mktemp("models") / "jina-reranker-v2", minilm_dir)


@pytest.fixture(scope="session")
@implies("app")
def jina_colbert_dir(tmp_path_factory, minilm_dir) -> Path:
    """jina-colbert-v2's layout, remote code and all (tests/models/jina.py)."""
    from models import jina

    return jina.colbert(tmp_path_factory.mktemp("models") / "jina-colbert-v2", minilm_dir)


@pytest.fixture(scope="session")
@implies("app")
def jina_v3_dir(tmp_path_factory, minilm_dir) -> Path:
    """A jina-embeddings-v3-style checkpoint in v3's original tensor layout (tests/models/jina_v3.py)."""
    from models.jina_v3 import build_v3

    return build_v3(tmp_path_factory.mktemp("models") / "tiny-v3", minilm_dir)


@pytest.fixture(scope="session")
@implies("app")
def jina_reranker_v3_dir(tmp_path_factory) -> Path:
    """A jina-reranker-v3-style listwise checkpoint, its code as `modeling.py` (tests/models/jina_reranker_v3.py)."""
    from models.jina_reranker_v3 import build

    return build(tmp_path_factory.mktemp("models") / "tiny-jina-reranker-v3")


@pytest.fixture(scope="session")
@implies("server")
def colbert(tmp_path_factory, minilm_dir):
    """Small ColBERTs in three layouts and PyLate 1.6.0's token vectors and scores on them (tests/models/colbert.py).

    Without PyPI the reference venv cannot be made: the tests that need it fail, saying so (never a silent skip).
    """
    from models.colbert import make_reference
    from reference_env import ReferenceUnavailable

    try:
        return make_reference(tmp_path_factory.mktemp("colbert"), minilm_dir)
    except ReferenceUnavailable as exc:
        pytest.fail(f"the ColBERT reference (PyLate 1.6.0 in its own venv) cannot be made: {exc}", pytrace=False)


@pytest.fixture(scope="session")
@implies("app")
def jina_v4_dir(tmp_path_factory) -> Path:
    """The tiny jina-embeddings-v4-shaped embedder (tests/models/jina_v4.py)."""
    from models.jina_v4 import make_v4

    return make_v4(tmp_path_factory.mktemp("models") / "tiny-jina-embeddings-v4")


@pytest.fixture(scope="session")
@implies("app")
def generative_reranker_dir(tmp_path_factory) -> Path:
    """The tiny Qwen3-Reranker-shaped generative reranker (tests/models/generative_reranker.py)."""
    from models.generative_reranker import make_generative_reranker

    return make_generative_reranker(tmp_path_factory.mktemp("models") / "tiny-generative-reranker")


@pytest.fixture(scope="session")
@implies("app")
def jina_m0_dir(tmp_path_factory) -> Path:
    """The tiny jina-reranker-m0-shaped vision-language reranker (tests/models/jina_vl.py)."""
    from models.jina_vl import make_m0

    return make_m0(tmp_path_factory.mktemp("models") / "tiny-jina-m0")


@pytest.fixture(scope="session")
@implies("app")
def code_embeddings_dir(tmp_path_factory) -> Path:
    """The tiny jina-code-embeddings-shaped decoder embedder (tests/models/code_embeddings.py)."""
    from models.code_embeddings import make_code_embeddings

    return make_code_embeddings(tmp_path_factory.mktemp("models") / "tiny-code-embeddings")


@pytest.fixture(scope="session")
@implies("app")
def embedding_gemma_dir(tmp_path_factory) -> Path:
    """The tiny EmbeddingGemma-shaped bidirectional decoder with Dense projections (tests/models/embedding_gemma.py)."""
    from models.embedding_gemma import make_embedding_gemma

    return make_embedding_gemma(tmp_path_factory.mktemp("models") / "tiny-embedding-gemma")


@pytest.fixture(scope="session")
@implies("app")
def jina_v5_text_dir(tmp_path_factory) -> Path:
    """The tiny jina-embeddings-v5-text-small-shaped decoder with four task adapters (tests/models/jina_v5_text.py)."""
    from models.jina_v5_text import make_jina_v5_text

    return make_jina_v5_text(tmp_path_factory.mktemp("models") / "tiny-jina-v5-text")
