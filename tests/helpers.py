"""Assertions and clients the tests share: one place for what an answer of this server must look like."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

ERROR_KEYS = {"detail", "code", "request_id"}


def assert_error(response, status: int, code: str | None = None, *mentions: str) -> dict:
    """`response` (requests', or an in-process one) is the contract's JSON error, naming each of `mentions`."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["Content-Type"].split(";")[0] == "application/json"
    body = response.json()
    assert set(body) == ERROR_KEYS, body
    assert body["request_id"] == response.headers["X-Request-Id"]
    assert "Traceback" not in body["detail"]
    if code is not None:
        assert body["code"] == code, body
    for mention in mentions:
        assert mention in body["detail"], (mention, body["detail"])
    return body


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


class Answer:
    """A Flask test response that reads like requests' (`.json()`, `.text`), so a test runs against either."""

    def __init__(self, response):
        self._response = response
        self.status_code = response.status_code
        self.headers = response.headers
        self.content = response.data

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return orjson.loads(self.content)


class InProcess:
    """`create_app(...)` with Flask's test client on the real model: what `RunningServer` offers, minus the process.

    For dialect and error tables, which need no gunicorn; what needs the process (ping under load, SIGTERM,
    concurrency, nginx's own answers) keeps a real server.
    """

    def __init__(self, client):
        self._client = client

    def post(self, path: str, body=None, *, data: bytes | str | None = None, headers: dict | None = None) -> Answer:
        if data is None:
            data = orjson.dumps(body)
        headers = dict(headers or {})
        content_type = headers.pop("Content-Type", "application/json")  # None: no Content-Type at all
        return Answer(self._client.post(path, data=data, content_type=content_type, headers=headers))

    def get(self, path: str) -> Answer:
        return Answer(self._client.get(path))

    def delete(self, path: str) -> Answer:
        return Answer(self._client.delete(path))


def openapi_validator(document: dict, schema: dict):
    """A JSON Schema validator for `schema`, a part of the OpenAPI `document` (its `$ref`s resolve in it)."""
    from jsonschema import Draft202012Validator

    # the document's `#/components/...` references resolve against the root of the schema validated
    return Draft202012Validator({**schema, "components": document["components"]})


def assert_documented(document: dict, method: str, path: str, response) -> None:
    """`response` (requests', or an in-process one) is one the OpenAPI `document` describes for `method path`:
    its status is listed, its media type too, and a JSON body validates against the schema given for both."""
    operation = document["paths"][path][method]
    status = str(response.status_code)
    assert status in operation["responses"], (path, status, sorted(operation["responses"]))
    media = response.headers["Content-Type"].split(";")[0].strip()
    content = operation["responses"][status]["content"]
    assert media in content, (path, status, media, sorted(content))
    if media == "application/json":
        openapi_validator(document, content[media]["schema"]).validate(response.json())


def in_process(model_dir, env: dict[str, str] | None = None):
    """`create_app` + Flask's test client on the model in `model_dir` (loaded and warmed up here): (InProcess, runtime);
    close the runtime when done."""
    from conftest import wait_loaded
    from container.app import create_app
    from container.runtime import ModelRuntime
    from container.settings import Settings

    settings = Settings.from_env({"SEARCHBOX_MODEL_DIR": str(model_dir), **(env or {})})
    runtime = ModelRuntime(settings).start()
    assert wait_loaded(runtime), runtime.load_error
    return InProcess(create_app(settings, runtime).test_client()), runtime


def worker_status(server_pid: int) -> dict[int, dict[str, str]]:
    """The gunicorn workers of the `serve` whose pid is given (the master's children that are not nginx): pid -> the
    fields of /proc/<pid>/status (VmRSS, VmHWM, Cpus_allowed_list, ...)."""
    import subprocess
    from pathlib import Path

    children = subprocess.run(["pgrep", "-P", str(server_pid)], capture_output=True, text=True).stdout.split()
    found = {}
    for pid in map(int, children):
        try:
            if b"nginx" in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:  # exited meanwhile
            continue
        found[pid] = {key: value.strip() for key, _, value in (line.partition(":") for line in status.splitlines())}
    return found


def kib(field: str) -> int:
    """A /proc status size ("123456 kB") in KiB."""
    return int(field.split()[0])
