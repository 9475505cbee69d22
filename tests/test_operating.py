"""Billing and seeing into the endpoint: the metering header, /metrics, the request log, /health, /v1/models."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from helpers import assert_error, serving

pytestmark = pytest.mark.app

METERING = "X-Amzn-Inference-Metering"


def metered_dir(tmp_path_factory, minilm_dir, metering: dict | None) -> Path:
    """A copy of the embedded model with `metering` in its searchbox.json."""
    model_dir = tmp_path_factory.mktemp("metered") / "metered-minilm"
    shutil.copytree(minilm_dir, model_dir)
    if metering is not None:
        (model_dir / "searchbox.json").write_text(json.dumps({"metering": metering}))
    return model_dir


@pytest.fixture(scope="module", params=[
    {"unit": "request"}, {"unit": "input"}, {"unit": "tokens", "tokens_per_unit": 4}], ids=lambda m: m["unit"])
def metered(request, tmp_path_factory, minilm_dir):
    with serving(metered_dir(tmp_path_factory, minilm_dir, request.param)) as app:
        yield app, request.param


def expected_units(metering: dict, inputs: int, tokens: int) -> int:
    if metering["unit"] == "request":
        return 1
    if metering["unit"] == "input":
        return max(1, inputs)
    return max(1, math.ceil(tokens / metering["tokens_per_unit"]))


def units_of(response) -> int:
    value = json.loads(response.headers[METERING])
    assert set(value) == {"Dimension", "ConsumedUnits"} and value["Dimension"] == "inference.count"
    assert isinstance(value["ConsumedUnits"], int) and value["ConsumedUnits"] >= 1
    return value["ConsumedUnits"]


def test_every_2xx_reports_the_units_of_its_exact_usage(metered):
    app, metering = metered
    texts = ["a first sentence to embed", "two", "and a third, a little longer than the others"]
    public = app.post("/v1/embeddings", {"input": texts})
    assert public.status_code == 200
    assert units_of(public) == expected_units(metering, 3, public.json()["usage"]["total_tokens"])
    envelope = app.post("/invocations", {"data": [{"text": t} for t in texts[:2]]})
    tokens = sum(item["usage"]["total_tokens"] for item in envelope.json()["data"])
    assert units_of(envelope) == expected_units(metering, 2, tokens)
    rerank = app.post("/v1/rerank", {"query": "which sentence is long?", "documents": texts})
    assert units_of(rerank) == expected_units(metering, 3, rerank.json()["usage"]["total_tokens"])
    csv = app.post("/invocations", data="1,one\n2,two\n3,three\n4,four\n", headers={"Content-Type": "text/csv"})
    tokens = sum(item["usage"]["total_tokens"] for item in csv.json()["data"])
    assert units_of(csv) == expected_units(metering, 4, tokens)
    assert units_of(app.post("/invocations", {"data": []})) == 1  # AWS counts every 2xx at least once
    assert int(public.headers["X-Compute-Tokens"]) == public.json()["usage"]["total_tokens"]
    assert int(public.headers["X-Inference-Time"]) >= 0 and int(public.headers["X-Queue-Time"]) >= 0


def test_the_log_line_and_the_metered_units_counter_carry_the_units_billed(metered, reference_model, caplog):
    """Units from the tokenizer's own counts (not from the answer): in the header, the request's log line and
    searchbox_metered_units_total alike."""
    app, metering = metered
    texts = ["a first sentence to embed", "two", "and a third, a little longer than the others"]
    tokens = sum(len(reference_model.tokenizer(t)["input_ids"]) for t in texts)
    units = expected_units(metering, len(texts), tokens)
    before = scrape(app)
    with caplog.at_level("INFO", logger="searchbox.requests"):
        response = app.post("/v1/embeddings", {"input": texts})
        assert_error(app.post("/v1/embeddings", {"input": ["x"], "dimensions": 4096}), 422)
    after = scrape(app)
    assert units_of(response) == units
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "searchbox.requests"]
    assert [(line["status"], line["inputs"], line["tokens"], line["units"]) for line in lines] == [
        (200, 3, tokens, units), (422, 0, 0, 0)]
    assert delta(before, after, "searchbox_metered_units_total") == units  # the 422 adds none


def test_no_error_is_ever_metered(metered):
    app, _ = metered
    for response, status in [(app.post("/v1/embeddings", {"input": ["x"], "dimensions": 4096}), 422),
                             (app.post("/v1/embeddings", {"input": ["x"] * 2049}), 400),
                             (app.post("/invocations", data=b"{", headers={}), 400),
                             (app.post("/invocations", data=b"x", headers={"Content-Type": "text/plain"}), 415)]:
        assert_error(response, status)
        assert METERING not in response.headers


def test_hourly_pricing_sends_no_metering_header(app):
    response = app.post("/v1/embeddings", {"input": ["priced per hour"]})
    assert response.status_code == 200 and METERING not in response.headers
    assert int(response.headers["X-Compute-Tokens"]) == response.json()["usage"]["total_tokens"]


def test_a_metering_setting_that_makes_no_sense_is_refused_at_start(tmp_path, minilm_dir):
    from model_handlers.errors import ModelDirectoryError
    from model_handlers.serving_config import read_serving_config

    model_dir = tmp_path / "model"
    shutil.copytree(minilm_dir, model_dir)
    for bad in ({"unit": "characters"}, {"unit": "input", "tokens_per_unit": 1000}, {"unit": "tokens",
                "tokens_per_unit": 0}, "tokens"):
        (model_dir / "searchbox.json").write_text(json.dumps({"metering": bad}))
        with pytest.raises(ModelDirectoryError, match="metering"):
            read_serving_config(model_dir)


# --- /metrics -------------------------------------------------------------------------------------

def scrape(app) -> dict[tuple[str, tuple], float]:
    response = app.get("/metrics")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def delta(before, after, name, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_move_by_exactly_what_a_known_sequence_of_requests_adds(app, runtime):
    before = scrape(app)
    first = app.post("/v1/embeddings", {"input": ["metrics one", "metrics two", "metrics three"]}).json()
    second = app.post("/v1/embeddings", {"input": ["metrics four", "metrics five"]}).json()
    assert app.post("/v1/embeddings", {"input": ["x"], "dimensions": 9999}).status_code == 422
    rerank = app.post("/v1/rerank", {"query": "q", "documents": ["d one", "d two"]}).json()
    after = scrape(app)
    route = "/v1/embeddings"
    assert delta(before, after, "searchbox_requests_total", route=route, status="200") == 2
    assert delta(before, after, "searchbox_requests_total", route=route, status="422") == 1
    assert delta(before, after, "searchbox_requests_total", route="/v1/rerank", status="200") == 1
    assert delta(before, after, "searchbox_inputs_total", route=route) == 5
    assert delta(before, after, "searchbox_tokens_total", route=route) == (
        first["usage"]["total_tokens"] + second["usage"]["total_tokens"])
    assert delta(before, after, "searchbox_tokens_total", route="/v1/rerank") == rerank["usage"]["total_tokens"]
    assert delta(before, after, "searchbox_request_duration_seconds_count", route=route) == 3
    assert delta(before, after, "searchbox_metered_units_total") == 0  # priced per hour
    passes = delta(before, after, "searchbox_forward_seconds_count")
    assert passes >= 3 and delta(before, after, "searchbox_batch_inputs_count") == passes
    assert delta(before, after, "searchbox_batch_inputs_sum") >= 5 + 3  # every input, the rerank's query too
    assert delta(before, after, "searchbox_queue_wait_seconds_count") == 3  # one per request that reached the model
    assert after[("searchbox_queue_depth", ())] == 0
    assert after[("searchbox_ready", ())] == 1
    assert after[("searchbox_model_load_seconds", ())] > 0


# --- the request log ------------------------------------------------------------------------------

def request_log_lines(server, count: int, settle_s: float = 0.0, since: int = 0) -> list[dict]:
    """The request log's lines from character `since` of the server's log on, once `count` of them are there (polled:
    the log is written by another process), after `settle_s` more seconds in which no other line may come."""
    deadline = time.monotonic() + 30
    while True:
        lines = [json.loads(line.split(": ", 1)[1]) for line in server.log()[since:].splitlines()
                 if "searchbox.requests:" in line]
        if len(lines) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(settle_s)
    again = [line for line in server.log()[since:].splitlines() if "searchbox.requests:" in line]
    assert len(again) == len(lines), "more request log lines than requests"
    return lines


def test_one_json_line_per_request_and_never_any_input(server):
    """On the session's `serve` (its log read from where this test began): the lines its workers and nginx write."""
    marker = "zebra-quokka-7781-secret"
    since = len(server.log())
    server.post("/v1/embeddings", {"input": [f"{marker} first", f"second {marker}"]})
    server.post("/invocations", {"data": [{"text": marker, "id": marker}], "parameters": {"task": marker}})
    server.post("/v1/rerank", {"query": marker, "documents": [marker, "other"]})
    server.post("/v1/embeddings", {"input": [marker], "embedding_type": marker})  # an error that names the value
    requests.post(server.url + "/invocations", data=f"1,{marker}\n".encode(), timeout=30,
                  headers={"Content-Type": "text/csv"})
    lines = request_log_lines(server, 5, since=since)
    assert marker not in server.log()
    assert [line["status"] for line in lines] == [200, 200, 200, 422, 200]
    assert [line["route"] for line in lines][:3] == ["/v1/embeddings", "/invocations", "/v1/rerank"]
    first = lines[0]
    assert set(first) == {"request_id", "route", "status", "inputs", "tokens", "units", "queue_ms", "forward_ms",
                          "total_ms"}
    assert first["inputs"] == 2 and first["tokens"] > 0 and first["total_ms"] >= first["forward_ms"] >= 0


@pytest.mark.unit
@pytest.mark.parametrize(("env", "logged"), [({}, True), ({"SEARCHBOX_REQUEST_LOG": "off"}, False),
                                             ({"SEARCHBOX_LOG_LEVEL": "WARNING"}, False)])
def test_nginx_logs_its_own_answers_in_the_request_logs_shape(tmp_path, env, logged):
    """Every error location of nginx.conf logs (when the request log is on and INFO shows), in a format whose JSON
    has the request log's keys, in order."""
    import re

    from container.proxy import ProxyPaths, render_conf
    from container.settings import Settings
    from container.telemetry import REQUEST_LOG_KEYS

    conf = render_conf(Settings.from_env({"SEARCHBOX_MODEL_DIR": "/nonexistent", **env}), ProxyPaths(tmp_path))
    locations = re.findall(r"location = /_searchbox/error/\d+ \{(.*?)\}", conf, re.DOTALL)
    assert locations and all(("access_log /dev/stderr searchbox_answer;" in body) == logged for body in locations)
    (line,) = re.findall(r"log_format searchbox_answer escape=json '(.*)';", conf)
    prefix, json_part = line.split(" searchbox.requests: ")
    assert prefix == "$time_iso8601 [$pid] [INFO]"
    assert tuple(re.findall(r'"(\w+)":', json_part)) == REQUEST_LOG_KEYS


@pytest.mark.unit
def test_the_answer_log_is_read_on_from_where_it_stopped_and_across_a_rotation(tmp_path):
    """What every worker counts from nginx's answer log: each line once, a line cut mid-write when it is whole, and the
    old file's last lines after the master starts the log over (renamed, nginx reopening the path)."""
    import os

    from container.proxy import AnswerLog

    path = tmp_path / "answers.log"
    reader = AnswerLog(path)
    assert reader.new_answers() == []  # nginx not started yet
    with open(path, "ab") as nginx:
        nginx.write(b"413 /invocations\n503 /v1/embeddings\n431 /pi")
        nginx.flush()
        assert reader.new_answers() == [("413", "/invocations"), ("503", "/v1/embeddings")]
        nginx.write(b"ng\n")
        nginx.flush()
        assert reader.new_answers() == [("431", "/ping")]
        os.replace(path, tmp_path / "answers.log.1")
        nginx.write(b"400 unmatched\n")  # written to the old file before nginx reopened
        nginx.flush()
    path.write_bytes(b"501 /invocations\n")
    assert reader.new_answers() == [("400", "unmatched"), ("501", "/invocations")]
    assert reader.new_answers() == []


@pytest.mark.unit
def test_workers_reading_one_answer_log_count_each_line_once(tmp_path):
    """Every worker reads nginx's answer log when scraped, and their counts add up: a line read by one is not read
    by another."""
    from container.proxy import AnswerLog

    path = tmp_path / "answers.log"
    first, second = AnswerLog(path), AnswerLog(path)
    path.write_bytes(b"413 /invocations\n")
    assert first.new_answers() == [("413", "/invocations")]
    assert second.new_answers() == []
    with open(path, "ab") as nginx:
        nginx.write(b"503 /v1/embeddings\n429 /v1/re")
    assert second.new_answers() == [("503", "/v1/embeddings")]
    assert first.new_answers() == []
    with open(path, "ab") as nginx:
        nginx.write(b"rank\n")
    assert first.new_answers() == [("429", "/v1/rerank")]
    assert second.new_answers() == []


def test_the_request_log_can_be_turned_off(serving_factory, minilm_dir, caplog):
    """SEARCHBOX_REQUEST_LOG=off, read where the log lines are written (the app, here in this process); that nginx's
    own answers follow the same switch is in its conf (test_nginx_logs_its_own_answers_in_the_request_logs_shape)."""
    quiet = serving_factory(minilm_dir, {"SEARCHBOX_REQUEST_LOG": "off"})
    with caplog.at_level("INFO", logger="searchbox.requests"):
        assert quiet.post("/v1/embeddings", {"input": ["quiet"]}).status_code == 200
        assert_error(quiet.post("/v1/embeddings", {"input": 7}), 422)  # an error leaves no request line either
    assert [record for record in caplog.records if record.name == "searchbox.requests"] == []


# --- /health and /v1/models -----------------------------------------------------------------------

def test_health_answers_while_the_model_loads_and_ping_only_once_it_is_ready(watched_start):
    loading = [(ping, health) for ping, health in watched_start.answers
               if isinstance(health, dict) and not health["ready"]]
    assert loading, f"the worker did not answer /health while the model loaded: {watched_start.answers}"
    assert all(ping == 503 for ping, _ in loading), loading
    assert watched_start.answers[-1][0] == 200, watched_start.answers[-5:]
    assert requests.get(watched_start.server.url + "/health", timeout=2).json() == {
        "status": "alive", "ready": True, "model_load_error": None}


def test_models_lists_the_served_model(app):
    body = app.get("/v1/models").json()
    assert body["object"] == "list" and len(body["data"]) == 1
    model = body["data"][0]
    assert model["id"] == "all-MiniLM-L6-v2" and model["object"] == "model"
    assert model["kind"] == "embedding"
    assert model["operations"] == ["classify", "embed", "rerank", "segment", "tokenize", "train"]
    assert model["max_length"] == 256 and model["dimensions"] == 384
    assert model["metering"] is None and model["ready"] is True and model["backend"] == "torch"


def test_other_projects_shapes_are_metered_as_searchbox_s_own(metered):
    """Each caller's shape (test_integrations.py) bills what the same texts cost through /v1/embeddings and
    /v1/rerank; an Azure AI Search record refused inside the 200 is not billed."""
    app, _ = metered
    texts = ["a first sentence to embed", "and a second, a little longer than the first"]
    own = units_of(app.post("/v1/embeddings", {"input": texts}))
    for body in (texts, {"inputs": texts}, {"texts": texts}, {"input": texts, "input_type": "ingest"},
                 {"texts": texts, "input_type": "search_document", "embedding_types": ["float"]},
                 {"values": [{"recordId": str(i), "data": {"text": text}} for i, text in enumerate(texts)]
                  + [{"recordId": "refused", "data": {}}]}):
        answer = app.post("/invocations", body)
        assert answer.status_code == 200, answer.text
        assert units_of(answer) == own, body
    ranked = units_of(app.post("/v1/rerank", {"query": "which is longer?", "documents": texts}))
    assert units_of(app.post("/invocations", {"query": "which is longer?", "texts": texts})) == ranked
    assert units_of(app.post("/invocations", {"input": texts, "query": "which is longer?"})) == ranked
