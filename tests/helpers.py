"""Assertions and clients the tests share: one place for what an answer of this server must look like."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
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


def answer(served, path: str, body, **kwargs) -> Any:
    """The JSON of a 200 answer to `body` posted to `path` of `served` (an InProcess, or anything with its `post`);
    any other status fails the test with the body's start."""
    response = served.post(path, body, **kwargs)
    assert response.status_code == 200, response.text[:1000]
    return response.json()


def unit(rows) -> np.ndarray:
    """Each row (the last axis) scaled to length 1, in float64."""
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


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

    def __init__(self, client, runtime=None):
        self._client = client
        self.runtime = runtime

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


@contextmanager
def serving(model_dir, env: dict[str, str] | None = None) -> Iterator[InProcess]:
    """The model in `model_dir` loaded and warmed up in this process, as the worker loads it, behind `create_app` and
    Flask's test client; closed when the block ends. `.runtime` is the loaded `ModelRuntime` (its `.handler`, ...)."""
    from conftest import wait_loaded
    from container.app import create_app
    from container.runtime import ModelRuntime
    from container.settings import Settings

    settings = Settings.from_env({"SEARCHBOX_MODEL_DIR": str(model_dir), **(env or {})})
    runtime = ModelRuntime(settings).start()
    try:
        assert wait_loaded(runtime), runtime.load_error
        yield InProcess(create_app(settings, runtime).test_client(), runtime)
    finally:
        runtime.close()


def refused_at_load(model_dir, env: dict[str, str] | None = None) -> str:
    """What loading `model_dir` in this process, as the worker loads it, was refused with (the load must fail)."""
    from conftest import wait_loaded
    from container.runtime import ModelRuntime
    from container.settings import Settings

    runtime = ModelRuntime(Settings.from_env({"SEARCHBOX_MODEL_DIR": str(model_dir), **(env or {})}))
    try:
        assert not wait_loaded(runtime.start())  # False as soon as the load fails, not after the whole timeout
        return runtime.load_error
    finally:
        runtime.close()


def onnx_artifact(model_dir: Path, folder: Path, quantize: str | None = None) -> tuple[Any, Path]:
    """packaging/build_artifact.py's ONNX build of `model_dir` into `folder`/model.tar.gz, unpacked into
    `folder`/model: (the build's report, the unpacked directory). Stored, not deflated: gzip at the default level
    spent 6-8 s of each build of MiniLM's weights, what is compressed is not what an ONNX test tests (the packaging
    tests build at the default level), and a level-0 model.tar.gz is still gzip."""
    import sys
    import tarfile

    packaging = str(Path(__file__).resolve().parent.parent / "packaging")
    if packaging not in sys.path:
        sys.path.insert(0, packaging)
    import build_artifact

    report = build_artifact.build_artifact(model_dir, folder / "model.tar.gz", backend="onnx", quantize=quantize,
                                           compresslevel=0)
    with tarfile.open(folder / "model.tar.gz") as tar:
        tar.extractall(folder / "model", filter="data")
    return report, folder / "model"


# what the slim image leaves out: a serve path that loads one of them cannot start there
TORCH_STACK = ("sentence_transformers", "torch", "torchvision", "transformers")


def run_in_a_fresh_process(model_dir: Path, calls: str, args: Any = None,
                           torch_unimportable: bool = False) -> tuple[list[str], Any]:
    """`calls` run in a fresh interpreter, where `h` is load_handler's handler of `model_dir`, EmbedRequest, TextInput
    and ImageInput are imported, and `args` is the JSON value given here; their last statement sets `out` (JSON).
    Returns the modules of TORCH_STACK loaded there, and `out`. `torch_unimportable`: `import torch` fails there (a
    None entry in sys.modules), as in the slim image, rather than only being watched for."""
    import json
    import subprocess
    import sys

    script = "\n".join([
        "import json, sys",
        *(["sys.modules['torch'] = None"] if torch_unimportable else []),
        "from model_handlers import load_handler",
        "from model_handlers.types import EmbedRequest, ImageInput, TextInput",
        "args = json.loads(sys.stdin.read())",
        "h = load_handler(sys.argv[1])",
        calls,
        f"loaded = sorted(m for m in {TORCH_STACK!r} if sys.modules.get(m) is not None)",
        "print(json.dumps({'loaded': loaded, 'out': out}))",
    ])
    result = subprocess.run([sys.executable, "-c", script, str(model_dir)], input=json.dumps(args),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    return printed["loaded"], printed["out"]


@dataclass
class ServedOverHttp:
    """`serving_over_http`'s server: `.url` and `.post` as `RunningServer`'s, `.runtime` the model loaded here."""
    url: str
    runtime: Any

    def post(self, path: str, body=None, **kwargs):
        import requests

        return requests.post(self.url + path, json=body, timeout=120, **kwargs)


def _body_ends_at_its_length(app):
    """`app` handed a body that ends where the request's does, as gunicorn hands it: the app reads `wsgi.input` to its
    end, and werkzeug's server hands over the socket itself unless the body came chunked."""
    from werkzeug.wsgi import LimitedStream

    def bounded(environ, start_response):
        if not environ.get("wsgi.input_terminated"):
            environ["wsgi.input"] = LimitedStream(environ["wsgi.input"], int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input_terminated"] = True
        return app(environ, start_response)

    return bounded


@contextmanager
def serving_over_http(model_dir, env: dict[str, str] | None = None) -> Iterator[ServedOverHttp]:
    """`serving(model_dir, env)`'s app behind a real HTTP server in this process (werkzeug's, a thread per request) on
    a free port of 127.0.0.1, stopped when the block ends.

    For the tests whose client needs a URL (an SDK, a listing's Python, README's curls run as written) but that test
    the model's answers, not the process: a `serve` (gunicorn and nginx) costs a start of seconds and a second copy
    of the model, and what only the process does (start-up, SIGTERM, workers, nginx's limits, shedding and logs) is
    tested on the few real `serve`s of tests/conftest.py and the files that start their own."""
    from werkzeug.serving import make_server

    with serving(model_dir, env) as in_process:
        http = make_server("127.0.0.1", 0, _body_ends_at_its_length(in_process._client.application), threaded=True)
        thread = threading.Thread(target=http.serve_forever, name=f"http-{http.server_port}", daemon=True)
        thread.start()
        try:
            yield ServedOverHttp(f"http://127.0.0.1:{http.server_port}", in_process.runtime)
        finally:
            http.shutdown()
            thread.join(10)
            http.server_close()


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


# --- README's shell examples, run as written --------------------------------------------------------------------

README = __import__("pathlib").Path(__file__).resolve().parent.parent / "README.md"
# In an answer comment, "..." stands for text left out, and "...32 rows of 128..." for text described in words.
_LEFT_OUT = r"\.\.\.[A-Za-z0-9 ]*[A-Za-z][A-Za-z0-9 ]*\.\.\.|\.\.\."
# Where an answer comment runs onto the next comment line: the answer had a space there, or nothing.
_WRAP = "\x00"


def readme_example(name: str) -> str:
    """The shell block after `<!-- example: name -->` in README."""
    import re

    found = re.search(rf"<!-- example: {re.escape(name)} -->\n```sh\n(.*?)```", README.read_text(encoding="utf-8"),
                      re.DOTALL)
    assert found, f"README has no example {name}"
    return found.group(1)


def shell_examples(block: str) -> list[tuple[str, str]]:
    """Each command of a README block (a line, with the indented lines that continue it) and the answer comment right
    below it ("" when it has none); a comment after a blank line introduces the next command."""
    examples: list[tuple[list[str], list[str]]] = []
    state = None
    for line in block.splitlines():
        if line and not line.startswith("#") and not (state == "command" and line[0].isspace()):
            examples.append(([line], []))
            state = "command"
        elif state == "command" and line and line[0].isspace():
            examples[-1][0].append(line)
        elif state in ("command", "answer") and line.startswith("# "):
            examples[-1][1].append(line[2:].lstrip())
            state = "answer"
        else:
            state = None
    return [("\n".join(command), _WRAP.join(answer)) for command, answer in examples]


def matches_answer(comment: str, answer: str) -> bool:
    """Whether a README answer comment says what the server answered: everything but the left-out parts literally."""
    import re

    parts = re.split(_LEFT_OUT, comment)
    pattern = ".*?".join(re.escape(part).replace(_WRAP, " ?") for part in parts)
    return re.fullmatch(pattern, answer.strip(), re.DOTALL) is not None


def run_readme_examples_on_built(name: str, build: list[str], model_dir) -> list[tuple[str, str]]:
    """README's example `name` run as written against the model `build` makes (an examples/ script and its arguments,
    the model directory appended: the build command README shows before the block), served over HTTP in this
    process."""
    import subprocess
    import sys

    root = README.parent
    subprocess.run([sys.executable, str(root / "examples" / build[0]), *build[1:], str(model_dir)], check=True,
                   capture_output=True, cwd=root)
    with serving_over_http(model_dir) as served:
        return run_readme_examples(readme_example(name), served.url, root)


def run_readme_examples(block: str, url: str, cwd) -> list[tuple[str, str]]:
    """Runs each curl example of `block` against `url` instead of localhost:8080, as written (bash, curl); asserts its
    answer comment holds. Returns (command, answer) of each."""
    import subprocess

    host = url.removeprefix("http://")
    ran = []
    for command, comment in shell_examples(block):
        done = subprocess.run(["bash", "-c", command.replace("localhost:8080", host)], capture_output=True, text=True,
                              timeout=120, cwd=cwd, check=False)
        assert done.returncode == 0, (command, done.stderr)
        assert not comment or matches_answer(comment, done.stdout), (command, comment, done.stdout[:3000])
        ran.append((command, done.stdout))
    return ran
