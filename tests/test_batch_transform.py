"""SageMaker batch transform (contract §4): CSV and JSON Lines bodies, GET /execution-parameters.

Against the session's real `serve` of the default embedding model, and a cross-encoder built from the same weights
(served over HTTP from this process) for reranker rows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests

from helpers import assert_error, cosine, readme_example, run_readme_examples

from container.execution_parameters import execution_parameters
from container.settings import Settings, SettingsError

EXAMPLE_CSV = "examples/batch/texts.csv"
REPO = Path(__file__).resolve().parent.parent
EXAMPLE_RERANK_CSV = REPO / "examples" / "batch" / "rerank.csv"


def post_raw(server, path: str, body: bytes | str, content_type: str) -> requests.Response:
    data = body.encode() if isinstance(body, str) else body
    return requests.post(server.url + path, data=data, headers={"Content-Type": content_type}, timeout=300)


def one_json_line(response: requests.Response) -> dict:
    """The answer must be one compact JSON object ending in exactly one newline."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    text = response.content.decode()
    assert text.endswith("\n") and text.count("\n") == 1, repr(text[-200:])
    return json.loads(text)


# --- CSV, embedding model -------------------------------------------------------------------------

# The same texts in both quotings of contract §4, with commas, quotes, backslashes and UTF-8 intact.
TEXTS = {
    "q1": "When are you open, really?",
    "q2": 'She said "hi", then left',
    "q3": "naïve café — 東京, ünïcödé",
    "q4": "path C:\\temp, done",
}
ESCAPED = (
    "q1,When are you open\\, really?\n"
    'q2,She said "hi"\\, then left\n'
    "q3,naïve café — 東京\\, ünïcödé\n"
    "q4,path C:\\\\temp\\, done\n"
)
RFC4180 = (
    '"q1","When are you open, really?"\n'
    '"q2","She said ""hi"", then left"\n'
    '"q3","naïve café — 東京, ünïcödé"\n'
    '"q4","path C:\\\\temp, done"\n'
)


@pytest.mark.parametrize("body", [ESCAPED, RFC4180], ids=["backslash-escaped", "rfc4180-quoted"])
def test_csv_both_quotings_echo_ids_and_keep_the_text_intact(server, reference_model, body):
    answer = one_json_line(post_raw(server, "/invocations", body, "text/csv"))
    assert [item["id"] for item in answer["data"]] == list(TEXTS)
    expected = reference_model.encode(list(TEXTS.values()), normalize_embeddings=True)
    for item, reference in zip(answer["data"], expected):
        assert cosine(item["embedding"], reference) >= 0.9999, item["id"]
        # the tokens the model read: the tokenizer's own count, [CLS] and [SEP] included
        assert item["usage"]["total_tokens"] == len(reference_model.tokenizer(TEXTS[item["id"]])["input_ids"])
    assert answer["parameters"] == {}


def test_csv_quotings_agree_with_each_other_and_with_json(server):
    escaped = one_json_line(post_raw(server, "/invocations", ESCAPED, "text/csv"))
    quoted = one_json_line(post_raw(server, "/invocations", RFC4180, "application/csv"))
    as_json = server.post("/invocations", {"data": [{"text": t, "id": i} for i, t in TEXTS.items()]}).json()
    for a, b, c in zip(escaped["data"], quoted["data"], as_json["data"]):
        assert a["usage"] == b["usage"] == c["usage"]
        assert cosine(a["embedding"], b["embedding"]) >= 0.99999
        assert cosine(a["embedding"], c["embedding"]) >= 0.99999


def test_csv_crlf_bom_blank_lines_and_the_example_file(server):
    body = "\ufeffr1,first\r\n\r\nr2,second\r\n\r\n"
    answer = one_json_line(post_raw(server, "/invocations", body, "text/csv; charset=utf-8"))
    assert [item["id"] for item in answer["data"]] == ["r1", "r2"]
    with open(EXAMPLE_CSV, "rb") as handle:
        example = handle.read()
    rows = [line for line in example.decode().splitlines() if line.strip()]
    answer = one_json_line(post_raw(server, "/invocations", example, "text/csv"))
    assert len(answer["data"]) == len(rows)


def test_bodies_without_rows_answer_empty(server, reranker_server):
    for running in (server, reranker_server):
        assert one_json_line(post_raw(running, "/invocations", "\n\n", "text/csv")) == {"data": [], "parameters": {}}
    response = post_raw(server, "/invocations", b"", "application/jsonlines")
    assert response.status_code == 200 and response.content == b""
    # one blank line is one line in: its line out is null
    response = post_raw(server, "/invocations", b"\n", "application/jsonlines")
    assert response.status_code == 200 and response.content == b"null\n"


def test_csv_more_rows_than_one_request_may_carry(server):
    """A MultiRecord body holds as many rows as fit in MaxPayloadInMB; they run in several requests."""
    rows = 2048 + 37
    body = "".join(f"id-{i},row number {i}\n" for i in range(rows))
    answer = one_json_line(post_raw(server, "/invocations", body, "text/csv"))
    assert [item["id"] for item in answer["data"]] == [f"id-{i}" for i in range(rows)]
    single = server.post("/invocations", {"data": [{"text": f"row number {rows - 1}"}]}).json()["data"][0]
    assert cosine(answer["data"][-1]["embedding"], single["embedding"]) >= 0.99999


@pytest.mark.parametrize(("body", "fragments"), [
    ("a,fine\nb,one, two\n", ["line 2", "expected 2 columns, got 3", "quote", "`id,text`"]),
    ("a,fine\nb\nc,fine\n", ["line 2", "expected 2 columns, got 1", "`id,text`"]),
    ('a,fine\n"b,"never closed\n', ["line 2", "not valid CSV"]),
    ('a,fine\n"b","x"y\n', ["line 2", "not valid CSV"]),
])
def test_bad_csv_rows_name_the_line(server, body, fragments):
    assert_error(post_raw(server, "/invocations", body, "text/csv"), 400, "INVALID_CSV", *fragments)


def test_readme_bad_row_example_is_the_servers_answer(server):
    """README's bad-row example, run as written (its shell line, against this server), answers its comment."""
    [(_, answer)] = run_readme_examples(readme_example("batch-bad-csv-row"), server.url, REPO)
    assert json.loads(answer)["code"] == "INVALID_CSV"


@pytest.mark.parametrize("body", [
    None,  # examples/batch/rerank.csv
    'r3,fruit,"[{""text"": ""Bananas are yellow.""}, ""Apples""]"\n',
], ids=["example-file", "three-columns"])
def test_rerank_rows_sent_to_an_embedding_model_say_which_model_they_need(server, body):
    body = body or EXAMPLE_RERANK_CSV.read_text(encoding="utf-8")
    assert_error(post_raw(server, "/invocations", body, "text/csv"), 400, "INVALID_CSV",
                 "line 1", "row for a reranker (cross-encoder) (`id,query,documents,top_n`)", "need a reranker model",
                 "SEARCHBOX_MODEL_DIR=<its directory>", "rows for this model are `id,text`", "/v1/rerank")


def test_csv_that_is_not_utf8_names_the_line(server):
    body = "a,fine\nb,fine\nc,caf".encode() + b"\xe9\n"
    assert_error(post_raw(server, "/invocations", body, "text/csv"), 400, "INVALID_CSV", "line 3", "UTF-8")


def test_unsupported_type_lists_every_batch_type(server):
    response = post_raw(server, "/invocations", "x", "text/plain")
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE", "text/plain", "application/json", "text/csv",
                 "application/jsonlines")
    # The public API route stays JSON only.
    assert_error(post_raw(server, "/v1/embeddings", "a,b", "text/csv"), 415, "UNSUPPORTED_MEDIA_TYPE", "text/csv")


# --- JSON Lines -----------------------------------------------------------------------------------

LINES = [
    {"data": [{"text": "first line", "id": "l1"}, {"text": "second input", "id": "l2"}]},
    {"input": ["public API, one line"], "dimensions": 64},
    {"data": {"text": "a single object", "id": "l3"}, "parameters": {"embedding_type": "ubinary"}},
]


@pytest.mark.parametrize("media", ["application/jsonlines", "application/jsonl", "application/x-jsonlines"])
def test_jsonlines_one_line_out_per_line_in(server, media):
    """Batch transform joins output line N to input line N: a blank line (empty, spaces, a bare CR) is a line too,
    answered null; the newline that ends the body's last line starts no other."""
    sent = [LINES[0], "", LINES[1], "  \r", LINES[2], ""]
    body = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in sent) + "\n"
    response = post_raw(server, "/invocations", body, media)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/jsonlines"
    assert response.content.endswith(b"\n")
    answers = [json.loads(line) for line in response.content.decode().split("\n")[:-1]]
    assert len(answers) == len(sent)
    assert [answer is None for answer in answers] == [isinstance(line, str) for line in sent]
    answers = [answer for answer in answers if answer is not None]
    for line, answer in zip(LINES, answers):
        alone = server.post("/invocations", line).json()
        assert answer.keys() == alone.keys()
        assert len(answer["data"]) == len(alone["data"])
        for got, want in zip(answer["data"], alone["data"]):
            assert got.get("id") == want.get("id")
            if isinstance(want["embedding"], list) and isinstance(want["embedding"][0], float):
                assert cosine(got["embedding"], want["embedding"]) >= 0.99999
            else:
                assert got["embedding"] == want["embedding"]
    assert len(answers[1]["data"][0]["embedding"]) == 64


SINGLE_RECORDS = [{"text": "a record with an id", "id": "7"}, {"text": "a record without one"},
                  "a bare JSON string"]


def test_jsonlines_single_records_are_one_input_envelopes(server):
    """SplitType=Line hands over a JSONL file's records as they are: each is answered as {"data": [record]}."""
    body = "\n".join(json.dumps(line) for line in [*SINGLE_RECORDS, LINES[0]]) + "\n"
    response = post_raw(server, "/invocations", body, "application/jsonlines")
    assert response.status_code == 200, response.text
    answers = [json.loads(line) for line in response.content.decode().splitlines()]
    assert len(answers) == len(SINGLE_RECORDS) + 1
    for record, answer in zip(SINGLE_RECORDS, answers):
        alone = server.post("/invocations", {"data": [record]}).json()
        assert answer.keys() == alone.keys() == {"data", "parameters"} and answer["parameters"] == {}
        [got], [want] = answer["data"], alone["data"]
        assert got.keys() == want.keys() == {"id", "embedding", "usage"}
        assert got["usage"] == want["usage"]
        assert cosine(got["embedding"], want["embedding"]) >= 0.99999
    assert answers[0]["data"][0]["id"] == "7"
    for answer in answers[1:3]:
        assert re.fullmatch(r"[0-9a-f]{32}", answer["data"][0]["id"]), answer["data"][0]["id"]
    # a whole body on a line keeps working as before
    assert [item["id"] for item in answers[3]["data"]] == ["l1", "l2"]


def test_jsonlines_image_records_are_records_too(server):
    """An image record gets exactly the envelope's answer: this text model says it embeds text only."""
    for record in ({"image": "aGVsbG8="}, {"url": "https://example.invalid/cat.png", "id": "i1"}, {"bytes": "aGk="}):
        envelope = server.post("/invocations", {"data": [record]})
        line = post_raw(server, "/invocations", json.dumps({"text": "fine"}) + "\n" + json.dumps(record) + "\n",
                        "application/jsonlines")
        want = envelope.json()
        body = assert_error(line, envelope.status_code, want["code"], "line 2: " + want["detail"])
        assert body["code"] != "INVALID_JSON_LINE"


def test_bad_json_lines_name_the_line(server):
    good = json.dumps(LINES[0])
    assert_error(post_raw(server, "/invocations", f"{good}\n{{\"data\": [\n", "application/jsonlines"),
                 400, "INVALID_JSON_LINE", "line 2", "not valid JSON")
    bad_field = json.dumps({"data": ["x"], "parameters": {"dimensions": "many"}})
    assert_error(post_raw(server, "/invocations", f"{good}\n\n{bad_field}\n", "application/jsonlines"),
                 400, "INVALID_JSON_LINE", "line 3", "parameters.dimensions")
    too_long = json.dumps({"data": ["word " * 600], "parameters": {"truncate": False}})
    assert_error(post_raw(server, "/invocations", f"{good}\n{too_long}\n", "application/jsonlines"),
                 400, "INPUT_TOKEN_LIMIT_EXCEEDED", "line 2")


# --- CSV, reranker --------------------------------------------------------------------------------

DOCS = ["Berlin is the capital of Germany.", 'Paris, the "city of light"', "Bananas are yellow."]


def test_reranker_csv_rows_match_cross_encoder(reranker_server, reranker_dir):
    from sentence_transformers import CrossEncoder

    docs_json = json.dumps(DOCS)
    escaped = docs_json.replace("\\", "\\\\").replace(",", "\\,")
    # the contract's parser takes a backslash as an escape in both quotings: JSON's \" must come doubled
    quoted = '"' + docs_json.replace("\\", "\\\\").replace('"', '""') + '"'
    body = (f"r1,capital of Germany?\\, please,{escaped},2\n"
            f'"r2","which city is the ""city of light""?",{quoted},\n'
            f'r3,fruit,"[{{""text"": ""Bananas are yellow.""}}, ""Apples""]"\n')
    answer = one_json_line(post_raw(reranker_server, "/invocations", body, "text/csv"))
    assert [item["id"] for item in answer["data"]] == ["r1", "r2", "r3"]
    assert [len(item["results"]) for item in answer["data"]] == [2, 3, 2]
    reference = CrossEncoder(str(reranker_dir), device="cpu", local_files_only=True)
    queries = ["capital of Germany?, please", 'which city is the "city of light"?', "fruit"]
    documents = [DOCS, DOCS, ["Bananas are yellow.", "Apples"]]
    for item, query, docs in zip(answer["data"], queries, documents):
        expected = reference.predict([(query, doc) for doc in docs])
        scores = [hit["relevance_score"] for hit in item["results"]]
        assert scores == sorted(scores, reverse=True)
        for hit in item["results"]:
            assert hit["document"]["text"] == docs[hit["index"]]
            assert abs(hit["relevance_score"] - float(expected[hit["index"]])) < 1e-4
        # README: a pair is read as specials + query + document; the query counts once per document scored,
        # each document with the pair's special tokens ([CLS] and two [SEP])
        tokenizer = reference.tokenizer
        query_tokens = len(tokenizer(query, add_special_tokens=False)["input_ids"])
        pair_tokens = [len(tokenizer(query, doc)["input_ids"]) for doc in docs]
        assert item["query_usage"]["total_tokens"] == query_tokens * len(docs)
        assert item["docs_usage"]["total_tokens"] == sum(pair_tokens) - query_tokens * len(docs)


@pytest.mark.parametrize(("body", "fragments"), [
    ("r1,query only\n", ["line 1", "expected 3 or 4 columns, got 2", "`id,query,documents,top_n`"]),
    ('r1,q,"[""a""]"\nr2,q,not json\n', ["line 2", "column 3 (documents) is not valid JSON"]),
    ('r1,q,"{""a"": 1}"\n', ["line 1", "`documents` must be a list"]),
    ('r1,q,"[1]"\n', ["line 1", "documents[0]"]),
    ('r1,q,"[""a""]",zero\n', ["line 1", "top_n", "'zero'"]),
])
def test_bad_reranker_rows_name_the_line(reranker_server, body, fragments):
    assert_error(post_raw(reranker_server, "/invocations", body, "text/csv"), 400, "INVALID_CSV", *fragments)


# --- GET /execution-parameters --------------------------------------------------------------------

def test_execution_parameters_default(server):
    response = requests.get(server.url + "/execution-parameters", timeout=10)
    assert response.status_code == 200
    params = response.json()
    assert params["BatchStrategy"] == "MULTI_RECORD"
    assert params["MaxConcurrentTransforms"] * params["MaxPayloadInMB"] <= 100
    # never more than the server itself accepts in one body (6 MiB by default)
    assert 1 <= params["MaxPayloadInMB"] <= 6


def test_execution_parameters_honour_the_job(serving_factory, minilm_dir, tmp_path):
    """The job's settings, answered and honoured: in this process (the settings are read there), and in the nginx
    conf that `serve` would start with (that nginx keeps to its client_max_body_size is tested on a real `serve` in
    test_hostile_traffic.py)."""
    from container.proxy import ProxyPaths, render_conf

    env = {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "20", "SAGEMAKER_BATCH_STRATEGY": "single_record",
           "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "3", "SAGEMAKER_BATCH": "true"}
    running = serving_factory(minilm_dir, env)
    params = running.get("/execution-parameters").json()
    assert params == {"MaxConcurrentTransforms": 3, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 20}
    # nginx lets through the bodies announced
    conf = render_conf(Settings.from_env({"SEARCHBOX_MODEL_DIR": str(minilm_dir), **env}), ProxyPaths(tmp_path))
    assert f"client_max_body_size {20 * 1024 * 1024};" in conf
    # and the app takes them: a 7 MiB CSV (over the 6 MiB real-time limit) is read to its last line, whose error
    # proves it was not refused as too large
    row = "x," + "word " * 200 + "\n"
    body = row * (7 * 1024 * 1024 // len(row))
    response = running.post("/invocations", data=(body + "bad\n").encode(), headers={"Content-Type": "text/csv"})
    assert_error(response, 400, "INVALID_CSV", f"line {body.count(chr(10)) + 1}")


@pytest.mark.parametrize(("env", "gpu", "expected"), [
    ({}, False, (2, "MULTI_RECORD", 1)),
    ({}, True, (4, "MULTI_RECORD", 6)),
    ({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "50"}, True, (2, "MULTI_RECORD", 50)),  # 4 x 50 > 100: concurrency cut
    ({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "100"}, False, (1, "MULTI_RECORD", 100)),
    ({"SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "40"}, True, (40, "MULTI_RECORD", 2)),  # 40 x 6 > 100: payload cut
    ({"SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD"}, False, (2, "SINGLE_RECORD", 1)),
    ({"SEARCHBOX_MAX_PAYLOAD_MB": "2"}, True, (4, "MULTI_RECORD", 2)),  # never above the body limit
])
def test_execution_parameters_rules(minilm_dir, env, gpu, expected):
    settings = Settings.from_env({"SEARCHBOX_MODEL_DIR": str(minilm_dir), **env})
    params = execution_parameters(settings, on_gpu=gpu)
    assert (params["MaxConcurrentTransforms"], params["BatchStrategy"], params["MaxPayloadInMB"]) == expected
    assert params["MaxConcurrentTransforms"] * params["MaxPayloadInMB"] <= 100


@pytest.mark.parametrize(("env", "expected"), [
    # SageMaker's MaxPayloadInMB is a whole number >= 1: a body limit under 1 MB cannot be announced below it
    ({"SEARCHBOX_MAX_PAYLOAD_MB": "0.5"}, (2, "MULTI_RECORD", 1)),
    # the job's own concurrency wins even when no whole payload keeps the product within 100
    ({"SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "200"}, (200, "MULTI_RECORD", 1)),
])
def test_execution_parameters_edges_readme_names(minilm_dir, env, expected):
    settings = Settings.from_env({"SEARCHBOX_MODEL_DIR": str(minilm_dir), **env})
    params = execution_parameters(settings, on_gpu=False)
    assert (params["MaxConcurrentTransforms"], params["BatchStrategy"], params["MaxPayloadInMB"]) == expected
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "a body limit under 1 MB still answers 1" in readme
    assert "even where their product passes 100" in readme


def test_bad_batch_strategy_is_a_settings_error(minilm_dir):
    with pytest.raises(SettingsError, match="SAGEMAKER_BATCH_STRATEGY"):
        Settings.from_env({"SEARCHBOX_MODEL_DIR": str(minilm_dir), "SAGEMAKER_BATCH_STRATEGY": "ALL_AT_ONCE"})
