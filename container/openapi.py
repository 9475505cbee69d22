"""`GET /openapi.json`: an OpenAPI 3.1 document of every route, its bodies, answers and errors.

The paths are the route table's (container/routes.py); the bodies and answers the JSON Schemas each operation's
dialect keeps beside the parsers and renderers they describe (container/dialects/*, container/encodings.py,
container/errors.py), so the document cannot say what the parsers do not read. Built once per app; served as
JSON, with no docs page and no CDN: the image is offline.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from container import adapters, dialects, routes
from container.dialects import JSON, fields
from container.errors import ERROR_SCHEMA
from model_handlers import operations

OPENAPI_VERSION = "3.1.0"
# The errors every route of a method can answer, with when.
_ERRORS = {
    "POST": {
        "400": ("the body is not JSON, a batch line or row does not parse, the model cannot read an input, or the "
                "served model does not answer this operation (UNSUPPORTED_OPERATION: the detail names what it "
                "answers)"),
        "405": "another method than POST",
        "406": "an Accept header that names no media type the answer can be (NOT_ACCEPTABLE: the detail lists them)",
        "413": "the body, or an input after truncate=false, is over the limit",
        "415": "a media type the route does not take",
        "422": "a field has the wrong type or value, or names a task or adapter the model does not have; the detail "
               "names it",
        "424": "the adapter the request names was registered without preload and cannot be loaded",
        "503": "loading, overloaded or shutting down: retry after the Retry-After header's seconds",
        "500": "a bug: no stack trace, the request_id to quote",
    },
    "GET": {"405": "another method than GET"},
    "DELETE": {"405": "another method than DELETE"},
}
_STATUS_SCHEMA = {"type": "object", "required": ["status"], "properties": {"status": {"const": "healthy"}}}
_HEALTH_SCHEMA = {
    "type": "object", "required": ["status", "ready", "model_load_error"],
    "properties": {"status": {"const": "alive"}, "ready": {"type": "boolean"},
                   "model_load_error": {"type": ["string", "null"]}},
}
_MODELS_SCHEMA = {
    "type": "object", "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
        "type": "object",
        "required": ["id", "object", "kind", "operations", "max_length", "dimensions", "tasks", "backend", "ready"],
        "properties": {
            "id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
            "owned_by": {"type": "string"}, "kind": {"type": "string"}, "summary": {"type": "string"},
            "operations": {"type": "array", "items": {"type": "string"}},
            "max_length": {"type": ["integer", "null"]},
            "dimensions": {"type": ["integer", "null"], "description": "null until the model is loaded"},
            "matryoshka_dimensions": {"type": "array", "items": {"type": "integer"}},
            "tasks": {"type": "array", "items": {"type": "string"}}, "default_task": {"type": ["string", "null"]},
            "unknown_task": {"enum": ["refused", "default"],
                             "description": "what a request naming a task the model does not have gets"},
            "task_adapters": {"type": "object", "additionalProperties": {"type": "string"},
                              "description": "the adapter each task selects (tasks absent here select prompts only)"},
            "adapters": {"type": "array", "items": {"type": "object"}},
            "backend": {"type": "string"},
            "classifiers": {"type": "array", "description": "few-shot classifiers trained into the artifact "
                                                            "(POST /v1/classify with `classifier_id`)",
                            "items": {"type": "object", "required": ["name", "labels"], "properties": {
                                "name": {"type": "string"}, "labels": {"type": "array", "items": {"type": "string"}},
                                "examples": {"type": "integer"},
                                "held_out_accuracy": {"type": ["number", "null"]}}}},
            "metering": {"oneOf": [{"type": "null"}, {"type": "object", "properties": {
                "unit": {"type": "string"}, "tokens_per_unit": {"type": ["integer", "null"]}}}]},
            "ready": {"type": "boolean"},
        }}}},
}
_EXECUTION_PARAMETERS_SCHEMA = {
    "type": "object", "required": ["MaxConcurrentTransforms", "BatchStrategy", "MaxPayloadInMB"],
    "properties": {"MaxConcurrentTransforms": {"type": "integer", "minimum": 1},
                   "BatchStrategy": {"enum": ["MULTI_RECORD", "SINGLE_RECORD"]},
                   "MaxPayloadInMB": {"type": "integer", "minimum": 1}},
}


def document() -> dict[str, Any]:
    """The OpenAPI document of the app's routes (container/routes.py)."""
    schemas = {"Input": fields.input_schema(), "Error": ERROR_SCHEMA}
    for wire in dialects.registered():
        schemas.update(wire.schemas())
    schemas.update({"Models": _MODELS_SCHEMA, "Health": _HEALTH_SCHEMA, "Ping": _STATUS_SCHEMA,
                    "ExecutionParameters": _EXECUTION_PARAMETERS_SCHEMA,
                    "AdapterRegistration": adapters.REGISTRATION_SCHEMA, "Adapters": adapters.LISTING_SCHEMA})
    paths: dict[str, dict[str, Any]] = {}
    for route in routes.routes():
        paths.setdefault(route.template, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "searchbox", "version": _version(),
                 "description": "What the one served model answers: " + ", ".join(
                     f"{spec.noun} requests" for spec in operations.registered()) + "."},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _operation(route: routes.Route) -> dict[str, Any]:
    responses = {"200": {"description": "OK", "content": {media: {"schema": schema}
                                                          for media, schema in route.answers.items()}}}
    errors = {**route.errors, **_ERRORS.get(route.method, {})}
    responses.update({status: {"description": why, "content": {JSON: {"schema": routes.ref("Error")}}}
                      for status, why in errors.items()})
    operation: dict[str, Any] = {"operationId": route.endpoint, "summary": route.summary}
    if route.parameters:
        operation["parameters"] = [dict(parameter) for parameter in route.parameters]
    if route.body is not None:
        operation["requestBody"] = {"required": True,
                                    "content": {media: {"schema": schema} for media, schema in route.body.items()}}
    operation["responses"] = responses
    return operation


def _version() -> str:
    try:
        return metadata.version("searchbox")
    except metadata.PackageNotFoundError:  # run from a source tree that was not installed
        return "0+source"
