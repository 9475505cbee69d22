"""jina-embeddings-v5-text: one base decoder (Qwen3) with a PEFT LoRA adapter per task (`adapters/<task>/`), the task
selecting the adapter and the side (`input_type`) the prompt, per row, on the tiny checkpoint of
tests/models/jina_v5_text.py.

The reference is what the model's own `encode(texts, task=..., prompt_name=...)` computes: the base model with THAT
task's adapter applied by peft (`PeftModel.from_pretrained`), then sentence-transformers' own prompt, last-token
pooling (the checkpoint's tokenizer pads on the left) and normalisation (`SentenceTransformer.encode`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_error, cosine, serving

pytestmark = pytest.mark.app

TEXTS = ["Berlin is the capital of Germany.", "how do rotary position embeddings work",
         "A longer passage about search engines, retrieval, ranking and the people who build them."]
# the published model card's tasks (written out, not imported from the builder)
TASKS = ("retrieval", "text-matching", "classification", "clustering")
SIDES = ("query", "document")


def model_encode(model_dir: Path, task: str | None, side: str | None, texts=TEXTS) -> np.ndarray:
    """`encode(texts, task=task, prompt_name=side)`: the base model with the task's adapter applied by peft, pooled
    and normalised by sentence-transformers as the checkpoint's modules say."""
    from peft import PeftModel
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    if task is not None:
        transformer = st[0]
        transformer.model = PeftModel.from_pretrained(transformer.model, str(model_dir / "adapters" / task)).eval()
    return st.encode(texts, prompt_name=side, normalize_embeddings=True)


@pytest.fixture(scope="module")
def reference(jina_v5_text_dir) -> dict:
    expected = {(task, side): model_encode(jina_v5_text_dir, task, side) for task in TASKS for side in SIDES}
    expected[(None, None)] = model_encode(jina_v5_text_dir, None, None)
    return expected


@pytest.fixture(scope="module")
def app(jina_v5_text_dir):
    assert "SEARCHBOX_TRUST_REMOTE_CODE" not in os.environ
    with serving(jina_v5_text_dir) as served:
        yield served


def vectors(app, body: dict, path: str = "/v1/embeddings") -> list[list[float]]:
    response = app.post(path, body)
    assert response.status_code == 200, response.text
    return [item["embedding"] for item in response.json()["data"]]


def assert_same(served, expected):
    assert len(served) == len(expected)
    for vector, reference_vector in zip(served, expected):
        assert cosine(vector, reference_vector) >= 0.9999
        assert abs(np.linalg.norm(vector) - np.linalg.norm(reference_vector)) < 1e-4


def test_the_checkpoint_is_a_meaningful_test(jina_v5_text_dir, reference):
    """Every task's adapter moves the vectors away from the base model's and from every other task's, and the two
    prompts differ in effect, so that serving the wrong adapter or prompt for a row fails the tests below."""
    from sentence_transformers import SentenceTransformer

    tokenizer = SentenceTransformer(str(jina_v5_text_dir), device="cpu", local_files_only=True).tokenizer
    padded = tokenizer(["a", "a much longer text"], padding=True)
    # left padding, and every text ends in <|endoftext|>, the pad token: the reference pools that token
    assert tokenizer.padding_side == "left" and padded["attention_mask"][0][0] == 0
    assert padded["input_ids"][0][-1] == tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    base_query = model_encode(jina_v5_text_dir, None, "query")
    for task in TASKS:
        assert max(cosine(a, b) for a, b in zip(reference[(task, "query")], base_query)) < 0.99
        assert max(cosine(a, b) for a, b in zip(reference[(task, "query")], reference[(task, "document")])) < 0.999
        for other in TASKS:
            if other != task:
                assert max(cosine(a, b) for a, b in zip(reference[(task, "query")], reference[(other, "query")])) < 0.99


@pytest.mark.parametrize("task", TASKS)
def test_every_task_and_side_equals_the_models_own_encode(app, reference, task):
    for side in SIDES:
        assert_same(vectors(app, {"input": TEXTS, "task": task, "input_type": side}), reference[(task, side)])
    # the task with its side, as Jina's API names them
    assert_same(vectors(app, {"input": TEXTS, "task": f"{task}.query"}), reference[(task, "query")])
    assert_same(vectors(app, {"input": TEXTS, "task": f"{task}.passage"}), reference[(task, "document")])


def test_the_generic_retrieval_tasks_and_input_type_alone_are_the_retrieval_adapter(app, reference):
    assert_same(vectors(app, {"input": TEXTS, "task": "retrieval.query"}), reference[("retrieval", "query")])
    assert_same(vectors(app, {"input": TEXTS, "task": "retrieval.passage"}), reference[("retrieval", "document")])
    assert_same(vectors(app, {"input": TEXTS, "input_type": "query"}), reference[("retrieval", "query")])
    assert_same(vectors(app, {"input": TEXTS, "input_type": "document"}), reference[("retrieval", "document")])


def test_no_task_is_the_base_model(app, reference):
    """As on jina-embeddings-v3: a request without a task (nor an input_type) embeds with the base model, no prompt."""
    assert_same(vectors(app, {"input": TEXTS}), reference[(None, None)])


def test_rerank_scores_are_the_retrieval_adapters_cosines(app, reference):
    """Rerank embeds the query and the documents as retrieval.query and retrieval.passage: the retrieval adapter with
    each side's prompt."""
    query = reference[("retrieval", "query")][1]
    documents = reference[("retrieval", "document")]
    response = app.post("/v1/rerank", {"query": TEXTS[1], "documents": TEXTS})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert sorted(r["index"] for r in results) == list(range(len(TEXTS)))
    for result in results:
        assert abs(result["relevance_score"] - cosine(query, documents[result["index"]])) < 1e-4


@pytest.mark.parametrize("task, side", [("clustering", "query"), ("text-matching", "document")])
def test_the_sagemaker_envelope_takes_the_task_and_side(app, reference, task, side):
    answer = app.post("/invocations", {"data": [{"text": text} for text in TEXTS],
                                       "parameters": {"task": task, "input_type": side}})
    assert answer.status_code == 200, answer.text
    assert_same([item["embedding"] for item in answer.json()["data"]], reference[(task, side)])
    answer = app.post("/invocations", {"data": [{"text": text} for text in TEXTS],
                                       "parameters": {"task": f"{task}.{'passage' if side == 'document' else side}"}})
    assert answer.status_code == 200, answer.text
    assert_same([item["embedding"] for item in answer.json()["data"]], reference[(task, side)])


def test_batch_transform_takes_the_jobs_input_type_and_each_lines_task(jina_v5_text_dir, reference):
    """CSV rows carry no task: the job's input_type picks the retrieval adapter and that side's prompt; JSON Lines
    name a task and side per line."""
    with serving(jina_v5_text_dir, {"SEARCHBOX_DEFAULT_INPUT_TYPE": "query"}) as app:
        rows = "".join(f'"{i}","{text}"\n' for i, text in enumerate(TEXTS))
        response = app.post("/invocations", data=rows, headers={"Content-Type": "text/csv"})
        assert response.status_code == 200, response.text
        assert_same([item["embedding"] for item in json.loads(response.text)["data"]],
                    reference[("retrieval", "query")])
        asks = [("clustering", "document"), ("text-matching", "query"), ("classification", "document")]
        lines = "\n".join(json.dumps({"input": [text], "task": task, "input_type": side})
                          for text, (task, side) in zip(TEXTS, asks)) + "\n"
        response = app.post("/invocations", data=lines, headers={"Content-Type": "application/jsonlines"})
        assert response.status_code == 200, response.text
        served = [json.loads(line)["data"][0]["embedding"] for line in response.text.splitlines()]
        assert_same(served, [reference[ask][index] for index, ask in enumerate(asks)])


def test_one_forward_pass_mixes_every_task_and_side(jina_v5_text_dir, reference):
    """Rows of all four adapters, both prompts and the base model in ONE pass, each as the model computes it alone."""
    from model_handlers import HandlerOptions, load_handler
    from model_handlers.types import EmbedRequest, TextInput

    asks = [(task, side) for task in TASKS for side in SIDES] + [(None, None)]
    handler = load_handler(jina_v5_text_dir, HandlerOptions(device="cpu"))
    try:
        model = handler.model
        items = []
        for task, side in asks:
            request = EmbedRequest(inputs=tuple(TextInput(t) for t in TEXTS), task=task, input_type=side)
            items.extend(model.prepare_embed(request).items)
        assert len({item.group for item in items}) == 1  # nothing keeps them apart
        outputs = model.forward(items)
    finally:
        handler.close()
    for index, ask in enumerate(asks):
        rows = [output[0] for output in outputs[index * len(TEXTS):(index + 1) * len(TEXTS)]]
        # forward answers pooled rows; the operation normalises
        assert_same([row / np.linalg.norm(row) for row in rows], reference[ask])


def test_concurrent_requests_of_every_task_share_passes_and_match(app, reference):
    asks = [(task, side) for task in TASKS for side in SIDES]
    handler = app.runtime.handler
    before = handler.forward_passes
    results, errors = {}, []
    start = threading.Barrier(len(asks))

    def call(ask):
        try:
            start.wait()
            results[ask] = vectors(app, {"input": TEXTS * 4, "task": ask[0], "input_type": ask[1]})
        except BaseException as exc:  # recorded, asserted in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(ask,)) for ask in asks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for ask in asks:
        assert_same(results[ask], list(reference[ask]) * 4)
    # 8 requests of 12 inputs, 8 adapter/prompt pairs: packed together, fewer passes than one per request
    assert handler.forward_passes - before < len(asks)


@pytest.mark.parametrize("body, mentions", [
    ({"task": "separation"}, ["no task 'separation'", "classification, clustering, retrieval, text-matching"]),
    ({"task": "summarization", "input_type": "query"}, ["no task 'summarization'", "retrieval"]),
    ({"task": "text-matching"}, ["task text-matching", "`input_type` query or document"]),
])
def test_an_unknown_task_or_a_missing_side_is_refused_naming_the_tasks(app, body, mentions):
    assert_error(app.post("/v1/embeddings", {"input": TEXTS, **body}), 422, "UNKNOWN_TASK", *mentions)


@pytest.mark.parametrize("dimensions", [8, 16])
def test_matryoshka_dimensions_cut_and_renormalise(app, reference, dimensions):
    full = reference[("classification", "document")]
    cut = vectors(app, {"input": TEXTS, "task": "classification", "input_type": "document",
                        "dimensions": dimensions})
    for vector, whole in zip(cut, full):
        assert len(vector) == dimensions
        np.testing.assert_allclose(vector, whole[:dimensions] / np.linalg.norm(whole[:dimensions]), atol=2e-5)


def test_the_listing_says_which_adapter_each_task_and_side_selects(app):
    models = app.get("/v1/models")
    assert models.status_code == 200, models.text
    card = models.json()["data"][0]
    assert card["unknown_task"] == "refused"
    assert card["task_adapters"] == {f"{task}_{side}": task for task in TASKS for side in SIDES}
    assert sorted((a["name"], a["built_in"], a["loaded"]) for a in card["adapters"]) == \
        sorted((task, True, True) for task in TASKS)


@pytest.mark.server  # a fresh Python process
def test_no_code_from_the_model_directory_runs(jina_v5_text_dir):
    """In a fresh process without SEARCHBOX_TRUST_REMOTE_CODE: loading the checkpoint and embedding with every task
    imports nothing from its directory and no remote module (transformers' own Qwen3 classes and peft do the work)."""
    script = textwrap.dedent(f"""
        import sys
        from model_handlers import HandlerOptions, load_handler
        from model_handlers.types import EmbedRequest, TextInput
        handler = load_handler({str(jina_v5_text_dir)!r}, HandlerOptions(device="cpu"))
        for task in {TASKS!r}:
            handler.run(EmbedRequest(inputs=(TextInput("hello"),), task=task, input_type="query"))
        loaded = [name for name, module in sys.modules.items() if name.startswith("transformers_modules")
                  or {str(jina_v5_text_dir)!r} in (getattr(module, "__file__", None) or "")]
        print("LOADED", loaded)
        assert not loaded, loaded
    """)
    env = {name: value for name, value in os.environ.items() if name != "SEARCHBOX_TRUST_REMOTE_CODE"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LOADED []" in result.stdout


def test_a_task_without_its_adapter_is_refused_at_load(jina_v5_text_dir, tmp_path):
    """Served, the task whose adapter is missing would answer the base model's vectors under its name."""
    from model_handlers.errors import ModelDirectoryError
    from model_handlers.serving_config import read_serving_config

    broken = tmp_path / "v5-missing-adapter"
    shutil.copytree(jina_v5_text_dir, broken)
    shutil.rmtree(broken / "adapters" / "clustering")
    with pytest.raises(ModelDirectoryError, match="no adapter .* for clustering"):
        read_serving_config(broken)


def test_a_premerged_single_task_directory_is_a_plain_model(jina_v5_text_dir, tmp_path):
    """Jina's per-task repositories (the adapter merged into the weights, no adapters folder) serve as any
    sentence-transformers model: its query/document prompts, no adapter, sentence-transformers' own encode."""
    from sentence_transformers import SentenceTransformer

    merged = tmp_path / "v5-merged"
    shutil.copytree(jina_v5_text_dir, merged, ignore=shutil.ignore_patterns("adapters"))
    st = SentenceTransformer(str(merged), device="cpu", local_files_only=True)
    with serving(merged) as app:
        for side in SIDES:
            assert_same(vectors(app, {"input": TEXTS, "input_type": side}),
                        st.encode(TEXTS, prompt_name=side, normalize_embeddings=True))
        assert app.runtime.handler.model.adapters.names == ()  # none built in (SageMaker may register some)


def test_onnx_build_refuses_it_naming_the_adapter_tasks(jina_v5_text_dir, tmp_path):
    from model_handlers.errors import ModelDirectoryError
    from model_handlers.kinds.text_embedding import export_onnx

    with pytest.raises(ModelDirectoryError, match="select adapters") as refused:
        export_onnx(jina_v5_text_dir, tmp_path / "never.onnx")
    assert "retrieval_query" in str(refused.value) and "--backend torch" in str(refused.value)


# --- the published layout: Jina's class named in config.json, its own code beside it, read natively -----------------

def published_layout(source: Path, target: Path) -> Path:
    """`source` (a v5 checkpoint on transformers' own classes) as the published repository lays it out: config.json
    names Jina's class and model type, with an auto_map into the directory's modeling file, and modules.json's first
    module is the directory's own; that code is written to raise on import, so serving it natively proves none runs."""
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config.update(architectures=["JinaEmbeddingsV5Model"], model_type="jina_embeddings_v5",
                  auto_map={"AutoConfig": "configuration_jina_embeddings_v5.JinaEmbeddingsV5Config",
                            "AutoModel": "modeling_jina_embeddings_v5.JinaEmbeddingsV5Model"})
    (target / "config.json").write_text(json.dumps(config))
    for name in ("configuration_jina_embeddings_v5.py", "modeling_jina_embeddings_v5.py", "custom_st.py"):
        (target / name).write_text('raise RuntimeError("the directory\'s own code ran")\n')
    modules = json.loads((target / "modules.json").read_text())
    modules[0]["type"] = "custom_st.Transformer"
    (target / "modules.json").write_text(json.dumps(modules))
    return target


def test_the_published_layout_is_read_natively_and_answers_every_task(jina_v5_text_dir, reference, tmp_path):
    model_dir = published_layout(jina_v5_text_dir, tmp_path / "published")
    assert "SEARCHBOX_TRUST_REMOTE_CODE" not in os.environ
    with serving(model_dir) as app:
        assert app.get("/v1/models").json()["data"][0]["kind"] == "embedding"
        for task in TASKS:
            for side in SIDES:
                assert_same(vectors(app, {"input": TEXTS, "task": task, "input_type": side}), reference[(task, side)])
        # Matryoshka: the model's own encode cuts before it normalises
        cut = [row[:8] / np.linalg.norm(row[:8]) for row in reference[("retrieval", "query")]]
        assert_same(vectors(app, {"input": TEXTS, "task": "retrieval.query", "dimensions": 8}), cut)


def test_the_published_layout_with_a_base_it_does_not_know_is_refused_by_name(jina_v5_text_dir, tmp_path):
    from helpers import refused_at_load

    model_dir = published_layout(jina_v5_text_dir, tmp_path / "unknown-base")
    config = json.loads((model_dir / "config.json").read_text())
    for key in ("max_window_layers", "use_sliding_window"):
        config.pop(key, None)
    (model_dir / "config.json").write_text(json.dumps(config))
    reason = refused_at_load(model_dir)
    assert "JinaEmbeddingsV5Model" in reason and "Qwen3" in reason and "EuroBERT" in reason


def test_the_nano_layout_on_eurobert_is_read_natively_as_its_own_encode(tmp_path):
    """jina-embeddings-v5-text-nano: the same layout on a EuroBERT base (transformers' own EuroBertModel). The
    reference is its published encode written out: "Query: " / "Document: " before the text, the task's adapter set
    (peft), the hidden state of the last token, L2-normalised; each text alone, so no padding is involved."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer, EuroBertModel

    from models.jina_v5_text import make_jina_v5_text

    source = make_jina_v5_text(tmp_path / "nano-source", base="eurobert")
    model_dir = published_layout(source, tmp_path / "nano")
    tokenizer = AutoTokenizer.from_pretrained(str(source))

    def own_encode(task: str, side: str) -> list[np.ndarray]:
        model = PeftModel.from_pretrained(EuroBertModel.from_pretrained(str(source)),
                                          str(source / "adapters" / task)).eval()
        rows = []
        for text in TEXTS:
            ids = tokenizer(("Query: " if side == "query" else "Document: ") + text, return_tensors="pt")
            with torch.no_grad():
                last = model(**ids).last_hidden_state[0, -1].numpy().astype(np.float64)
            rows.append(last / np.linalg.norm(last))
        return rows

    with serving(model_dir) as app:
        for task, side in (("retrieval", "query"), ("clustering", "document"), ("text-matching", "query")):
            assert_same(vectors(app, {"input": TEXTS, "task": task, "input_type": side}), own_encode(task, side))
