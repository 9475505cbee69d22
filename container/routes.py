"""Every route the server answers, in one table: the app binds it (container/app.py), the 404 answer names it,
the OpenAPI document describes it (container/openapi.py), and nginx hands its control routes to the threads kept
free of inference (container/proxy.py).

Inference routes come from the operations' dialects (container/dialects/): `/invocations` and `/score` take any
operation's body, and each operation adds its own public routes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping

from container import adapters, dialects
from container.dialects import JSON, batch_transform
from container.telemetry import METRICS_CONTENT_TYPE

# Flask's rule variables ("<name>", "<int:id>"), as OpenAPI and nginx write them.
_VARIABLE = re.compile(r"<(?:[a-z_]+:)?([A-Za-z_][A-Za-z0-9_]*)>")
_JSONLINES_NOTE = ("one JSON body or one record (`\"text\"`, `{\"text\", \"id\"}`, an image) per line; answered "
                   "one JSON line per line, in order (a blank line: null)")


@dataclass(frozen=True)
class Route:
    """One route.

    Attributes:
        method: its HTTP method.
        path: a Flask rule ("/v1/rerank", "/adapters/<name>").
        endpoint: its view (container/app.py) and its OpenAPI operationId.
        summary: what it does, for the OpenAPI document.
        answers: media type -> JSON Schema of a 200 answer (`{"$ref": ...}` to a dialect's component).
        body: media type -> JSON Schema of the request body; None: it takes none.
        errors: status -> when, beyond the errors every route of its method can answer.
        control: must answer at any load: nginx hands it to the threads kept free of inference.
        decode: an inference route: the JSON dialect of its bodies.
        records: an inference route that also takes batch-transform bodies (CSV, JSON Lines).
    """

    method: str
    path: str
    endpoint: str
    summary: str
    answers: Mapping[str, Any]
    body: Mapping[str, Any] | None = None
    errors: Mapping[str, str] = field(default_factory=dict)
    control: bool = False
    decode: Callable[[Any], dialects.Decoded] | None = field(default=None, repr=False)
    records: bool = False
    parameters: tuple[Mapping[str, Any], ...] = ()  # OpenAPI parameters beside the body (headers, path variables)

    @property
    def template(self) -> str:
        """The path as OpenAPI writes it: "/adapters/{name}"."""
        return _VARIABLE.sub(r"{\1}", self.path)

    @property
    def pattern(self) -> str:
        """The path as a regular expression (without anchors), a variable matching one path segment."""
        parts = _VARIABLE.split(self.path)
        return "".join(re.escape(part) if i % 2 == 0 else "[^/]+" for i, part in enumerate(parts))


def ref(name: str) -> dict[str, str]:
    """A reference to a component of the OpenAPI document."""
    return {"$ref": f"#/components/schemas/{name}"}


_CONTROL = (
    Route("GET", "/ping", "ping", "Readiness: 200 once the model is loaded and warmed up, 503 before and while draining",
          {JSON: ref("Ping")}, errors={"503": "loading or shutting down"}, control=True),
    Route("GET", "/health", "health", "Liveness: the process answers, even while the model loads",
          {JSON: ref("Health")}, control=True),
    Route("GET", "/metrics", "metrics", "Prometheus metrics", {METRICS_CONTENT_TYPE.split(";")[0]: {"type": "string"}},
          control=True),
    Route("GET", "/v1/models", "models", "The served model: id, kind, operations, dimensions, tasks, backend",
          {JSON: ref("Models")}, control=True),
    Route("GET", "/execution-parameters", "executionParameters", "What SageMaker batch transform should send",
          {JSON: ref("ExecutionParameters")}, control=True),
    Route("GET", "/openapi.json", "openapi", "This document", {JSON: {"type": "object"}}, control=True),
)


# SageMaker's LoRA adapter management (aws/model-hosting-container-standards): container/adapters.py answers it
_TEXT = {"text/plain": {"type": "string"}}
_ALIAS = {"name": adapters.ALIAS_HEADER, "in": "header", "required": False, "schema": {"type": "string"},
          "description": "the name the answer's text gives the adapter (default: its name)"}
_ADAPTERS = (
    Route("GET", "/adapters", "listAdapters",
          "The LoRA adapters the endpoint holds: built into the artifact, or registered", {JSON: ref("Adapters")}),
    Route("POST", "/adapters", "registerAdapter",
          "SageMaker's register-adapter call: load a PEFT LoRA adapter under a name (`Adapter {alias} registered`)",
          _TEXT, body={JSON: ref("AdapterRegistration")}, parameters=(_ALIAS,),
          errors={"409": "the name is taken",
                  "424": "the adapter does not load (missing, not LoRA, wrong base model, pickled, or every held "
                         "adapter pinned): nothing of it is kept"}),
    Route("DELETE", "/adapters/<name>", "unregisterAdapter",
          "SageMaker's unregister-adapter call (`Adapter {alias} unregistered`)", _TEXT,
          parameters=({"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}, _ALIAS),
          errors={"404": "no such adapter", "409": "an adapter built into the artifact", "503": "loading"}),
)
# few-shot classifiers trained on the endpoint (POST /v1/train): GET /v1/models lists them, this deletes one
_CLASSIFIERS = (
    Route("DELETE", "/v1/classifiers/<classifier_id>", "deleteClassifier",
          "Delete a classifier trained on the endpoint (POST /v1/train), for every instance sharing the store",
          {JSON: {"type": "object", "required": ["classifier_id", "deleted"],
                  "properties": {"classifier_id": {"type": "string"}, "deleted": {"const": True}}}},
          parameters=({"name": "classifier_id", "in": "path", "required": True, "schema": {"type": "string"}},),
          errors={"404": "no such classifier", "409": "a classifier shipped in the artifact", "503": "loading"}),
)
# every inference route takes SageMaker's adapter header
_ADAPTER_HEADER = {"name": "X-Amzn-SageMaker-Adapter-Identifier", "in": "header", "required": False,
                   "schema": {"type": "string"},
                   "description": "the LoRA adapter (GET /adapters) for every input of the request"}


def _invocation(path: str, endpoint: str, summary: str) -> Route:
    """`/invocations` (SageMaker) and `/score` (Azure ML): any operation's body, and batch transform's bodies."""
    wires = dialects.registered()
    csv_note = f"no header; column 1 an id echoed back, then the served kind's columns: {batch_transform.csv_layouts()}"
    return Route(
        "POST", path, endpoint, summary,
        answers={JSON: {"oneOf": [ref(name) for wire in wires for name in wire.invocation_answers]},
                 batch_transform.JSONLINES: {"type": "string", "description": _JSONLINES_NOTE}},
        # anyOf: bodies of two operations may overlap (an embeddings body with `labels` is a classify body); the
        # dialects tell them apart by their keys (dialects.decode_invocation)
        body={JSON: {"anyOf": [ref(name) for wire in wires for name in wire.invocation_bodies]},
              **{media: {"type": "string", "description": csv_note} for media in batch_transform.CSV_TYPES},
              **{media: {"type": "string", "description": _JSONLINES_NOTE} for media in batch_transform.JSONLINES_TYPES}},
        decode=dialects.decode_invocation, records=True, parameters=(_ADAPTER_HEADER,))


@lru_cache(maxsize=1)
def routes() -> tuple[Route, ...]:
    """Every route: the control routes, `/invocations` and `/score`, then each operation's own."""
    inference = (
        _invocation("/invocations", "invocations",
                    "Any request, in the SageMaker envelope or the public APIs' bodies, told apart by their keys; batch "
                    "transform's CSV and JSON Lines. A 2xx answer of a per-inference product carries "
                    "X-Amzn-Inference-Metering. Also other projects' bodies, each answered in its own shape: "
                    + "; ".join(shape.name for shape in dialects.shapes())
                    + " (SageMaker CustomAttributes `searchbox-shape=<id>` names one outright)."),
        _invocation("/score", "score", "Azure ML's scoring route: as /invocations"),
    )
    operations = tuple(Route("POST", route.path, route.operation_id, route.summary, {JSON: ref(route.response_schema)},
                             body={JSON: ref(route.request_schema)}, decode=route.decode,
                             parameters=(_ADAPTER_HEADER,))
                       for wire in dialects.registered() for route in wire.routes)
    return _CONTROL + inference + operations + _ADAPTERS + _CLASSIFIERS


def listed() -> str:
    """Every route, for an answer that names them: "POST /invocations, ..., or GET /openapi.json"."""
    named = [f"{route.method} {route.template}" for route in sorted(routes(), key=lambda r: r.method != "POST")]
    return ", ".join(named[:-1]) + f" or {named[-1]}"


def control_pattern() -> str:
    """A regular expression matching the paths of the control routes (for nginx's location)."""
    return "^(" + "|".join(route.pattern for route in routes() if route.control) + ")$"
