"""Jina's own SageMaker client, `jina-sagemaker` 0.0.48, driven for real against searchbox as its buyers call it.

The client runs in its own venv (tests/reference_env.py: it needs the SageMaker SDK < 3, never a project dependency)
through tests/integration_clients_driver.py. It connects as its README shows — an endpoint name and the model
package's ARN, from which it picks the request shape — so `connect_to_endpoint` first describes the endpoint on
SageMaker's control plane, then every call goes through InvokeEndpoint: the emulator (tests/sagemaker_runtime.py)
answers both. The bodies it sent are checked against contract.md §2a/§2d, its answers against each model's own
library on the same weights (sentence-transformers, CrossEncoder, transformers' CLIPModel, PyLate).

The listing's own Python (boto3 and jina-sagemaker, per kind) runs as written too, bar what only the control plane
does (deploying, transform jobs): it found the listing connecting without the ARN 0.0.48 requires, and JSON's `true`
pasted into Python.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import cosine
from reference_env import ReferenceUnavailable, jina_sagemaker_python
from sagemaker_runtime import SageMakerRuntime

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
sys.path.insert(0, str(PACKAGING))  # the scripts' own modules, as they import each other

import _catalog  # noqa: E402
import _samples  # noqa: E402
import aws_listing  # noqa: E402

pytestmark = pytest.mark.server

DRIVER = Path(__file__).with_name("integration_clients_driver.py")  # the one driver of the client libraries
ENDPOINT = "jina-endpoint"
# Model package ARNs as AWS Marketplace names them: the client picks its request shape from the slug in the ARN.
PACKAGE = "arn:aws:sagemaker:us-east-1:865070037744:model-package/{}-a1b2c3d4"
TEXTS = ["The quick brown fox jumps over the lazy dog.", "A fast auburn fox leaps above a sleepy hound."]
QUERY = "Which animal jumps?"
DOCUMENTS = ["Paris is the capital of France.", "The fox jumps over the dog.", "Bread is baked in ovens."]
PARITY = 0.9999


@pytest.fixture(scope="module")
def python():
    try:
        return jina_sagemaker_python()
    except ReferenceUnavailable as exc:
        pytest.fail(f"jina-sagemaker's venv cannot be made: {exc}", pytrace=False)


def drive(python, server, client: str, args: dict, cwd: Path | None = None) -> tuple[dict, list[dict]]:
    """Run `client` of the driver against `server` through the SageMaker emulator: what it returned and the bodies it
    sent (all to ENDPOINT, as JSON)."""
    emulator = SageMakerRuntime(server.url)
    try:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_DEFAULT_REGION": "us-east-1", "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
               # boto3's own per-service endpoint settings: the runtime and the control plane
               "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": emulator.url, "AWS_ENDPOINT_URL_SAGEMAKER": emulator.url}
        done = subprocess.run([str(python), str(DRIVER), client, json.dumps(args)], capture_output=True, text=True,
                              timeout=300, env=env, cwd=cwd)
        assert done.returncode == 0, done.stderr[-3000:]
        assert {endpoint for endpoint, _, _ in emulator.seen} == {args["endpoint"]}
        assert {content_type for _, content_type, _ in emulator.seen} == {"application/json"}
        return json.loads(done.stdout.strip().splitlines()[-1]), [json.loads(b) for _, _, b in emulator.seen]
    finally:
        emulator.close()


def call(python, server, slug: str, *calls) -> tuple[list, list[dict]]:
    """Connect jina-sagemaker to `server` as the package named by `slug`, make `calls`; its answers and the bodies
    it sent."""
    answer, sent = drive(python, server, "jina-sagemaker",
                         {"endpoint": ENDPOINT, "arn": PACKAGE.format(slug), "calls": [list(c) for c in calls]})
    return answer["answers"], sent


def embeddings(answer: list[dict]) -> np.ndarray:
    """The envelope's items, in input order, each with a fresh 32-hex id (contract.md §2a)."""
    assert all(len(item["id"]) == 32 and int(item["id"], 16) >= 0 for item in answer)
    return np.array([item["embedding"] for item in answer])


def test_text_packages_v3_and_default(python, server, reference_model):
    answers, sent = call(python, server, "jina-embeddings-v3",
                         ("embed", {"texts": TEXTS}),
                         ("embed", {"texts": TEXTS, "task_type": "retrieval.query", "dimensions": 64}))
    assert sent == [
        {"data": [{"text": t} for t in TEXTS],
         "parameters": {"task": "text-matching", "dimensions": None, "late_chunking": False}},
        {"data": [{"text": t} for t in TEXTS],
         "parameters": {"task": "retrieval.query", "dimensions": 64, "late_chunking": False}}]
    expected = reference_model.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(embeddings(answers[0]), expected, atol=1e-5)
    cut = embeddings(answers[1])
    assert cut.shape == (2, 64)  # Matryoshka: the first 64 dimensions, normalised again
    np.testing.assert_allclose(cut, expected[:, :64] / np.linalg.norm(expected[:, :64], axis=1, keepdims=True),
                               atol=1e-5)

    answers, sent = call(python, server, "jina-embeddings-v2-base-en", ("embed", {"texts": QUERY}))
    assert sent == [{"data": [{"text": QUERY}]}]  # the default family: no parameters
    np.testing.assert_allclose(embeddings(answers[0]), reference_model.encode([QUERY], normalize_embeddings=True),
                               atol=1e-5)


def test_rerank_packages(python, reranker_server, reranker_dir):
    from sentence_transformers import CrossEncoder

    scores = CrossEncoder(str(reranker_dir), device="cpu", local_files_only=True).predict(
        [(QUERY, d) for d in DOCUMENTS])
    order = [int(i) for i in np.argsort(-scores)]
    answers, sent = call(python, reranker_server, "jina-reranker-v2-base-multilingual",
                         ("rerank", {"documents": DOCUMENTS, "query": QUERY, "top_n": 2}),
                         ("rerank", {"documents": [{"text": d} for d in DOCUMENTS], "query": QUERY}))
    body = {"documents": [{"text": d} for d in DOCUMENTS], "query": QUERY}
    assert sent == [{"data": {**body, "top_n": 2}}, {"data": body}]
    # the m0 family wraps the same body in a one-element list (contract.md §3)
    m0_answers, m0_sent = call(python, reranker_server, "jina-reranker-m0",
                               ("rerank", {"documents": DOCUMENTS, "query": QUERY, "top_n": 5}))
    assert m0_sent == [{"data": [{**body, "top_n": 3}]}]  # the client clamps top_n to the documents itself
    for answer, top in zip([*answers, *m0_answers], (2, 3, 3)):
        (ranked,) = answer
        results = ranked["results"]
        assert [hit["index"] for hit in results] == order[:top]
        np.testing.assert_allclose([hit["relevance_score"] for hit in results], scores[order[:top]], atol=1e-5)
        assert [hit["document"]["text"] for hit in results] == [DOCUMENTS[i] for i in order[:top]]


def png(seed: int) -> tuple[bytes, Image.Image]:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue(), image


@pytest.mark.parametrize("slug, keys", [("jina-clip-v1", ("image", "image")), ("jina-clip-v2", ("url", "bytes"))])
def test_clip_packages_send_their_image_keys(python, clip_server, clip_dir, slug, keys):
    from transformers import AutoProcessor, CLIPModel

    server, model_dir = clip_server, clip_dir
    (first, first_image), (second, second_image) = png(1), png(2)
    data_uri = "data:image/png;base64," + base64.b64encode(first).decode()
    answers, sent = call(python, server, slug, ("embed", {"texts": TEXTS, "image_urls": [data_uri],
                                                          "image_bytes": [base64.b64encode(second).decode()]}))
    url_key, bytes_key = keys
    assert sent[0]["data"] == [{"text": t} for t in TEXTS] + [{url_key: data_uri},
                                                              {bytes_key: base64.b64encode(second).decode()}]
    model, processor = CLIPModel.from_pretrained(str(model_dir)).eval(), AutoProcessor.from_pretrained(str(model_dir))
    with torch.no_grad():
        texts = model.get_text_features(**processor(text=TEXTS, padding=True, return_tensors="pt")).pooler_output
        images = model.get_image_features(**processor(images=[first_image, second_image],
                                                      return_tensors="pt")).pooler_output
    got = embeddings(answers[0])
    for row, expected in zip(got, [*texts.numpy(), *images.numpy()]):
        assert cosine(row, expected) >= PARITY


def test_colbert_package_queries_and_documents(python, colbert, colbert_server):
    from models.colbert import DOCUMENTS as COLBERT_DOCUMENTS
    from models.colbert import QUERIES

    server = colbert_server
    answers, sent = call(python, server, "jina-colbert-v2",
                         ("embed", {"texts": QUERIES[0], "use_colbert": True, "input_type": "query"}),
                         ("embed", {"texts": COLBERT_DOCUMENTS[:2], "use_colbert": True}))
    assert sent == [{"data": {"text": QUERIES[0]}, "parameters": {"input_type": "query"}},
                    {"data": [{"text": d} for d in COLBERT_DOCUMENTS[:2]], "parameters": {"input_type": "document"}}]
    reference = colbert.arrays("pylate")
    expected = [reference["q0"], reference["d0"], reference["d1"]]
    got = [answers[0][0]["embeddings"], *[item["embeddings"] for item in answers[1]]]
    for vectors, wanted in zip(got, expected):
        vectors = np.asarray(vectors, dtype=np.float64)
        assert vectors.shape == wanted.shape
        assert min(cosine(a, b) for a, b in zip(vectors, wanted)) >= PARITY


def test_embeddings_v4_package(python, jina_v4_dir):
    """jina-sagemaker's v4 body (contract.md §2j): texts and image bytes, a task and dimensions, then token vectors;
    answers against tests/jina_v4_reference.py (v4's own encode_text / encode_image re-implemented)."""
    from helpers import serving_over_http
    from jina_v4_reference import JinaV4Reference

    from test_vl_embedding import two_page_pdf

    (first, first_image), (_, second_image) = png(1), png(2)
    pdf_data, pages = two_page_pdf()
    images = [base64.b64encode(first).decode(), base64.b64encode(png(2)[0]).decode()]
    with serving_over_http(jina_v4_dir) as server:
        answers, sent = call(python, server, "jina-embeddings-v4",
                             ("embed", {"texts": TEXTS, "image_bytes": images, "task_type": "retrieval.query",
                                        "dimensions": 16}),
                             ("embed", {"texts": TEXTS[:1], "return_multivector": True}),
                             ("embed", {"pdf_url": f"data:application/pdf;base64,{pdf_data}"}))
    assert sent[2] == {"data": {"pdf": f"data:application/pdf;base64,{pdf_data}"},
                       "parameters": {"task": "text-matching", "dimensions": None, "late_chunking": False,
                                      "return_multivector": False}}
    sent = sent[:2]
    assert sent == [
        {"data": [{"text": t} for t in TEXTS] + [{"image": i} for i in images],
         "parameters": {"task": "retrieval.query", "dimensions": 16, "late_chunking": False,
                        "return_multivector": False}},
        {"data": [{"text": TEXTS[0]}],
         "parameters": {"task": "text-matching", "dimensions": None, "late_chunking": False,
                        "return_multivector": True}}]
    reference = JinaV4Reference(jina_v4_dir)
    expected = (reference.encode_text(TEXTS, "retrieval", "query", truncate_dim=16)
                + reference.encode_image([first_image, second_image], "retrieval", truncate_dim=16))
    got = embeddings(answers[0])
    assert got.shape == (4, 16)
    for row, vector in zip(got, expected):
        assert cosine(row, vector) >= PARITY
    (item,) = answers[1]
    np.testing.assert_allclose(np.asarray(item["embeddings"]),
                               reference.encode_text(TEXTS[:1], "text-matching", return_multivector=True)[0],
                               atol=1e-4)
    # the v4 PDF body: a row per page, each the page's own vector, the pages numbered
    assert [item["page"] for item in answers[2]] == [1, 2]
    for item, vector in zip(answers[2], reference.encode_image(pages, "text-matching")):
        assert cosine(item["embedding"], vector) >= PARITY


# --- the listing's Python, run as written ------------------------------------------------------------------------

def listing_code(usage: str, heading: str) -> str:
    """The ```python block under `heading` of a listing's usage information."""
    section = usage.split(f"\n## {heading}\n", 1)[1]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0]


def without_the_control_plane(code: str) -> str:
    """The listing's code with what only SageMaker's control plane can do taken out: the deploy becomes the connect
    that `create_endpoint` ends with (same ARN and endpoint name), the transform job and the deletion go."""
    tree = ast.parse(code)
    kept = []
    for statement in tree.body:
        call_ = statement.value if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call) else None
        method = getattr(call_.func, "attr", None) if call_ else None
        if method == "create_endpoint":
            kwargs = {k.arg: k.value for k in call_.keywords}
            call_.func.attr = "connect_to_endpoint"
            call_.keywords = [ast.keyword("endpoint_name", kwargs["endpoint_name"]), ast.keyword("arn", kwargs["arn"])]
        elif method in ("create_transform_job", "delete_endpoint"):
            continue
        kept.append(statement)
    tree.body = kept
    return ast.unparse(tree)


def fresh_ids_out(value, approx: bool = False):
    """An answer without the 32-hex ids minted per request (a caller's own ids stay), its numbers `approx` where
    asked: two calls compare equal."""
    if isinstance(value, dict):
        return {k: fresh_ids_out(v, approx) for k, v in value.items()
                if not (k == "id" and isinstance(v, str) and len(v) == 32 and all(c in "0123456789abcdef" for c in v))}
    if isinstance(value, list):
        return [fresh_ids_out(v, approx) for v in value]
    return pytest.approx(value, abs=1e-6) if approx and isinstance(value, float) else value


@pytest.fixture
def listed():
    """The example catalog's product sold per instance-hour (no sample measurement needed), as any kind."""
    import yaml

    raw = yaml.safe_load((PACKAGING / "catalog.example.yaml").read_text())
    entry = raw["products"][0]
    del entry["pricing"]
    entry["prices_per_hour"]["realtime"] = {"ml.c6i.xlarge": 0.08, "ml.m5.xlarge": 0.08, "ml.g5.xlarge": 0.40}

    def product(kind: str, model_dir: Path):
        return dataclasses.replace(_catalog.parse_catalog(raw, base_dir=PACKAGING)[0], kind=kind, model_dir=model_dir,
                                   served_name=f"tiny-{kind}")

    return product


# Each kind's shared server (conftest: the model the other tests use), its model directory and the model package name
# its listing would sell.
SERVED = {"embedding": ("server", "minilm_dir", "jina-embeddings-v3"),
          "reranker": ("reranker_server", "reranker_dir", "jina-reranker-v2-base-multilingual"),
          "multimodal": ("clip_server", "clip_dir", "jina-clip-v2"),
          "multi-vector": ("colbert_server", "colbert", "jina-colbert-v2"),
          "sparse": ("splade_server", "splade_dir", "splade-v3"),
          "bge-m3": ("bge_m3_server", "bge_m3_safetensors_dir", "bge-m3"),
          "vision-language-embedding": ("jina_v4_server", "jina_v4_dir", "jina-embeddings-v4"),
          "vision-language-reranker": ("jina_m0_server", "jina_m0_dir", "jina-reranker-m0")}


def _served(kind: str, request, tmp_path: Path):
    server, model, slug = SERVED[kind]
    model_dir = request.getfixturevalue(model)
    if kind == "multi-vector":
        model_dir = model_dir.model_dir("pylate")
    return request.getfixturevalue(server), model_dir, slug


@pytest.mark.parametrize("kind", ["embedding", "reranker", "multimodal", "multi-vector", "sparse", "bge-m3",
                                  "vision-language-embedding", "vision-language-reranker"])
def test_the_listings_python_runs_as_written(python, kind, listed, request, tmp_path):
    """Each kind's listing shows boto3 and jina-sagemaker code: both run against a server of that kind and get what
    the same body gets from the server itself."""
    server, model_dir, slug = _served(kind, request, tmp_path)
    product = listed(kind, model_dir)
    assert product.model_kind.name == kind
    usage = aws_listing.usage_markdown(product, tmp_path / "no-bench.md")
    (tmp_path / "cat.png").write_bytes(png(3)[0])  # the file the CLIP example reads
    arn, endpoint = PACKAGE.format(slug), product.name
    samples = _samples.of(kind)
    on_its_own = server.post("/invocations", samples.request)
    assert on_its_own.status_code == 200, on_its_own.text

    ran, sent = drive(python, server, "listing", {"endpoint": endpoint, "arn": arn,
                                                  "code": listing_code(usage, "boto3")}, cwd=tmp_path)
    assert sent == [samples.request]
    assert fresh_ids_out(ast.literal_eval(ran["printed"].strip())) == fresh_ids_out(on_its_own.json()["data"], True)

    ran, sent = drive(python, server, "listing", {"endpoint": endpoint, "arn": arn,
                                                  "code": without_the_control_plane(listing_code(usage,
                                                                                                 "jina-sagemaker"))},
                      cwd=tmp_path)
    (body,) = sent
    direct = server.post("/invocations", body)
    assert direct.status_code == 200, direct.text
    assert fresh_ids_out(ran["result"]) == fresh_ids_out(direct.json()["data"], True)
