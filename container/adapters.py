"""SageMaker's LoRA adapter management: register (POST /adapters), unregister (DELETE /adapters/{name}), list.

The wire follows AWS's model-hosting-container-standards (docs/sagemaker/05_lora_adapter_management.md and
python/model_hosting_container_standards/sagemaker/lora/: `SageMakerRegisterLoRAAdapterRequest`, `ResponseMessage`,
the route table): the register body is `{"name", "src", "preload" (default true), "pin" (default false)}`, a
malformed one is a 400; success is a 200 whose text says "Adapter {alias} registered" / "unregistered", the alias
being the X-Amzn-SageMaker-Adapter-Alias header when given, else the name; an adapter that does not load is a 424.
Beyond the standard: an unknown name on DELETE is a 404 ("The adapter {alias} was not found", its message), a name
taken or built into the artifact a 409, and GET /adapters lists what the endpoint holds. Errors are the contract's
JSON; the model side (model_handlers/adapters.py) does the loading.
"""

from __future__ import annotations

from typing import Any

from container.dialects import fields
from container.errors import BadRequest, NotFound

ALIAS_HEADER = "X-Amzn-SageMaker-Adapter-Alias"
# what `registration` reads, and what `listing` answers, as JSON Schemas (the OpenAPI document)
REGISTRATION_SCHEMA = {
    "type": "object", "required": ["name", "src"],
    "properties": {"name": {"type": "string", "minLength": 1, "description": "the adapter's name in requests"},
                   "src": {"type": "string", "minLength": 1,
                           "description": "a PEFT LoRA directory, or a .tar.gz of one, on this instance"},
                   "preload": {"type": "boolean", "default": True, "description": "load now (else at first use)"},
                   "pin": {"type": "boolean", "default": False, "description": "never unload it to make room"}},
}
LISTING_SCHEMA = {
    "type": "object", "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {
        "type": "object", "required": ["name", "source", "pinned", "built_in", "loaded"],
        "properties": {"name": {"type": "string"}, "source": {"type": "string"}, "pinned": {"type": "boolean"},
                       "built_in": {"type": "boolean"}, "loaded": {"type": "boolean"}}}}},
}


def registration(body: bytes) -> tuple[str, str, bool, bool]:
    """(name, src, preload, pin) of a register-adapter body.

    Raises:
        BadRequest: not a JSON object with non-empty string `name` and `src` (and booleans, when given).
    """
    try:
        value = fields.loads(body)
    except BadRequest:
        raise BadRequest('the body must be JSON: {"name": "...", "src": "/path/to/adapter"}',
                         code="INVALID_ADAPTER_REQUEST") from None
    if not isinstance(value, dict):
        raise BadRequest('the body must be a JSON object: {"name": "...", "src": "/path/to/adapter"}',
                         code="INVALID_ADAPTER_REQUEST")
    found = {}
    for key in ("name", "src"):
        if not isinstance(value.get(key), str) or not value[key]:
            raise BadRequest(f"`{key}` must be a non-empty string", code="INVALID_ADAPTER_REQUEST")
        found[key] = value[key]
    flags = {}
    for key, default in (("preload", True), ("pin", False)):
        flag = value.get(key, default)
        if not isinstance(flag, bool):
            raise BadRequest(f"`{key}` must be true or false", code="INVALID_ADAPTER_REQUEST")
        flags[key] = flag
    return found["name"], found["src"], flags["preload"], flags["pin"]


def holder(pipeline) -> Any:
    """The pipeline's adapter set.

    Raises:
        BadRequest: the served model holds no adapters (a cross-encoder, an ONNX graph).
    """
    if pipeline.adapters is None:
        raise BadRequest(f"model {pipeline.model_name} ({pipeline.kind.summary}, {pipeline.config.backend}) holds no "
                         "LoRA adapters", code="ADAPTERS_UNSUPPORTED")
    return pipeline.adapters


def unregister(pipeline, name: str, alias: str) -> None:
    """Raises: NotFound (SageMaker's message), or the model side's refusal (built-in adapter)."""
    try:
        holder(pipeline).unregister(name)
    except KeyError:
        raise NotFound(f"The adapter {alias} was not found", code="ADAPTER_NOT_FOUND") from None


def listing(pipeline) -> dict[str, Any]:
    adapters = pipeline.adapters.describe() if pipeline.adapters is not None else []
    return {"object": "list", "data": [{"name": a.name, "source": a.source, "pinned": a.pinned,
                                        "built_in": a.builtin, "loaded": a.loaded} for a in adapters]}
