"""packaging/build_artifact.py: real weights in, a real `serve` on the artifact, byte-for-byte reproducible."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import requests

PACKAGING = Path(__file__).resolve().parent.parent / "packaging"
sys.path.insert(0, str(PACKAGING))

import build_artifact  # noqa: E402

pytestmark = pytest.mark.server

TEXTS = ["Berlin is the capital of Germany.", "A packaged model must answer exactly like the original.", "hi"]


def _unpack(artifact: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    with tarfile.open(artifact, "r:gz") as tar:
        tar.extractall(target, filter="data")
    return target


@pytest.fixture(scope="module")
def minilm_artifact(tmp_path_factory, minilm_dir) -> Path:
    output = tmp_path_factory.mktemp("artifact") / "model.tar.gz"
    report = build_artifact.build_artifact(minilm_dir, output)
    assert report.check.startswith("embedded 2 texts into 384 dimensions")
    assert report.served_name == "all-MiniLM-L6-v2"
    return output


@pytest.fixture(scope="module")
def packaged_minilm(minilm_artifact, tmp_path_factory):
    """The MiniLM artifact unpacked where SageMaker puts it, served over HTTP from this process
    (`helpers.serving_over_http`), for the tests that only read its answers."""
    from conftest import served_over_http

    unpacked = _unpack(minilm_artifact, tmp_path_factory.mktemp("packaged") / "opt" / "ml" / "model")
    yield from served_over_http(unpacked)


def test_artifact_layout_and_manifest(minilm_artifact, tmp_path):
    with tarfile.open(minilm_artifact, "r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    # laid out for /opt/ml/model: files at the root, no leading directory
    assert {"model.safetensors", "tokenizer.json", "config.json", "modules.json", "1_Pooling/config.json",
            "searchbox.json", "searchbox-manifest.json"} <= set(names)
    assert not any(n.startswith((".", "/")) or n.endswith((".bin", ".onnx")) for n in names)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    assert {m.mode for m in members if m.isfile()} == {0o644}

    unpacked = _unpack(minilm_artifact, tmp_path / "opt" / "ml" / "model")
    manifest = json.loads((unpacked / "searchbox-manifest.json").read_text())
    assert {e["path"] for e in manifest["files"]} == set(names) - {"searchbox-manifest.json", "1_Pooling"}
    for entry in manifest["files"]:
        assert hashlib.sha256((unpacked / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
    assert list(build_artifact.iter_manifest_problems(unpacked)) == []
    (unpacked / "vocab.txt").write_text("tampered")
    assert list(build_artifact.iter_manifest_problems(unpacked)) == ["vocab.txt: SHA-256 differs from the manifest"]
    config = json.loads((unpacked / "searchbox.json").read_text())
    assert config == {"kind": "embedding", "served_model_name": "all-MiniLM-L6-v2"}


@pytest.fixture(scope="module")
def metered_artifact(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The example catalog's product (sold per 1,000 tokens) built as a vendor builds it, on the command line."""
    output = tmp_path_factory.mktemp("metered") / "model.tar.gz"
    result = subprocess.run([sys.executable, str(PACKAGING / "build_artifact.py"), "--catalog",
                             str(PACKAGING / "catalog.example.yaml"), "-o", str(output), "--device", "cpu"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return output, result


def test_per_inference_artifact_carries_the_catalogs_metering(metered_artifact, tmp_path):
    from model_handlers.metering import Metering
    from model_handlers.serving_config import read_serving_config

    output, result = metered_artifact
    unpacked = _unpack(output, tmp_path / "opt" / "ml" / "model")
    assert json.loads((unpacked / "searchbox.json").read_text()) == {
        "kind": "embedding", "served_model_name": "all-MiniLM-L6-v2",
        "metering": {"unit": "tokens", "tokens_per_unit": 1000}}
    assert read_serving_config(unpacked).metering == Metering("tokens", 1000)  # what the server will bill by
    manifest = json.loads((unpacked / "searchbox-manifest.json").read_text())
    assert manifest["metering"] == {"unit": "tokens", "tokens_per_unit": 1000}
    assert manifest["sample"] == {"inputs": 2, "tokens": 6, "units": 1}  # "hello", "world": [CLS] word [SEP] each
    assert "billing: per inference, 1 unit = 1,000 tokens of usage, rounded up per request" in result.stdout
    assert "the sample request: 6 tokens, 2 inputs -> 1 unit" in result.stdout
    assert list(build_artifact.iter_manifest_problems(unpacked)) == []


def test_served_per_inference_artifact_reports_its_units(metered_artifact, tmp_path, serving_factory):
    """The packaged model answers each 2xx with X-Amzn-Inference-Metering, units computed from the usage it reports."""
    import math

    unpacked = _unpack(metered_artifact[0], tmp_path / "model")
    packaged = serving_factory(unpacked)
    long_text = " ".join(["semantic search finds documents by meaning"] * 30)
    for body in ({"data": [{"text": "hello"}, {"text": "world"}]}, {"input": [long_text] * 8}):
        answer = packaged.post("/invocations", body)
        assert answer.status_code == 200, answer.text
        usage = answer.json()["usage"]["total_tokens"] if "usage" in answer.json() else sum(
            item["usage"]["total_tokens"] for item in answer.json()["data"])
        assert json.loads(answer.headers["X-Amzn-Inference-Metering"]) == {
            "Dimension": "inference.count", "ConsumedUnits": math.ceil(usage / 1000)}
    assert math.ceil(usage / 1000) > 1  # the long body spans units: the rounding is per request, not per text
    refused = packaged.post("/invocations", {"data": [{"text": "hello"}], "parameters": {"dimensions": 4096}})
    assert refused.status_code >= 400 and "X-Amzn-Inference-Metering" not in refused.headers  # errors are free


def test_hourly_catalog_build_drops_a_directorys_metering(remote_code_model, tmp_path):
    """The catalog's pricing decides: an hourly product's artifact reports no units, whatever the directory said."""
    model_dir, source = remote_code_model
    metered = tmp_path / "metered-model"
    shutil.copytree(model_dir, metered)
    (metered / "searchbox.json").write_text(json.dumps({"metering": {"unit": "request"}}))
    kept = build_artifact.build_artifact(metered, tmp_path / "kept.tar.gz", check=False,
                                         remote_code={"other-org/tiny-remote": source})
    hourly = build_artifact.build_artifact(metered, tmp_path / "hourly.tar.gz", check=False, metering=None,
                                           remote_code={"other-org/tiny-remote": source})
    for report, expected in ((kept, {"unit": "request"}), (hourly, None)):
        with tarfile.open(report.output, "r:gz") as tar:
            config = json.loads(tar.extractfile("searchbox.json").read())
            manifest = json.loads(tar.extractfile("searchbox-manifest.json").read())
        assert config.get("metering") == expected
        assert manifest["metering"] == (None if expected is None else {"unit": "request", "tokens_per_unit": 1})
        assert manifest["sample"] is None  # --no-check: nothing was measured
    assert hourly.billing.startswith("hourly") and kept.billing.startswith("per inference, 1 unit = one request")


def test_served_artifact_embeds_like_the_original(packaged_minilm, server):
    packaged = packaged_minilm
    body = {"input": TEXTS}
    original = server.post("/v1/embeddings", body)
    answer = packaged.post("/v1/embeddings", body)
    assert original.status_code == answer.status_code == 200, answer.text
    assert answer.json()["model"] == original.json()["model"] == "all-MiniLM-L6-v2"
    assert answer.json()["usage"] == original.json()["usage"]
    got = np.array([d["embedding"] for d in answer.json()["data"]])
    want = np.array([d["embedding"] for d in original.json()["data"]])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    envelope = packaged.post("/invocations", {"data": [{"text": t} for t in TEXTS]})
    assert envelope.status_code == 200
    np.testing.assert_allclose(np.array([d["embedding"] for d in envelope.json()["data"]]), want, atol=1e-6)


def test_validation_sample_is_answered_by_the_packaged_model(packaged_minilm, reference_model):
    """The CSV that SageMaker's validation profile transforms must go through the image: any answer but a 200 (a 415
    included) fails the listing's validation, so it fails here too."""
    import model_package

    packaged = packaged_minilm
    sample = model_package.sample_input("embedding")
    response = requests.post(packaged.url + "/invocations", data=sample.encode(),
                             headers={"Content-Type": "text/csv"}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.text.endswith("\n")
    # the rows as contract §4 reads them, embedded by sentence-transformers
    sent = list(csv.reader(io.StringIO(sample), delimiter=",", quotechar='"', doublequote=True, escapechar="\\"))
    rows = response.json()["data"]
    assert [r["id"] for r in rows] == [row[0] for row in sent] and len(sent) == 4
    want = reference_model.encode([row[1] for row in sent], normalize_embeddings=True)
    got = np.array([r["embedding"] for r in rows])
    assert got.shape == want.shape
    cosines = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosines.min() >= 0.9999, cosines


def test_two_builds_give_identical_bytes(minilm_artifact, minilm_dir, tmp_path):
    """The second build goes through the command line, as a vendor runs it."""
    second = tmp_path / "again" / "model.tar.gz"
    result = subprocess.run([sys.executable, str(PACKAGING / "build_artifact.py"), str(minilm_dir), "-o", str(second)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert second.read_bytes() == minilm_artifact.read_bytes()
    assert hashlib.sha256(second.read_bytes()).hexdigest() in result.stdout
    assert not list(second.parent.glob(".stage-*")) and not list(second.parent.glob("*.partial"))


def test_a_directory_that_would_not_serve_is_refused(tmp_path, remote_code_model):
    model_dir, source = remote_code_model
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"these are not safetensors")
    output = tmp_path / "out" / "model.tar.gz"
    with pytest.raises(build_artifact.BuildRefused, match="would not serve"):
        build_artifact.build_artifact(broken, output, remote_code={"other-org/tiny-remote": source})
    assert not output.exists()


def test_pickled_weights_only_are_refused_with_the_fix(tmp_path):
    model_dir = tmp_path / "pickled"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(build_artifact.BuildRefused, match="safe_serialization=True"):
        build_artifact.build_artifact(model_dir, tmp_path / "model.tar.gz")


# --- remote code -------------------------------------------------------------------------------

_CONFIG_SOURCE = '''from transformers import PretrainedConfig


class TinyConfig(PretrainedConfig):
    model_type = "tiny-remote-embed"

    def __init__(self, vocab_size=30522, hidden_size=32, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        super().__init__(**kwargs)
'''

_MODEL_SOURCE = '''import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .configuration_tiny import TinyConfig


class TinyModel(PreTrainedModel):
    config_class = TinyConfig
    base_model_prefix = "tiny"

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.proj = torch.nn.Linear(config.hidden_size, config.hidden_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
        return BaseModelOutput(last_hidden_state=torch.tanh(self.proj(self.embeddings(input_ids))))
'''

# Loads a directory the way a network-isolated container does; prints the mean-pooled embedding of argv[2].
_OFFLINE_LOADER = r'''
import json, sys
import torch
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True, local_files_only=True)
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True, local_files_only=True)
batch = tokenizer([sys.argv[2]], return_tensors="pt")
with torch.no_grad():
    hidden = model(**batch).last_hidden_state[0]
print("\n" + json.dumps({"class": type(model).__name__, "pooled": hidden.mean(0).tolist()}))
'''


@pytest.fixture(scope="module")
def remote_code_model(tmp_path_factory, minilm_dir) -> tuple[Path, Path]:
    """A small custom model whose auto_map points at another repository, and a checkout of that repository."""
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("remote-code")
    source, model_dir = root / "other-org-tiny-remote", root / "tiny-remote-model"
    source.mkdir()
    (source / "configuration_tiny.py").write_text(_CONFIG_SOURCE)
    (source / "modeling_tiny.py").write_text(_MODEL_SOURCE)
    (model_dir / "1_Pooling").mkdir(parents=True)
    rng = np.random.default_rng(0)
    save_file({"embeddings.weight": rng.standard_normal((30522, 32)).astype(np.float32),
               "proj.weight": (rng.standard_normal((32, 32)) / 6).astype(np.float32),
               "proj.bias": np.zeros(32, np.float32)}, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    (model_dir / "config.json").write_text(json.dumps({
        "architectures": ["TinyModel"], "model_type": "tiny-remote-embed", "vocab_size": 30522, "hidden_size": 32,
        "auto_map": {"AutoConfig": "other-org/tiny-remote--configuration_tiny.TinyConfig",
                     "AutoModel": "other-org/tiny-remote--modeling_tiny.TinyModel"}}))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, model_dir / name)
    (model_dir / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (model_dir / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    (model_dir / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    return model_dir, source


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """No network, and an empty Hugging Face home: nothing cached can help."""
    home = tmp_path / "hf-home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(home)}


def _expected_pooled(model_dir: Path, text: str) -> np.ndarray:
    """The tiny model's forward pass written out in numpy, from the original weights."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    weights = load_file(str(model_dir / "model.safetensors"))
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()  # all-MiniLM's tokenizer.json pads to 128; the loader's tokenizer does not
    ids = tokenizer.encode(text).ids
    hidden = np.tanh(weights["embeddings.weight"][ids] @ weights["proj.weight"].T + weights["proj.bias"])
    return hidden.mean(0)


def test_remote_code_is_vendored_and_loads_offline(remote_code_model, tmp_path):
    model_dir, source = remote_code_model
    env = _offline_env(tmp_path)
    text = "vendored code runs without network"
    # Without vendoring the directory needs the other repository: offline, it does not load.
    before = subprocess.run([sys.executable, "-c", _OFFLINE_LOADER, str(model_dir), text], env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert before.returncode != 0
    assert "offline" in before.stderr.lower() and "SyntaxError" not in before.stderr

    output = tmp_path / "model.tar.gz"
    result = subprocess.run([sys.executable, str(PACKAGING / "build_artifact.py"), str(model_dir), "-o", str(output),
                             "--served-name", "tiny-remote", "--remote-code", f"other-org/tiny-remote={source}"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "vendored modeling_tiny.py from other-org/tiny-remote" in result.stdout
    assert "vendored configuration_tiny.py from other-org/tiny-remote" in result.stdout  # a relative import

    unpacked = _unpack(output, tmp_path / "unpacked")
    auto_map = json.loads((unpacked / "config.json").read_text())["auto_map"]
    assert auto_map == {"AutoConfig": "configuration_tiny.TinyConfig", "AutoModel": "modeling_tiny.TinyModel"}
    assert (unpacked / "modeling_tiny.py").read_text() == _MODEL_SOURCE
    manifest = json.loads((unpacked / "searchbox-manifest.json").read_text())
    assert manifest["vendored_remote_code"] == {"configuration_tiny.py": "other-org/tiny-remote",
                                                "modeling_tiny.py": "other-org/tiny-remote"}
    # every .py pinned: the container runs it with no operator flag (model_handlers/model_code.py)
    assert [entry["path"] for entry in manifest["remote_code"]] == ["configuration_tiny.py", "modeling_tiny.py"]
    from model_handlers.serving_config import read_serving_config

    assert read_serving_config(unpacked).served_model_name == "tiny-remote"

    after = subprocess.run([sys.executable, "-c", _OFFLINE_LOADER, str(unpacked), text], env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert after.returncode == 0, after.stderr
    loaded = json.loads(after.stdout.strip().splitlines()[-1])
    assert loaded["class"] == "TinyModel"
    np.testing.assert_allclose(loaded["pooled"], _expected_pooled(model_dir, text), atol=1e-5)


def test_remote_code_from_the_local_hugging_face_cache(remote_code_model, tmp_path):
    model_dir, source = remote_code_model
    env = _offline_env(tmp_path)
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo_cache = Path(env["HF_HOME"]) / "hub" / "models--other-org--tiny-remote"
    (repo_cache / "refs").mkdir(parents=True)
    (repo_cache / "refs" / "main").write_text(revision)
    shutil.copytree(source, repo_cache / "snapshots" / revision)
    output = tmp_path / "model.tar.gz"
    result = subprocess.run([sys.executable, str(PACKAGING / "build_artifact.py"), str(model_dir), "-o", str(output),
                             "--no-check"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with tarfile.open(output, "r:gz") as tar:
        assert tar.extractfile("modeling_tiny.py").read().decode() == _MODEL_SOURCE


def test_missing_remote_code_is_refused_with_the_fix(remote_code_model, tmp_path):
    model_dir, _ = remote_code_model
    output = tmp_path / "model.tar.gz"
    result = subprocess.run([sys.executable, str(PACKAGING / "build_artifact.py"), str(model_dir), "-o", str(output)],
                            env=_offline_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "other-org/tiny-remote" in result.stderr and "--remote-code" in result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists()


# --- rerankers ---------------------------------------------------------------------------------

def test_reranker_artifact_serves_cross_encoder_scores(reranker_dir, tmp_path):
    import model_package
    from sentence_transformers import CrossEncoder

    from helpers import serving_over_http

    output = tmp_path / "model.tar.gz"
    report = build_artifact.build_artifact(reranker_dir, output, served_name="tiny-reranker",
                                           metering={"unit": "input"})
    assert report.kind == "reranker" and report.check.startswith("reranked 2 documents")
    assert report.sample.inputs == 2 and report.sample.units == 2  # sold per document reranked
    unpacked = _unpack(output, tmp_path / "opt" / "ml" / "model")
    assert json.loads((unpacked / "searchbox.json").read_text())["kind"] == "reranker"

    with serving_over_http(unpacked) as packaged:
        query, documents = "What is the capital of Germany?", ["Bananas are yellow.", "Berlin is the capital.", "Hi."]
        answer = packaged.post("/v1/rerank", {"query": query, "documents": documents})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "tiny-reranker"
        assert json.loads(answer.headers["X-Amzn-Inference-Metering"]) == {"Dimension": "inference.count",
                                                                           "ConsumedUnits": 3}
        got = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
        reference = CrossEncoder(str(reranker_dir), device="cpu").predict([(query, d) for d in documents])
        np.testing.assert_allclose([got[i] for i in range(3)], reference, atol=1e-5)

        sample = model_package.sample_input("reranker")
        batch = requests.post(packaged.url + "/invocations", data=sample.encode(),
                              headers={"Content-Type": "text/csv"}, timeout=120)
        assert batch.status_code == 200, batch.text
        rows = batch.json()["data"]
    assert [r["id"] for r in rows] == ["q1", "q2"] and [len(r["results"]) for r in rows] == [2, 1]


def test_pickles_beside_safetensors_are_left_out(remote_code_model, tmp_path):
    model_dir, source = remote_code_model
    copy = tmp_path / "with-pickles"
    shutil.copytree(model_dir, copy)
    (copy / "pytorch_model.bin").write_bytes(b"\x80\x04pickled duplicate of the safetensors weights")
    (copy / "onnx").mkdir()
    (copy / "onnx" / "model.onnx").write_bytes(b"onnx")
    report = build_artifact.build_artifact(copy, tmp_path / "model.tar.gz", check=False,
                                           remote_code={"other-org/tiny-remote": source})
    assert set(report.skipped) == {"pytorch_model.bin", "onnx/model.onnx"}
    with tarfile.open(report.output, "r:gz") as tar:
        names = tar.getnames()
    assert "model.safetensors" in names and "pytorch_model.bin" not in names and "onnx" not in names


def test_catalog_name_kind_and_tasks_land_in_searchbox_json(remote_code_model, tmp_path):
    model_dir, source = remote_code_model
    report = build_artifact.build_artifact(model_dir, tmp_path / "model.tar.gz", served_name="tiny-prompted",
                                           kind="embedding", tasks={"retrieval.query": "query: ",
                                                                    "retrieval.passage": {"prompt": "passage: "}},
                                           remote_code={"other-org/tiny-remote": source}, check=False)
    with tarfile.open(report.output, "r:gz") as tar:
        config = json.loads(tar.extractfile("searchbox.json").read())
    assert config == {"kind": "embedding", "served_model_name": "tiny-prompted",
                      "tasks": {"retrieval.query": "query: ", "retrieval.passage": {"prompt": "passage: "}}}
