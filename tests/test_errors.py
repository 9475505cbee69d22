"""The one map of handler errors to HTTP errors covers every handler error, and the worker's own refusals are the
contract's body too (container/errors.py)."""

from __future__ import annotations

import orjson
import pytest

from container import errors
from model_handlers import errors as handler_errors

ERROR_KEYS = {"detail", "code", "request_id"}


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def test_every_handler_error_has_its_status_on_purpose():
    declared = {cls for cls in vars(handler_errors).values()
                if isinstance(cls, type) and issubclass(cls, handler_errors.HandlerError)}
    assert declared - set(errors._BY_HANDLER_ERROR) == set()
    assert {cls for cls in _subclasses(handler_errors.HandlerError) if cls.__module__ == handler_errors.__name__} \
        <= set(errors._BY_HANDLER_ERROR)


@pytest.mark.parametrize("error,status,code", [
    (handler_errors.InvalidInput("input 3 is an image", code="UNSUPPORTED_INPUT"), 400, "UNSUPPORTED_INPUT"),
    (handler_errors.InvalidOption("dimensions must be ...", code="INVALID_DIMENSIONS"), 422, "INVALID_DIMENSIONS"),
    (handler_errors.TooLarge("split it"), 413, "REQUEST_TOO_LARGE"),
    (handler_errors.Overloaded("busy", retry_after_s=7), 503, "OVERLOADED"),
    (handler_errors.ModelDirectoryError("gone"), 500, "MODEL_DIRECTORY"),
    (handler_errors.ModelFailure("the pass failed"), 500, "MODEL_FAILURE"),
    (handler_errors.HandlerError("unknown"), 500, "MODEL_ERROR"),
])
def test_handler_errors_become_their_http_errors(error, status, code):
    mapped = errors.from_handler_error(error)
    assert (mapped.status_code, mapped.code, mapped.detail) == (status, code, error.detail)
    if status == 503:
        assert mapped.headers["Retry-After"] == "7"


def test_a_subclass_takes_its_nearest_mapped_class():
    class Stranger(handler_errors.InvalidOption):
        pass

    assert errors.from_handler_error(Stranger("odd")).status_code == 422


def test_the_workers_own_refusals_are_the_contracts_body():
    refused = orjson.loads(errors.refused_by_worker("400", "Bad Request", ValueError("bad header"), "ab" * 16))
    assert set(refused) == ERROR_KEYS and refused["code"] == "BAD_REQUEST" and "bad header" in refused["detail"]
    failed = orjson.loads(errors.refused_by_worker("500", "Internal Server Error", RuntimeError("secret"), "cd" * 16))
    assert failed["detail"] == errors.internal_error().detail and "secret" not in failed["detail"]
    assert failed["request_id"] == "cd" * 16
