"""What README's settings table promises an operator, each setting exercised on the real model, in-process.

The batch timeout (and SAGEMAKER_BATCH's), the per-request caps (inputs, rerank windows), the token bound of one
forward pass, and the name answered in `model`. Expected figures come from the tokenizer, not from the server.
"""

from __future__ import annotations

import json
import math
import shutil
import time

import pytest

from helpers import assert_error

from container.settings import Settings

pytestmark = pytest.mark.app

LONG = "The quick brown fox jumps over the lazy dog near the river bank. " * 12
TEXTS = ["operators tune the server with environment variables"] * 8


def csv_of(texts: list[str]) -> str:
    return "".join(f"{i},{text}\n" for i, text in enumerate(texts))


@pytest.fixture
def started(serving_factory):
    """Models served in this process, all closed after the test: (app, its runtime)."""

    def start(model_dir, env):
        app = serving_factory(model_dir, env)
        return app, app.runtime

    return start


def test_batch_transform_settings_choose_each_requests_budget():
    """README: 600 s for a batch body and for every request of a job with SAGEMAKER_BATCH=true, else real-time's."""
    plain = Settings.from_env({})
    assert (plain.timeout_s(batch_body=False), plain.timeout_s(batch_body=True)) == (plain.request_timeout_s, 600)
    job = Settings.from_env({"SAGEMAKER_BATCH": "true"})
    assert job.timeout_s(batch_body=False) == job.timeout_s(batch_body=True) == 600
    tuned = Settings.from_env({"SAGEMAKER_BATCH": "true", "SEARCHBOX_BATCH_TIMEOUT_S": "90"})
    assert tuned.timeout_s(batch_body=False) == 90


def budget_for_a_quarter(app, texts: list[str]) -> str:
    """A budget of a quarter of what `texts` take on this machine (measured, so the test holds on a CPU or a GPU):
    room for the warm-up's short text, not for these texts (refused at once, saying how to split)."""
    took = []
    for _ in range(2):
        sent = time.monotonic()
        assert app.post("/v1/embeddings", {"input": texts}).status_code == 200
        took.append(time.monotonic() - sent)
    return f"{min(took) / 4:.4f}"


def test_a_batch_body_gets_the_batch_timeout_and_a_batch_job_gives_it_to_every_request(started, minilm_dir, app):
    # 16 texts: a budget of about 0.1 s on a 2-core CPU, far above the milliseconds spent before admission (the margin
    # is the quarter: the texts need four budgets, however fast this machine is)
    texts = [LONG] * 16
    tight = budget_for_a_quarter(app, texts)
    # real-time's budget too small for the texts: JSON is refused, a CSV body (batch timeout, 600 s) is answered
    real_time, _ = started(minilm_dir, {"SEARCHBOX_REQUEST_TIMEOUT_S": tight})
    assert_error(real_time.post("/v1/embeddings", {"input": texts}), 413, "REQUEST_TOO_LARGE", "split")
    answered = real_time.post("/invocations", data=csv_of(texts), headers={"Content-Type": "text/csv"})
    assert answered.status_code == 200 and len(answered.json()["data"]) == len(texts)
    # SAGEMAKER_BATCH=true: every request of the job has the batch timeout, JSON too
    job, _ = started(minilm_dir, {"SEARCHBOX_REQUEST_TIMEOUT_S": tight, "SAGEMAKER_BATCH": "true"})
    assert job.post("/v1/embeddings", {"input": texts}).status_code == 200
    # and SEARCHBOX_BATCH_TIMEOUT_S is that budget: too small, the CSV body is refused, JSON still answered
    tight_batch, _ = started(minilm_dir, {"SEARCHBOX_BATCH_TIMEOUT_S": tight})
    refused = tight_batch.post("/invocations", data=csv_of(texts), headers={"Content-Type": "text/csv"})
    assert_error(refused, 413, "REQUEST_TOO_LARGE", "split")
    assert tight_batch.post("/v1/embeddings", {"input": texts}).status_code == 200


def test_max_inputs_caps_inputs_and_documents(started, minilm_dir):
    app, runtime = started(minilm_dir, {"SEARCHBOX_MAX_INPUTS": "3"})
    assert app.post("/v1/embeddings", {"input": ["a", "b", "c"]}).status_code == 200
    passes = runtime.handler.forward_passes
    assert_error(app.post("/v1/embeddings", {"input": ["a", "b", "c", "d"]}), 400, "TOO_MANY_INPUTS", "4", "3")
    assert_error(app.post("/v1/rerank", {"query": "q", "documents": ["a", "b", "c", "d"]}), 400, "TOO_MANY_INPUTS",
                 "documents")
    assert runtime.handler.forward_passes == passes  # refused before any work
    assert app.post("/v1/rerank", {"query": "q", "documents": ["a", "b", "c"]}).status_code == 200


def test_a_csv_body_is_a_batch_sent_to_the_model_in_requests_of_max_inputs(started, minilm_dir, monkeypatch):
    app, runtime = started(minilm_dir, {"SEARCHBOX_MAX_INPUTS": "3"})
    sizes = []
    run = runtime.handler.run
    monkeypatch.setattr(runtime.handler, "run", lambda request, *args, **kwargs: sizes.append(len(request.inputs))
                        or run(request, *args, **kwargs))  # observed, not replaced: the real handler answers
    answer = app.post("/invocations", data=b"1,a\n2,b\n3,c\n4,d\n", headers={"Content-Type": "text/csv"})
    assert answer.status_code == 200, answer.text
    assert [item["id"] for item in answer.json()["data"]] == ["1", "2", "3", "4"] and sizes == [3, 1]


def test_max_rerank_windows_caps_the_model_inputs_of_one_rerank(started, minilm_dir, reference_model):
    app, runtime = started(minilm_dir, {"SEARCHBOX_MAX_RERANK_WINDOWS": "3"})
    room = reference_model.max_seq_length - 2  # [CLS] and [SEP]
    # one document the tokenizer cuts into more than 3 windows of `room` tokens (they overlap: more, not fewer)
    long_document = "word " * (3 * room + 1)
    assert len(reference_model.tokenizer(long_document, add_special_tokens=False)["input_ids"]) > 3 * room
    passes = runtime.handler.forward_passes
    assert_error(app.post("/v1/rerank", {"query": "q", "documents": [long_document]}), 413, "REQUEST_TOO_LARGE",
                 "3 windows")
    assert_error(app.post("/v1/rerank", {"query": "q", "documents": ["a", "b", "c", "d"]}), 413,
                 "REQUEST_TOO_LARGE", "3 windows")
    assert runtime.handler.forward_passes == passes
    assert app.post("/v1/rerank", {"query": "q", "documents": ["a", "b", "c"]}).status_code == 200


def test_max_batch_tokens_bounds_each_forward_pass(started, minilm_dir, reference_model):
    bound = 64
    app, runtime = started(minilm_dir, {"SEARCHBOX_MAX_BATCH_TOKENS": str(bound), "SEARCHBOX_TORCH_THREADS": "2"})
    length = len(reference_model.tokenizer(TEXTS[0])["input_ids"])
    per_pass = bound // length
    assert 2 <= math.ceil(len(TEXTS) / per_pass) < len(TEXTS)
    passes = runtime.handler.forward_passes
    assert app.post("/v1/embeddings", {"input": TEXTS}).status_code == 200
    assert runtime.handler.forward_passes - passes == math.ceil(len(TEXTS) / per_pass)
    # the default bound would take the same request in one pass: it is cut in two for the two passes a CPU runs at once
    default, runtime = started(minilm_dir, {"SEARCHBOX_TORCH_THREADS": "2"})
    passes = runtime.handler.forward_passes
    assert default.post("/v1/embeddings", {"input": TEXTS}).status_code == 200
    assert runtime.handler.forward_passes - passes == 2


def test_the_served_model_name_is_answered_in_model(started, minilm_dir, tmp_path):
    app, _ = started(minilm_dir, {"SEARCHBOX_MODEL_NAME": "operators-name"})
    assert app.post("/v1/embeddings", {"input": ["x"]}).json()["model"] == "operators-name"
    assert app.post("/v1/rerank", {"query": "q", "documents": ["a"]}).json()["model"] == "operators-name"
    assert [model["id"] for model in app.get("/v1/models").json()["data"]] == ["operators-name"]
    # searchbox.json's served_model_name wins over the setting (README: "when searchbox.json gives none")
    named = tmp_path / "named"
    shutil.copytree(minilm_dir, named)
    (named / "searchbox.json").write_text(json.dumps({"served_model_name": "artifacts-name"}))
    app, _ = started(named, {"SEARCHBOX_MODEL_NAME": "operators-name"})
    assert app.post("/v1/embeddings", {"input": ["x"]}).json()["model"] == "artifacts-name"
    # neither: the directory's name
    plain = tmp_path / "a-plain-directory"
    shutil.copytree(minilm_dir, plain)
    app, _ = started(plain, {})
    assert app.post("/v1/embeddings", {"input": ["x"]}).json()["model"] == "a-plain-directory"


@pytest.mark.parametrize("model,threads,per_pass", [
    ("minilm_dir", 4, 2),  # sentence-transformers' modules: two passes at once, each on half
    ("reranker_dir", 4, 2),  # transformers' classifier: the same
    ("splade_dir", 5, 2),  # transformers' masked-LM: the same, the odd thread left over
    ("clip_dir", 3, 3),  # one pass at a time, on all of them
])
def test_every_torch_kind_runs_its_passes_on_the_operators_threads(request, model, threads, per_pass):
    """SEARCHBOX_TORCH_THREADS reaches torch whatever the kind (torch's setting is one per process: put back)."""
    import torch

    from model_handlers import HandlerOptions, load_handler

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        handler = load_handler(request.getfixturevalue(model), HandlerOptions(device="cpu", torch_threads=threads))
        handler.close()
        assert torch.get_num_threads() == per_pass
    finally:
        torch.set_num_threads(before)
