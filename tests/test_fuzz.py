"""Property-based fuzzing of every route, content type and model kind: whatever arrives, the answer is a 2xx in
the route's format or the contract's JSON error, never a 500, never a stack trace (tests/fuzz_strategies.py).

Through `create_app` and Flask's test client on real models: the embedded MiniLM (text embeddings), a
cross-encoder, a tiny CLIP (images), a tiny ColBERT (multi-vector), a tiny SPLADE (sparse) and a tiny BGE-M3 (all
three forms), so every operation meets a model that serves it and models that do not. `make test` runs a quick slice
per kind; `make soak` a long one (SEARCHBOX_FUZZ_EXAMPLES) and the same bodies against real servers.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings

import fuzz_strategies
from helpers import serving

EXAMPLES = int(os.environ.get("SEARCHBOX_FUZZ_EXAMPLES", "150"))
# The ColBERT is the one PyLate makes in its own venv (conftest's colbert): a process, so the server tier.
KINDS = ["text", "reranker", "clip", pytest.param("colbert", marks=pytest.mark.server), "sparse", "bge-m3"]


@pytest.fixture(scope="module", params=KINDS)
def served(request, client, tmp_path_factory, minilm_dir):
    """Flask's test client on a model of each kind."""
    if request.param == "text":
        yield client
        return
    if request.param == "reranker":
        model_dir = request.getfixturevalue("reranker_dir")
    elif request.param == "colbert":
        model_dir = request.getfixturevalue("colbert").model_dir("pylate")
    elif request.param == "clip":
        model_dir = request.getfixturevalue("clip_dir")
    elif request.param == "bge-m3":
        model_dir = request.getfixturevalue("bge_m3_dir")
    else:
        model_dir = request.getfixturevalue("splade_dir")
    with serving(model_dir, {"SEARCHBOX_ALLOW_PICKLE": "1"}) as app:  # BGE-M3's heads as FlagEmbedding saves them
        yield app._client


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(sent=fuzz_strategies.requests)
def test_every_answer_is_the_routes_format_or_the_contracts_error(served, sent):
    response = served.open(sent.path, method=sent.method, data=sent.body, content_type=sent.content_type or None,
                           headers=sent.headers)
    problem = fuzz_strategies.broken_rule(response.status_code, response.headers.get("X-Request-Id"),
                                          response.mimetype, response.data)
    assert problem is None, (sent, problem)
