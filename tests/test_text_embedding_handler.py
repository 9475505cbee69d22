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


def test_a_directory_loaded_again_in_one_process_is_calibrated_once(tmp_path, minilm_dir):
    """The warm-up runs one request, then calibration a full pass at each length (MiniLM: 8, 32, 128 and 256 tokens,
    1024 a pass), each cut in two for the two passes a CPU runs at once. Loading the same files again with the same
    pass budget runs only the request; a copy with its times kept is the same files; one whose config changed, or
    another pass budget, calibrates again."""
    copy = tmp_path / "copy"
    shutil.copytree(minilm_dir, copy)  # copy2: modification times kept
    options = HandlerOptions(device="cpu", torch_threads=2,
                             max_batch_tokens=1000 + os.getpid() % 7)  # a budget no other test loads
    passes = []
    for model_dir, budget in ((minilm_dir, options), (copy, options), (minilm_dir, options)):
        handler = load_handler(model_dir, budget)
        try:
            handler.warm_up()
            passes.append(handler.forward_passes)
        finally:
            handler.close()
    assert passes[0] == 1 + 4 * 2 and passes[1:] == [1, 1]
    changed = tmp_path / "changed"
    shutil.copytree(minilm_dir, changed)
    (changed / "config.json").write_text((changed / "config.json").read_text() + "\n")
    other_budget = HandlerOptions(device="cpu", torch_threads=2, max_batch_tokens=options.max_batch_tokens + 1)
    for model_dir, budget in ((changed, options), (minilm_dir, other_budget)):
        handler = load_handler(model_dir, budget)
        try:
            handler.warm_up()
            assert handler.forward_passes == 1 + 4 * 2, model_dir
        finally:
            handler.close()
