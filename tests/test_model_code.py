"""The one policy on the code a model directory may run (model_handlers/model_code.py).

Remote code runs only where the artifact's manifest declares and pins every .py file (packaging/build_artifact.py
writes it), or where the operator sets SEARCHBOX_TRUST_REMOTE_CODE=1; anything else is refused when the serving
config is read (a real `serve` refuses at start, naming the file). A directory read natively, or needing no code,
is never loaded with trust_remote_code=True. The remote-code model is a small jina-colbert-v2 variant that
searchbox does not read natively (tests/models/jina.py), so its own modules must run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from model_handlers import HandlerOptions, load_handler, model_code
from model_handlers.errors import ModelDirectoryError
from model_handlers.serving_config import read_serving_config
from model_handlers.types import EmbedRequest, TextInput
from models import jina

PACKAGING = Path(__file__).resolve().parent.parent / "packaging"
sys.path.insert(0, str(PACKAGING))

import build_artifact  # noqa: E402


@pytest.fixture(scope="module")
def remote_dir(tmp_path_factory, jina_colbert_dir) -> Path:
    """A model that needs its remote code: no manifest, nothing pinned."""
    root = tmp_path_factory.mktemp("remote-code")
    return jina.remote_code_only(shutil.copytree(jina_colbert_dir, root / "flash-variant"))


@pytest.fixture(scope="module")
def artifact(remote_dir, tmp_path_factory) -> Path:
    """The same model built into an artifact, unpacked as SageMaker unpacks it."""
    out = tmp_path_factory.mktemp("artifact")
    report = build_artifact.build_artifact(remote_dir, out / "model.tar.gz", device="cpu")
    assert report.pinned == ["configuration_xlm_roberta.py", "modeling_xlm_roberta.py"]
    with tarfile.open(out / "model.tar.gz") as tar:
        tar.extractall(out / "model", filter="data")
    return out / "model"


def pinned_copy(artifact: Path, target: Path) -> Path:
    return Path(shutil.copytree(artifact, target))


def test_remote_code_no_manifest_declares_is_refused_naming_the_file(remote_dir):
    with pytest.raises(ModelDirectoryError) as refused:
        read_serving_config(remote_dir)
    message = refused.value.detail
    assert "remote code configuration_xlm_roberta.py (config.json auto_map.AutoConfig runs it)" in message
    assert "searchbox-manifest.json" in message and "SEARCHBOX_TRUST_REMOTE_CODE=1" in message
    with pytest.raises(ModelDirectoryError, match="configuration_xlm_roberta.py"):
        load_handler(remote_dir, HandlerOptions(device="cpu"))


def test_the_operator_may_trust_it(remote_dir):
    read_serving_config(remote_dir, trust_remote_code=True)
    assert model_code.trusts(remote_dir, HandlerOptions(trust_remote_code=True)) is True


def test_the_manifest_pins_every_py_file_and_the_pinned_artifact_serves(artifact, remote_dir):
    manifest = json.loads((artifact / model_code.MANIFEST).read_text())
    assert manifest["remote_code"] == [
        {"path": name, "sha256": hashlib.sha256((remote_dir / name).read_bytes()).hexdigest()}
        for name in ("configuration_xlm_roberta.py", "modeling_xlm_roberta.py")]
    read_serving_config(artifact)  # no operator flag: declared and pinned
    assert model_code.trusts(artifact, HandlerOptions()) is True
    handler = load_handler(artifact, HandlerOptions(device="cpu"))
    try:
        vectors = handler.run(EmbedRequest(inputs=(TextInput("cats"),), input_type="query")).vectors[0]
    finally:
        handler.close()
    assert vectors.shape == (32, 24) and np.isfinite(vectors).all()


def test_a_changed_file_is_refused(artifact, tmp_path):
    model_dir = pinned_copy(artifact, tmp_path / "changed")
    with (model_dir / "modeling_xlm_roberta.py").open("a") as module:
        module.write("\nimport os  # a line added after the build\n")
    with pytest.raises(ModelDirectoryError, match="modeling_xlm_roberta.py does not match the SHA-256 "
                                                  "searchbox-manifest.json pins for it"):
        read_serving_config(model_dir)
    read_serving_config(model_dir, trust_remote_code=True)  # the operator's word still wins


def test_an_added_file_is_refused(artifact, tmp_path):
    model_dir = pinned_copy(artifact, tmp_path / "added")
    (model_dir / "sitecustomize.py").write_text("print('not built with the artifact')\n")
    with pytest.raises(ModelDirectoryError, match="sitecustomize.py is not declared in searchbox-manifest.json"):
        read_serving_config(model_dir)


def test_a_declared_file_that_is_gone_is_refused(artifact, tmp_path):
    model_dir = pinned_copy(artifact, tmp_path / "gone")
    manifest = json.loads((model_dir / model_code.MANIFEST).read_text())
    manifest["remote_code"].append({"path": "mha.py", "sha256": "0" * 64})
    (model_dir / model_code.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelDirectoryError, match="mha.py is declared in searchbox-manifest.json but not in"):
        read_serving_config(model_dir)


def test_code_in_another_repository_is_refused_with_the_fix(remote_dir, tmp_path):
    model_dir = Path(shutil.copytree(remote_dir, tmp_path / "unvendored"))
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"]["AutoModel"] = "jinaai/xlm-roberta-flash-implementation--modeling_lora.XLMRobertaLoRA"
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirectoryError, match="auto_map.AutoModel names modeling_lora.py, which is not in the "
                                                  "directory.*--remote-code"):
        read_serving_config(model_dir)
    # locally the operator's Hugging Face cache may hold it: transformers looks there (offline), not searchbox
    read_serving_config(model_dir, trust_remote_code=True)


def test_a_sentence_transformers_module_of_its_own_is_remote_code(tmp_path, minilm_dir):
    model_dir = Path(shutil.copytree(minilm_dir, tmp_path / "custom-module"))
    modules = json.loads((model_dir / "modules.json").read_text())
    modules[0]["type"] = "custom_st.Transformer"  # jina-embeddings-v3's modules.json names such a module
    (model_dir / "modules.json").write_text(json.dumps(modules))
    (model_dir / "custom_st.py").write_text("from sentence_transformers.models import Transformer  # noqa\n")
    assert model_code.needed(model_dir) == ["modules.json: module custom_st.Transformer -> custom_st.py"]
    with pytest.raises(ModelDirectoryError, match="remote code custom_st.py"):
        read_serving_config(model_dir)


def test_code_that_nothing_runs_is_left_alone(tmp_path, minilm_dir):
    """A .py file no auto_map or module names (a handler script, say) is never imported: no refusal, no trust."""
    model_dir = Path(shutil.copytree(minilm_dir, tmp_path / "with-script"))
    (model_dir / "handler.py").write_text("raise SystemExit('never imported')\n")
    assert model_code.needed(model_dir) == []
    read_serving_config(model_dir)
    assert model_code.trusts(model_dir, HandlerOptions()) is False
    assert model_code.trusts(minilm_dir, HandlerOptions(trust_remote_code=True)) is False


def test_serve_refuses_unpinned_remote_code_at_start(server_factory, remote_dir):
    server = server_factory({"SEARCHBOX_MODEL_DIR": str(remote_dir)}, wait=False)
    assert server.process.wait(60) == 1
    log = server.log()
    assert "cannot serve" in log and "remote code configuration_xlm_roberta.py" in log
    assert "SEARCHBOX_TRUST_REMOTE_CODE=1" in log
    assert "Booting worker" not in log  # refused in the master, before any worker


def test_serve_runs_a_pinned_artifact_and_a_raw_jina_reranker(serving_factory, artifact, jina_reranker_dir, caplog):
    """The pinned artifact serves with no operator flag; so does a raw jina-reranker-v2 directory (read natively: its
    remote code never runs, so nothing needs pinning). Loaded as the worker loads them, in this process: the policy
    is the loader's (`serve` refusing in its master is test_serve_refuses_unpinned_remote_code_at_start)."""
    caplog.set_level("WARNING", logger="model_handlers")
    pinned = serving_factory(artifact)
    body = {"input": ["late interaction"], "input_type": "query"}
    answer = pinned.post("/v1/multi-vector", body)
    assert answer.status_code == 200, answer.text
    assert "runs remote code (pinned in searchbox-manifest.json)" in caplog.text
    caplog.clear()
    native = serving_factory(jina_reranker_dir)
    answer = native.post("/v1/rerank", {"query": "cats", "documents": ["cats eat fish", "stocks fell"]})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["results"]) == 2
    assert "runs remote code" not in caplog.text
