"""Few-shot classifiers trained on the endpoint (issue 37): POST /v1/train creates and updates a classifier online,
every instance sharing the store answers from it, and concurrent updates from two instances all land.

The expected classifiers come from scikit-learn itself, updated in this test with the same calls: its
passive-aggressive learner (`SGDClassifier(loss="hinge", penalty=None, learning_rate="pa1", eta0=1.0)`, what its
deprecated PassiveAggressiveClassifier is; shuffle off, so a call's examples are taken in the order sent), on
embeddings of the texts made by sentence-transformers (loosely: another implementation's float32 rounding) and by the
server's own /v1/embeddings for the classify task (to the last bit: the same vectors in, the same weights out).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from helpers import serving
from tiers import implies

# The classify task's prompt: training must embed as classify does (task, prompt, normalisation).
PROMPT = "Which topic is this about? "
FIRST = [("It will rain all afternoon", "weather"), ("The striker scored twice in the final", "sport"),
         ("A storm is coming tonight", "weather"), ("She won the marathon in record time", "sport"),
         ("Simmer the sauce for twenty minutes", "cooking")]
SECOND = [("Snow is expected over the weekend", "weather"), ("Knead the dough until it is smooth", "cooking"),
          ("The team lost the match on penalties", "sport"), ("Bake the cake at 180 degrees", "cooking")]
QUERIES = ["Heavy fog in the morning", "A last-minute goal decided the derby", "Whisk the eggs with sugar",
           "a quiet evening"]
# sentence-transformers and the server embed the same text to float32 rounding apart
LOOSE = dict(rel=1e-4, abs=1e-5)


def _learner():
    from sklearn.linear_model import SGDClassifier

    return SGDClassifier(loss="hinge", penalty=None, learning_rate="pa1", eta0=1.0, shuffle=False, random_state=0)


def _replayed(calls, embed) -> object:
    """scikit-learn's learner updated with `calls` (examples, num_iters) in order; its classes are the first call's."""
    learner = _learner()
    classes = np.unique([label for _, label in calls[0][0]])
    for examples, iters in calls:
        vectors = embed([text for text, _ in examples])
        for _ in range(iters):
            learner.partial_fit(vectors, np.asarray([label for _, label in examples]), classes=classes)
    return learner


def _probabilities(learner, vectors: np.ndarray) -> list[dict[str, float]]:
    """The scores the contract asks for (summing to 1) from the learner's decision function: the logistic of its one
    score for two labels, else the softmax of its scores; labels as scikit-learn orders them."""
    from scipy.special import expit, softmax

    decision = learner.decision_function(vectors)
    rows = (np.column_stack([1 - expit(decision), expit(decision)]) if decision.ndim == 1
            else softmax(decision, axis=1))
    return [dict(zip(learner.classes_.tolist(), row.tolist())) for row in rows]


def _body(examples, **more) -> dict:
    return {"model": "all-MiniLM-L6-v2", "input": [{"text": text, "label": label} for text, label in examples], **more}


def _stored(store: Path, classifier_id: str) -> dict:
    (path,) = store.glob(f"*/{classifier_id}.json")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def prompted_dir(tmp_path_factory, minilm_dir):
    """MiniLM with a `classification` prompt and two classifiers shipped in the artifact (`shipped`, two labels;
    `topics3`, three)."""
    model_dir = tmp_path_factory.mktemp("models") / "minilm-train"
    shutil.copytree(minilm_dir, model_dir)
    (model_dir / "searchbox.json").write_text(json.dumps({"tasks": {"classification": PROMPT}}))
    (model_dir / "classifiers").mkdir()
    rng = np.random.default_rng(0)
    (model_dir / "classifiers" / "shipped.json").write_text(json.dumps({
        "format": 1, "labels": ["no", "yes"], "weights": rng.normal(size=(1, 384)).tolist(), "bias": [0.0],
        "task": "classification", "examples": 4, "held_out_accuracy": None, "fit": ""}))
    # three labels, not in sorted order: an update that may overwrite it starts from these rows
    (model_dir / "classifiers" / "topics3.json").write_text(json.dumps({
        "format": 1, "labels": ["weather", "cooking", "sport"], "weights": (0.1 * rng.normal(size=(3, 384))).tolist(),
        "bias": [0.1, -0.2, 0.05], "task": "classification", "examples": 6, "held_out_accuracy": None, "fit": ""}))
    return model_dir


@pytest.fixture(scope="module")
def two_instances(tmp_path_factory, prompted_dir, reference_model):
    """Two instances of one endpoint in this process, sharing one store directory: `b` re-reads a classifier at most
    half a second after it last read it, and has tighter limits (3 classes, 6 examples a call)."""
    store = tmp_path_factory.mktemp("store")
    with serving(prompted_dir, {"SEARCHBOX_CLASSIFIER_STORE": str(store)}) as a, \
            serving(prompted_dir, {"SEARCHBOX_CLASSIFIER_STORE": str(store), "SEARCHBOX_CLASSIFIER_REFRESH_S": "0.5",
                                   "SEARCHBOX_MAX_CLASSES": "3", "SEARCHBOX_MAX_TRAIN_EXAMPLES": "6"}) as b:
        yield a, b, store


def _served(app, texts) -> np.ndarray:
    """The server's own vectors for the classify task, as float64 (what its classifier reads)."""
    answer = app.post("/v1/embeddings", {"input": texts, "task": "classification"})
    assert answer.status_code == 200, answer.text
    return np.asarray([item["embedding"] for item in answer.json()["data"]], dtype=np.float32).astype(np.float64)


def test_trained_on_one_instance_classifies_on_another_as_scikit_learn_updates_it(two_instances, reference_model,
                                                                                  minilm_dir):
    from transformers import AutoTokenizer

    a, b, store = two_instances
    created = a.post("/v1/train", _body(FIRST, num_iters=3))
    assert created.status_code == 200, created.text
    made = created.json()
    classifier_id = made["classifier_id"]
    assert made["num_samples"] == len(FIRST) and made["labels"] == ["cooking", "sport", "weather"]
    assert made["version"] == 1 and made["examples"] == len(FIRST)
    # usage: the examples' tokens (their task's prompt included) times num_iters, in the body and the header
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    tokens = sum(len(tokenizer(PROMPT + text)["input_ids"]) for text, _ in FIRST)
    assert made["usage"]["total_tokens"] == 3 * tokens
    assert created.headers["X-Compute-Tokens"] == str(3 * tokens)
    # an update on the other instance, with new examples only (the default num_iters: Jina's 10)
    updated = b.post("/invocations", _body(SECOND, classifier_id=classifier_id))
    assert updated.status_code == 200, updated.text
    assert updated.json()["version"] == 2 and updated.json()["examples"] == len(FIRST) + len(SECOND)
    assert updated.json()["usage"]["total_tokens"] == 10 * sum(len(tokenizer(PROMPT + text)["input_ids"])
                                                               for text, _ in SECOND)

    calls = [(FIRST, 3), (SECOND, 10)]
    # to the last bit, on the vectors the server makes: the stored weights are scikit-learn's
    exact = _replayed(calls, lambda texts: _served(a, texts))
    stored = _stored(store, classifier_id)
    assert stored["labels"] == exact.classes_.tolist() and stored["version"] == 2
    np.testing.assert_array_equal(np.asarray(stored["coef"]), exact.coef_)
    np.testing.assert_array_equal(np.asarray(stored["intercept"]), exact.intercept_)

    # classify with the id, on the instance that did not create it: sentence-transformers' vectors through the
    # learner scikit-learn updated, to float32 rounding; prediction is the learner's own
    loose = _replayed(calls, lambda texts: reference_model.encode(texts, prompt=PROMPT, normalize_embeddings=True)
                      .astype(np.float64))
    queries = reference_model.encode(QUERIES, prompt=PROMPT, normalize_embeddings=True).astype(np.float64)
    for instance in (a, b):
        answer = instance.post("/v1/classify", {"input": QUERIES, "classifier_id": classifier_id})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert [item["prediction"] for item in body["data"]] == loose.predict(queries).tolist()
        for item, expected in zip(body["data"], _probabilities(loose, queries)):
            assert {p["label"]: p["score"] for p in item["predictions"]} == pytest.approx(expected, **LOOSE)
        assert body["usage"]["total_tokens"] == sum(len(tokenizer(PROMPT + text)["input_ids"]) for text in QUERIES)
        # and exactly, from the server's own vectors
        for item, expected in zip(body["data"], _probabilities(exact, _served(a, QUERIES))):
            assert {p["label"]: p["score"] for p in item["predictions"]} == pytest.approx(expected, abs=1e-12)

    # both list it, with its labels, examples seen and when it was last updated
    for instance in (a, b):
        listed = instance.get("/v1/models").json()["data"][0]["details"]["train"]["classifiers"]
        (entry,) = [item for item in listed if item["classifier_id"] == classifier_id]
        assert entry["labels"] == ["cooking", "sport", "weather"] and entry["examples"] == len(FIRST) + len(SECOND)
        assert entry["version"] == 2 and entry["updated_at"].endswith("Z")
    # the artifact's classifier still answers, and is not listed as a trained one
    assert a.post("/v1/classify", {"input": QUERIES, "classifier_id": "shipped"}).status_code == 200


def test_a_reader_answers_a_newer_version_within_its_refresh_bound(two_instances):
    a, b, store = two_instances
    classifier_id = a.post("/v1/train", _body(FIRST[:2], num_iters=1)).json()["classifier_id"]

    def scores(instance) -> list[float]:
        answer = instance.post("/v1/classify", {"input": QUERIES, "classifier_id": classifier_id})
        assert answer.status_code == 200, answer.text
        return [item["score"] for item in answer.json()["data"]]

    before = scores(b)
    assert a.post("/v1/train", _body([("Sunny skies today", "sport")] * 3, classifier_id=classifier_id,
                                     num_iters=5)).status_code == 200
    after_on_a = scores(a)
    assert after_on_a != before  # a contradicting example: the hinge loss is positive, the update moves it
    time.sleep(0.6)  # b's SEARCHBOX_CLASSIFIER_REFRESH_S is 0.5
    assert scores(b) == after_on_a


@pytest.mark.parametrize("body, status, code", [
    (lambda cid: _body([]), 422, "NO_EXAMPLES"),
    (lambda cid: _body([(text, "weather") for text, _ in FIRST] + [("x", "sport")] * 2), 422, "TOO_MANY_EXAMPLES"),
    (lambda cid: _body([("a", "w"), ("b", "x"), ("c", "y"), ("d", "z")]), 422, "TOO_MANY_CLASSES"),
    (lambda cid: _body([("only one class", "weather")]), 422, "TOO_FEW_CLASSES"),
    (lambda cid: _body([("Stir the soup", "soup")], classifier_id=cid), 422, "UNKNOWN_LABEL"),
    (lambda cid: _body([("x", "weather")], classifier_id="no-such-classifier"), 422, "UNKNOWN_CLASSIFIER"),
    (lambda cid: _body([("x", "yes")], classifier_id="shipped"), 422, "ARTIFACT_CLASSIFIER"),
    (lambda cid: _body(FIRST[:2], num_iters=0), 422, "INVALID_NUM_ITERS"),
    (lambda cid: {"input": [{"image": "aGk=", "label": "weather"}, {"text": "x", "label": "sport"}]}, 400,
     "UNSUPPORTED_INPUT"),
])
def test_bad_calls_are_refused_by_name_and_change_and_cost_nothing(two_instances, body, status, code):
    a, b, store = two_instances
    classifier_id = b.post("/v1/train", _body(FIRST[:2], num_iters=1)).json()["classifier_id"]
    before = _stored(store, classifier_id)
    files = sorted(path.name for path in store.rglob("*.json"))
    answer = b.post("/v1/train", body(classifier_id))
    assert answer.status_code == status, answer.text
    assert answer.json()["code"] == code
    assert "X-Compute-Tokens" not in answer.headers or answer.headers["X-Compute-Tokens"] == "0"
    assert _stored(store, classifier_id) == before
    assert sorted(path.name for path in store.rglob("*.json")) == files


def test_the_endpoint_holds_at_most_its_classifiers_and_deletes_one(tmp_path, prompted_dir, reference_model):
    with serving(prompted_dir, {"SEARCHBOX_CLASSIFIER_STORE": str(tmp_path), "SEARCHBOX_MAX_CLASSIFIERS": "1"}) as app:
        first = app.post("/v1/train", _body(FIRST[:2], num_iters=1))
        assert first.status_code == 200
        refused = app.post("/v1/train", _body(FIRST[:2], num_iters=1))
        assert refused.status_code == 422 and refused.json()["code"] == "TOO_MANY_CLASSIFIERS"
        classifier_id = first.json()["classifier_id"]
        deleted = app.delete(f"/v1/classifiers/{classifier_id}")
        assert deleted.status_code == 200 and deleted.json() == {"classifier_id": classifier_id, "deleted": True}
        assert app.delete(f"/v1/classifiers/{classifier_id}").status_code == 404
        assert app.delete("/v1/classifiers/shipped").status_code == 409
        gone = app.post("/v1/classify", {"input": ["x"], "classifier_id": classifier_id})
        assert gone.status_code == 422 and gone.json()["code"] == "UNKNOWN_CLASSIFIER"
        assert app.get("/v1/models").json()["data"][0]["details"]["train"]["classifiers"] == []
        assert app.post("/v1/train", _body(FIRST[:2], num_iters=1)).status_code == 200  # room again


def test_two_instances_updating_one_classifier_at_once_lose_nothing(two_instances):
    """50 updates from each instance at once: every one lands, and the stored classifier is scikit-learn's learner
    updated with all 100 in the order the store accepted them (each answer says its version)."""
    a, b, store = two_instances
    created = a.post("/v1/train", _body(FIRST[:2], num_iters=1)).json()
    classifier_id = created["classifier_id"]
    texts = [text for text, _ in FIRST + SECOND]
    labels = ["weather", "sport"]
    calls = {}  # version -> examples

    def update(instance, index: int) -> None:
        examples = [(texts[index % len(texts)], labels[index % 2]),
                    (texts[(index * 7) % len(texts)], labels[index // 2 % 2])]
        answer = instance.post("/v1/train", _body(examples, classifier_id=classifier_id, num_iters=2))
        assert answer.status_code == 200, answer.text
        calls[answer.json()["version"]] = examples

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda job: update(*job), [(a if i % 2 else b, i) for i in range(100)]))
    assert sorted(calls) == list(range(2, 102))  # every update got its own version: none overwrote another
    stored = _stored(store, classifier_id)
    assert stored["version"] == 101 and stored["examples"] == 2 + 100 * 2
    replay = [(FIRST[:2], 1)] + [(calls[version], 2) for version in range(2, 102)]
    expected = _replayed(replay, lambda texts: _served(a, texts))
    # close, not equal: concurrent calls share forward passes, and a text padded beside another's rounds a float32
    # step apart, carried on by a hundred updates (1.1e-6 seen against a bound of 1e-6): the serves' race's bound
    bound = 1e-4 * np.abs(expected.coef_).max()
    np.testing.assert_allclose(np.asarray(stored["coef"]), expected.coef_, rtol=0, atol=bound)
    np.testing.assert_allclose(np.asarray(stored["intercept"]), expected.intercept_, rtol=0, atol=bound)


# Texts and labels of the concurrent updates: contradicting labels on the same texts keep the hinge loss positive, so
# (nearly) every update moves the weights, and one lost or applied out of order shows.
RACE_TEXTS = [text for text, _ in FIRST + SECOND]
RACE_LABELS = ("weather", "sport")


def _served_alone(instance, texts: list[str]) -> np.ndarray:
    """A real `serve`'s own vectors of `texts`, each embedded in a request of its own (as an update of one example is),
    as float64."""
    import requests

    rows = []
    for text in texts:
        answer = requests.post(instance.url + "/v1/embeddings", json={"input": [text]}, timeout=120)
        assert answer.status_code == 200, answer.text
        rows.append(answer.json()["data"][0]["embedding"])
    return np.asarray(rows, np.float32).astype(np.float64)


# The settings of every pair of `serve`s sharing a store: no reader cache (each call reads the store), and the
# endpoint's limit at 3 for `_creations_stop_at_the_limit`; the race and the kill create one classifier each.
SHARED_STORE_ENV = {"SEARCHBOX_CLASSIFIER_REFRESH_S": "0", "SEARCHBOX_MAX_CLASSIFIERS": "3"}


def _race_two_serves(one, two, stored_of, per_instance: int = 50) -> str:
    """Two real `serve`s (gunicorn, nginx, their own worker processes and their own store clients) sharing one store
    (started with SHARED_STORE_ENV, none of its classifiers trained yet): a classifier created on one is updated from
    both, `per_instance` calls each, at once. Every call lands with its own version, the stored classifier
    (`stored_of(id)`: the document as the store holds it) is scikit-learn's learner updated with all the calls in the
    order the store accepted them, both classify with it alike, and a deletion on one is seen by the other. Returns
    the classifier's id."""
    import requests

    created = one.post("/v1/train", _body(FIRST[:2], num_iters=1))
    assert created.status_code == 200, created.text
    classifier_id = created.json()["classifier_id"]
    calls, total = {}, 2 * per_instance

    def update(index: int) -> None:
        examples = [(RACE_TEXTS[index % len(RACE_TEXTS)], RACE_LABELS[index % 2])]
        answer = requests.post((one if index % 2 else two).url + "/v1/train", timeout=120,
                               json=_body(examples, classifier_id=classifier_id, num_iters=2))
        assert answer.status_code == 200, answer.text
        calls[answer.json()["version"]] = examples

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(update, range(total)))
    assert sorted(calls) == list(range(2, total + 2))  # every update got its own version: none overwrote another
    stored = stored_of(classifier_id)
    assert stored["version"] == total + 1 and stored["examples"] == 2 + total

    vectors = dict(zip(RACE_TEXTS + QUERIES, _served_alone(one, RACE_TEXTS + QUERIES)))

    def embed(texts: list[str]) -> np.ndarray:
        return np.stack([vectors[text] for text in texts])

    accepted = [(FIRST[:2], 1)] + [(calls[version], 2) for version in range(2, total + 2)]
    expected = _replayed(accepted, embed)
    # close, not equal: a serve batches concurrent calls' texts into one forward pass, where padding rounds a vector a
    # float32 step apart from the same text embedded alone, and a hundred updates carry that on. Most updates move
    # the weights by far more than this bound, and losing the last of them shows: checked on the same replay.
    bound = 1e-4 * np.abs(expected.coef_).max()
    np.testing.assert_allclose(np.asarray(stored["coef"]), expected.coef_, rtol=0, atol=bound)
    np.testing.assert_allclose(np.asarray(stored["intercept"]), expected.intercept_, rtol=0, atol=bound)
    learner, moved = _learner(), []
    for index, (examples, iters) in enumerate(accepted):
        before = learner.coef_.copy() if index else None
        for _ in range(iters):
            learner.partial_fit(embed([text for text, _ in examples]), np.asarray([label for _, label in examples]),
                                classes=expected.classes_)
        if index and np.abs(learner.coef_ - before).max() > 10 * bound:
            moved.append(index)
    assert len(moved) > total // 2
    # (an update may be all but erased by later ones on the same text: the passive-aggressive step moves the weights
    # just as far as the example asks, so a later one can land where the lost one would have: a CI run found the last
    # mover's loss invisible, 0.0 apart. The bound must show the loss of some update that moved the weights, the
    # latest such first.)
    assert any(np.abs(_replayed(accepted[:index] + accepted[index + 1:], embed).coef_ - expected.coef_).max()
               > 10 * bound for index in reversed(moved))

    answers = [requests.post(instance.url + "/v1/classify", timeout=120,
                             json={"input": QUERIES, "classifier_id": classifier_id}).json() for instance in (one, two)]
    assert answers[0] == answers[1]
    assert [item["prediction"] for item in answers[0]["data"]] == expected.predict(embed(QUERIES)).tolist()
    assert requests.delete(f"{two.url}/v1/classifiers/{classifier_id}", timeout=60).status_code == 200
    assert requests.get(one.url + "/v1/models", timeout=60).json()["data"][0]["details"]["train"]["classifiers"] == []
    return classifier_id


@pytest.mark.server
def test_readme_curls_run_as_written_in_one_shell(http_serving_factory, minilm_dir, tmp_path):
    """README's train recipe, pasted into one shell (the id the first call answers is used by the others): each
    answer is what its comment says."""
    import re
    import subprocess

    from helpers import matches_answer, shell_examples

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- recipe: train -->\n```sh\n(.*?)```", readme, re.S).group(1)
    url = http_serving_factory(minilm_dir, {"SEARCHBOX_CLASSIFIER_STORE": str(tmp_path / "store")}).url
    examples = shell_examples(block)
    assert len(examples) == 6
    host = url.removeprefix("http://")
    script = "set -e\n" + "".join(f"{command.replace('localhost:8080', host)}\necho\necho '<<>>'\n"
                                  for command, _ in examples)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    answers = done.stdout.split("<<>>")[:-1]
    for (command, comment), answer in zip(examples, answers):
        assert not comment or matches_answer(comment, answer), (command, comment, answer)
    assert not list((tmp_path / "store").rglob("*.json"))  # the last call deleted it


def test_an_unreadable_stored_classifier_is_named_and_never_unpickled(tmp_path, prompted_dir, reference_model):
    """A stored document that is not a classifier (here: a pickle's bytes) is refused naming it; the model card still
    answers, saying what is wrong with the store."""
    import pickle

    folder = tmp_path / "minilm-train"
    folder.mkdir()
    (folder / "evil.json").write_bytes(pickle.dumps({"labels": ["a", "b"]}))
    with serving(prompted_dir, {"SEARCHBOX_CLASSIFIER_STORE": str(tmp_path)}) as app:
        card = app.get("/v1/models")
        assert card.status_code == 200
        details = card.json()["data"][0]["details"]["train"]
        assert details["classifiers"] is None and "evil.json is not JSON" in details["store_error"]
        answer = app.post("/v1/classify", {"input": ["x"], "classifier_id": "evil"})
        assert answer.status_code == 500 and answer.json()["code"] == "CLASSIFIER_STORE"
        assert "evil.json is not JSON" in answer.json()["detail"]


def test_an_operator_may_let_training_update_a_shipped_classifier(tmp_path, prompted_dir, reference_model):
    """SEARCHBOX_CLASSIFIER_OVERWRITE=1: an update of a shipped classifier starts from its weights (scikit-learn's
    learner given them as its state, its classes in its own sorted order) and the trained copy answers for it."""
    shipped = json.loads((prompted_dir / "classifiers" / "topics3.json").read_text())
    order = sorted(range(3), key=lambda i: shipped["labels"][i])
    with serving(prompted_dir, {"SEARCHBOX_CLASSIFIER_STORE": str(tmp_path),
                                "SEARCHBOX_CLASSIFIER_OVERWRITE": "1"}) as app:
        answer = app.post("/v1/train", _body(SECOND, classifier_id="topics3", num_iters=4))
        assert answer.status_code == 200, answer.text
        assert answer.json()["labels"] == ["cooking", "sport", "weather"] and answer.json()["version"] == 1
        assert answer.json()["examples"] == 6 + len(SECOND)
        learner = _learner()
        learner.coef_ = np.asarray(shipped["weights"], dtype=np.float64)[order]
        learner.intercept_ = np.asarray(shipped["bias"], dtype=np.float64)[order]
        learner.classes_ = np.asarray(sorted(shipped["labels"]))
        learner.t_ = 1.0
        vectors = _served(app, [text for text, _ in SECOND])
        for _ in range(4):
            learner.partial_fit(vectors, np.asarray([label for _, label in SECOND]), classes=learner.classes_)
        stored = _stored(tmp_path, "topics3")
        np.testing.assert_array_equal(np.asarray(stored["coef"]), learner.coef_)
        np.testing.assert_array_equal(np.asarray(stored["intercept"]), learner.intercept_)
        classified = app.post("/v1/classify", {"input": QUERIES, "classifier_id": "topics3"}).json()
        for item, expected in zip(classified["data"], _probabilities(learner, _served(app, QUERIES))):
            assert {p["label"]: p["score"] for p in item["predictions"]} == pytest.approx(expected, abs=1e-12)


@pytest.fixture(scope="module")
def s3_emulator():
    """moto's S3 server (a real HTTP S3 emulator that honours If-Match and If-None-Match on PutObject) with a bucket
    `classifiers`; yields the settings an instance reaches it by: boto3's own environment variables, as an instance's
    role and region would be."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    emulator = make_server("127.0.0.1", 0, _OneRequestAtATime(DomainDispatcherApplication(create_backend_app)),
                           threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=emulator.serve_forever, daemon=True).start()
    settings = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{emulator.server_port}", "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    _s3_client(settings).create_bucket(Bucket="classifiers")
    yield settings
    emulator.shutdown()
    emulator.server_close()


class _OneRequestAtATime:
    """moto checks a PutObject's If-Match, then writes, with no lock between: two writes at once on one ETag may both
    pass (a CI run lost an update so), which S3 never allows (its preconditions are atomic: one write wins, the other
    gets 412 or 409). Answering one request at a time gives the emulator S3's atomicity; the serves still race."""

    def __init__(self, app):
        self.app, self.lock = app, threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            return list(self.app(environ, start_response))  # the whole answer, body included, under the lock


def _s3_client(settings: dict[str, str]):
    """This test's own client of the emulator (the settings given, not this process's environment: the serves get
    them in theirs)."""
    import boto3

    return boto3.client("s3", endpoint_url=settings["AWS_ENDPOINT_URL"], region_name=settings["AWS_DEFAULT_REGION"],
                        aws_access_key_id=settings["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=settings["AWS_SECRET_ACCESS_KEY"])


def _s3_documents(client, store: str) -> list[str]:
    listed = client.list_objects_v2(Bucket="classifiers", Prefix=store.removeprefix("s3://classifiers/"))
    return [item["Key"] for item in listed.get("Contents", []) if item["Key"].endswith(".json")]


def _s3_stored(client, store: str, classifier_id: str) -> dict:
    (key,) = [key for key in _s3_documents(client, store) if key.endswith(f"/{classifier_id}.json")]
    return json.loads(client.get_object(Bucket="classifiers", Key=key)["Body"].read())


@pytest.mark.app
def test_an_s3_store_deletes_a_classifier_once_and_then_answers_it_absent(s3_emulator, monkeypatch):
    """On moto's server (S3 answers a delete of nothing with success too): the first delete removes the document and
    says so, a second one, or one of a classifier never written, answers absent; the other classifier stays."""
    from model_handlers.classifier_store import S3Store, Stored

    for name, value in s3_emulator.items():
        monkeypatch.setenv(name, value)
    client, store_url = _s3_client(s3_emulator), "s3://classifiers/deletes"
    store = S3Store(store_url)
    for classifier_id in ("kept", "gone"):
        assert store.put(Stored(id=classifier_id, labels=("a", "b"), coef=np.zeros((1, 4)), intercept=np.zeros(1),
                                t=1.0, examples=2, version=1, updated_at=0.0, task=None, model="tiny"), None)
    assert len(_s3_documents(client, store_url)) == 2
    assert store.delete("tiny", "gone") is True
    assert [key.rpartition("/")[2] for key in _s3_documents(client, store_url)] == ["kept.json"]
    assert store.delete("tiny", "gone") is False
    assert store.delete("tiny", "never") is False
    assert [key.rpartition("/")[2] for key in _s3_documents(client, store_url)] == ["kept.json"]


class SharedStore:
    """Two `serve`s sharing one store, started once for every test of that store (each `serve` loads the model and
    calibrates: seconds each), with SHARED_STORE_ENV. `documents()` names the classifier documents the store holds,
    `stored_of(id)` reads one as the store holds it."""

    def __init__(self, folder: Path, env: dict[str, str], documents, stored_of):
        self.folder, self.env = folder, {**SHARED_STORE_ENV, **env}
        self.documents, self.stored_of = documents, stored_of
        self.started: list = []
        self.pair: list = []

    def start(self):
        from conftest import start_server

        self.started.append(start_server(self.folder, self.env))
        return self.started[-1]

    def emptied(self) -> tuple:
        """The two `serve`s once every classifier an earlier test trained on them is deleted (and one an earlier test
        killed is started again): each test starts from an empty store whatever ran before it, in whatever order."""
        import requests

        def listed(instance) -> list[str]:
            card = requests.get(instance.url + "/v1/models", timeout=60).json()
            return sorted(item["classifier_id"] for item in card["data"][0]["details"]["train"]["classifiers"])

        self.pair = [instance if instance.process.poll() is None else self.start() for instance in self.pair]
        one, two = self.pair
        for classifier_id in listed(one):
            assert requests.delete(f"{one.url}/v1/classifiers/{classifier_id}", timeout=60).status_code == 200
        assert listed(one) == listed(two) == [] and self.documents() == []
        return one, two


@pytest.fixture(scope="module", params=["directory", "s3"])
@implies("server")
def shared_store(request, tmp_path_factory):
    """The race, the limit and the kill on each store, on one pair of `serve`s per store (pytest runs each store's
    tests together, then stops its pair)."""
    from conftest import stop_server

    folder = tmp_path_factory.mktemp(f"shared-{request.param}")
    if request.param == "directory":
        store = folder / "store"
        shared = SharedStore(folder, {"SEARCHBOX_CLASSIFIER_STORE": str(store)},
                             lambda: sorted(path.name for path in store.rglob("*.json")),
                             lambda classifier_id: _stored(store, classifier_id))
    else:
        settings = request.getfixturevalue("s3_emulator")
        client, url = _s3_client(settings), "s3://classifiers/endpoint"
        shared = SharedStore(folder, {**settings, "SEARCHBOX_CLASSIFIER_STORE": url},
                             lambda: sorted(key.rpartition("/")[2] for key in _s3_documents(client, url)),
                             lambda classifier_id: _s3_stored(client, url, classifier_id))
    try:
        shared.pair = [shared.start(), shared.start()]
        yield shared
    finally:  # the first stopped even when the second failed to start
        for running in shared.started:
            stop_server(running)


@pytest.mark.server
def test_two_serves_sharing_a_store_lose_no_update(shared_store):
    """moto's S3 server decides each race with If-Match / If-None-Match: the loser re-reads and re-applies; on a store
    directory, a lock file per classifier."""
    one, two = shared_store.emptied()
    seen = []

    def stored_of(classifier_id: str) -> dict:
        seen.append(shared_store.documents())
        return shared_store.stored_of(classifier_id)

    classifier_id = _race_two_serves(one, two, stored_of)
    # no stray documents (a temporary file renamed over another's), and the deletion took the one away
    assert seen == [[f"{classifier_id}.json"]] and shared_store.documents() == []


@pytest.mark.server
def test_two_serves_sharing_a_store_hold_the_limit(shared_store):
    _creations_stop_at_the_limit(*shared_store.emptied())


def _kill_mid_updates(shared: SharedStore) -> str:
    """One of two `serve`s is killed (SIGKILL: no clean-up) while both take updates of one classifier, then started
    again: every update answered 200 kept its own version, and the stored classifier has seen exactly one example per
    version (an update the dead one wrote but never answered counts, as a store must; none acknowledged is missing).
    Returns the classifier's id."""
    import os
    import signal

    import requests

    one, two = shared.emptied()
    classifier_id = one.post("/v1/train", _body(FIRST[:2], num_iters=1)).json()["classifier_id"]
    acknowledged, lock = [], threading.Lock()
    targets = {"two": two}

    def update(index: int) -> None:
        instance = one if index % 2 else targets["two"]
        try:
            answer = requests.post(instance.url + "/v1/train", timeout=60, json=_body(
                [(SECOND[index % len(SECOND)][0], ("weather", "sport")[index % 2])], classifier_id=classifier_id,
                num_iters=50))
        except requests.RequestException:
            return  # sent to the instance being killed: not acknowledged
        if answer.status_code == 200:
            with lock:
                acknowledged.append(answer.json()["version"])

    with ThreadPoolExecutor(max_workers=6) as pool:
        first = [pool.submit(update, index) for index in range(40)]
        time.sleep(1.0)
        os.killpg(two.process.pid, signal.SIGKILL)
        two.process.wait()
        targets["two"] = shared.pair[1] = shared.start()
        rest = [pool.submit(update, index) for index in range(40, 80)]
        for future in first + rest:
            future.result()
    assert len(acknowledged) >= 40 and len(set(acknowledged)) == len(acknowledged)
    stored = shared.stored_of(classifier_id)
    assert max(acknowledged) <= stored["version"]
    assert stored["examples"] == 2 + (stored["version"] - 1)
    return classifier_id


@pytest.mark.server
def test_an_instance_killed_mid_update_loses_nothing_acknowledged(shared_store):
    """On a store directory, the other instance never waits on a dead holder's lock file (the kernel drops it)."""
    classifier_id = _kill_mid_updates(shared_store)
    assert shared_store.documents() == [f"{classifier_id}.json"]


@pytest.fixture
def gcs_store(gcs_emulator, monkeypatch):
    """A prefix of its own in the session's Cloud Storage emulator (tests/conftest.py: gcp-storage-emulator, made to
    refuse a write whose ifGenerationMatch does not hold, as Cloud Storage does), reached through google-cloud-storage's
    own STORAGE_EMULATOR_HOST."""
    import uuid

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    return f"gs://classifiers/endpoint-{uuid.uuid4().hex[:8]}"


@pytest.mark.server
def test_two_serves_sharing_a_cloud_storage_store_lose_no_update_and_hold_the_limit(gcs_store, gcs_emulator,
                                                                                   server_factory):
    """Cloud Storage decides each race on generations: a create with ifGenerationMatch=0, an update on the generation
    it read. The emulator's log shows writes refused (412) and every call acknowledged all the same: the losers
    re-read and re-applied their examples."""
    from google.cloud import storage

    def stored_of(classifier_id: str) -> dict:
        bucket = storage.Client().bucket("classifiers")
        (blob,) = [blob for blob in bucket.list_blobs(prefix=gcs_store.removeprefix("gs://classifiers/"))
                   if blob.name.endswith(".json")]
        assert blob.name.endswith(f"/{classifier_id}.json")
        return json.loads(blob.download_as_bytes())

    before = len(gcs_emulator.log().splitlines())
    env = {**SHARED_STORE_ENV, "SEARCHBOX_CLASSIFIER_STORE": gcs_store}
    one, two = server_factory(env), server_factory(env)
    _race_two_serves(one, two, stored_of)
    uploads = [line for line in gcs_emulator.log().splitlines()[before:] if line.startswith('"POST /upload/')]
    assert all("ifGenerationMatch=" in line for line in uploads), uploads
    accepted = [line for line in uploads if line.endswith(" 200 -")]
    refused = [line for line in uploads if line.endswith(" 412 -")]
    # accepted: the creation's claim on a place, the classifier created, the claim dropped, and the 100 updates
    assert len(accepted) == 3 + 100 and len(accepted) + len(refused) == len(uploads)
    assert len([line for line in accepted if "ifGenerationMatch=0 " in line]) == 2
    assert refused  # some writes lost a race, and their calls were answered all the same
    _creations_stop_at_the_limit(one, two)


# Azurite's well-known development account (Microsoft's documented key for the emulator, not a secret)
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.fixture
def azure_store(monkeypatch, tmp_path):
    """A container on Azurite (Microsoft's Azure Storage emulator, a real process from npm, which honours If-Match and
    If-None-Match on Put Blob), reached through AZURE_STORAGE_CONNECTION_STRING as an instance would be."""
    import subprocess

    import requests

    from conftest import free_port
    from reference_env import azurite_blob

    pytest.importorskip("azure.storage.blob")
    port = free_port()
    log = (tmp_path / "azurite.log").open("wb")
    # --skipApiVersionCheck: the client may speak a newer service version than this Azurite release knows
    process = subprocess.Popen([str(azurite_blob()), "--silent", "--location", str(tmp_path / "azurite"),
                                "--blobHost", "127.0.0.1", "--blobPort", str(port), "--skipApiVersionCheck"],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, "Azurite exited"
        try:
            requests.get(f"http://127.0.0.1:{port}/devstoreaccount1?comp=list", timeout=1)
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline, "Azurite did not start"
            time.sleep(0.1)
    connection = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
                  f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection)
    from azure.storage.blob import BlobServiceClient

    BlobServiceClient.from_connection_string(connection).create_container("classifiers")
    yield f"az://classifiers/endpoint-{port}"
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:  # Azurite waits on its clients' kept-alive connections before it exits
        process.kill()
        process.wait(10)
    log.close()


@pytest.mark.server
def test_two_serves_sharing_an_azure_blob_store_lose_no_update_and_hold_the_limit(azure_store, server_factory):
    """Azurite decides each race with If-Match / If-None-Match on Put Blob: the loser re-reads and re-applies."""
    import os

    from azure.storage.blob import BlobServiceClient

    def stored_of(classifier_id: str) -> dict:
        container = BlobServiceClient.from_connection_string(
            os.environ["AZURE_STORAGE_CONNECTION_STRING"]).get_container_client("classifiers")
        (name,) = [blob.name for blob in container.list_blobs(
            name_starts_with=azure_store.removeprefix("az://classifiers/")) if blob.name.endswith(".json")]
        assert name.endswith(f"/{classifier_id}.json")
        return json.loads(container.download_blob(name).readall())

    env = {**SHARED_STORE_ENV, "SEARCHBOX_CLASSIFIER_STORE": azure_store}
    one, two = server_factory(env), server_factory(env)
    _race_two_serves(one, two, stored_of)
    _creations_stop_at_the_limit(one, two)


@pytest.mark.parametrize("url,env,named", [
    # an Azure store with no account named is refused at start, saying what names one (README's two variables)
    ("az://classifiers/team", {}, "AZURE_STORAGE_CONNECTION_STRING"),
    ("az://", {"AZURE_STORAGE_CONNECTION_STRING": "x"}, "az://container/prefix"),
    ("gs://", {}, "gs://bucket/prefix"),
    ("ftp://host/classifiers", {}, "s3://, gs:// and az://"),
])
def test_an_object_store_that_cannot_be_opened_is_refused_at_start_by_name(monkeypatch, url, env, named):
    from container.settings import Settings, SettingsError

    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match="SEARCHBOX_CLASSIFIER_STORE") as raised:
        Settings.from_env({"SEARCHBOX_CLASSIFIER_STORE": url})
    assert named in str(raised.value)


def test_cloud_storage_and_azure_stores_are_accepted_at_start(monkeypatch):
    from container.settings import Settings

    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "searchboxclassifiers")
    for url in ("gs://classifiers/team", "az://classifiers/team"):
        assert Settings.from_env({"SEARCHBOX_CLASSIFIER_STORE": url}).classifier_store == url


def _creations_stop_at_the_limit(one, two) -> None:
    """SEARCHBOX_MAX_CLASSIFIERS=3 and ten creations at once, alternating between the two `serve`s over one store:
    exactly three are answered 200 (the others 422 TOO_MANY_CLASSIFIERS, by name) and both list those three; once one
    is deleted, of four more creations at once exactly one gets its place."""
    import requests

    def create(index: int) -> requests.Response:
        return requests.post((one if index % 2 else two).url + "/v1/train", timeout=120,
                             json=_body([FIRST[index % len(FIRST)], FIRST[(index + 1) % len(FIRST)]], num_iters=1))

    def listed(instance) -> list[str]:
        card = requests.get(instance.url + "/v1/models", timeout=60).json()
        return sorted(item["classifier_id"] for item in card["data"][0]["details"]["train"]["classifiers"])

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(create, range(10)))
    made = sorted(answer.json()["classifier_id"] for answer in answers if answer.status_code == 200)
    refused = [answer for answer in answers if answer.status_code != 200]
    assert len(made) == 3 and all(answer.status_code == 422 for answer in refused)
    assert {answer.json()["code"] for answer in refused} == {"TOO_MANY_CLASSIFIERS"}
    assert listed(one) == listed(two) == made
    assert requests.delete(f"{one.url}/v1/classifiers/{made[0]}", timeout=60).status_code == 200
    with ThreadPoolExecutor(max_workers=4) as pool:
        again = list(pool.map(create, range(4)))
    assert sorted(answer.status_code for answer in again) == [200, 422, 422, 422]
    assert len(listed(two)) == 3
