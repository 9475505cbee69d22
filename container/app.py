"""The Flask app: routes dispatch a body to a dialect, the dialect's typed request to the handler.

HTTP request -> media type and size checks -> dialect decode -> typed request -> handler ->
typed result -> dialect render -> JSON bytes.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Callable

import orjson
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from container import dialects
from container.dialects import Decoded, public, rerank as rerank_dialect
from container.errors import (
    BadRequest, MethodNotAllowed, NotFound, PayloadTooLarge, SearchboxError, UnsupportedMediaType,
    error_body, from_handler_error,
)
from container.runtime import ModelRuntime
from container.settings import Settings
from model_handlers.errors import HandlerError
from model_handlers.types import EmbedRequest

logger = logging.getLogger(__name__)

JSON = "application/json"
RUNTIME_KEY = "searchbox.runtime"


def create_app(settings: Settings, runtime: ModelRuntime | None = None) -> Flask:
    """Build the app; the model starts loading in the background at once (unless a runtime is given)."""
    app = Flask("searchbox")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes
    runtime = runtime or ModelRuntime(settings).start()
    app.extensions[RUNTIME_KEY] = runtime

    def invoke(decode: Callable[[Any], Decoded]) -> Response:
        decoded = decode(read_json_body())
        check_limits(decoded, settings)
        handler = runtime.handler
        if isinstance(decoded.request, EmbedRequest):
            result = handler.embed(decoded.request)
        else:
            result = handler.rerank(decoded.request)
        return json_response(decoded.render(result))

    @app.before_request
    def assign_request_id() -> None:
        g.request_id = uuid.uuid4().hex

    @app.after_request
    def tag_response(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "")
        return response

    @app.get("/ping")
    def ping() -> Response:
        runtime.handler  # raises Unavailable (503) until loaded and warmed up
        return json_response({"status": "healthy"})

    @app.post("/invocations")
    def invocations() -> Response:
        return invoke(dialects.decode_invocation)

    @app.post("/v1/embeddings")
    def embeddings() -> Response:
        return invoke(public.decode_embeddings)

    @app.post("/v1/rerank")
    def rerank() -> Response:
        return invoke(rerank_dialect.decode_public)

    register_error_handlers(app)
    return app


def read_json_body() -> Any:
    """The parsed JSON body, after the media type and size checks."""
    mimetype = request.mimetype
    if mimetype and mimetype != JSON and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type {mimetype!r} is not supported; send {JSON}", code="UNSUPPORTED_MEDIA_TYPE")
    try:
        return orjson.loads(request.get_data(cache=False))
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="INVALID_JSON") from None


def check_limits(decoded: Decoded, settings: Settings) -> None:
    typed = decoded.request
    count = len(typed.inputs) if isinstance(typed, EmbedRequest) else len(typed.documents)
    if count > settings.max_inputs:
        what = "inputs" if isinstance(typed, EmbedRequest) else "documents"
        raise BadRequest(
            f"the request has {count} {what}; at most {settings.max_inputs} are allowed per request, "
            "split it into several requests", code="TOO_MANY_INPUTS")


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status=status, mimetype=JSON, headers=headers)


def register_error_handlers(app: Flask) -> None:
    def render(error: SearchboxError) -> Response:
        return json_response(error_body(error, g.get("request_id", "")), error.status_code, error.headers)

    app.register_error_handler(SearchboxError, render)
    app.register_error_handler(HandlerError, lambda exc: render(from_handler_error(exc)))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if isinstance(exc, RequestEntityTooLarge):
            limit_mb = app.config["MAX_CONTENT_LENGTH"] / (1024 * 1024)
            return render(PayloadTooLarge(
                f"the body is larger than the {limit_mb:g} MiB limit; send fewer or shorter inputs per request"))
        if exc.code == 404:
            return render(NotFound(
                f"no route {request.path}; use POST /invocations, POST /v1/embeddings, POST /v1/rerank or GET /ping"))
        if exc.code == 405:
            return render(MethodNotAllowed(f"{request.method} is not allowed on {request.path}"))
        return render(_generic(exc))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        logger.exception("unhandled error in request %s", g.get("request_id", ""))
        return render(SearchboxError("internal error; quote the request_id when reporting it"))


def _generic(exc: HTTPException) -> SearchboxError:
    error = SearchboxError(exc.description or exc.name, code=exc.name.upper().replace(" ", "_"))
    error.status_code = exc.code or 500
    return error
