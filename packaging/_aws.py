"""Offline checks of AWS requests against botocore's bundled service models (the API the cloud publishes).

botocore's own `validate_parameters` checks names, types, required members and minimums; it leaves
enums, patterns and maximums to the server. No server is reachable here, so those are checked too,
from the same shapes.
"""

from __future__ import annotations

import functools
import re
from typing import Any


# The Catalog API's documented entity types carry a version ("MachineLearningProduct@1.0", "Offer@1.0")
# that the model's pattern ^[a-zA-Z]+$ leaves out: the pattern is checked on the name before the "@".
_VERSIONED_SHAPES = {"EntityType"}


class RequestInvalid(ValueError):
    """A request the cloud would reject; the message lists every problem with its path."""


@functools.lru_cache(maxsize=None)
def operation_model(service: str, operation: str):
    import botocore.session

    return botocore.session.get_session().get_service_model(service).operation_model(operation)


def validate_request(service: str, operation: str, params: dict[str, Any]) -> None:
    """Raise RequestInvalid unless `params` is a valid `operation` request of `service`."""
    from botocore.exceptions import ParamValidationError
    from botocore.validate import validate_parameters

    shape = operation_model(service, operation).input_shape
    try:
        validate_parameters(params, shape)
    except ParamValidationError as exc:
        raise RequestInvalid(f"{service} {operation}: {exc.kwargs.get('report', exc)}") from exc
    problems: list[str] = []
    _check_constraints(params, shape, operation, problems)
    if problems:
        raise RequestInvalid(f"{service} {operation}:\n" + "\n".join(problems))


def _check_constraints(value: Any, shape, path: str, problems: list[str]) -> None:
    metadata = shape.metadata
    kind = shape.type_name
    if kind == "structure":
        if metadata.get("document"):
            return
        for name, member in shape.members.items():
            if name in value:
                _check_constraints(value[name], member, f"{path}.{name}", problems)
    elif kind == "list":
        if "max" in metadata and len(value) > metadata["max"]:
            problems.append(f"{path}: {len(value)} items, at most {metadata['max']} allowed")
        for i, item in enumerate(value):
            _check_constraints(item, shape.member, f"{path}[{i}]", problems)
    elif kind == "map":
        if "max" in metadata and len(value) > metadata["max"]:
            problems.append(f"{path}: {len(value)} entries, at most {metadata['max']} allowed")
        for key, item in value.items():
            _check_constraints(key, shape.key, f"{path} key {key!r}", problems)
            _check_constraints(item, shape.value, f"{path}.{key}", problems)
    elif kind == "string":
        if shape.enum and value not in shape.enum:
            problems.append(f"{path}: {value!r} is not one of {', '.join(shape.enum[:8])}"
                            + (", ..." if len(shape.enum) > 8 else ""))
        if "max" in metadata and len(value) > metadata["max"]:
            problems.append(f"{path}: {len(value)} characters, at most {metadata['max']} allowed")
        pattern = _pattern(metadata.get("pattern"))
        checked = value.split("@", 1)[0] if shape.name in _VERSIONED_SHAPES else value
        if pattern is not None and not pattern.fullmatch(checked):
            problems.append(f"{path}: {value!r} does not match {metadata['pattern']}")
    elif kind in ("integer", "long", "double", "float"):
        if "max" in metadata and value > metadata["max"]:
            problems.append(f"{path}: {value} is above the maximum {metadata['max']}")


@functools.lru_cache(maxsize=None)
def _pattern(source: str | None):
    if not source:
        return None
    try:
        return re.compile(source, re.DOTALL)
    except re.error:
        return None  # a Java-only construct (\p{...}); the service checks it
