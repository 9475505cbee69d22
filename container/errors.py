"""Errors the server answers with, and the one place that maps handler errors to HTTP statuses.

Every error body is the contract's `{"detail", "code", "request_id"}` (contract §5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Callable, Iterable, Mapping

import orjson
from sagemaker_inference import content_types
from sagemaker_inference.errors import BaseInferenceToolkitError

from model_handlers import errors as handler_errors


class SearchboxError(BaseInferenceToolkitError):
    """An error the caller can act on; `detail` says what to fix."""

    status_code = 500
    code = "INTERNAL_ERROR"

    def __init__(self, detail: str, *, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(self.status_code, detail, HTTPStatus(self.status_code).phrase)
        self.detail = detail
        self.code = code or type(self).code
        self.headers = headers or {}


class BadRequest(SearchboxError):
    status_code = 400
    code = "BAD_REQUEST"


class ValidationFailed(SearchboxError):
    """The JSON is well formed but a field has the wrong type or value; the detail names the field."""

    status_code = 422
    code = "VALIDATION_ERROR"


class NotAcceptable(SearchboxError):
    """The Accept header names no media type the answer can be (as the SageMaker inference toolkit refuses it)."""

    status_code = 406
    code = "NOT_ACCEPTABLE"


class UnsupportedMediaType(SearchboxError):
    status_code = 415
    code = "UNSUPPORTED_MEDIA_TYPE"


class PayloadTooLarge(SearchboxError):
    status_code = 413
    code = "PAYLOAD_TOO_LARGE"


class NotFound(SearchboxError):
    status_code = 404
    code = "NOT_FOUND"


class Conflict(SearchboxError):
    status_code = 409
    code = "CONFLICT"


class FailedDependency(SearchboxError):
    """What SageMaker's adapter standard answers for an adapter that cannot be loaded (bad weights, wrong model)."""

    status_code = 424
    code = "FAILED_DEPENDENCY"


class MethodNotAllowed(SearchboxError):
    status_code = 405
    code = "METHOD_NOT_ALLOWED"


class Unavailable(SearchboxError):
    """Loading, overloaded or shutting down: retrying later can succeed."""

    status_code = 503
    code = "SERVICE_UNAVAILABLE"

    def __init__(self, detail: str, *, code: str | None = None, retry_after_s: int = 1):
        super().__init__(detail, code=code, headers={"Retry-After": str(retry_after_s)})


# The one map of handler errors to HTTP errors: every class of model_handlers/errors.py is here (a test checks), so
# a new one is given its status on purpose. A model directory that fails at request time, a failed forward pass, or
# a handler error of no known class is the server's fault: 500.
_BY_HANDLER_ERROR: dict[type, Callable[[Any], SearchboxError]] = {
    handler_errors.InvalidInput: lambda exc: BadRequest(exc.detail, code=exc.code),
    handler_errors.InvalidOption: lambda exc: ValidationFailed(exc.detail, code=exc.code),
    handler_errors.TooLarge: lambda exc: PayloadTooLarge(exc.detail, code=exc.code),
    handler_errors.Overloaded: lambda exc: Unavailable(exc.detail, code=exc.code, retry_after_s=exc.retry_after_s),
    handler_errors.AdapterConflict: lambda exc: Conflict(exc.detail, code=exc.code),
    handler_errors.AdapterError: lambda exc: FailedDependency(exc.detail, code=exc.code),
    handler_errors.ModelDirectoryError: lambda exc: SearchboxError(exc.detail, code=exc.code),
    handler_errors.ModelFailure: lambda exc: SearchboxError(exc.detail, code=exc.code),
    handler_errors.HandlerError: lambda exc: SearchboxError(exc.detail, code=exc.code),
}


def from_handler_error(exc: handler_errors.HandlerError) -> SearchboxError:
    """The HTTP error for a handler error, by the nearest of its classes in the map."""
    return next(_BY_HANDLER_ERROR[kind] for kind in type(exc).__mro__ if kind in _BY_HANDLER_ERROR)(exc)


def error_body(error: SearchboxError, request_id: str) -> dict[str, str]:
    return {"detail": error.detail, "code": error.code, "request_id": request_id}


# error_body as a JSON Schema (the OpenAPI document)
ERROR_SCHEMA = {
    "type": "object",
    "required": ["detail", "code", "request_id"],
    "additionalProperties": False,
    "properties": {
        "detail": {"type": "string", "description": "what went wrong and what to send instead"},
        "code": {"type": "string", "description": "a stable, machine-readable code (VALIDATION_ERROR, ...)"},
        "request_id": {"type": "string", "description": "the X-Request-Id of the answer: quote it when reporting"},
    },
}


@dataclass(frozen=True)
class Reply:
    """A whole answer: status, body bytes, media type and extra headers (whatever host sends it), and for an
    answered request what it cost (`figures`: a `container.telemetry.RequestFigures`)."""

    status: int
    body: bytes | Iterable[bytes]  # an iterable: an answer streamed from disk (container/spooled.py)
    content_type: str = content_types.JSON
    headers: Mapping[str, str] = field(default_factory=dict)
    figures: Any = None


def error_reply(exc: SearchboxError | handler_errors.HandlerError, request_id: str) -> Reply:
    """The contract's error body `{"detail", "code", "request_id"}` with the error's status and headers."""
    error = exc if isinstance(exc, SearchboxError) else from_handler_error(exc)
    return Reply(error.status_code, orjson.dumps(error_body(error, request_id)), content_types.JSON,
                 dict(error.headers))


def payload_too_large(limit_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the body is larger than the {limit_bytes / (1024 * 1024):g} MiB limit; "
                           "send fewer or shorter inputs per request")


def internal_error() -> SearchboxError:
    """What a caller reads about a bug: no stack trace, only the id to quote."""
    return SearchboxError(_INTERNAL_DETAIL)


def refused_by_worker(status: str, reason: str, exc: BaseException, request_id: str) -> bytes:
    """The contract's error body for a request gunicorn refuses before the app sees it (container/server.py): a
    malformed request line or headers (4xx, saying what), or its own failure (5xx, saying nothing more)."""
    detail = f"{reason}: {exc}"[:300] if status.startswith("4") else _INTERNAL_DETAIL
    return orjson.dumps(error_body(SearchboxError(detail, code=reason.upper().replace(" ", "_") or "BAD_REQUEST"),
                                   request_id))


_INTERNAL_DETAIL = "internal error; quote the request_id when reporting it"
