"""Task adapters per request: a jina-embeddings-v3-style checkpoint served natively and through its own code, PEFT
adapters on MiniLM, mixed batches, and the explicit-task rule, checked against the models' own code.

References: the checkpoint's own `encode(texts, task=…)` (tests/jina_v3_remote_code.py, v3's published interface,
loaded from the model directory as remote code), and `PeftModel` + sentence-transformers' mean pooling for PEFT.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_error, cosine, serving
from models.jina_v3 import INSTRUCTIONS, TASKS, build_v3, reference

pytestmark = pytest.mark.app

TEXTS = ["Berlin is the capital of Germany.", "how do rotary position embeddings work",
         "A longer passage about search engines, retrieval, ranking and the people who build them."]


@pytest.fixture(scope="session")
def v3_dir(jina_v3_dir) -> Path:
    return jina_v3_dir


@pytest.fixture(scope="session")
def v3_reference(v3_dir):
    """The checkpoint's own code: {task or None: encode(TEXTS, task=task)}."""
    model = reference(v3_dir)
    return {task: model.encode(TEXTS, task=task) for task in (None, *TASKS)}


@pytest.fixture(scope="module")
def v3(v3_dir):
    with serving(v3_dir) as app:
        yield app


def embeddings(app, body: dict, *, headers: dict | None = None) -> list[list[float]]:
    response = app.post("/v1/embeddings", body, headers=headers)
    assert response.status_code == 200, response.text
    return [item["embedding"] for item in response.json()["data"]]


def unit(rows) -> list[np.ndarray]:
    """Rows L2-normalised, written out: what `normalized` (true by default, README) makes of a model's pooled
    vectors, for comparing a model's raw forward rows or a reference that does not normalise."""
    return [np.asarray(row, dtype=np.float64) / np.linalg.norm(np.asarray(row, dtype=np.float64)) for row in rows]


def assert_matches(served, expected, bound: float = 0.9999, norm_tolerance: float = 1e-4):
    """Each vector the reference's: in direction (cosine) and in length (a dot-product index ranks by both)."""
    assert len(served) == len(expected)
    for vector, reference_vector in zip(served, expected):
        assert cosine(vector, reference_vector) >= bound
        served_norm, reference_norm = np.linalg.norm(vector), np.linalg.norm(reference_vector)
        assert abs(served_norm - reference_norm) <= norm_tolerance * reference_norm, (served_norm, reference_norm)


# --- jina-embeddings-v3, native -----------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_each_task_matches_the_models_own_encode(v3, v3_reference, task):
    assert_matches(embeddings(v3, {"input": TEXTS, "task": task}), v3_reference[task])
    # the SageMaker envelope, as the jina-sagemaker client sends it
    response = v3.post("/invocations", {"data": [{"text": t} for t in TEXTS], "parameters": {"task": task}})
    assert response.status_code == 200, response.text
    assert_matches([item["embedding"] for item in response.json()["data"]], v3_reference[task])


def test_tasks_select_different_adapters(v3_reference):
    """The reference itself: every task's vectors differ from the base model's (the adapters are not no-ops)."""
    for task in TASKS:
        assert max(cosine(a, b) for a, b in zip(v3_reference[task], v3_reference[None])) < 0.99


def test_no_task_is_the_base_model(v3, v3_reference):
    assert_matches(embeddings(v3, {"input": TEXTS}), v3_reference[None])


def test_input_type_selects_the_retrieval_task(v3, v3_reference):
    assert_matches(embeddings(v3, {"input": TEXTS, "input_type": "query"}), v3_reference["retrieval.query"])
    assert_matches(embeddings(v3, {"input": TEXTS, "input_type": "document"}), v3_reference["retrieval.passage"])


def test_unknown_task_is_refused_naming_the_tasks(v3):
    response = v3.post("/v1/embeddings", {"input": TEXTS, "task": "retreival.query"})
    assert_error(response, 422, "UNKNOWN_TASK", "retreival.query", *TASKS)
    response = v3.post("/invocations", {"data": [{"text": "x"}], "parameters": {"task": "nonsense"}})
    assert_error(response, 422, "UNKNOWN_TASK", "nonsense")


def test_usage_counts_the_instruction(v3, v3_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(v3_dir))
    body = v3.post("/v1/embeddings", {"input": TEXTS, "task": "retrieval.query"}).json()
    expected = [len(tokenizer(INSTRUCTIONS["retrieval.query"] + text)["input_ids"]) for text in TEXTS]
    assert body["usage"]["total_tokens"] == sum(expected)
    plain = v3.post("/v1/embeddings", {"input": TEXTS}).json()["usage"]["total_tokens"]
    assert plain == sum(len(tokenizer(text)["input_ids"]) for text in TEXTS) < sum(expected)


def test_matryoshka_dimensions_from_the_checkpoint(v3, v3_reference):
    card = v3.get("/v1/models").json()["data"][0]
    assert card["matryoshka_dimensions"] == [8, 16, 32]
    assert card["unknown_task"] == "refused"
    assert sorted(card["task_adapters"]) == sorted(TASKS)
    cut = embeddings(v3, {"input": TEXTS, "task": "classification", "dimensions": 16})
    for vector, full in zip(cut, v3_reference["classification"]):
        np.testing.assert_allclose(vector, full[:16] / np.linalg.norm(full[:16]), atol=2e-5)


def test_one_forward_pass_mixes_every_task(v3_dir, v3_reference):
    """Rows of all five tasks and of no task in ONE pass, each as the model computes it for its task alone."""
    from model_handlers import HandlerOptions, load_handler
    from model_handlers.types import EmbedRequest, TextInput

    handler = load_handler(v3_dir, HandlerOptions(device="cpu"))
    model = handler.model
    items = []
    for task in (None, *TASKS):
        items.extend(model.prepare_embed(EmbedRequest(inputs=tuple(TextInput(t) for t in TEXTS), task=task)).items)
    assert len({item.group for item in items}) == 1  # nothing keeps them apart
    outputs = model.forward(items)
    for index, task in enumerate((None, *TASKS)):
        rows = [output[0] for output in outputs[index * len(TEXTS):(index + 1) * len(TEXTS)]]
        assert_matches(unit(rows), v3_reference[task])  # forward answers pooled rows; the operation normalises
    handler.close()


def test_concurrent_requests_of_every_task_share_passes_and_match(v3_dir, v3_reference):
    """Six callers at once, one per task (and one without): each gets its own task's vectors."""
    with serving(v3_dir) as app:
        handler = app.runtime.handler
        before = handler.forward_passes
        results, errors = {}, []
        start = threading.Barrier(len(TASKS) + 1)

        def call(task):
            try:
                start.wait()
                body = {"input": TEXTS * 4} if task is None else {"input": TEXTS * 4, "task": task}
                results[task] = embeddings(app, body)
            except BaseException as exc:  # recorded, asserted in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(task,)) for task in (None, *TASKS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        for task in (None, *TASKS):
            assert_matches(results[task], v3_reference[task].tolist() * 4)
        # 6 requests of 12 inputs: packed together, far fewer passes than one per request would take
        assert handler.forward_passes - before < len(TASKS) + 1


def test_batch_transform_takes_the_jobs_input_type(v3_dir, v3_reference):
    with serving(v3_dir, {"SEARCHBOX_DEFAULT_INPUT_TYPE": "query"}) as app:
        rows = "".join(f'"{i}","{text}"\n' for i, text in enumerate(TEXTS))
        response = app.post("/invocations", data=rows, headers={"Content-Type": "text/csv"})
        assert response.status_code == 200, response.text
        served = [item["embedding"] for item in json.loads(response.text)["data"]]
        assert_matches(served, v3_reference["retrieval.query"])
        # JSON Lines: a task per line
        lines = "\n".join(json.dumps({"input": [text], "task": "separation"}) for text in TEXTS) + "\n"
        response = app.post("/invocations", data=lines, headers={"Content-Type": "application/jsonlines"})
        assert response.status_code == 200, response.text
        served = [json.loads(line)["data"][0]["embedding"] for line in response.text.splitlines()]
        assert_matches(served, v3_reference["separation"])


@pytest.mark.server  # a fresh Python process
def test_native_path_runs_no_code_from_the_model_directory(v3_dir):
    """In a fresh process: loading the checkpoint imports nothing from its directory (no transformers_modules)."""
    script = textwrap.dedent(f"""
        import sys
        from model_handlers import HandlerOptions, load_handler
        from model_handlers.types import EmbedRequest, TextInput
        handler = load_handler({str(v3_dir)!r}, HandlerOptions(device="cpu"))
        handler.run(EmbedRequest(inputs=(TextInput("hello"),), task="retrieval.query"))
        loaded = [name for name, module in sys.modules.items()
                  if name.startswith("transformers_modules") or "modeling_lora" in name
                  or {str(v3_dir)!r} in (getattr(module, "__file__", None) or "")]
        print("LOADED", loaded)
        assert not loaded, loaded
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LOADED []" in result.stdout


def test_remote_code_path_gives_the_same_answers(v3_dir, v3_reference, tmp_path):
    """The same checkpoint served through the code it ships (`model_code: remote`): per-row adapter ids reach its
    forward as `adapter_mask`; answers match the native path's reference, mixed tasks included."""
    remote_dir = tmp_path / "v3-remote"
    shutil.copytree(v3_dir, remote_dir)
    # 512 tokens: the load calibrates a pass at the longest length, which v3's own eager attention takes ~4 s for at
    # 8192 on 2 cores (the texts are short; the native path keeps 8192)
    (remote_dir / "searchbox.json").write_text(json.dumps({"model_code": "remote", "max_length": 512}))
    # refused without the operator's word or a manifest pinning the code (model_handlers/model_code.py)
    from model_handlers.errors import ModelDirectoryError
    from model_handlers.serving_config import read_serving_config

    with pytest.raises(ModelDirectoryError, match="modeling_lora.py"):
        read_serving_config(remote_dir)
    with serving(remote_dir, {"SEARCHBOX_TRUST_REMOTE_CODE": "1"}) as app:
        model = app.runtime.handler.model
        assert type(model._encoder).__name__ == "_TorchEncoder"
        for task in TASKS:
            assert_matches(embeddings(app, {"input": TEXTS, "task": task}), v3_reference[task])
        assert_matches(embeddings(app, {"input": TEXTS}), v3_reference[None])
        from model_handlers.types import EmbedRequest, TextInput

        items = []
        for task in TASKS:
            items.extend(model.prepare_embed(EmbedRequest(inputs=tuple(TextInput(t) for t in TEXTS), task=task)).items)
        assert len({item.group for item in items}) == 1
        outputs = model.forward(items)
        for index, task in enumerate(TASKS):
            assert_matches(unit([o[0] for o in outputs[index * len(TEXTS):(index + 1) * len(TEXTS)]]),
                           v3_reference[task])


def test_onnx_build_refuses_a_model_whose_tasks_select_adapters(v3_dir):
    from model_handlers.errors import ModelDirectoryError
    from model_handlers.kinds.text_embedding import export_onnx

    with pytest.raises(ModelDirectoryError, match="select adapters"):
        export_onnx(v3_dir, v3_dir / "never.onnx")


# --- PEFT adapters on MiniLM --------------------------------------------------------------------------------------


def peft_model(base, seed: int, modules=("query", "value"), spread: float = 0.3):
    """`base` with a LoRA adapter made by peft's own classes, its B matrices random (a trained adapter's are not
    zero; peft initialises them to zero)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=list(modules), lora_dropout=0.0))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, spread)
    return model


def make_peft_adapter(minilm_dir: Path, target: Path, seed: int, modules=("query", "value")) -> Path:
    """A LoRA adapter for MiniLM, saved as peft saves it."""
    from transformers import AutoModel

    peft_model(AutoModel.from_pretrained(str(minilm_dir)), seed, modules).save_pretrained(str(target))
    return target


def peft_reference(minilm_dir: Path, adapter_dir: Path | None, texts: list[str]) -> np.ndarray:
    """`PeftModel` on MiniLM (or MiniLM alone), pooled and normalised as the sentence-transformers model says."""
    from peft import PeftModel
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_dir), device="cpu", local_files_only=True)
    if adapter_dir is not None:
        transformer = st[0]
        transformer.model = PeftModel.from_pretrained(transformer.model, str(adapter_dir)).eval()
    return st.encode(texts, normalize_embeddings=True)


@pytest.fixture(scope="session")
def peft_adapters(tmp_path_factory, minilm_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("peft")
    return {"legal": make_peft_adapter(minilm_dir, root / "legal", 1),
            "medical": make_peft_adapter(minilm_dir, root / "medical", 2, modules=("query", "key", "dense"))}


@pytest.fixture(scope="module")
def peft_model_dir(tmp_path_factory, minilm_dir, peft_adapters) -> Path:
    """MiniLM with two PEFT adapters in the artifact, one selected by a task."""
    target = tmp_path_factory.mktemp("models") / "minilm-adapters"
    shutil.copytree(minilm_dir, target)
    for name, directory in peft_adapters.items():
        shutil.copytree(directory, target / "adapters" / name)
    (target / "searchbox.json").write_text(json.dumps({
        "adapters": {"legal": "adapters/legal", "medical": "adapters/medical"},
        "tasks": {"classification": {"adapter": "medical"}}}))
    return target


def test_peft_adapters_match_peftmodel(peft_model_dir, peft_adapters, minilm_dir):
    with serving(peft_model_dir) as app:
        for name, directory in peft_adapters.items():
            expected = peft_reference(minilm_dir, directory, TEXTS)
            assert_matches(embeddings(app, {"input": TEXTS, "adapter": name}), expected)
            assert max(cosine(a, b) for a, b in zip(expected, peft_reference(minilm_dir, None, TEXTS))) < 0.999
        # a task that selects an adapter; and no adapter at all is the plain model
        assert_matches(embeddings(app, {"input": TEXTS, "task": "classification"}),
                       peft_reference(minilm_dir, peft_adapters["medical"], TEXTS))
        assert_matches(embeddings(app, {"input": TEXTS}), peft_reference(minilm_dir, None, TEXTS))
        assert_error(app.post("/v1/embeddings", {"input": TEXTS, "task": "nonsense"}), 422, "UNKNOWN_TASK")
        assert_error(app.post("/v1/embeddings", {"input": TEXTS, "adapter": "finance"}), 422, "UNKNOWN_ADAPTER",
                     "finance", "legal", "medical")
        # SageMaker's header says the same as the body's field; two different names are refused
        headers = {"X-Amzn-SageMaker-Adapter-Identifier": "legal"}
        assert_matches(embeddings(app, {"input": TEXTS}, headers=headers),
                       peft_reference(minilm_dir, peft_adapters["legal"], TEXTS))
        assert_error(app.post("/v1/embeddings", {"input": TEXTS, "adapter": "medical"}, headers=headers), 400,
                     "CONFLICTING_ADAPTERS")
        # one pass, rows of both adapters and of none
        from model_handlers.types import EmbedRequest, TextInput

        model = app.runtime.handler.model
        items = []
        for adapter in (None, "legal", "medical"):
            items.extend(model.prepare_embed(EmbedRequest(inputs=tuple(TextInput(t) for t in TEXTS),
                                                          adapter=adapter)).items)
        assert len({item.group for item in items}) == 1
        outputs = [o[0] for o in model.forward(items)]
        for index, adapter in enumerate((None, "legal", "medical")):
            expected = peft_reference(minilm_dir, peft_adapters.get(adapter), TEXTS)
            assert_matches(unit(outputs[index * len(TEXTS):(index + 1) * len(TEXTS)]), expected)


def test_a_request_is_prepared_during_a_pass_and_a_new_adapter_waits_for_its_end(peft_model_dir, peft_adapters,
                                                                                  tmp_path):
    """A request reads the adapter set while another request's pass runs (it queues its texts for the next pass
    instead of waiting for this one to end); putting an adapter into the model waits until the pass ended."""
    from model_handlers.types import EmbedRequest, TextInput

    with serving(peft_model_dir) as app:
        model = app.runtime.handler.model
        inside, release = threading.Event(), threading.Event()

        def a_pass():
            with model.adapters.rows([None, "legal"]):
                inside.set()
                release.wait(30)

        def in_thread(call) -> tuple[threading.Thread, list]:
            done: list = []
            thread = threading.Thread(target=lambda: done.append(call()), daemon=True)
            thread.start()
            return thread, done

        running = threading.Thread(target=a_pass, daemon=True)
        running.start()
        assert inside.wait(10)
        try:
            preparing, prepared = in_thread(lambda: model.prepare_embed(
                EmbedRequest(inputs=(TextInput(TEXTS[0]),), adapter="legal")))
            preparing.join(5)
            assert prepared, "preparing a request waited for the running pass to end"
            assert prepared[0].adapters == ("legal",)
            shutil.copytree(peft_adapters["medical"], tmp_path / "late")
            registering, registered = in_thread(lambda: model.adapters.register("late", str(tmp_path / "late")))
            registering.join(1)
            assert not registered, "an adapter was put into the model during a pass"
        finally:
            release.set()
        running.join(10)
        registering.join(30)
        assert registered and "late" in model.adapters.names


def test_passes_of_the_plain_model_run_at_once_and_an_adapter_waits_for_them_all(minilm_dir, peft_adapters, tmp_path):
    """With no adapter in the model, passes share it (the batcher's lanes run them at once); putting an adapter in
    waits until every running pass ended, and a pass that comes while it waits waits for it."""
    with serving(minilm_dir) as app:
        model = app.runtime.handler.model
        together, release = threading.Barrier(3, timeout=10), threading.Event()
        entered: list[str] = []

        def a_pass(name: str, meet: bool) -> None:
            with model.adapters.rows([None]):
                entered.append(name)
                if meet:
                    together.wait()  # only when both passes are inside at once
                    release.wait(30)

        passes = [threading.Thread(target=a_pass, args=(f"pass {n}", True), daemon=True) for n in (1, 2)]
        for thread in passes:
            thread.start()
        together.wait()
        shutil.copytree(peft_adapters["medical"], tmp_path / "late")
        registered: list = []
        registering = threading.Thread(target=lambda: registered.append(
            model.adapters.register("late", str(tmp_path / "late"))), daemon=True)
        registering.start()
        registering.join(1)
        assert not registered, "an adapter was put into the model during a pass"
        later = threading.Thread(target=a_pass, args=("later", False), daemon=True)
        later.start()
        later.join(0.5)
        assert "later" not in entered, "a pass overtook the adapter waiting for the model"
        release.set()
        registering.join(30)
        later.join(30)
        assert registered and "late" in model.adapters.names
        assert entered[:2] == ["pass 1", "pass 2"] or entered[:2] == ["pass 2", "pass 1"]
        assert entered[2] == "later"


def test_models_without_adapters_say_so(app):
    """The embedded MiniLM holds none until one is registered: /v1/models lists none, `adapter` is refused."""
    card = app.get("/v1/models").json()["data"][0]
    assert card["adapters"] == [] and card["task_adapters"] == {} and card["unknown_task"] == "default"
    assert_error(app.post("/v1/embeddings", {"input": ["x"], "adapter": "legal"}), 422, "UNKNOWN_ADAPTER", "legal")


# --- SageMaker's adapter API, on a real server --------------------------------------------------------------------


def _tar(directory: Path, target: Path) -> Path:
    import tarfile

    with tarfile.open(target, "w:gz") as tar:
        for child in directory.iterdir():
            tar.add(child, arcname=child.name)
    return target


def test_sagemaker_adapter_api_round_trip(http_serving_factory, peft_adapters, minilm_dir, tmp_path):
    """Register (directory, archive, lazily), list, invoke by header, refuse bad adapters with nothing half-loaded,
    unload past the cap, pin, and unregister: as SageMaker's inference components drive it."""
    import requests

    server = http_serving_factory(minilm_dir, {"SEARCHBOX_MAX_ADAPTERS": "2"})
    header = "X-Amzn-SageMaker-Adapter-Identifier"

    def register(name, src, **flags):
        return requests.post(server.url + "/adapters", json={"name": name, "src": str(src), **flags}, timeout=120)

    def listed():
        return {a["name"]: a for a in requests.get(server.url + "/adapters", timeout=30).json()["data"]}

    def embed(adapter, texts=TEXTS, path="/invocations"):
        body = {"data": [{"text": t} for t in texts]} if path == "/invocations" else {"input": texts}
        response = requests.post(server.url + path, json=body, headers={header: adapter} if adapter else {},
                                 timeout=120)
        assert response.status_code == 200, response.text
        return [item["embedding"] for item in response.json()["data"]]

    assert listed() == {}
    response = register("legal", peft_adapters["legal"])
    assert (response.status_code, response.text) == (200, "Adapter legal registered")
    archive = _tar(peft_adapters["medical"], tmp_path / "medical.tar.gz")
    response = requests.post(server.url + "/adapters", json={"name": "medical", "src": str(archive)},
                             headers={"X-Amzn-SageMaker-Adapter-Alias": "medical-v2"}, timeout=120)
    assert (response.status_code, response.text) == (200, "Adapter medical-v2 registered")
    assert {name: a["loaded"] for name, a in listed().items()} == {"legal": True, "medical": True}

    expected = {name: peft_reference(minilm_dir, directory, TEXTS) for name, directory in peft_adapters.items()}
    expected[None] = peft_reference(minilm_dir, None, TEXTS)
    assert_matches(embed("legal"), expected["legal"])
    assert_matches(embed("medical", path="/v1/embeddings"), expected["medical"])
    assert_matches(embed(None), expected[None])

    # refused: a name taken, a body without src, a missing path, a directory that is no adapter, one for another model
    assert_error(register("legal", peft_adapters["legal"]), 409, "ADAPTER_EXISTS", "legal")
    assert_error(requests.post(server.url + "/adapters", json={"name": "x"}, timeout=30), 400,
                 "INVALID_ADAPTER_REQUEST", "src")
    assert_error(register("ghost", tmp_path / "nowhere"), 424, "ADAPTER_NOT_FOUND", "ghost")
    assert_error(register("plain", minilm_dir), 424, "ADAPTER_INVALID", "adapter_config.json")
    foreign = make_peft_adapter(minilm_dir, tmp_path / "foreign", 3)
    config = json.loads((foreign / "adapter_config.json").read_text())
    (foreign / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj", "v_proj"]}))
    assert_error(register("foreign", foreign), 424, "ADAPTER_LOAD_FAILED", "foreign")
    assert set(listed()) == {"legal", "medical"}  # nothing of the refused ones stayed
    assert_matches(embed("legal"), expected["legal"])

    # past the cap of 2 the least recently used idle adapter is unloaded, and loaded again when asked for
    embed("medical")  # legal is now the least recently used
    assert register("legal-copy", peft_adapters["legal"]).status_code == 200
    assert {name: a["loaded"] for name, a in listed().items()} == {"legal": False, "medical": True,
                                                                   "legal-copy": True}
    assert_matches(embed("legal"), expected["legal"])
    assert listed()["legal"]["loaded"]

    # registered lazily: loaded by the first request that names it
    assert register("lazy", peft_adapters["medical"], preload=False).status_code == 200
    assert listed()["lazy"]["loaded"] is False
    assert_matches(embed("lazy"), expected["medical"])

    # pinned adapters are never unloaded; with every slot pinned, one more is refused by name
    for name in list(listed()):
        assert requests.delete(f"{server.url}/adapters/{name}", timeout=30).status_code == 200
    assert register("p1", peft_adapters["legal"], pin=True).status_code == 200
    assert register("p2", peft_adapters["medical"], pin=True).status_code == 200
    assert_error(register("p3", peft_adapters["legal"]), 424, "ADAPTER_CAPACITY", "p3", "SEARCHBOX_MAX_ADAPTERS")

    # unregister: gone for requests, a second time not found (SageMaker's message)
    response = requests.delete(server.url + "/adapters/p1", timeout=30)
    assert (response.status_code, response.text) == (200, "Adapter p1 unregistered")
    response = requests.post(server.url + "/invocations", json={"data": [{"text": "x"}]}, headers={header: "p1"},
                             timeout=30)
    assert_error(response, 422, "UNKNOWN_ADAPTER", "p1", "p2")
    assert_error(requests.delete(server.url + "/adapters/p1", timeout=30), 404, "ADAPTER_NOT_FOUND",
                 "The adapter p1 was not found")


def test_archived_adapters_in_process_unpack_once_and_leave_nothing_behind(peft_adapters, minilm_dir, tmp_path,
                                                                           monkeypatch):
    """The adapter API in this process (the round trip above is the server tier's): an archive is unpacked once into
    a private directory, reloaded from it after the cap unloaded it, and that directory is removed when the adapter
    is unregistered or the model closed; an archive that would write outside it is refused, leaving nothing; an
    unloaded or unregistered adapter is out of the model (its name loads again)."""
    import tarfile
    import tempfile

    unpacked_root = tmp_path / "tmp"
    unpacked_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(unpacked_root))  # where mkdtemp puts the unpacked archives

    def unpacked(name: str) -> list[Path]:
        return sorted(unpacked_root.glob(f"searchbox-adapter-{name}-*"))

    legal = _tar(peft_adapters["legal"], tmp_path / "legal.tar.gz")
    medical = _tar(peft_adapters["medical"], tmp_path / "medical.tar.gz")
    # a member that climbs out of the directory it is unpacked into (tarfile's `data` filter refuses it)
    escaping = tmp_path / "escaping.tar.gz"
    with tarfile.open(escaping, "w:gz") as tar:
        for child in peft_adapters["legal"].iterdir():
            tar.add(child, arcname=child.name)
        tar.add(peft_adapters["legal"] / "adapter_config.json", arcname="../escaped.json")
    expected = {name: peft_reference(minilm_dir, directory, TEXTS) for name, directory in peft_adapters.items()}
    header = "X-Amzn-SageMaker-Adapter-Identifier"

    with serving(minilm_dir, {"SEARCHBOX_MAX_ADAPTERS": "1"}) as app:
        def embed(adapter: str) -> list:
            return embeddings(app, {"input": TEXTS}, headers={header: adapter})

        def loaded() -> dict[str, bool]:
            return {a["name"]: a["loaded"] for a in app.get("/adapters").json()["data"]}

        response = app.post("/adapters", {"name": "sneaky", "src": str(escaping)})
        assert_error(response, 424, "ADAPTER_INVALID", "adapter 'sneaky': cannot unpack", str(escaping))
        assert unpacked("sneaky") == [] and not (unpacked_root / "escaped.json").exists() and loaded() == {}

        assert app.post("/adapters", {"name": "legal", "src": str(legal)}).status_code == 200
        (legal_dir,) = unpacked("legal")
        assert (legal_dir / "adapter_model.safetensors").is_file()
        assert_matches(embed("legal"), expected["legal"])
        # a cap of 1: medical's registration unloads legal, whose next request loads it again from the same
        # unpacked directory, unloading medical (a layer left behind would refuse the name: "already exists")
        assert app.post("/adapters", {"name": "medical", "src": str(medical)}).status_code == 200
        assert loaded() == {"legal": False, "medical": True}
        assert_matches(embed("legal"), expected["legal"])
        assert loaded() == {"legal": True, "medical": False} and unpacked("legal") == [legal_dir]
        assert_matches(embed("medical"), expected["medical"])

        assert app.delete("/adapters/legal").status_code == 200
        assert unpacked("legal") == [] and unpacked("medical") != []
        assert app.post("/adapters", {"name": "legal", "src": str(legal)}).status_code == 200  # out of the model
        assert_matches(embed("legal"), expected["legal"])
        assert_matches(embed("medical"), expected["medical"])
        assert len(unpacked("legal")) == 1
    assert list(unpacked_root.iterdir()) == []  # closing the model removed the adapters still registered


def test_adapters_are_refused_by_a_reranker(tmp_path, reranker_dir):
    """A cross-encoder holds no adapters: registering one says so, by model."""
    with serving(reranker_dir) as app:
        response = app.post("/adapters", {"name": "a", "src": str(tmp_path)})
        assert_error(response, 400, "ADAPTERS_UNSUPPORTED", "reranker")
        assert app.get("/adapters").json() == {"object": "list", "data": []}


def test_adapter_answers_are_documented(app):
    from container.openapi import document
    from helpers import assert_documented

    spec = document()
    assert_documented(spec, "get", "/adapters", app.get("/adapters"))
    assert_documented(spec, "post", "/adapters", app.post("/adapters", {"name": "x"}))  # 400: no src
    assert_documented(spec, "delete", "/adapters/{name}", app.delete("/adapters/none-such"))  # 404
    assert_documented(spec, "get", "/v1/models", app.get("/v1/models"))


def test_the_listing_says_what_task_does(v3_dir, minilm_dir):
    """usage-information.md's model paragraph names each task's effect and the unknown-task rule."""
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "packaging"))
    import aws_listing

    text = aws_listing._model_lines(SimpleNamespace(model_dir=v3_dir, tasks={}))
    for task in TASKS:
        assert f"`{task}` (its LoRA adapter" in text
    assert "`retrieval.query` (its LoRA adapter and an instruction)" in text
    assert "refused (422 UNKNOWN_TASK)" in text and "Matryoshka `dimensions` 8, 16, 32" in text
    prompts = aws_listing._model_lines(SimpleNamespace(model_dir=minilm_dir, tasks={"retrieval.query": "query: "}))
    assert "`retrieval.query` (an instruction)" in prompts and "gets the default" in prompts


def test_v3_sentence_transformers_layout_serves_natively(tmp_path, minilm_dir, v3_reference):
    """v3 also ships modules.json (transformer, mean pooling, normalisation): served natively all the same, with
    the same answers (the same seed makes the same checkpoint)."""
    model_dir = build_v3(tmp_path / "v3-st", minilm_dir, sentence_transformers=True)
    with serving(model_dir) as app:
        assert type(app.runtime.handler.model._encoder).__name__ == "_JinaV3Encoder"
        for task in (None, "retrieval.passage", "text-matching"):
            body = {"input": TEXTS} if task is None else {"input": TEXTS, "task": task}
            assert_matches(embeddings(app, body), v3_reference[task])


# --- adapters on the other kinds that embed ------------------------------------------------------------------------


def test_peft_adapter_on_clip_matches_peftmodel(tmp_path, clip_dir):
    """A LoRA adapter on both towers of a CLIP, per row: texts and images answer as `PeftModel(CLIPModel)` does."""
    import base64
    import io

    from peft import PeftModel
    from PIL import Image
    from transformers import AutoProcessor, CLIPModel

    clip_dir = shutil.copytree(clip_dir, tmp_path / "clip")  # the adapter is written into it
    peft_model(CLIPModel.from_pretrained(str(clip_dir)), 5, ("q_proj", "v_proj"), spread=0.5).save_pretrained(
        str(clip_dir / "adapters" / "style"))
    (clip_dir / "searchbox.json").write_text(json.dumps({"adapters": {"style": "adapters/style"}}))

    image = Image.fromarray((np.arange(48 * 40 * 3).reshape(40, 48, 3) % 251).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    texts = ["a photo of a dog", "mountains at sunset"]
    reference = PeftModel.from_pretrained(CLIPModel.from_pretrained(str(clip_dir)),
                                          str(clip_dir / "adapters" / "style"))
    processor = AutoProcessor.from_pretrained(str(clip_dir))
    with torch.no_grad():
        expected = list(reference.get_text_features(**processor(text=texts, padding=True, return_tensors="pt"))
                        .pooler_output.numpy())
        expected += list(reference.get_image_features(**processor(images=[image], return_tensors="pt"))
                         .pooler_output.numpy())
    with serving(clip_dir) as app:
        inputs = [{"text": t} for t in texts] + [{"image": base64.b64encode(buffer.getvalue()).decode()}]
        served = embeddings(app, {"input": inputs, "adapter": "style"})
        assert_matches(served, unit(expected))  # CLIP's features are not unit length; `normalized` makes them so
        plain = embeddings(app, {"input": inputs})
        assert max(cosine(a, b) for a, b in zip(plain, expected)) < 0.999  # the adapter changes every vector


def test_peft_adapter_on_a_colbert_equals_its_merged_weights(colbert, tmp_path, minilm_dir):
    """Per-row LoRA at run time answers what PyLate (the reference pipeline, in its own venv) answers on the same
    ColBERT with the adapter merged into its encoder by peft's own merge_and_unload."""
    from transformers import AutoModel

    from models.colbert import pylate_encode
    from model_handlers.serving_config import read_serving_config

    source = colbert.model_dir("pylate")
    encoder = read_serving_config(source).kind_settings.encoder_folder
    adapted, merged = tmp_path / "adapted", tmp_path / "merged"
    shutil.copytree(source, adapted)
    peft = peft_model(AutoModel.from_pretrained(str(source / encoder)), 9)
    peft.save_pretrained(str(adapted / "adapters" / "domain"))
    (adapted / "searchbox.json").write_text(json.dumps({"adapters": {"domain": "adapters/domain"}}))
    shutil.copytree(source, merged)
    peft.merge_and_unload().save_pretrained(str(merged / encoder), safe_serialization=True)
    expected = pylate_encode(merged, TEXTS, False, tmp_path)

    body = {"input": TEXTS, "input_type": "document"}
    with serving(adapted) as app:
        response = app.post("/v1/multi-vector", {**body, "adapter": "domain"})
        assert response.status_code == 200, response.text
        served = [item["embeddings"] for item in response.json()["data"]]
    for rows, expected_rows in zip(served, expected):
        rows = np.asarray(rows, dtype=np.float64)
        assert rows.shape == expected_rows.shape, (rows.shape, expected_rows.shape)
        # whole vectors, length included: PyLate answers unit token vectors
        np.testing.assert_allclose(rows, expected_rows, atol=1e-4, rtol=0)
    unadapted = pylate_encode(source, TEXTS, False, tmp_path)
    assert all(np.abs(a - b).max() > 1e-2 for a, b in zip(expected, unadapted))  # the adapter changes every text
