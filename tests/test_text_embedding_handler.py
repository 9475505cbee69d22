"""The text embedding handler in-process, on the real embedded model (no HTTP)."""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import safetensors.torch
import torch

from model_handlers import HandlerOptions, load_handler
from model_handlers.types import EmbedRequest, TextInput

pytestmark = pytest.mark.app


@pytest.fixture(scope="module")
def handler(runtime):
    """The embedded model loaded and warmed up as the worker does (the session's, shared with the app tests)."""
    return runtime.handler


def test_32_one_sentence_callers_cost_a_handful_of_forward_passes(handler, reference_model):
    texts = [f"one sentence from caller {i}" for i in range(32)]
    barrier = threading.Barrier(32)
    before = handler.forward_passes

    def call(i):
        barrier.wait()
        return handler.run(EmbedRequest(inputs=(TextInput(texts[i]),)))

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(call, range(32)))
    passes = handler.forward_passes - before
    assert passes <= 8, f"32 callers took {passes} forward passes"
    expected = reference_model.encode(texts)
    for i, result in enumerate(results):
        # the whole vector, length included: a dot product alone passes a scaled or partly wrong vector
        np.testing.assert_allclose(result.vectors[0], expected[i], atol=1e-4, rtol=0)


def test_pickled_weights_load_when_the_operator_opts_in(tmp_path, minilm_dir, reference_model):
    model_dir = tmp_path / "pickled"
    shutil.copytree(minilm_dir, model_dir)
    torch.save(safetensors.torch.load_file(str(model_dir / "model.safetensors")), model_dir / "pytorch_model.bin")
    os.remove(model_dir / "model.safetensors")
    pickled = load_handler(model_dir, HandlerOptions(allow_pickle=True))
    try:
        vector = pickled.run(EmbedRequest(inputs=(TextInput("hello"),))).vectors[0]
    finally:
        pickled.close()
    np.testing.assert_allclose(vector, reference_model.encode(["hello"])[0], atol=1e-5)
