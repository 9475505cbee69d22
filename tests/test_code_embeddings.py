"""A task matrix (jina-code-embeddings): a prompt per task and side, `<task>_query` and `<task>_document`, selected by
`task` and `input_type` together (or the task with its side: `nl2code.query`, `nl2code.passage`), on the tiny
decoder embedder of tests/models/code_embeddings.py, against sentence-transformers' own
`SentenceTransformer.encode(texts, prompt_name=...)`. An unknown task or a missing side is refused naming the table.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from helpers import assert_error, cosine, serving

pytestmark = pytest.mark.app

TEXTS = ["How do I read a CSV file in Python?", "def read_csv(path): return pandas.read_csv(path)",
         "# sort a list in place\nitems.sort()"]
TASKS = ("nl2code", "qa", "code2code", "code2nl", "code2completion")


@pytest.fixture(scope="module")
def reference(code_embeddings_dir):
    return SentenceTransformer(str(code_embeddings_dir), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def app(code_embeddings_dir):
    with serving(code_embeddings_dir) as served:
        yield served


def vectors(app, body: dict, path: str = "/v1/embeddings") -> list[list[float]]:
    response = app.post(path, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    return [item["embedding"] for item in answer["data"]]


def assert_same(served, expected):
    assert len(served) == len(expected)
    for vector, reference_vector in zip(served, expected):
        assert cosine(vector, reference_vector) >= 0.9999
        assert abs(np.linalg.norm(vector) - np.linalg.norm(reference_vector)) < 1e-4


@pytest.mark.parametrize("task", TASKS)
def test_every_task_and_side_is_its_prompt(app, reference, task):
    query = reference.encode(TEXTS, prompt_name=f"{task}_query")
    document = reference.encode(TEXTS, prompt_name=f"{task}_document")
    assert min(cosine(a, b) for a, b in zip(query, document)) < 0.999, "the sides' prompts must differ in effect"
    assert_same(vectors(app, {"input": TEXTS, "task": task, "input_type": "query"}), query)
    assert_same(vectors(app, {"input": TEXTS, "task": task, "input_type": "document"}), document)
    assert_same(vectors(app, {"input": TEXTS, "task": f"{task}.query"}), query)
    assert_same(vectors(app, {"input": TEXTS, "task": f"{task}.passage"}), document)
    # the prompt's own name, as sentence-transformers calls it
    assert_same(vectors(app, {"input": TEXTS, "task": f"{task}_document"}), document)


def test_the_sagemaker_envelope_takes_the_task_and_side(app, reference):
    expected = reference.encode(TEXTS, prompt_name="qa_document")
    answer = app.post("/invocations", {"data": [{"text": text} for text in TEXTS],
                                       "parameters": {"task": "qa", "input_type": "document"}})
    assert answer.status_code == 200, answer.text
    assert_same([item["embedding"] for item in answer.json()["data"]], expected)


def test_mixed_tasks_and_sides_in_concurrent_requests(app, reference):
    asks = [(task, side) for task in TASKS for side in ("query", "document")] * 2
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda ask: vectors(app, {"input": TEXTS, "task": ask[0], "input_type": ask[1]}), asks))
    for (task, side), answer in zip(asks, answers):
        assert_same(answer, reference.encode(TEXTS, prompt_name=f"{task}_{side}"))


def test_no_task_and_the_generic_retrieval_tasks_embed_without_a_prompt(app, reference):
    """The jina-sagemaker client's default tasks fall back as on any model of prompts (contract §2a): no default task
    here, so no prompt."""
    plain = reference.encode(TEXTS)
    assert_same(vectors(app, {"input": TEXTS}), plain)
    assert_same(vectors(app, {"input": TEXTS, "task": "retrieval.query"}), plain)


@pytest.mark.parametrize("body, mentions", [
    ({"task": "sql2code", "input_type": "query"},
     ["no task 'sql2code'", "code2code, code2completion, code2nl, nl2code, qa", "input_type"]),
    ({"task": "nl2code"}, ["task nl2code", "queries and documents", "`input_type` query or document",
                           "nl2code.query"]),
])
def test_an_unknown_task_or_a_missing_side_is_refused_naming_the_table(app, body, mentions):
    assert_error(app.post("/v1/embeddings", {"input": TEXTS, **body}), 422, "UNKNOWN_TASK", *mentions)


def test_late_chunking_on_a_decoder_means_each_inputs_span_of_one_causal_pass(app, code_embeddings_dir):
    """README's late chunking: the inputs packed into one sequence, one pass, each input's span of token vectors
    averaged; done here by hand with transformers' own Qwen2Model on the packed ids (a decoder's span reads only what
    came before it)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(code_embeddings_dir))
    model = AutoModel.from_pretrained(str(code_embeddings_dir)).eval()
    contents = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in TEXTS]
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([sum(contents, [])])).last_hidden_state[0].numpy()
    expected, start = [], 0
    for content in contents:
        span = hidden[start:start + len(content)].mean(axis=0)
        expected.append(span / np.linalg.norm(span))
        start += len(content)
    served = vectors(app, {"input": TEXTS, "late_chunking": True})
    assert_same(served, expected)
    # not what each input alone gives: the later inputs read the earlier ones
    alone = vectors(app, {"input": TEXTS})
    assert cosine(served[-1], alone[-1]) < 0.999


def test_the_decoder_exports_to_onnx_and_answers_as_sentence_transformers(code_embeddings_dir, reference, tmp_path):
    """README (ONNX): a decoder embedder exports like an encoder (no KV cache; the last-token pooling sentence-
    transformers 6 saves as `"pooling_mode": "lasttoken"` is done outside the graph); the fp32 graph passes the quality
    gate and answers each task and side as the model's own encode does."""
    from helpers import onnx_artifact

    report, model_dir = onnx_artifact(code_embeddings_dir, tmp_path)
    assert report.backend == "onnx" and report.quality.fp32_min_cosine >= 0.9999
    with serving(model_dir) as app:
        assert app.get("/v1/models").json()["data"][0]["backend"] == "onnx"
        for task, side in (("nl2code", "query"), ("qa", "document")):
            assert_same(vectors(app, {"input": TEXTS, "task": task, "input_type": side}),
                        reference.encode(TEXTS, prompt_name=f"{task}_{side}"))


@pytest.mark.parametrize("modes", [("lasttoken",), ("mean", "lasttoken"), ("max", "cls", "weightedmean"),
                                   ("mean_sqrt_len_tokens",)])
def test_pooling_outside_torch_reads_both_config_formats_as_sentence_transformers_pools(tmp_path, modes):
    """The ONNX path pools in numpy from 1_Pooling/config.json: sentence-transformers 6's `pooling_mode` (a mode or a
    list, concatenated in its order) and the older `pooling_mode_<mode>` flags; each pools as its own Pooling module
    does, right-padded rows included."""
    import json

    import torch
    from sentence_transformers.sentence_transformer.modules import Pooling

    from model_handlers.kinds.text_embedding import PoolingSpec

    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling",
                                                        "type": "sentence_transformers.models.Pooling"}]))
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 7, 4, generator=generator)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    expected = Pooling(4, pooling_mode=list(modes))({"token_embeddings": tokens, "attention_mask": mask})
    legacy = {"cls": "cls_token", "max": "max_tokens", "mean": "mean_tokens", "weightedmean": "weightedmean_tokens"}
    saved_forms = [{"embedding_dimension": 4, "pooling_mode": list(modes) if len(modes) > 1 else modes[0]}]
    if list(modes) == sorted(modes, key=["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean",
                                         "lasttoken"].index):  # the flags concatenate in that fixed order
        saved_forms.append({"word_embedding_dimension": 4,
                            **{f"pooling_mode_{legacy.get(mode, mode)}": True for mode in modes}})
    for saved in saved_forms:
        (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(saved))
        spec = PoolingSpec.read(tmp_path)
        assert spec.width == 4 * len(modes)
        pooled = spec.pool(tokens.numpy(), mask.numpy().astype(np.float32))
        np.testing.assert_allclose(pooled, expected["sentence_embedding"].numpy(), atol=1e-5)


def test_its_int8_graph_is_refused_with_the_gates_figure(code_embeddings_dir, tmp_path):
    """README (ONNX): the random 32-wide decoder's int8 graph keeps too few top-10 neighbours; the build says so."""
    import sys
    from pathlib import Path

    from helpers import onnx_artifact

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "packaging"))
    import build_artifact

    with pytest.raises(build_artifact.BuildRefused, match=r"same top-10 neighbours for \d+% of queries < 90%"):
        onnx_artifact(code_embeddings_dir, tmp_path, quantize="int8")


def test_batch_transform_lines_take_each_lines_task_and_side(app, reference):
    """A JSON Lines batch-transform body, each line a SageMaker envelope with its own task and side."""
    import json

    asks = [("nl2code", "query"), ("code2code", "document"), ("qa", "query")]
    body = "".join(json.dumps({"data": [{"text": text} for text in TEXTS],
                               "parameters": {"task": task, "input_type": side}}) + "\n" for task, side in asks)
    response = app.post("/invocations", data=body, headers={"Content-Type": "application/jsonlines"})
    assert response.status_code == 200, response.text
    lines = response.text.splitlines()
    assert len(lines) == len(asks)
    for line, (task, side) in zip(lines, asks):
        assert_same([item["embedding"] for item in json.loads(line)["data"]],
                    reference.encode(TEXTS, prompt_name=f"{task}_{side}"))
