"""POST /v1/classify (issue 24, contract §2g): zero-shot classification on the served embedding model.

The references compute the same thing in-process with the model's own library: sentence-transformers' `encode` on the
embedded MiniLM (softmax of 20 x cosine, the scale its MultipleNegativesRankingLoss trains with), and transformers'
CLIPModel on a tiny CLIP built here (softmax of its `logits_per_image` / `logits_per_text`, the model's own
logit_scale). Same prediction, every score within 1e-5.
"""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import assert_documented, serving
from model_handlers.operations.classify import MAX_LABELS, LabelCache, label_cache

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["My invoice is wrong, I was charged twice", "The app crashes when I open the settings page",
         "We would like to buy fifty more licenses", "hello"]
LABELS = ["billing", "technical support", "sales"]
TOLERANCE = 1e-5
# The softmax scale of cosines for a model without its own (classify.py's reason): the scale all-MiniLM-L6-v2 was
# trained with, sentence-transformers' MultipleNegativesRankingLoss default, 20 (a temperature of 0.05).
MNRL_SCALE = 20.0
scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.text(max_size=30)
hostile = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def assert_matches(data: list[dict], labels: list[str], expected: np.ndarray) -> None:
    """Each answered item: predictions sorted, summing to 1, the reference's scores within TOLERANCE."""
    assert len(data) == len(expected)
    for item, row in zip(data, expected):
        scores = [p["score"] for p in item["predictions"]]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-9)
        assert item["prediction"] == labels[int(np.argmax(row))] and item["score"] == scores[0]
        got = {p["label"]: p["score"] for p in item["predictions"]}
        assert sorted(got) == sorted(labels)
        for label, expected_score in zip(labels, row):
            assert abs(got[label] - expected_score) <= TOLERANCE, (label, got[label], expected_score)


@pytest.fixture(scope="module")
def document(app):
    return app.get("/openapi.json").json()


@pytest.fixture(scope="module")
def minilm_reference(reference_model):
    inputs = reference_model.encode(TEXTS, normalize_embeddings=True)
    labels = reference_model.encode(LABELS, normalize_embeddings=True)
    return softmax(MNRL_SCALE * inputs @ labels.T)


@pytest.mark.unit
def test_the_scale_written_here_is_the_one_sentence_transformers_trains_with():
    import inspect

    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    assert inspect.signature(MultipleNegativesRankingLoss).parameters["scale"].default == MNRL_SCALE


def test_zero_shot_on_minilm_matches_sentence_transformers(app, minilm_reference, document):
    answer = app.post("/v1/classify", {"model": "any", "input": TEXTS, "labels": LABELS})
    assert answer.status_code == 200, answer.text
    assert_documented(document, "post", "/v1/classify", answer)
    body = answer.json()
    assert set(body) == {"usage", "data"}
    assert [item["index"] for item in body["data"]] == list(range(len(TEXTS)))
    assert all(item["object"] == "classification" for item in body["data"])
    assert_matches(body["data"], LABELS, minilm_reference)
    assert body["data"][0]["prediction"] == "billing" and body["data"][1]["prediction"] == "technical support"


def test_usage_is_the_inputs_tokens_plus_the_labels(app):
    answer = app.post("/v1/classify", {"input": TEXTS, "labels": LABELS}).json()
    inputs = app.post("/v1/embeddings", {"input": TEXTS}).json()["usage"]["total_tokens"]
    labels = app.post("/v1/embeddings", {"input": LABELS}).json()["usage"]["total_tokens"]
    assert answer["usage"]["total_tokens"] == inputs + labels
    # counted every request, whether the labels were embedded now or kept from before
    assert app.post("/v1/classify", {"input": TEXTS, "labels": LABELS}).json()["usage"] == answer["usage"]


def test_the_same_body_on_invocations_and_in_the_sagemaker_envelope(app, minilm_reference, document):
    public = app.post("/invocations", {"input": TEXTS, "labels": LABELS})
    assert public.status_code == 200 and public.json() == app.post("/v1/classify",
                                                                   {"input": TEXTS, "labels": LABELS}).json()
    envelope = app.post("/invocations", {"data": [{"text": text, "id": f"t{i}"} for i, text in enumerate(TEXTS)],
                                         "parameters": {"labels": LABELS}})
    assert envelope.status_code == 200, envelope.text
    for answer in (public, envelope):
        assert_documented(document, "post", "/invocations", answer)
    body = envelope.json()
    assert [item["id"] for item in body["data"]] == [f"t{i}" for i in range(len(TEXTS))]
    assert body["parameters"] == {"labels": LABELS}
    assert_matches(body["data"], LABELS, minilm_reference)
    per_item = [app.post("/v1/embeddings", {"input": [text]}).json()["usage"]["total_tokens"] for text in TEXTS]
    assert [item["usage"]["total_tokens"] for item in body["data"]] == per_item
    assert body["usage"]["total_tokens"] == sum(per_item) + body["usage"]["label_tokens"]
    # without labels the envelope is still an embeddings body
    assert "embedding" in app.post("/invocations", {"data": [{"text": "hi"}]}).json()["data"][0]


def test_a_batch_transform_job_classifies_its_csv_rows_against_the_jobs_labels(minilm_dir, minilm_reference):
    """SEARCHBOX_CLASSIFY_LABELS: each `id,text` row classified zero-shot, as the envelope with those labels is."""
    rows = "".join(f'r{i},"{text}"\n' for i, text in enumerate(TEXTS)).encode()
    with serving(minilm_dir, {"SEARCHBOX_CLASSIFY_LABELS": json.dumps(LABELS)}) as app:
        answer = app.post("/invocations", data=rows, headers={"Content-Type": "text/csv"})
        embeddings = app.post("/invocations", {"data": [{"text": "still an embeddings body"}]})
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert [item["id"] for item in data] == [f"r{i}" for i in range(len(TEXTS))]
    assert_matches(data, LABELS, minilm_reference)
    assert "embedding" in embeddings.json()["data"][0]  # JSON bodies carry their own operation


def test_the_classify_job_settings(tmp_path):
    from container.settings import Settings, SettingsError

    assert Settings.from_env({"SEARCHBOX_CLASSIFY_LABELS": "billing, sales ,"}).csv_parameters() == \
        {"labels": ["billing", "sales"]}
    assert Settings.from_env({"SEARCHBOX_CLASSIFY_LABELS": '["a, b", "c"]'}).csv_parameters() == {"labels": ["a, b", "c"]}
    assert Settings.from_env({"SEARCHBOX_CLASSIFIER": "topics"}).csv_parameters() == {"classifier_id": "topics"}
    assert Settings.from_env({}).csv_parameters() is None
    with pytest.raises(SettingsError, match="both set"):
        Settings.from_env({"SEARCHBOX_CLASSIFY_LABELS": "a,b", "SEARCHBOX_CLASSIFIER": "topics"})
    with pytest.raises(SettingsError, match="JSON array of strings"):
        Settings.from_env({"SEARCHBOX_CLASSIFY_LABELS": '["a", 1]'})


def inputs_run(app) -> float:
    """Inputs the model has run in forward passes so far (/metrics' searchbox_batch_inputs_sum)."""
    metrics = app.get("/metrics").text
    return float(next(line.split()[-1] for line in metrics.splitlines()
                      if line.startswith("searchbox_batch_inputs_sum")))


def test_labels_are_embedded_once_and_kept_per_model(runtime, app):
    labels = ["a fresh label nobody asked for", "another fresh one"]
    cache = label_cache(runtime.handler.model)
    before, ran = len(cache), inputs_run(app)
    first = app.post("/v1/classify", {"input": ["x"], "labels": labels}).json()
    assert len(cache) == before + 2 and inputs_run(app) == ran + 3  # the input and both labels
    again = app.post("/v1/classify", {"input": ["x"], "labels": list(reversed(labels))}).json()
    assert inputs_run(app) == ran + 4  # the input only: the labels come from the cache
    assert {p["label"]: p["score"] for p in again["data"][0]["predictions"]} == pytest.approx(
        {p["label"]: p["score"] for p in first["data"][0]["predictions"]}, abs=1e-6)


def test_the_label_cache_is_bounded_and_least_recently_used_first_out():
    vector = np.zeros(4, dtype=np.float32)  # 16 bytes
    cache = LabelCache(capacity_bytes=48)
    for key in ("a", "b", "c"):
        cache.put(key, vector, 1)
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", vector, 1)
    assert cache.get("b") is None and all(cache.get(key) is not None for key in ("a", "c", "d"))
    assert cache.nbytes == 48 and len(cache) == 3


@pytest.mark.parametrize(("body", "status", "code", "named"), [
    ({"input": TEXTS}, 422, "NO_LABELS", "`labels`"),
    ({"input": TEXTS, "labels": []}, 422, "NO_LABELS", "`labels`"),
    ({"input": TEXTS, "labels": ["only"]}, 422, "TOO_FEW_LABELS", "at least 2"),
    ({"input": TEXTS, "labels": [f"l{i}" for i in range(MAX_LABELS + 1)]}, 422, "TOO_MANY_LABELS", str(MAX_LABELS)),
    ({"input": TEXTS, "labels": ["a", "a"]}, 422, "DUPLICATE_LABEL", "twice"),
    ({"input": TEXTS, "labels": ["a", " "]}, 422, "EMPTY_LABEL", "label 1"),
    ({"input": TEXTS, "labels": "billing, sales"}, 422, "VALIDATION_ERROR", "list of strings"),
    ({"input": TEXTS, "classifier_id": "support-v1"}, 422, "UNKNOWN_CLASSIFIER", "send `labels`"),
    ({"input": TEXTS, "classifier_id": "support-v1"}, 422, "UNKNOWN_CLASSIFIER", "no classifier 'support-v1'"),
    ({"input": TEXTS, "classifier_id": "support-v1", "labels": LABELS}, 422, "INVALID_OPTION",
     "send either `labels` (zero-shot) or `classifier_id` (a classifier trained into the artifact), not both"),
    ({"input": [{"image": "aGVsbG8="}], "labels": LABELS}, 400, "UNSUPPORTED_INPUT", "text only"),
    ({"labels": LABELS}, 422, "VALIDATION_ERROR", "`input`"),
])
def test_refusals_name_the_fix(app, document, body, status, code, named):
    answer = app.post("/v1/classify", body)
    assert answer.status_code == status, answer.text
    assert answer.json()["code"] == code and named in answer.json()["detail"], answer.json()
    assert_documented(document, "post", "/v1/classify", answer)


def test_a_classify_body_to_a_model_that_does_not_classify_says_what_it_answers(reranker_dir):
    with serving(reranker_dir) as app:
        answer = app.post("/invocations", {"input": ["x"], "labels": LABELS})
    assert answer.status_code == 400 and answer.json()["code"] == "UNSUPPORTED_OPERATION"
    assert "does not answer classify requests" in answer.json()["detail"]


# --- CLIP: images and texts against text labels, at the model's own logit scale --------------------------------------


def pictures() -> list:
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(2)]


def data_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_zero_shot_on_clip_matches_transformers(clip_dir):
    from transformers import AutoProcessor, CLIPModel

    model, processor = CLIPModel.from_pretrained(str(clip_dir)).eval(), AutoProcessor.from_pretrained(str(clip_dir))
    labels = ["a photo of a dog", "a photo of a cat", "a diagram"]
    texts = ["a small dog on a lawn", "the weather today"]
    images = pictures()
    with torch.no_grad():
        by_image = model(**processor(text=labels, images=images, return_tensors="pt", padding=True)).logits_per_image
        text_features = model.get_text_features(**processor(text=texts + labels, padding=True,
                                                            return_tensors="pt")).pooler_output
        text_features = torch.nn.functional.normalize(text_features, dim=-1)
        by_text = model.logit_scale.exp() * text_features[: len(texts)] @ text_features[len(texts):].T
    expected = softmax(np.concatenate([by_image.numpy(), by_text.numpy()]))

    with serving(clip_dir) as app:
        answer = app.post("/v1/classify", {"input": [{"image": data_uri(image)} for image in images] + texts,
                                           "labels": labels})
    assert answer.status_code == 200, answer.text
    assert_matches(answer.json()["data"], labels, expected)


def test_readme_curls_answer_on_a_real_server(server):
    import re

    import requests

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Classify (zero-shot)", 1)[1].split("\n## ", 1)[0]
    calls = [(path, json.loads(body)) for path, body in
             re.findall(r"curl -s localhost:8080(\S+) .*?\n\s*-d '(.*?)'", section, flags=re.S)]
    assert [path for path, _ in calls] == ["/v1/classify", "/invocations", "/v1/classify"]
    public, envelope, refused = (requests.post(server.url + path, json=body, timeout=30) for path, body in calls)
    assert public.status_code == 200 and public.json()["data"][0]["prediction"] == "billing"
    assert envelope.status_code == 200 and envelope.json()["data"][0]["prediction"] == "technical support"
    assert refused.status_code == 422 and refused.json()["code"] == "TOO_FEW_LABELS"


# --- few-shot: a classifier fitted into the artifact ------------------------------------------------------------------

TOPICS = {
    "weather": ["It will rain all afternoon", "Sunny skies and a light breeze today", "A storm is coming tonight",
                "Snow is expected over the weekend", "The forecast says heavy fog in the morning",
                "Temperatures drop below freezing tonight", "Strong winds and thunder this evening",
                "A warm and humid day ahead"],
    "sport": ["The striker scored twice in the final", "She won the marathon in record time",
              "The team lost the match on penalties", "He served an ace to win the set",
              "The coach praised the defence after the game", "A last-minute goal decided the derby",
              "The cyclist took the yellow jersey", "They won the championship again"],
    "cooking": ["Simmer the sauce for twenty minutes", "Knead the dough until it is smooth",
                "Season the steak with salt and pepper", "Bake the cake at 180 degrees",
                "Chop the onions and fry them in butter", "Whisk the eggs with sugar",
                "Roast the vegetables with olive oil", "Let the bread rise for an hour"],
}
QUERIES = ["Heavy rain and wind are forecast", "The goalkeeper saved a penalty", "Stir the soup and add garlic",
           "a cold morning"]


def packaging_modules():
    sys.path.insert(0, str(ROOT / "packaging"))
    import _classifiers
    import build_artifact

    return build_artifact, _classifiers


def write_examples(path: Path) -> Path:
    path.write_text("".join(json.dumps({"text": text, "label": label}) + "\n"
                            for label, texts in TOPICS.items() for text in texts), encoding="utf-8")
    return path


@pytest.mark.server
def test_a_few_shot_classifier_answers_as_fitted_after_the_artifact_round_trip(tmp_path, minilm_dir,
                                                                                 reference_model):
    import tarfile

    from sklearn.linear_model import LogisticRegression

    build_artifact, _ = packaging_modules()
    examples = write_examples(tmp_path / "topics.jsonl")
    output = tmp_path / "model.tar.gz"
    report = build_artifact.build_artifact(minilm_dir, output, served_name="minilm-topics",
                                           classifiers={"topics": examples}, classifier_min_accuracy=0.5)
    (shipped,) = report.classifiers
    assert shipped["name"] == "topics" and shipped["labels"] == sorted(TOPICS) and shipped["examples"] == 24
    assert shipped["held_out_accuracy"] >= 0.5
    assert build_artifact.read_manifest(output)["classifiers"] == [shipped]
    import aws_listing  # the listing names what the artifact ships (packaging/ is on the path now)

    assert aws_listing.artifact_classifiers(output) == [shipped]

    # the reference: sentence-transformers' normalised embeddings of every example, scikit-learn's logistic
    # regression as the artifact's docs name it (C=1, lbfgs), refitted on all of them, and its own predict_proba
    texts = [text for texts in TOPICS.values() for text in texts]
    labels = [label for label, texts in TOPICS.items() for _ in texts]
    vectors = reference_model.encode(texts, normalize_embeddings=True).astype(np.float64)
    fitted = LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000).fit(vectors, np.asarray(labels))
    expected = fitted.predict_proba(reference_model.encode(QUERIES, normalize_embeddings=True).astype(np.float64))

    unpacked = tmp_path / "model"
    unpacked.mkdir()
    with tarfile.open(output, "r:gz") as tar:
        tar.extractall(unpacked, filter="data")
    with serving(unpacked, {"SEARCHBOX_CLASSIFIER": "topics"}) as job:
        csv_answer = job.post("/invocations", data="".join(f'q{i},"{text}"\n' for i, text in enumerate(QUERIES)),
                              headers={"Content-Type": "text/csv"})
    with serving(unpacked) as app:
        answer = app.post("/v1/classify", {"classifier_id": "topics", "input": QUERIES})
        envelope = app.post("/invocations", {"data": [{"text": text} for text in QUERIES],
                                             "parameters": {"classifier_id": "topics"}})
        models = app.get("/v1/models").json()["data"][0]
        unknown = app.post("/v1/classify", {"classifier_id": "nope", "input": QUERIES})
        both = app.post("/v1/classify", {"classifier_id": "topics", "labels": ["a", "b"], "input": QUERIES})
        embedded = app.post("/v1/embeddings", {"input": QUERIES}).json()
    usage = embedded["usage"]["total_tokens"]
    # scikit-learn's own predict_proba on the shipped weights and the served embeddings: the answer, to the last bit
    shipped_file = json.loads((unpacked / "classifiers" / "topics.json").read_text(encoding="utf-8"))
    loaded = LogisticRegression()
    loaded.classes_ = np.asarray(shipped_file["labels"])
    loaded.coef_, loaded.intercept_ = np.asarray(shipped_file["weights"]), np.asarray(shipped_file["bias"])
    served_vectors = np.asarray([item["embedding"] for item in embedded["data"]], dtype=np.float32)
    exact = loaded.predict_proba(served_vectors.astype(np.float64))
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert [item["prediction"] for item in data] == list(fitted.classes_[expected.argmax(axis=1)])
    assert [item["prediction"] for item in data[:3]] == ["weather", "sport", "cooking"]
    for item, row in zip(data, expected):
        got = {p["label"]: p["score"] for p in item["predictions"]}
        for label, score in zip(fitted.classes_, row):
            # two libraries' float32 embeddings differ in their last bits; the fit carries that, no more
            assert abs(got[label] - score) <= TOLERANCE, (label, got[label], score)
    for item, row in zip(data, exact):
        assert {p["label"]: p["score"] for p in item["predictions"]} == dict(zip(loaded.classes_.tolist(),
                                                                                row.tolist()))
    assert answer.json()["usage"]["total_tokens"] == usage  # the inputs' tokens only: no labels are embedded
    assert envelope.status_code == 200 and [item["prediction"] for item in envelope.json()["data"]] == \
        [item["prediction"] for item in data]
    assert envelope.json()["usage"] == {"total_tokens": usage, "label_tokens": 0}
    assert csv_answer.status_code == 200, csv_answer.text  # SEARCHBOX_CLASSIFIER: a batch job's rows, the same
    assert [(item["id"], item["predictions"]) for item in csv_answer.json()["data"]] == \
        [(f"q{i}", item["predictions"]) for i, item in enumerate(envelope.json()["data"])]
    assert models["classifiers"] == [shipped]
    assert unknown.status_code == 422 and unknown.json()["code"] == "UNKNOWN_CLASSIFIER"
    assert "its classifiers are topics" in unknown.json()["detail"]
    assert both.status_code == 422 and "not both" in both.json()["detail"]


@pytest.mark.server
def test_a_classifier_below_the_sellers_floor_or_with_a_bad_line_is_refused(tmp_path, minilm_dir):
    build_artifact, _ = packaging_modules()
    examples = write_examples(tmp_path / "topics.jsonl")
    with pytest.raises(build_artifact.BuildRefused, match="held-out accuracy .* is below the floor 1.010"):
        build_artifact.build_artifact(minilm_dir, tmp_path / "a.tar.gz", classifiers={"topics": examples},
                                      classifier_min_accuracy=1.01, check=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "a"}\n{"text": "no label"}\n', encoding="utf-8")
    with pytest.raises(build_artifact.BuildRefused, match="bad.jsonl line 2 must be"):
        build_artifact.build_artifact(minilm_dir, tmp_path / "b.tar.gz", classifiers={"topics": bad}, check=False)
    assert not (tmp_path / "a.tar.gz").exists() and not (tmp_path / "b.tar.gz").exists()
    assert build_artifact.main([str(minilm_dir), "-o", str(tmp_path / "c.tar.gz"), "--classifier", "bad name=x"]) == 2


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(body=st.fixed_dictionaries({"input": hostile}, optional={"labels": hostile | st.lists(st.text(max_size=8),
                                                                                             max_size=5),
                                                                 "classifier_id": hostile, "model": hostile}),
       envelope=st.booleans())
def test_any_classify_body_gets_an_answer_or_the_contracts_error(app, body, envelope):
    if envelope:
        body = {"data": body.pop("input"), "parameters": body}
    path = "/invocations" if envelope else "/v1/classify"
    answer = app.post(path, data=json.dumps(body))  # the standard library writes integers past 64 bits too
    assert answer.status_code in (200, 400, 413, 422), answer.text
    if answer.status_code != 200:
        assert set(answer.json()) == {"detail", "code", "request_id"}


# --- few-shot in this process: run_trained against scikit-learn's own fit ---------------------------------------------
# The server-tier round trip above builds the artifact with packaging's scripts; here the classifier files are
# written as model_handlers/classifiers.py documents them, from a LogisticRegression fitted in this test, and the
# model is served in this process: what the fast tier (and mutation testing) can afford.

# A prompt for the model's `classification` task: a classifier fitted on prompted embeddings must be applied to
# prompted ones (the served task is the classifier's, not the request's).
PROMPT = "Which topic is this about? "


def _logistic(vectors: np.ndarray, labels: list[str]):
    """scikit-learn's LogisticRegression as packaging/_classifiers.py's FIT text names it."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000).fit(vectors.astype(np.float64), np.asarray(labels))


def _write_classifier(model_dir: Path, name: str, fitted, task: str | None) -> None:
    """The documented file: {"format": 1, "labels", "weights", "bias", "task", ...}; weights as `coef_` is."""
    folder = model_dir / "classifiers"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({
        "format": 1, "labels": fitted.classes_.tolist(), "weights": fitted.coef_.tolist(),
        "bias": fitted.intercept_.tolist(), "task": task, "examples": 0, "held_out_accuracy": None, "fit": ""}))


@pytest.fixture(scope="module")
def few_shot(tmp_path_factory, minilm_dir, reference_model):
    """MiniLM with a `classification` prompt, a LoRA adapter (peft's own, random B) and three classifiers: `topics`
    (3 labels, fitted on prompted embeddings), `weather-or-sport` (2 labels: one row of weights, no task) and
    `other-model` (fitted on 8 dimensions: another model's); served in this process."""
    import shutil

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    model_dir = tmp_path_factory.mktemp("models") / "minilm-few-shot"
    shutil.copytree(minilm_dir, model_dir)
    torch.manual_seed(3)
    lora = get_peft_model(AutoModel.from_pretrained(str(minilm_dir)),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0))
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.3)
    lora.save_pretrained(str(model_dir / "adapters" / "tone"))
    (model_dir / "searchbox.json").write_text(json.dumps({"tasks": {"classification": PROMPT},
                                                          "adapters": {"tone": "adapters/tone"}}))
    texts = [text for texts in TOPICS.values() for text in texts]
    labels = [label for label, texts in TOPICS.items() for _ in texts]
    topics = _logistic(reference_model.encode(texts, prompt=PROMPT, normalize_embeddings=True), labels)
    _write_classifier(model_dir, "topics", topics, "classification")
    two = [i for i, label in enumerate(labels) if label != "cooking"]
    binary = _logistic(reference_model.encode([texts[i] for i in two], normalize_embeddings=True),
                       [labels[i] for i in two])
    _write_classifier(model_dir, "weather-or-sport", binary, None)
    rng = np.random.default_rng(0)
    _write_classifier(model_dir, "other-model", _logistic(rng.normal(size=(len(texts), 8)), labels), None)
    with serving(model_dir) as app:
        yield app, topics, binary


def _scores(item: dict) -> dict[str, float]:
    return {p["label"]: p["score"] for p in item["predictions"]}


def _served_vectors(app, body: dict) -> np.ndarray:
    answer = app.post("/v1/embeddings", body)
    assert answer.status_code == 200, answer.text
    return np.asarray([item["embedding"] for item in answer.json()["data"]], dtype=np.float32).astype(np.float64)


def test_a_trained_classifier_scores_as_scikit_learn_fitted_it(few_shot, reference_model, minilm_dir):
    from transformers import AutoTokenizer

    app, topics, _ = few_shot
    answer = app.post("/v1/classify", {"classifier_id": "topics", "input": QUERIES})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    # the reference: sentence-transformers' prompted, normalised embeddings through the fitted estimator
    expected = topics.predict_proba(reference_model.encode(QUERIES, prompt=PROMPT,
                                                           normalize_embeddings=True).astype(np.float64))
    data = body["data"]
    assert [item["index"] for item in data] == list(range(len(QUERIES)))
    assert [item["prediction"] for item in data[:3]] == ["weather", "sport", "cooking"]
    for item, row in zip(data, expected):
        scores = [p["score"] for p in item["predictions"]]
        assert scores == sorted(scores, reverse=True)  # best first
        assert item["prediction"] == topics.classes_[row.argmax()] and item["score"] == scores[0]
        got = _scores(item)
        assert sorted(got) == sorted(TOPICS)
        for label, score in zip(topics.classes_, row):
            assert abs(got[label] - score) <= TOLERANCE, (label, got[label], score)
    # and to rounding: predict_proba on the vectors the server embeds for the classifier's task
    exact = topics.predict_proba(_served_vectors(app, {"input": QUERIES, "task": "classification"}))
    for item, row in zip(data, exact):
        assert _scores(item) == pytest.approx(dict(zip(topics.classes_, row)), abs=1e-12)
    # usage: the inputs' tokens, their task's prompt included; no label is embedded
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    assert body["usage"]["total_tokens"] == sum(len(tokenizer(PROMPT + text)["input_ids"]) for text in QUERIES)


def test_a_two_label_classifier_is_one_logistic(few_shot, reference_model):
    app, _, binary = few_shot
    queries = ["Thunderstorms all night", "A hat-trick in the second half"]
    answer = app.post("/invocations", {"data": [{"text": text} for text in queries],
                                       "parameters": {"classifier_id": "weather-or-sport"}})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = binary.predict_proba(reference_model.encode(queries, normalize_embeddings=True).astype(np.float64))
    assert [item["prediction"] for item in body["data"]] == ["weather", "sport"]
    for item, row in zip(body["data"], expected):
        assert _scores(item) == pytest.approx(dict(zip(binary.classes_, row)), abs=TOLERANCE)
    tokens = [app.post("/v1/embeddings", {"input": [text]}).json()["usage"]["total_tokens"] for text in queries]
    assert [item["usage"]["total_tokens"] for item in body["data"]] == tokens  # no task: no prompt
    assert body["usage"] == {"total_tokens": sum(tokens), "label_tokens": 0}


def test_a_trained_classifier_embeds_with_the_requests_adapter(few_shot):
    app, topics, _ = few_shot
    body = {"classifier_id": "topics", "input": QUERIES}
    # SageMaker's adapter header (classify's body has no `adapter` field, contract §2g)
    adapted = app.post("/v1/classify", body, headers={"X-Amzn-SageMaker-Adapter-Identifier": "tone"})
    assert adapted.status_code == 200, adapted.text
    vectors = _served_vectors(app, {"input": QUERIES, "task": "classification", "adapter": "tone"})
    plain = app.post("/v1/classify", body).json()["data"]
    for item, row, before in zip(adapted.json()["data"], topics.predict_proba(vectors), plain):
        assert _scores(item) == pytest.approx(dict(zip(topics.classes_, row)), abs=1e-12)
        assert abs(item["score"] - before["score"]) > 1e-4  # the adapter changed what was scored


def test_a_classifier_fitted_on_another_model_is_the_artifacts_fault(few_shot):
    app, _, _ = few_shot
    answer = app.post("/v1/classify", {"classifier_id": "other-model", "input": QUERIES})
    assert answer.status_code == 500 and answer.json()["code"] == "MODEL_DIRECTORY", answer.text
    detail = answer.json()["detail"]
    assert detail.startswith("classifiers/other-model.json reads 8 dimensions and model ")
    assert detail.endswith(" makes 384: it was fitted on another model; rebuild the artifact with build_artifact.py "
                           "--classifier")


def test_the_typed_answer_of_a_trained_classifier(few_shot, reference_model):
    """The handler's own result (what the engine renders and the artifact check summarises): no inputs, no work."""
    from model_handlers.batching import Timing
    from model_handlers.operations.classify import ClassifyRequest
    from model_handlers.types import TextInput

    app, topics, _ = few_shot
    handler = app.runtime.handler
    empty = handler.run(ClassifyRequest(inputs=(), classifier_id="topics"))
    assert (empty.classifications, empty.token_counts, empty.label_tokens, empty.total_tokens) == ([], [], 0, 0)
    assert empty.model == "minilm-few-shot"  # the directory's name, as /v1/models says
    timing = Timing()  # where the engine's X-Queue-Time / X-Inference-Time come from
    result = handler.run(ClassifyRequest(inputs=(TextInput(QUERIES[0]), TextInput(QUERIES[1])), classifier_id="topics"),
                         timing=timing)
    assert result.model == "minilm-few-shot" and result.label_tokens == 0 and timing.forward_s > 0
    assert [c.labels[0] for c in result.classifications] == ["weather", "sport"]
    assert app.get("/v1/models").json()["data"][0]["id"] == "minilm-few-shot"


@pytest.mark.unit
def test_the_classify_summary_the_artifact_check_prints():
    from model_handlers.operations.classify import SPEC, Classification, ClassifyRequest, ClassifyResult
    from model_handlers.types import TextInput

    inputs = (TextInput("a"), TextInput("b"))
    result = ClassifyResult([Classification(("sales", "billing"), (0.7514, 0.2486)),
                             Classification(("billing", "sales"), (0.6, 0.4))], [3, 3], 4, "m")
    assert SPEC.summary(ClassifyRequest(inputs=inputs, labels=("billing", "sales")), result) == \
        "classified 2 texts against 2 labels (first: 'sales', 0.751)"
    assert SPEC.summary(ClassifyRequest(inputs=inputs, classifier_id="support-v1"), result) == \
        "classified 2 texts against classifier support-v1 (first: 'sales', 0.751)"
