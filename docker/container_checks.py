"""Requests the container test makes from inside the running container (`--network none` leaves
no other way in). Standard library only: it runs on the image's own Python.

    podman exec -i CONTAINER python - CHECK < docker/container_checks.py

CHECK is `ping` (wait for /ping 200), `sagemaker` (embedding, rerank and bad requests on
/invocations), `azure` (the same embedding on /score) or `vertex` (the port and routes of the container's AIP_*
variables: readiness, a prediction, a refusal). Exit status 0 means every assertion held.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

BASE = "http://127.0.0.1:8080"
WIDTH = 384  # all-MiniLM-L6-v2


def call(method: str, path: str, body: bytes | None = None, content_type: str = "application/json"):
    request = urllib.request.Request((path if path.startswith("http") else BASE + path), data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def post_json(path: str, payload) -> tuple[int, dict]:
    status, _, body = call("POST", path, json.dumps(payload).encode())
    return status, json.loads(body)


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


def wait_for_ping(limit_s: float = 240.0) -> None:
    """SageMaker's start-up window is 4 minutes; /ping must answer 200 within it."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            status, _, _ = call("GET", "/ping")
            if status == 200:
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.05)
    raise SystemExit(f"FAILED: /ping did not answer 200 within {limit_s:.0f} s")


def check_embedding(path: str) -> None:
    status, body = post_json(path, {"data": [{"text": "The image answers with no network at all."}]})
    check(status == 200, f"{path} embedding answers 200" + ("" if status == 200 else f", not {status}: {body}"))
    items = body.get("data")
    check(isinstance(items, list) and len(items) == 1, f"{path} returns one item for one input")
    vector = items[0].get("embedding")
    check(isinstance(vector, list) and len(vector) == WIDTH and all(isinstance(v, float) for v in vector),
          f"{path} item is one {WIDTH}-value vector")
    norm = sum(v * v for v in vector) ** 0.5
    check(abs(norm - 1.0) < 1e-3, f"{path} vector is L2-normalised (norm {norm:.6f})")


def check_rerank() -> None:
    documents = [{"text": "Bananas are yellow and rich in potassium."},
                 {"text": "Berlin is the capital and largest city of Germany."},
                 {"text": "The stock market closed higher on Friday."}]
    status, body = post_json("/invocations", {"data": {"query": "What is the capital of Germany?",
                                                       "documents": documents}})
    check(status == 200, "/invocations rerank answers 200" + ("" if status == 200 else f", not {status}: {body}"))
    results = body["data"][0]["results"]
    check(len(results) == len(documents), "rerank scores every document")
    check(results[0]["index"] == 1, f"rerank puts the Berlin document first (order {[r['index'] for r in results]})")
    scores = [r["relevance_score"] for r in results]
    check(scores == sorted(scores, reverse=True), "rerank results are sorted by score")


def check_bad_requests() -> None:
    status, headers, raw = call("POST", "/invocations", b'{"data": [{"text": "unterminated')
    body = json.loads(raw)
    check(status == 400, f"malformed JSON is a 400 (got {status})")
    check({"detail", "code", "request_id"} <= body.keys() and "Traceback" not in body["detail"],
          f"the 400 is a JSON error naming the problem: {body.get('detail')!r}")
    check(headers.get("X-Request-Id") == body["request_id"], "the error carries X-Request-Id")
    status, body = post_json("/v1/embeddings", {"input": ["x"], "dimensions": 4096})
    check(400 <= status < 500 and "dimensions" in body.get("detail", ""),
          f"too many dimensions is a 4xx naming the field (got {status}: {body.get('detail')!r})")


def check_vertex() -> None:
    """Vertex AI's contract on the port and routes its variables name (Google's "Custom container requirements")."""
    base = f"http://127.0.0.1:{os.environ['AIP_HTTP_PORT']}"
    deadline = time.monotonic() + 240
    status = 0
    while time.monotonic() < deadline and status != 200:
        try:
            status, _, _ = call("GET", base + os.environ["AIP_HEALTH_ROUTE"])
        except OSError:
            time.sleep(0.05)  # not listening yet
    check(status == 200, f"{os.environ['AIP_HEALTH_ROUTE']} (AIP_HEALTH_ROUTE) answers 200 once ready")
    texts = ["The image answers Vertex AI.", "A second instance."]
    status, _, raw = call("POST", base + os.environ["AIP_PREDICT_ROUTE"], json.dumps({"instances": texts}).encode())
    body = json.loads(raw)
    check(status == 200 and len(body.get("predictions", [])) == len(texts),
          f"AIP_PREDICT_ROUTE answers one prediction per instance (got {status})")
    check(all(len(p["embedding"]) == WIDTH for p in body["predictions"]), f"each prediction is a {WIDTH}-value vector")
    status, _, raw = call("POST", base + os.environ["AIP_PREDICT_ROUTE"], b'{"instances": "not a list"}')
    body = json.loads(raw)
    check(status == 422 and body.get("error") == body.get("detail") and "request_id" in body,
          f"a refusal is a 422 with Vertex AI's `error` beside the contract's fields: {body}")


def main(argv: list[str]) -> int:
    what = argv[1] if len(argv) > 1 else "ping"
    if what == "ping":
        wait_for_ping()
    elif what == "sagemaker":
        check_embedding("/invocations")
        check_rerank()
        check_bad_requests()
    elif what == "azure":
        wait_for_ping()
        check_embedding("/score")
    elif what == "vertex":
        check_vertex()
    else:
        raise SystemExit(f"unknown check {what!r}: ping, sagemaker, azure or vertex")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
