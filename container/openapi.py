"""`GET /openapi.json`: an OpenAPI 3.1 document of every route, its bodies, answers and errors.

Assembled from the JSON Schemas the dialects keep beside the parsers and renderers they describe
(container/dialects/*, container/encodings.py, container/errors.py), so the document cannot say what the
parsers do not read. Built once per app; served as JSON, with no docs page and no CDN: the image is offline.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from container.dialects import JSON, batch_transform, fields, multi_vector, public, rerank, sagemaker
from container.errors import ERROR_SCHEMA
from container.telemetry import METRICS_CONTENT_TYPE

OPENAPI_VERSION = "3.1.0"
_JSONLINES_NOTE = ("one JSON body or one record (`\"text\"`, `{\"text\", \"id\"}`, an image) per line; answered "
                   "one JSON line per line, in order")
_CSV_NOTE = ("no header; column 1 an id echoed back, then the served kind's columns: `id,text` (embeddings), "
             "`id,query,documents,top_n` (rerankers, documents a JSON array), `id,text,url,bytes` (multimodal)")
# The errors every POST route can answer, with when.
_POST_ERRORS = {
    "400": ("the body is not JSON, a batch line or row does not parse, the model cannot read an input, or the "
            "served model does not answer this operation (UNSUPPORTED_OPERATION: the detail names what it answers)"),
    "405": "another method than POST",
    "413": "the body, or an input after truncate=false, is over the limit",
    "415": "a media type the route does not take",
    "422": "a field has the wrong type or value, or names a task or adapter the model does not have; the detail "
           "names it",
    "424": "the adapter the request names was registered without preload and cannot be loaded",
    "503": "loading, overloaded or shutting down: retry after the Retry-After header's seconds",
    "500": "a bug: no stack trace, the request_id to quote",
}
_GET_ERRORS = {"405": "another method than GET"}
_GET_ERRORS_POST = {"405": "another method than GET or POST"}
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
            "metering": {"oneOf": [{"type": "null"}, {"type": "object", "properties": {
                "unit": {"type": "string"}, "tokens_per_unit": {"type": ["integer", "null"]}}}]},
            "ready": {"type": "boolean"},
        }}}},
}
_ADAPTER_REGISTRATION_SCHEMA = {
    "type": "object", "required": ["name", "src"],
    "properties": {"name": {"type": "string", "minLength": 1, "description": "the adapter's name in requests"},
                   "src": {"type": "string", "minLength": 1,
                           "description": "a PEFT LoRA directory, or a .tar.gz of one, on this instance"},
                   "preload": {"type": "boolean", "default": True, "description": "load now (else at first use)"},
                   "pin": {"type": "boolean", "default": False, "description": "never unload it to make room"}},
}
_ADAPTERS_SCHEMA = {
    "type": "object", "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {
        "type": "object", "required": ["name", "source", "pinned", "built_in", "loaded"],
        "properties": {"name": {"type": "string"}, "source": {"type": "string"}, "pinned": {"type": "boolean"},
                       "built_in": {"type": "boolean"}, "loaded": {"type": "boolean"}}}}},
}
# SageMaker's adapter routes answer a line of text (aws/model-hosting-container-standards)
_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_ADAPTER_PARAMETER = {"name": "X-Amzn-SageMaker-Adapter-Identifier", "in": "header", "required": False,
                      "schema": {"type": "string"},
                      "description": "the LoRA adapter (GET /adapters) for every input of the request"}
_EXECUTION_PARAMETERS_SCHEMA = {
    "type": "object", "required": ["MaxConcurrentTransforms", "BatchStrategy", "MaxPayloadInMB"],
    "properties": {"MaxConcurrentTransforms": {"type": "integer", "minimum": 1},
                   "BatchStrategy": {"enum": ["MULTI_RECORD", "SINGLE_RECORD"]},
                   "MaxPayloadInMB": {"type": "integer", "minimum": 1}},
}


def document() -> dict[str, Any]:
    """The OpenAPI document of the app's routes (container/app.py)."""
    schemas = {
        "Input": fields.input_schema(),
        "Error": ERROR_SCHEMA,
        "EmbeddingsRequest": public.request_schema(),
        "EmbeddingsResponse": public.response_schema(),
        "MultiVectorResponse": multi_vector.response_schema(),
        "SageMakerRequest": sagemaker.request_schema(),
        "SageMakerResponse": sagemaker.response_schema(),
        "RerankRequest": rerank.public_request_schema(),
        "RerankResponse": rerank.public_response_schema(),
        "SageMakerRerankRequest": rerank.sagemaker_request_schema(),
        "SageMakerRerankResponse": rerank.sagemaker_response_schema(),
        "Models": _MODELS_SCHEMA,
        "Health": _HEALTH_SCHEMA,
        "Ping": _STATUS_SCHEMA,
        "ExecutionParameters": _EXECUTION_PARAMETERS_SCHEMA,
        "AdapterRegistration": _ADAPTER_REGISTRATION_SCHEMA,
        "Adapters": _ADAPTERS_SCHEMA,
    }
    invocation_body = {"oneOf": [_ref("SageMakerRequest"), _ref("SageMakerRerankRequest"), _ref("EmbeddingsRequest"),
                                 _ref("RerankRequest")]}
    invocation_answer = {"oneOf": [_ref("SageMakerResponse"), _ref("SageMakerRerankResponse"),
                                   _ref("EmbeddingsResponse"), _ref("MultiVectorResponse"), _ref("RerankResponse")]}
    invocations = _post(
        "Any request, in the SageMaker envelope or the public APIs' bodies, told apart by their keys; batch "
        "transform's CSV and JSON Lines. A 2xx answer of a per-inference product carries X-Amzn-Inference-Metering.",
        {JSON: {"schema": invocation_body},
         **{media: {"schema": {"type": "string", "description": _CSV_NOTE}} for media in batch_transform.CSV_TYPES},
         **{media: {"schema": {"type": "string", "description": _JSONLINES_NOTE}}
            for media in batch_transform.JSONLINES_TYPES}},
        {JSON: {"schema": invocation_answer},
         batch_transform.JSONLINES: {"schema": {"type": "string", "description": _JSONLINES_NOTE}}},
        operation_id="invocations")
    paths = {
        "/ping": _get("ping", "Readiness: 200 once the model is loaded and warmed up, 503 before and while draining",
                      _ref("Ping"), {"503": "loading or shutting down"}),
        "/health": _get("health", "Liveness: the process answers, even while the model loads", _ref("Health")),
        "/metrics": _get("metrics", "Prometheus metrics", {"type": "string"}, media=METRICS_CONTENT_TYPE.split(";")[0]),
        "/v1/models": _get("models", "The served model: id, kind, operations, dimensions, tasks, backend",
                           _ref("Models")),
        "/execution-parameters": _get("executionParameters", "What SageMaker batch transform should send",
                                      _ref("ExecutionParameters")),
        "/openapi.json": _get("openapi", "This document", {"type": "object"}),
        "/invocations": invocations,
        "/score": {"post": {**invocations["post"], "operationId": "score",
                            "summary": "Azure ML's scoring route: as /invocations"}},
        "/v1/embeddings": _post("One vector per input (Jina's embeddings API; OpenAI's `encoding_format` accepted)",
                                {JSON: {"schema": _ref("EmbeddingsRequest")}},
                                {JSON: {"schema": _ref("EmbeddingsResponse")}}, operation_id="embeddings"),
        "/v1/multi-vector": _post("One vector per token of each input (ColBERT models)",
                                  {JSON: {"schema": _ref("EmbeddingsRequest")}},
                                  {JSON: {"schema": _ref("MultiVectorResponse")}}, operation_id="multiVector"),
        "/v1/rerank": _post("Documents ranked against a query (rerankers, ColBERT and multimodal models)",
                            {JSON: {"schema": _ref("RerankRequest")}},
                            {JSON: {"schema": _ref("RerankResponse")}}, operation_id="rerank"),
        "/adapters": {
            **_get("listAdapters", "The LoRA adapters the endpoint holds: built into the artifact, or registered",
                   _ref("Adapters"), {"400": "the served model holds no adapters"}),
            "post": {"operationId": "registerAdapter",
                     "summary": "SageMaker's register-adapter call: load a PEFT LoRA adapter under a name",
                     "parameters": [{"name": "X-Amzn-SageMaker-Adapter-Alias", "in": "header", "required": False,
                                     "schema": {"type": "string"}}],
                     "requestBody": {"required": True, "content": {JSON: {"schema": _ref("AdapterRegistration")}}},
                     "responses": {"200": {"description": "Adapter {alias} registered", "content": _TEXT},
                                   **_errors({"400": "a malformed body, or a model that holds no adapters",
                                              "409": "the name is taken",
                                              "424": "the adapter does not load (missing, not LoRA, wrong base model, "
                                                     "pickled, or every held adapter pinned): nothing of it is kept",
                                              "503": "loading, or every held adapter in use: retry",
                                              **_GET_ERRORS_POST})}},
        },
        "/adapters/{name}": {"delete": {
            "operationId": "unregisterAdapter", "summary": "SageMaker's unregister-adapter call",
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "Adapter {alias} unregistered", "content": _TEXT},
                          **_errors({"404": "no such adapter", "409": "an adapter built into the artifact",
                                     "503": "loading", "405": "another method than DELETE"})}}},
    }
    for path in ("/invocations", "/score", "/v1/embeddings", "/v1/multi-vector", "/v1/rerank"):
        paths[path]["post"]["parameters"] = [_ADAPTER_PARAMETER]
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "searchbox", "version": _version(),
                 "description": "Embeddings, multi-vector embeddings and reranking of the one served model."},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(statuses: dict[str, str]) -> dict[str, Any]:
    return {status: {"description": why, "content": {JSON: {"schema": _ref("Error")}}}
            for status, why in statuses.items()}


def _get(operation_id: str, summary: str, schema: dict[str, Any], errors: dict[str, str] | None = None,
         media: str = JSON) -> dict[str, Any]:
    responses = {"200": {"description": "OK", "content": {media: {"schema": schema}}}}
    return {"get": {"operationId": operation_id, "summary": summary,
                    "responses": {**responses, **_errors({**(errors or {}), **_GET_ERRORS})}}}


def _post(summary: str, body: dict[str, Any], answer: dict[str, Any], *, operation_id: str) -> dict[str, Any]:
    return {"post": {
        "operationId": operation_id,
        "summary": summary,
        "requestBody": {"required": True, "content": body},
        "responses": {"200": {"description": "OK", "content": answer}, **_errors(_POST_ERRORS)},
    }}


def _version() -> str:
    try:
        return metadata.version("searchbox")
    except metadata.PackageNotFoundError:  # run from a source tree that was not installed
        return "0+source"
