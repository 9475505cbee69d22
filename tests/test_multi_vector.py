"""Multi-vector (ColBERT) models: token vectors and MaxSim against PyLate 1.6.0, the client's bodies over HTTP.

The models and the reference come from tests/models/colbert.py (PyLate in its own venv): a ColBERT PyLate made
from the embedded MiniLM, the same weights in colbert-ai's layout, and a remote-code XLM-R ColBERT in
jina-colbert-v2's layout. Token vectors must match in count and direction (cosine >= 0.9999 each), MaxSim
scores within 1e-4 of `colbert_scores`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import requests
from transformers import AutoTokenizer

from models.colbert import DOCUMENTS, LAYOUTS, QUERIES, RERANK_DOCUMENTS, RERANK_QUERY
from conftest import START_TIMEOUT_S
from container.app import create_app
from container.runtime import ModelRuntime
from container.settings import Settings
from helpers import InProcess, answer, assert_documented, assert_error
from model_handlers import HandlerOptions, load_handler
from model_handlers.errors import ModelDirectoryError
from model_handlers.ranking import maxsim
from model_handlers.serving_config import read_serving_config
from model_handlers.types import EmbedRequest, RerankRequest, TextInput

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
MIN_COSINE = 0.9999
SCORE_TOLERANCE = 1e-4


def rows_match(answer, reference) -> None:
    """Same number of token vectors, each pointing the same way as the reference's."""
    answer = np.asarray(answer, dtype=np.float64)
    assert answer.shape == reference.shape, (answer.shape, reference.shape)
    cosines = (answer * reference).sum(1) / np.linalg.norm(answer, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() >= MIN_COSINE, cosines.min()


def content_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def linked_copy(source: Path, target: Path, searchbox: dict | None = None) -> Path:
    """`source` as a new directory of links (weights are not copied), with its own searchbox.json."""
    for path in source.rglob("*"):
        if path.is_file():
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (target / path.relative_to(source)).symlink_to(path)
    if searchbox is not None:
        (target / "searchbox.json").write_text(json.dumps(searchbox))
    return target


@pytest.fixture(scope="module")
def pylate_dir(colbert) -> Path:
    return colbert.model_dir("pylate")


@pytest.fixture(scope="module")
def tokenizer(pylate_dir):
    return AutoTokenizer.from_pretrained(str(pylate_dir))


@pytest.fixture(scope="module")
def reference(colbert) -> dict[str, np.ndarray]:
    return colbert.arrays("pylate")


@pytest.fixture(scope="module")
def pylate_settings(colbert) -> dict:
    """The lengths and prefixes PyLate itself read the model with (tests/pylate_reference.py)."""
    return colbert.settings("pylate")


@pytest.fixture(scope="module")
def query_length(pylate_settings) -> int:
    return pylate_settings["query_length"]


@pytest.fixture(scope="module")
def document_specials(pylate_settings, tokenizer) -> int:
    """Tokens of a document that are not its text: [CLS], the document marker and [SEP], as the tokenizer counts."""
    return len(tokenizer(pylate_settings["document_prefix"])["input_ids"])


@pytest.fixture(scope="module")
def document_room(pylate_settings, document_specials) -> int:
    return pylate_settings["document_length"] - document_specials


# --- parity with PyLate, in-process, every layout ----------------------------------------------------------


def operator_trusts(layout: str) -> bool:
    """The remote-code layout runs the directory's own modules, which no manifest pins here: the operator's
    SEARCHBOX_TRUST_REMOTE_CODE lets it (model_handlers/model_code.py)."""
    return layout == "xlmr-remote-code"


@pytest.fixture(scope="module", params=LAYOUTS)
def layout_handler(request, colbert):
    handler = load_handler(colbert.model_dir(request.param),
                           HandlerOptions(device="cpu", trust_remote_code=operator_trusts(request.param)))
    handler.warm_up()
    yield request.param, handler
    handler.close()


def test_token_vectors_and_maxsim_match_pylate(layout_handler, colbert):
    layout, handler = layout_handler
    expected = colbert.arrays(layout)
    queries = handler.run(EmbedRequest(inputs=tuple(map(TextInput, QUERIES)), input_type="query")).vectors
    documents = handler.run(EmbedRequest(inputs=tuple(map(TextInput, DOCUMENTS)), input_type="document")).vectors
    for i, vectors in enumerate(queries):
        rows_match(vectors, expected[f"q{i}"])
    for j, vectors in enumerate(documents):
        rows_match(vectors, expected[f"d{j}"])
    scores = np.asarray([[maxsim(q, d) for d in documents] for q in queries])
    np.testing.assert_allclose(scores, expected["scores"], atol=SCORE_TOLERANCE, rtol=0)
    # rerank scores by MaxSim too (documents that fit one window: PyLate cuts the long one, rerank windows it)
    short = DOCUMENTS[:4]
    for i, query in enumerate(QUERIES):
        hits = handler.run(RerankRequest(query=TextInput(query), documents=tuple(map(TextInput, short)))).hits
        for hit in hits:
            assert abs(hit.relevance_score - expected["scores"][i, hit.index]) < SCORE_TOLERANCE


def test_settings_are_read_from_each_layout(colbert, minilm_dir):
    for layout in LAYOUTS:
        config = read_serving_config(colbert.model_dir(layout), trust_remote_code=operator_trusts(layout))
        assert config.kind.name == "multi-vector", layout
        settings, expected = config.kind_settings, colbert.settings(layout)
        assert (settings.query_prefix, settings.document_prefix, settings.query_length, settings.document_length,
                settings.attend_to_expansion_tokens) == (
            expected["query_prefix"], expected["document_prefix"], expected["query_length"],
            expected["document_length"], expected["attend_to_expansion_tokens"]), layout
    assert colbert.settings("colbert-ai")["query_prefix"] == "[unused0]"
    assert colbert.settings("xlmr-remote-code")["attend_to_expansion_tokens"] is True
    assert read_serving_config(minilm_dir).kind.name == "embedding"


def test_searchbox_json_wins_and_bad_settings_are_refused_by_name(tmp_path, pylate_dir):
    shorter = linked_copy(pylate_dir, tmp_path / "short-queries", {"query_length": 16, "served_model_name": "q16"})
    handler = load_handler(shorter, HandlerOptions(device="cpu"))
    try:
        result = handler.run(EmbedRequest(inputs=(TextInput("what do cats like to eat"),), input_type="query"))
        assert result.vectors[0].shape == (16, 128) and result.token_counts == [16]
    finally:
        handler.close()
    wrong = linked_copy(pylate_dir, tmp_path / "wrong-type", {"query_length": "32"})
    with pytest.raises(ModelDirectoryError, match="searchbox.json: query_length must be an integer"):
        read_serving_config(wrong)
    no_marker = linked_copy(pylate_dir, tmp_path / "no-marker", {"query_prefix": "[NOT-A-TOKEN]"})
    with pytest.raises(ModelDirectoryError, match="query_prefix"):
        load_handler(no_marker, HandlerOptions(device="cpu"))


def test_colbert_ai_pickled_weights_load_only_when_the_operator_opts_in(tmp_path, colbert):
    """colbertv2.0 itself ships pytorch_model.bin: refused by default, served with SEARCHBOX_ALLOW_PICKLE."""
    import safetensors.torch
    import torch

    source = colbert.model_dir("colbert-ai")
    pickled = tmp_path / "colbert-ai-pickled"
    pickled.mkdir()
    for path in source.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, pickled / path.name)
    torch.save(safetensors.torch.load_file(str(source / "model.safetensors")), pickled / "pytorch_model.bin")
    with pytest.raises(ModelDirectoryError, match="SEARCHBOX_ALLOW_PICKLE"):
        read_serving_config(pickled)
    handler = load_handler(pickled, HandlerOptions(device="cpu", allow_pickle=True))
    try:
        vectors = handler.run(EmbedRequest(inputs=(TextInput(DOCUMENTS[3]),))).vectors[0]
    finally:
        handler.close()
    rows_match(vectors, colbert.arrays("colbert-ai")["d3"])


def test_the_directory_default_input_type_makes_a_job_of_queries(tmp_path, pylate_dir, reference):
    queries = linked_copy(pylate_dir, tmp_path / "queries", {"default_input_type": "query"})
    handler = load_handler(queries, HandlerOptions(device="cpu"))
    try:
        unsaid = handler.run(EmbedRequest(inputs=(TextInput(QUERIES[0]),))).vectors[0]
        said = handler.run(EmbedRequest(inputs=(TextInput(DOCUMENTS[0]),), input_type="document")).vectors[0]
    finally:
        handler.close()
    rows_match(unsaid, reference["q0"])
    rows_match(said, reference["d0"])
    bad = linked_copy(pylate_dir, tmp_path / "bad", {"default_input_type": "passage"})
    with pytest.raises(ModelDirectoryError, match="default_input_type"):
        read_serving_config(bad)


# --- the client's bodies over HTTP --------------------------------------------------------------------------


def test_client_query_and_document_envelopes(colbert_server, reference, tokenizer, query_length, document_room,
                                              document_specials):
    # client.embed(texts="...", use_colbert=True, input_type=InputType.QUERY): `data` is one object
    query = answer(colbert_server, "/invocations",
                   {"data": {"text": QUERIES[0]}, "parameters": {"input_type": "query"}})
    assert query["parameters"] == {"input_type": "query"}
    (item,) = query["data"]
    assert set(item) == {"id", "embeddings", "usage"} and len(item["id"]) == 32
    rows_match(item["embeddings"], reference["q0"])
    assert item["usage"] == {"total_tokens": query_length}  # the [MASK] expansion is read too
    # documents: the client's default input_type, and no parameters at all
    bodies = [{"data": [{"text": text, "id": f"doc-{j}"} for j, text in enumerate(DOCUMENTS)],
               "parameters": {"input_type": "document"}},
              {"data": [{"text": text, "id": f"doc-{j}"} for j, text in enumerate(DOCUMENTS)]}]
    for body in bodies:
        documents = answer(colbert_server, "/invocations", body)["data"]
        assert [d["id"] for d in documents] == [f"doc-{j}" for j in range(len(DOCUMENTS))]
        for j, document in enumerate(documents):
            rows_match(document["embeddings"], reference[f"d{j}"])
            read = min(content_tokens(tokenizer, DOCUMENTS[j]), document_room) + document_specials
            assert document["usage"] == {"total_tokens": read}
    # punctuation is read (usage) but answers no vector
    assert len(documents[1]["embeddings"]) < documents[1]["usage"]["total_tokens"]


def test_public_multi_vector_api(colbert_server, reference, query_length):
    body = {"model": "tiny-colbert", "input": QUERIES[:2], "input_type": "query"}
    public = answer(colbert_server, "/v1/multi-vector", body)
    assert set(public) == {"model", "object", "usage", "data"}
    assert public["model"] == "pylate" and public["object"] == "list"
    assert public["usage"] == {"total_tokens": 2 * query_length}
    assert [set(d) for d in public["data"]] == [{"object", "index", "embeddings"}] * 2
    assert [(d["object"], d["index"]) for d in public["data"]] == [("embeddings", 0), ("embeddings", 1)]
    for i, item in enumerate(public["data"]):
        rows_match(item["embeddings"], reference[f"q{i}"])
    # /invocations routes the same body by its keys and answers in the served model's form
    routed = answer(colbert_server, "/invocations", body)
    assert routed["object"] == "list" and [d["object"] for d in routed["data"]] == ["embeddings"] * 2
    one = answer(colbert_server, "/v1/multi-vector", {"input": DOCUMENTS[0]})
    rows_match(one["data"][0]["embeddings"], reference["d0"])


def test_dimensions_cut_and_renormalise_each_token_vector(colbert_server, reference):
    cut = answer(colbert_server, "/v1/multi-vector", {"input": DOCUMENTS[:2], "dimensions": 64})
    for j, item in enumerate(cut["data"]):
        rows = np.asarray(item["embeddings"])
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
        rows_match(rows, reference[f"d{j}"][:, :64])
    # the envelope takes dimensions as a numeric string too
    envelope = answer(colbert_server, "/invocations", {"data": [{"text": QUERIES[0]}],
                                                       "parameters": {"input_type": "query", "dimensions": "96"}})
    rows_match(envelope["data"][0]["embeddings"], reference["q0"][:, :96])
    assert_error(colbert_server.post("/v1/multi-vector", {"input": ["x"], "dimensions": 129}), 422,
                 "INVALID_DIMENSIONS", "between 1 and 128")


def test_every_encoding_applies_to_each_token_vector(colbert_server):
    types = ["float", "base64", "ubinary", "binary"]
    keyed = answer(colbert_server, "/v1/multi-vector",
                   {"input": [DOCUMENTS[3]], "embedding_type": types, "dimensions": 100})["data"][0]["embeddings"]
    assert set(keyed) == set(types)
    floats = np.asarray(keyed["float"], dtype=np.float32)
    assert floats.shape[1] == 100
    decoded = np.stack([np.frombuffer(base64.b64decode(row), dtype="<f4") for row in keyed["base64"]])
    np.testing.assert_array_equal(decoded, floats)
    packed = np.packbits(floats > 0, axis=1)
    assert np.asarray(keyed["ubinary"]).shape == (len(floats), 13)  # 100 bits -> 13 bytes per token
    np.testing.assert_array_equal(np.asarray(keyed["ubinary"]), packed)
    np.testing.assert_array_equal(np.asarray(keyed["binary"]), packed.astype(np.int16) - 128)
    # one type alone, on the envelope: base64 strings, one per token vector
    single = answer(colbert_server, "/invocations", {"data": [{"text": DOCUMENTS[3]}],
                                                     "parameters": {"embedding_type": "base64", "dimensions": 100}})
    rows = single["data"][0]["embeddings"]
    assert len(rows) == len(floats) and all(isinstance(row, str) for row in rows)


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/multi-vector", {"input": DOCUMENTS[:2], "input_type": "document"}),
    ("/v1/multi-vector", {"input": [QUERIES[0]], "embedding_type": ["float", "base64", "ubinary", "binary"]}),
    ("/invocations", {"input": QUERIES[:1]}),
    ("/invocations", {"data": [{"text": DOCUMENTS[0], "id": "d1"}], "parameters": {"embedding_type": "base64"}}),
    ("/v1/rerank", {"query": RERANK_QUERY, "documents": RERANK_DOCUMENTS[1:], "top_n": 1}),
    ("/v1/embeddings", {"input": ["x"]}),  # a single-vector route: refused, with the documented error
])
def test_answers_match_the_openapi_document(colbert_server, path, body):
    """The multi-vector answers are the ones GET /openapi.json describes (tests/test_openapi.py does the rest)."""
    document = requests.get(f"{colbert_server.url}/openapi.json", timeout=10).json()
    assert_documented(document, "post", path, colbert_server.post(path, body))


def test_single_and_multi_vector_mismatches_name_the_route(colbert_server, app):
    refused = assert_error(colbert_server.post("/v1/embeddings", {"input": ["hello"]}), 400, "UNSUPPORTED_OPERATION",
                           "multi-vector", "one vector per token", "/v1/multi-vector", "/v1/rerank")
    assert "does not answer single-vector embedding requests" in refused["detail"]
    single = assert_error(app.post("/v1/multi-vector", {"input": ["hello"], "input_type": "query"}), 400,
                          "UNSUPPORTED_OPERATION", "one vector per input", "/v1/embeddings")
    assert "does not answer multi-vector embedding requests" in single["detail"]
    missing = assert_error(app.post("/v1/nowhere", {}), 404, "NOT_FOUND", "/v1/multi-vector")
    assert missing["code"] == "NOT_FOUND"


def test_bad_requests_name_what_to_fix(colbert_server, query_length):
    post = colbert_server.post
    assert_error(post("/v1/multi-vector", {"input": ["x"], "input_type": "passage"}), 422, None, "input_type")
    assert_error(post("/v1/multi-vector", {"input": ["x"], "late_chunking": True}), 422, None, "late_chunking")
    assert_error(post("/v1/multi-vector", {"input": [QUERIES[2]], "input_type": "query", "truncate": False}), 400,
                 "INPUT_TOKEN_LIMIT_EXCEEDED", "input 0", f"limit of {query_length}")
    assert_error(post("/v1/multi-vector", {"input": [{"image": "https://example.com/x.png"}]}), 400,
                 "UNSUPPORTED_INPUT", "input 0")
    assert_error(post("/invocations", {"data": [{"text": "x"}], "parameters": {"input_type": 3}}), 422, None,
                 "parameters.input_type")


# --- batch transform -----------------------------------------------------------------------------------------


def test_batch_transform_csv_rows_are_documents(colbert_server, reference):
    csv = ('d0,cats like to eat fish and chicken\n'
           '"d1","Dogs, cats & birds: popular pets!!! (mostly...)"\n'
           'd3,ColBERT encodes every token; MaxSim sums each query token\'s best match.\n')
    response = colbert_server.post("/invocations", data=csv.encode(), headers={"Content-Type": "text/csv"})
    assert response.status_code == 200, response.text[:500]
    assert response.text.endswith("}\n") and response.text.count("\n") == 1
    body = response.json()
    assert body["parameters"] == {} and [d["id"] for d in body["data"]] == ["d0", "d1", "d3"]
    for item, key in zip(body["data"], ("d0", "d1", "d3")):
        rows_match(item["embeddings"], reference[key])
    lines = (json.dumps({"text": DOCUMENTS[0], "id": "7"}) + "\n"
             + json.dumps({"input": [QUERIES[0]], "input_type": "query"}) + "\n")
    jsonl = colbert_server.post("/invocations", data=lines.encode(), headers={"Content-Type": "application/jsonlines"})
    assert jsonl.status_code == 200, jsonl.text[:500]
    record, public = (json.loads(line) for line in jsonl.text.splitlines())
    # a record without input_type is a document: PyLate's document vectors, not the query's expanded rows
    assert record["data"][0]["id"] == "7"
    rows_match(record["data"][0]["embeddings"], reference["d0"])
    rows_match(public["data"][0]["embeddings"], reference["q0"])


@pytest.fixture(scope="module")
def colbert_of_queries(pylate_dir):
    """The ColBERT in this process with the batch job's setting: an input that does not say is a query."""
    from helpers import serving

    with serving(pylate_dir, {"SEARCHBOX_DEFAULT_INPUT_TYPE": "query"}) as app:
        yield app


def test_an_operator_setting_makes_a_batch_job_of_queries(colbert_of_queries, reference, query_length):
    server = colbert_of_queries
    csv = f'q0,{QUERIES[0]}\n"q1",""\n'.encode()
    response = server.post("/invocations", data=csv, headers={"Content-Type": "text/csv"})
    assert response.status_code == 200, response.text[:500]
    items = response.json()["data"]
    rows_match(items[0]["embeddings"], reference["q0"])
    rows_match(items[1]["embeddings"], reference["q1"])
    assert [item["usage"] for item in items] == [{"total_tokens": query_length}] * 2
    # a request that says what it is still is that
    said = answer(server, "/v1/multi-vector", {"input": [DOCUMENTS[0]], "input_type": "document"})
    rows_match(said["data"][0]["embeddings"], reference["d0"])


def test_a_batch_answer_over_the_cap_is_refused_before_any_work(pylate_dir):
    settings = Settings.from_env({"SEARCHBOX_MODEL_DIR": str(pylate_dir), "SEARCHBOX_MAX_RESPONSE_MB": "1"})
    runtime = ModelRuntime(settings).start()
    try:
        assert runtime.wait_ready(START_TIMEOUT_S), runtime.load_error
        client = InProcess(create_app(settings, runtime).test_client())
        # 400 rows of ~60 tokens: ~24k token vectors of 128 floats, far over 1 MiB of JSON
        rows = "".join(f"r{i},{DOCUMENTS[4][:300]}\n" for i in range(400)).encode()
        before = runtime.handler.forward_passes
        refused = assert_error(client.post("/invocations", data=rows, headers={"Content-Type": "text/csv"}), 413,
                               "RESPONSE_TOO_LARGE", "SEARCHBOX_MAX_RESPONSE_MB")
        assert runtime.handler.forward_passes == before, refused
        small = client.post("/invocations", data=b"r0,hello\n", headers={"Content-Type": "text/csv"})
        assert small.status_code == 200
    finally:
        runtime.close()


# --- rerank by MaxSim --------------------------------------------------------------------------------------------


def expected_windows(length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    if length <= size:
        return [(0, length)]
    starts = list(range(0, length - size, size - overlap)) + [length - size]
    return [(start, start + size) for start in starts]


def test_maxsim_rerank_finds_the_passage_at_the_end_of_a_long_document(colbert_server, reference, tokenizer,
                                                                       query_length, document_room,
                                                                       document_specials):
    body = {"data": {"query": RERANK_QUERY, "documents": [{"text": d} for d in RERANK_DOCUMENTS]}}
    (item,) = answer(colbert_server, "/invocations", body)["data"]
    results = item["results"]
    assert results[0]["index"] == 0, results
    for result in results:
        assert abs(result["relevance_score"] - reference["rerank_best"][result["index"]]) < SCORE_TOLERANCE
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    # the relevant passage is only in the long document's last window: its head alone would lose
    windows = reference["rerank_windows0"]
    assert len(windows) > 2 and int(np.argmax(windows)) == len(windows) - 1
    assert windows[0] < reference["rerank_best"][1:].max()
    # usage: the query once (expanded to the query length), each window with its [CLS] [D] [SEP]
    assert item["query_usage"] == {"total_tokens": query_length}
    for result in results:
        length = content_tokens(tokenizer, RERANK_DOCUMENTS[result["index"]])
        spans = expected_windows(length, document_room, document_room // 4)
        assert result["usage"] == {"total_tokens": sum(b - a + document_specials for a, b in spans)}
    assert item["docs_usage"]["total_tokens"] == sum(r["usage"]["total_tokens"] for r in results)
    public = answer(colbert_server, "/v1/rerank", {"query": RERANK_QUERY, "documents": RERANK_DOCUMENTS, "top_n": 1,
                                                   "return_documents": False})
    assert public["results"] == [{"index": 0, "relevance_score": results[0]["relevance_score"]}]
    assert public["usage"] == {"total_tokens": query_length + item["docs_usage"]["total_tokens"]}


# --- packaging -----------------------------------------------------------------------------------------------


def test_build_artifact_checks_and_packs_a_colbert(tmp_path, pylate_dir, colbert):
    sys.path.insert(0, str(PACKAGING))
    import _catalog
    import aws_listing
    import build_artifact

    output = tmp_path / "model.tar.gz"
    report = build_artifact.build_artifact(pylate_dir, output, served_name="tiny-colbert")
    assert report.kind == "multi-vector"
    assert report.check.startswith("embedded 1 text into 32 token vectors of 128 dimensions"), report.check
    unpacked = tmp_path / "opt" / "ml" / "model"
    unpacked.mkdir(parents=True)
    with tarfile.open(output, "r:gz") as tar:
        tar.extractall(unpacked, filter="data")
    assert json.loads((unpacked / "searchbox.json").read_text())["kind"] == "multi-vector"
    assert {"1_Dense/model.safetensors", "config_sentence_transformers.json", "modules.json"} <= {
        str(p.relative_to(unpacked)) for p in unpacked.rglob("*") if p.is_file()}
    handler = load_handler(unpacked, HandlerOptions(device="cpu"))
    try:
        vectors = handler.run(EmbedRequest(inputs=(TextInput(QUERIES[0]),), input_type="query")).vectors[0]
    finally:
        handler.close()
    rows_match(vectors, colbert.arrays("pylate")["q0"])
    # the listing shows the jina-sagemaker call for ColBERT packages, as runnable Python
    product = dataclasses.replace(_catalog.load_catalog(PACKAGING / "catalog.example.yaml")[0], kind="multi-vector",
                                  model_dir=pylate_dir, served_name="tiny-colbert")
    # per-inference, as the example catalog prices it: the worked example is what the sample really consumed
    usage = aws_listing.usage_markdown(product, tmp_path / "no-bench.md", aws_listing.measure_sample(product))
    assert "use_colbert=True" in usage and "InputType.QUERY" in usage
    assert "Worked example: the real-time sample request above embeds 1 text;" in usage
    assert "from jina_sagemaker import Client, InputType" in usage and "/v1/multi-vector" in usage
    shutil.rmtree(unpacked)


@pytest.mark.server  # PyLate's venv builds the model
def test_readme_examples_answer_as_written(tmp_path):
    """README's ColBERT: its build command (seeded) made in PyLate's venv, then each curl example run as written
    against that model, answering what its comment shows (numbers to the digits it prints)."""
    from helpers import readme_example, run_readme_examples, serving_over_http
    from reference_env import ReferenceUnavailable, pylate_python

    try:
        python = pylate_python()
    except ReferenceUnavailable as exc:
        pytest.fail(f"PyLate 1.6.0's venv cannot be made: {exc}", pytrace=False)
    build = readme_example("colbert-build").splitlines()
    start = next(i for i, line in enumerate(build) if line.startswith("HF_HUB_OFFLINE=1 "))
    command = "\n".join(build[start:start + 2]).replace("/tmp/pylate/bin/python", str(python))
    model_dir = tmp_path / "tiny-colbert"
    done = subprocess.run(["bash", "-c", command.replace("/tmp/tiny-colbert", str(model_dir))], capture_output=True,
                          text=True, timeout=600, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    with serving_over_http(model_dir) as running:
        ran = run_readme_examples(readme_example("colbert"), running.url, REPO)
    query, documents, public, _, batch, _ = (json.loads(answer) for _, answer in ran)
    # the counts the comments give in words
    assert np.shape(query["data"][0]["embeddings"]) == (32, 128)
    assert [len(item["embeddings"]) for item in documents["data"]] == [9, 6]
    assert len(public["data"][0]["embeddings"]) == 9
    assert len(batch["data"][0]["embeddings"]) == 8


def test_searchbox_json_colbert_settings_change_what_is_answered(tmp_path, pylate_dir, reference, tokenizer,
                                                                 pylate_settings, document_specials):
    """README's searchbox.json settings, each against PyLate's own vectors: a query not expanded is the expanded
    query's first rows (expansion tokens are not attended to), a skiplist word drops exactly its token's row, a
    query marker that is the document's makes the query read as the document, and a document_length beyond the
    encoder's positions is cut at those positions."""
    import string

    def run(settings: dict, text: str, input_type: str):
        handler = load_handler(linked_copy(pylate_dir, tmp_path / f"s{len(list(tmp_path.iterdir()))}", settings),
                               HandlerOptions(device="cpu"))
        try:
            result = handler.run(EmbedRequest(inputs=(TextInput(text),), input_type=input_type))
            return np.asarray(result.vectors[0]), result.token_counts[0]
        finally:
            handler.close()

    query_read = len(tokenizer(pylate_settings["query_prefix"] + QUERIES[0])["input_ids"])
    vectors, tokens = run({"do_query_expansion": False}, QUERIES[0], "query")
    rows_match(vectors, reference["q0"][:query_read])
    assert tokens == query_read

    ids = tokenizer(pylate_settings["document_prefix"] + DOCUMENTS[0])["input_ids"]
    skipped = tokenizer.convert_tokens_to_ids("cats")
    assert ids.count(skipped) == 1
    vectors, tokens = run({"skiplist_words": ["cats"]}, DOCUMENTS[0], "document")
    rows_match(vectors, np.delete(reference["d0"], ids.index(skipped), axis=0))
    assert tokens == len(ids)  # the skipped word is read (and billed), it only answers no vector

    vectors, _ = run({"query_prefix": pylate_settings["document_prefix"]}, DOCUMENTS[0], "query")
    rows_match(vectors[:len(reference["d0"])], reference["d0"])

    # the encoder's position table, and no more than its tokenizer declares (MiniLM: 512 positions, 256 declared)
    positions = min(json.loads((pylate_dir / "config.json").read_text())["max_position_embeddings"],
                    tokenizer.model_max_length)
    long_document = DOCUMENTS[4] * 4
    content = tokenizer(long_document, add_special_tokens=False)["input_ids"][:positions - document_specials]
    assert len(tokenizer(long_document, add_special_tokens=False)["input_ids"]) > positions
    punctuation = {tokenizer.convert_tokens_to_ids(mark) for mark in string.punctuation}
    vectors, tokens = run({"document_length": 8 * positions}, long_document, "document")
    assert tokens == positions
    assert len(vectors) == positions - sum(token in punctuation for token in content)
