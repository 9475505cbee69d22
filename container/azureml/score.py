"""Entry script for Azure ML's inference server: `azmlinfsrv --entry_script container/azureml/score.py`.

`init()` runs once per azmlinfsrv worker and blocks its port until it returns: it loads the model
through the same `Settings.from_env()` and `ModelRuntime` as `serve` (model from
$AZUREML_MODEL_DIR, or `--model_dir`), and returns only once the warm-up inference ran. `run()`
takes the raw request (`@rawhttp`) and hands it to the same engine as `/invocations` (container/engine.py),
with the same headers read (Accept, SageMaker's adapter header and CustomAttributes), so both deployments give
byte-identical bodies: every JSON dialect and shape, CSV and JSON Lines, and the contract's JSON errors with their
statuses (never azmlinfsrv's generic 500).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid

import flask
from azureml_inference_server_http.api.aml_request import AMLRequest, rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse

from container import dialects
from container.engine import Engine, Incoming
from container.errors import MethodNotAllowed, Reply, error_reply, internal_error
from container.runtime import ModelRuntime
from container.settings import Settings, apply_library_environment
from model_handlers.memory import limit_arenas

logger = logging.getLogger("searchbox.azureml")

# azmlinfsrv's init()/run() protocol leaves module globals as the only place for the loaded
# model; they are written once, by init(), before the worker serves anything.
_engine: Engine | None = None
_runtime: ModelRuntime | None = None


def init() -> None:
    """Load the model once for this worker, warm it up, and return only when it can answer."""
    global _engine, _runtime
    apply_library_environment()  # before the model loads torch: the same process defaults as `serve`
    limit_arenas()
    settings = Settings.from_env()
    _log_to_stderr(settings.log_level)
    logger.info("model: %s (%s)", settings.model_dir, settings.model_source)
    failed = threading.Event()
    runtime = ModelRuntime(settings, on_load_failure=lambda exc: failed.set()).start()
    while not runtime.wait_ready(0.2):
        if failed.is_set():
            raise RuntimeError(f"cannot serve {settings.model_dir}: {runtime.load_error}")
    _engine, _runtime = Engine.of(runtime, settings), runtime


@rawhttp
def run(request: AMLRequest) -> AMLResponse:
    """`POST /score`: the same answer as `POST /invocations` on the SageMaker server."""
    # azmlinfsrv has already chosen the id it sends back in x-request-id; the body quotes the same.
    request_id = flask.g.get("request_id") or uuid.uuid4().hex
    received = time.monotonic()
    if _engine is None or _runtime is None:
        raise RuntimeError("run() before init(); this is a bug in the server setup")
    if request.method != "POST":
        reply = error_reply(MethodNotAllowed(f"{request.method} is not allowed on /score; POST a body"), request_id)
    else:
        try:
            reply = _engine.reply(Incoming.of(request, dialects.decode_invocation, True, request.stream, received),
                                  request_id)
        except TimeoutError:
            raise  # azmlinfsrv's SCORING_TIMEOUT_MS alarm: its own timeout answer is the right one
        except Exception:
            logger.exception("unhandled error in request %s", request_id)
            reply = error_reply(internal_error(), request_id)
    _runtime.telemetry.record("/score", reply.status, time.monotonic() - received, reply.figures, request_id)
    return _aml_response(reply, request_id)


def _log_to_stderr(level: str) -> None:
    """azmlinfsrv configures only its own loggers: without this, the model's start-up log is lost."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"))
    for name in ("searchbox", "container", "model_handlers"):
        own = logging.getLogger(name)
        if not own.handlers:
            own.addHandler(handler)
            own.setLevel(level)
            own.propagate = False


def _aml_response(reply: Reply, request_id: str) -> AMLResponse:
    response = AMLResponse(reply.body, reply.status)
    # Set directly: AMLResponse splits header values given to it on commas.
    response.headers["Content-Type"] = reply.content_type
    response.headers["X-Request-Id"] = request_id
    for name, value in reply.headers.items():
        response.headers[name] = value
    return response
