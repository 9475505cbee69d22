"""Errors a handler raises; each carries a machine code, the server chooses the HTTP status."""

from __future__ import annotations


class HandlerError(Exception):
    """Base of every error a handler raises on purpose."""

    code = "MODEL_ERROR"

    def __init__(self, detail: str, *, code: str | None = None):
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class InvalidInput(HandlerError):
    """The caller's input cannot be served as given (too long, wrong modality)."""

    code = "INVALID_INPUT"


class InvalidOption(HandlerError):
    """An option is out of range for this model (e.g. `dimensions` wider than the model)."""

    code = "INVALID_OPTION"


class Overloaded(HandlerError):
    """The queue is full or the request waited past its deadline; retrying later can succeed."""

    code = "OVERLOADED"

    def __init__(self, detail: str, *, code: str | None = None, retry_after_s: int = 1):
        super().__init__(detail, code=code)
        self.retry_after_s = retry_after_s


class TooLarge(HandlerError):
    """The request alone is more work than may be done for one request; it must be split, not retried."""

    code = "REQUEST_TOO_LARGE"


class ModelDirectoryError(HandlerError):
    """A model directory that cannot be served: missing files, pickled weights, unknown kind."""

    code = "MODEL_DIRECTORY"


class AdapterError(HandlerError):
    """An adapter that cannot be held: unreadable, not a LoRA adapter for this model, or no room left for it."""

    code = "ADAPTER_ERROR"


class AdapterConflict(AdapterError):
    """An adapter name already taken, or an adapter built into the artifact that cannot be removed."""

    code = "ADAPTER_CONFLICT"


class ModelFailure(HandlerError):
    """The forward pass itself failed; this is a bug or a resource problem, not bad input."""

    code = "MODEL_FAILURE"
