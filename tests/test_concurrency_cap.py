"""README: "nginx lets at most SEARCHBOX_THREADS minus 4 requests in at once and answers the rest 503 at once"."""

from __future__ import annotations

import threading

import pytest
import requests

from helpers import assert_error

pytestmark = pytest.mark.server

THREADS = 5  # one inference request in gunicorn at a time (conftest's one_connection_server)
LONG = "The quick brown fox jumps over the lazy dog near the river bank. " * 16


def test_nginx_answers_503_past_the_concurrency_cap_and_serves_again_after(one_connection_server):
    from container.proxy import RESERVED_THREADS

    assert THREADS - RESERVED_THREADS == 1
    server = one_connection_server
    in_flight: dict[str, requests.Response] = {}

    def slow_request():
        in_flight["answer"] = server.post("/v1/embeddings", {"input": [LONG] * 128})

    holder = threading.Thread(target=slow_request)
    holder.start()
    refused = []
    # once the slow request is in gunicorn (its inputs queued: /metrics is served by the reserved threads),
    # a second one finds the only place taken
    while holder.is_alive() and not refused:
        if queue_depth(server) > 0:
            answer = server.post("/v1/embeddings", {"input": ["a second request"]})
            if answer.status_code == 503:
                refused.append(answer)
    holder.join()
    assert in_flight["answer"].status_code == 200 and len(in_flight["answer"].json()["data"]) == 128
    assert refused, "no request was refused while one held the only place"
    # nginx's own answer (the app's 503 says how long the queue is): the contract's JSON, with Retry-After
    body = assert_error(refused[0], 503, "OVERLOADED", "concurrency limit")
    assert body["request_id"] and refused[0].headers["Retry-After"] == "1"
    assert server.post("/v1/embeddings", {"input": ["served again"]}).status_code == 200


def queue_depth(server) -> float:
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    return next(float(line.split()[1]) for line in metrics.splitlines() if line.startswith("searchbox_queue_depth "))
