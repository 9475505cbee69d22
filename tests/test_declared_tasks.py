"""Tasks a model's config.json declares (`lora_adaptations`) are applied per row whatever its class is called, when its
own code takes `adapter_mask`; a directory declaring tasks that searchbox cannot apply is refused, naming why.

The model: the tiny v3-shaped checkpoint of tests/models/jina_v3.py with its class and architecture renamed (the
tensors, the config keys and the code are otherwise v3's interface). Reference: its own `encode(texts, task=…)`,
imported from the model directory.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_error, cosine, serving
from models.jina_v3 import TASKS, build_v3

pytestmark = pytest.mark.app

TEXTS = ["Berlin is the capital of Germany.", "how do rotary position embeddings work",
         "A longer passage about search engines, retrieval, ranking and the people who build them."]
RENAMED = "TaskLoRAEncoder"
TRUSTED = {"SEARCHBOX_TRUST_REMOTE_CODE": "1"}


def renamed_v3(target: Path, minilm: Path, *, mask_argument: str = "adapter_mask") -> Path:
    """The tiny v3 checkpoint with its class (and so its architecture and auto_map) named RENAMED, and its forward's
    per-row task argument named `mask_argument`."""
    build_v3(target, minilm)
    code = target / "modeling_lora.py"
    text = re.sub(r"\bXLMRobertaLoRA\b", RENAMED, code.read_text())
    code.write_text(re.sub(r"\badapter_mask\b", mask_argument, text))
    config = json.loads((target / "config.json").read_text())
    config["architectures"] = [RENAMED]
    config["auto_map"]["AutoModel"] = f"modeling_lora.{RENAMED}"
    (target / "config.json").write_text(json.dumps(config))
    # 512 tokens, not v3's 8192: the load's calibration runs a pass at the longest length, and v3's own eager
    # attention takes about 9 s for one 8192-token pass on 2 cores (the texts here are short)
    tokenizer_config = json.loads((target / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = 512
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return target


def own_encode(model_dir: Path) -> dict:
    """{task or None: the checkpoint's own `encode(TEXTS, task=task)`}, its code imported from the directory."""
    name = f"renamed_v3_{abs(hash(str(model_dir)))}"
    spec = importlib.util.spec_from_file_location(name, model_dir / "modeling_lora.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    model = getattr(module, RENAMED).from_pretrained(str(model_dir)).eval()
    return {task: model.encode(TEXTS, task=task) for task in (None, *TASKS)}


def assert_same(served, expected):
    """Direction and length: cosine >= 0.9999 and norms within 1e-5, row by row."""
    assert len(served) == len(expected)
    for vector, reference in zip(served, expected):
        assert cosine(vector, reference) >= 0.9999
        assert abs(float(np.linalg.norm(vector)) - float(np.linalg.norm(reference))) <= 1e-5


@pytest.fixture(scope="module")
def renamed_dir(tmp_path_factory, minilm_dir) -> Path:
    return renamed_v3(tmp_path_factory.mktemp("models") / "renamed-v3", minilm_dir)


def test_a_renamed_class_gets_every_task_applied_per_row(renamed_dir):
    expected = own_encode(renamed_dir)
    for task in TASKS:  # the adapters are no no-ops: a served base vector would fail below
        assert max(cosine(a, b) for a, b in zip(expected[task], expected[None])) < 0.99
    with serving(renamed_dir, TRUSTED) as app:
        runtime = app.runtime
        for task in TASKS:
            response = app.post("/v1/embeddings", {"input": TEXTS, "task": task})
            assert response.status_code == 200, response.text
            assert_same([item["embedding"] for item in response.json()["data"]], expected[task])
        response = app.post("/v1/embeddings", {"input": TEXTS})
        assert_same([item["embedding"] for item in response.json()["data"]], expected[None])
        # rows of every task in one forward pass, each as the model computes it for its task alone
        from model_handlers.types import EmbedRequest, TextInput

        model = runtime.handler.model
        items = []
        for task in TASKS:
            items.extend(model.prepare_embed(EmbedRequest(inputs=tuple(TextInput(t) for t in TEXTS), task=task)).items)
        assert len({item.group for item in items}) == 1
        outputs = model.forward(items)
        for index, task in enumerate(TASKS):
            rows = outputs[index * len(TEXTS):(index + 1) * len(TEXTS)]
            # a forward pass is not normalised (the pipeline does that); the model's own encode is
            assert_same([row[0] / np.linalg.norm(row[0]) for row in rows], expected[task])
        # a task it does not declare is refused, naming those it does
        response = app.post("/v1/embeddings", {"input": TEXTS, "task": "retreival.query"})
        assert_error(response, 422, "UNKNOWN_TASK", "retreival.query", *TASKS)
        response = app.post("/invocations", {"data": [{"text": "x"}], "parameters": {"task": "nonsense"}})
        assert_error(response, 422, "UNKNOWN_TASK", "nonsense")


def test_code_that_takes_no_adapter_mask_is_refused_at_load(tmp_path, minilm_dir):
    """Its own code applies tasks through another argument: searchbox cannot pass them, so it does not serve it."""
    from model_handlers import HandlerOptions, load_handler
    from model_handlers.errors import ModelDirectoryError

    model_dir = renamed_v3(tmp_path / "task-ids", minilm_dir, mask_argument="task_ids")
    with pytest.raises(ModelDirectoryError, match=rf"lora_adaptations.*{RENAMED}\.forward\) takes no adapter_mask"):
        load_handler(model_dir, HandlerOptions(device="cpu", trust_remote_code=True))


def test_declared_tasks_without_code_are_refused_when_read(tmp_path, minilm_dir):
    """A BERT whose config.json declares task adapters but ships no code to apply them: refused before any load."""
    import shutil

    from model_handlers.errors import ModelDirectoryError
    from model_handlers.serving_config import read_serving_config

    model_dir = Path(shutil.copytree(minilm_dir, tmp_path / "bert-tasks"))
    config = json.loads((model_dir / "config.json").read_text())
    config.update(lora_adaptations=["retrieval.query", "classification"],
                  task_instructions={"retrieval.query": "q: ", "classification": ""})
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirectoryError, match=r"lora_adaptations: retrieval.query, classification\) that "
                                                  r"searchbox cannot apply.*BertModel.*adapter_mask"):
        read_serving_config(model_dir)
