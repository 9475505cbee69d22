"""The Flask app: one Blueprint binds the route table (container/routes.py) to views that read the app's state.

An inference view only hands Flask's request to the engine (container/engine.py: admission, size checks, dialect
decode, Accept, typed requests, the model, rendering) and the engine's reply back to Flask. The views hold nothing
themselves: the settings, the model runtime and the engine are the app's (`current_app.extensions`), made once by
`create_app`.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import orjson
from flask import Blueprint, Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from container import adapters as adapters_api, routes, spooled
from container.dialects import JSON, Decoded, vertex
from container.engine import Engine, Incoming
from container.errors import (
    Conflict, MethodNotAllowed, NotFound, Reply, SearchboxError, error_reply, from_handler_error, internal_error,
    payload_too_large,
)
from container.execution_parameters import execution_parameters
from container.openapi import document as openapi_document
from container.runtime import ModelRuntime
from container.settings import Settings
from container.telemetry import METRICS_CONTENT_TYPE
from model_handlers import classifier_store, operations
from model_handlers.errors import HandlerError

logger = logging.getLogger(__name__)

EXTENSION = "searchbox"
# nginx's $request_id (32 hex digits), passed on in X-Request-Id: the app answers with the same id
_REQUEST_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Served:
    """What the views read: made once per app by `create_app`."""

    settings: Settings
    runtime: ModelRuntime
    engine: Engine
    openapi: bytes  # the same for every request: built once


def create_app(settings: Settings, runtime: ModelRuntime | None = None) -> Flask:
    """Build the app; the model starts loading in the background at once (unless a runtime is given)."""
    app = Flask("searchbox")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes
    runtime = runtime or ModelRuntime(settings).start()
    app.extensions[EXTENSION] = Served(settings, runtime, Engine.of(runtime, settings),
                                       orjson.dumps(openapi_document()))
    app.register_blueprint(api)
    # Vertex AI's routes come from the Model's containerSpec (AIP_PREDICT_ROUTE, AIP_HEALTH_ROUTE), not the table
    if settings.vertex_predict_route:
        app.add_url_rule(settings.vertex_predict_route, "vertexPredict", vertex_predict, methods=["POST"])
    if settings.vertex_health_route and settings.vertex_health_route != "/ping":
        app.add_url_rule(settings.vertex_health_route, "vertexHealth", ping, methods=["GET"])
    return app


def served() -> Served:
    return current_app.extensions[EXTENSION]


api = Blueprint("searchbox", __name__)


@api.before_app_request
def assign_request_id() -> None:
    given = request.headers.get("X-Request-Id", "")
    g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    g.received = time.monotonic()


@api.after_app_request
def tag_response(response: Response) -> Response:
    response.headers["X-Request-Id"] = g.get("request_id", "")
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"  # bounded label values
    if route != "/metrics":
        served().runtime.telemetry.record(route, response.status_code,
                                          time.monotonic() - g.get("received", time.monotonic()),
                                          g.get("figures"), g.get("request_id", ""))
    return response


# --- control routes -----------------------------------------------------------------------------------


def ping() -> Response:
    # behind nginx, /ping is answered from the ready file (container/proxy.py); this serves the in-process
    # app (tests) from the same state, read from the runtime
    served().runtime.handler  # raises Unavailable (503) until loaded and warmed up, and once draining
    return json_response({"status": "healthy"})


def health() -> Response:
    """Liveness: the worker answers, even while the model loads (readiness is /ping)."""
    runtime = served().runtime
    return json_response({"status": "alive", "ready": runtime.ready, "model_load_error": runtime.load_error})


def metrics() -> Response:
    return Response(served().runtime.telemetry.exposition(), mimetype=METRICS_CONTENT_TYPE.split(";")[0],
                    content_type=METRICS_CONTENT_TYPE)


def models() -> Response:
    """OpenAI's model list: the one served model, with what a caller needs to know about it."""
    return json_response({"object": "list", "data": [model_card(served().runtime, served().settings)]})


def openapi() -> Response:
    return Response(served().openapi, mimetype=JSON)


def batch_execution_parameters() -> Response:
    settings = served().settings
    return json_response(execution_parameters(settings, settings.expects_gpu()))


# --- SageMaker's adapter management (container/adapters.py) ------------------------------------------


def list_adapters() -> Response:
    return json_response(adapters_api.listing(served().runtime.handler))


def register_adapter() -> Response:
    name, src, preload, pin = adapters_api.registration(read_body(served().settings.max_payload_bytes))
    adapters_api.holder(served().runtime.handler).register(name, src, preload=preload, pin=pin)
    return text_response(f"Adapter {request.headers.get(adapters_api.ALIAS_HEADER) or name} registered")


def unregister_adapter(name: str) -> Response:
    alias = request.headers.get(adapters_api.ALIAS_HEADER) or name
    adapters_api.unregister(served().runtime.handler, name, alias)
    return text_response(f"Adapter {alias} unregistered")


# --- few-shot classifiers trained on the endpoint (model_handlers/classifier_store.py) -------------------


def delete_classifier(classifier_id: str) -> Response:
    handler = served().runtime.handler
    outcome = classifier_store.remove(handler.options, handler.model_name, handler.config.classifiers, classifier_id,
                                     classifier_store.readers(handler.model))
    if outcome == classifier_store.SHIPPED:
        raise Conflict(f"classifier {classifier_id} is shipped in the artifact and cannot be deleted",
                       code="ARTIFACT_CLASSIFIER")
    if outcome == classifier_store.ABSENT:
        raise NotFound(f"model {handler.model_name} holds no trained classifier {classifier_id!r} (GET /v1/models "
                       "lists them)", code="UNKNOWN_CLASSIFIER")
    return json_response({"classifier_id": classifier_id, "deleted": True})


_VIEWS: dict[str, Callable[..., Response]] = {
    "ping": ping, "health": health, "metrics": metrics, "models": models, "openapi": openapi,
    "executionParameters": batch_execution_parameters,
    "listAdapters": list_adapters, "registerAdapter": register_adapter, "unregisterAdapter": unregister_adapter,
    "deleteClassifier": delete_classifier,
}


# --- inference routes ---------------------------------------------------------------------------------


def invoke(decode: Callable[[Any], Decoded], records: bool) -> Response:
    # the raw WSGI stream, read only once the engine admitted the request (see spooled.read_body)
    incoming = Incoming.of(request, decode, records, request.environ["wsgi.input"], g.received)
    reply = served().engine.answer(incoming)
    g.figures = reply.figures
    return reply_response(reply)


def vertex_predict() -> Response:
    """Vertex AI's `{"instances", "parameters"}` -> `{"predictions"}` (container/dialects/vertex.py); a refusal is the
    contract's error body with Vertex AI's `error` beside it."""
    try:
        return invoke(vertex.decode, False)
    except Exception as exc:  # every refusal, a bug's 500 included, in the one shape Vertex AI's callers read
        if isinstance(exc, HTTPException):
            raise  # werkzeug's own (its status kept by http_error)
        if isinstance(exc, HandlerError):
            error = from_handler_error(exc)
        elif isinstance(exc, SearchboxError):
            error = exc
        else:
            logger.exception("unhandled error in request %s", g.get("request_id", ""))
            error = internal_error()
        reply = error_reply(error, g.get("request_id", ""))
        return json_response(vertex.error_body(orjson.loads(reply.body)), error.status_code, dict(reply.headers))


def _inference_view(route: routes.Route) -> Callable[[], Response]:
    def view() -> Response:
        return invoke(route.decode, route.records)

    return view


for _route in routes.routes():
    _view = _inference_view(_route) if _route.decode is not None else _VIEWS[_route.endpoint]
    api.add_url_rule(_route.path, _route.endpoint, _view, methods=[_route.method])


def model_card(runtime: ModelRuntime, settings: Settings) -> dict[str, Any]:
    """The served model as /v1/models describes it; known from the serving config even while loading."""
    from model_handlers import read_serving_config

    handler = runtime.loaded
    config = handler.config if handler is not None else read_serving_config(
        settings.model_dir, allow_pickle=settings.allow_pickle, trust_remote_code=settings.trust_remote_code,
        fallback_name=settings.model_name)
    return {
        "id": config.served_model_name, "object": "model", "created": 0, "owned_by": "searchbox",
        "kind": config.kind.name, "summary": config.kind.summary,
        "operations": sorted(config.kind.operations),
        "max_length": handler.max_length if handler is not None else config.max_length,
        "dimensions": handler.dimensions if handler is not None else None,
        "matryoshka_dimensions": list(config.matryoshka_dimensions),
        "tasks": sorted(config.tasks), "default_task": config.default_task,
        # what an unknown task gets: refused where tasks select adapters, else the default task's prompt
        "unknown_task": "refused" if config.adapter_tasks else "default",
        "task_adapters": {name: spec.adapter for name, spec in sorted(config.tasks.items()) if spec.adapter},
        "adapters": (adapters_api.listing(handler)["data"] if handler is not None
                     else [{"name": name, "built_in": True} for name in config.adapters]),
        "backend": config.backend if handler is not None else settings.backend or config.backend,
        "classifiers": [classifier.describe() for _, classifier in sorted(config.classifiers.items())],
        "metering": None if config.metering is None else {"unit": config.metering.unit,
                                                           "tokens_per_unit": config.metering.tokens_per_unit},
        # inputs (texts, images, documents) one request may carry
        "max_inputs": settings.max_inputs,
        # how the loaded model answers each operation, where its spec says more than its name (known once loaded)
        "details": {} if handler is None else {spec.name: spec.describe(handler) for spec in operations.registered()
                                               if spec.describe is not None and config.kind.answers(spec.name)},
        "ready": runtime.ready,
    }


def read_body(limit: int) -> bytes:
    """The whole body of a control request (adapter registration); over `limit` it is a 413."""
    spooled.refuse_declared(request.content_length, limit)
    return spooled.read_body(request.environ["wsgi.input"], limit)


def reply_response(reply: Reply) -> Response:
    return Response(reply.body, status=reply.status, content_type=reply.content_type, headers=dict(reply.headers))


def text_response(text: str) -> Response:
    """SageMaker's adapter standard answers its management calls with a line of text."""
    return Response(text, status=200, mimetype="text/plain")


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status=status, mimetype=JSON, headers=headers)


# --- errors -------------------------------------------------------------------------------------------


def render(error: SearchboxError) -> Response:
    return reply_response(error_reply(error, g.get("request_id", "")))


@api.app_errorhandler(SearchboxError)
def searchbox_error(exc: SearchboxError) -> Response:
    return render(exc)


@api.app_errorhandler(HandlerError)
def handler_error(exc: HandlerError) -> Response:
    return render(from_handler_error(exc))


@api.app_errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Response:
    if isinstance(exc, RequestEntityTooLarge):
        return render(payload_too_large(current_app.config["MAX_CONTENT_LENGTH"]))
    if exc.code == 404:
        return render(NotFound(f"no route {request.path}; use {routes.listed()}"))
    if exc.code == 405:
        return render(MethodNotAllowed(f"{request.method} is not allowed on {request.path}"))
    return render(_generic(exc))


@api.app_errorhandler(Exception)
def unexpected(exc: Exception) -> Response:
    logger.exception("unhandled error in request %s", g.get("request_id", ""))
    return render(internal_error())


def _generic(exc: HTTPException) -> SearchboxError:
    error = SearchboxError(exc.description or exc.name, code=exc.name.upper().replace(" ", "_"))
    error.status_code = exc.code or 500
    return error
