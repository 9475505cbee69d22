"""Field parsers shared by the dialects: each checks one JSON value and names the field when it is wrong."""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping, TypeVar

import orjson

from container.encodings import EmbeddingType, Encoding
from container.errors import BadRequest, ValidationFailed
from model_handlers import operations
from model_handlers.types import (
    INPUT_TYPE_TASKS, EmbedInput, EmbedRequest, ImageInput, Origin, OtherInput, TextInput,
)

IMAGE_KEYS = ("image", "url", "bytes")
# Modalities newer clients send that no kind reads yet: parsed so that the model refuses them by index (400).
OTHER_KEYS = ("audio", "video", "pdf")
_TYPE_NAMES = ", ".join(t.value for t in EmbeddingType)
_UTF8_BOM = b"\xef\xbb\xbf"
# What a JSON integer or a numeric string is: ASCII digits (str.isdigit() also takes "²" and "①", which
# int() refuses), at most 18 of them (every value an option can take, and no 4,300-digit int() refusal).
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
# The largest integer orjson keeps as an int; beyond it, it reads a float and the id would come back rounded.
_INT64_RANGE = (-(2**63), 2**64 - 1)

T = TypeVar("T")


class InexactNumber(Exception):
    """An id arrived as a float from the fast parser, whose text may hold more digits than a float: the body
    is decoded again by `decode_body` with every number exact. Never reaches a caller."""


class _ExactFloat(float):
    """A JSON number with the text it was written as, so an id is echoed exactly as sent."""

    text: str

    @classmethod
    def parse(cls, text: str) -> "_ExactFloat":
        number = cls(text)
        number.text = text
        return number


def loads(body: bytes, *, exact: bool = False) -> Any:
    """A JSON body (a UTF-8 byte-order mark is allowed, as in CSV); `exact` keeps every number's precision.

    Raises:
        BadRequest: the body is not JSON.
    """
    body = body.removeprefix(_UTF8_BOM)
    if not exact:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}", code="INVALID_JSON") from None
    try:
        return json.loads(body.decode("utf-8"), parse_float=_ExactFloat.parse)
    except (ValueError, RecursionError) as exc:  # also int() of more than 4,300 digits
        raise BadRequest(f"the body is not valid JSON: {exc}"[:300], code="INVALID_JSON") from None


def decode_body(decode: Callable[[Any], T], body: bytes) -> T:
    """`decode(loads(body))`, again with exact numbers when an id needs them (a rare, slower path)."""
    try:
        return decode(loads(body))
    except InexactNumber:
        return decode(loads(body, exact=True))


def item_id(value: Any, field: str) -> Any:
    """An input's id: a string or a number, rendered back exactly as sent; None when there is none.

    Raises:
        ValidationFailed: anything else (objects, arrays, booleans), before any work is done.
        InexactNumber: a float from the fast parser (see `decode_body`).
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationFailed(f"`{field}` must be a string or a number, got {_json_type(value)}")
    if isinstance(value, _ExactFloat):
        return orjson.Fragment(value.text.encode())
    if isinstance(value, float):
        raise InexactNumber(field)
    if not _INT64_RANGE[0] <= value <= _INT64_RANGE[1]:
        return orjson.Fragment(str(value).encode())
    return value


def echoed(value: Mapping[str, Any], field: str) -> Mapping[str, Any]:
    """A value the answer echoes back (SageMaker's `parameters`), refused now if it cannot be rendered
    (nested too deep, integers beyond 64 bits): after the model ran would be too late."""
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise ValidationFailed(f"`{field}` cannot be echoed back: {exc}; send a flat object") from None
    return value


def mapping(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationFailed(f"`{field}` must be a JSON object, got {_json_type(value)}")
    return value


def optional_int(value: Any, field: str) -> int | None:
    """An int, or a numeric string ("1024"), as some clients send for `dimensions`: ASCII digits only."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValidationFailed(f"`{field}` must be an integer, got a boolean")
    if isinstance(value, int) and abs(value) < 10**18:
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e18:
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    raise ValidationFailed(f"`{field}` must be an integer, got {_shown(value)}")


def optional_float(value: Any, field: str) -> float | None:
    """A finite JSON number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationFailed(f"`{field}` must be a finite number, got {_shown(value)}")
    return float(value)


def optional_bool(value: Any, field: str, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValidationFailed(f"`{field}` must be true or false, got {_json_type(value)}")


def optional_str(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationFailed(f"`{field}` must be a string, got {_json_type(value)}")
    return value


def choice(value: Any, field: str, choices: Iterable[str], default: str | None = None) -> str | None:
    """One of `choices` (`default` when left out); any other value, of any JSON type, is a ValidationFailed naming
    them (a membership test on a list or an object would raise instead)."""
    if value is None:
        return default
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValidationFailed(f"`{field}` must be one of {', '.join(choices)}, got {_shown(value)}")
    return value


def encoding(value: Any, field: str) -> Encoding:
    """The requested embedding types; a list of them makes the answer keyed by type."""
    if value is None:
        return Encoding()
    as_list = isinstance(value, list)
    values = value if as_list else [value]
    if as_list and not values:
        raise ValidationFailed(f"`{field}` must name at least one of {_TYPE_NAMES}")
    types = []
    for item in values:
        try:
            types.append(EmbeddingType(item))
        except (ValueError, TypeError):
            raise ValidationFailed(f"`{field}` must be one of {_TYPE_NAMES} (or a list of them), got {_shown(item)}") from None
    return Encoding(tuple(dict.fromkeys(types)), as_list)


def input_type(value: Any, field: str) -> str | None:
    value = optional_str(value, field)
    if value is not None and value not in INPUT_TYPE_TASKS:
        raise ValidationFailed(f"`{field}` must be one of {', '.join(INPUT_TYPE_TASKS)}, got {_shown(value)}")
    return value


def embed_input(value: Any, field: str) -> EmbedInput:
    """One input: a bare string, {"text"}, an image as {"image"}, {"url"} or {"bytes"}, or {"audio"}, {"video"},
    {"pdf"} (typed as what they are, for the model to refuse or read)."""
    if isinstance(value, str):
        return TextInput(value)
    if isinstance(value, dict):
        if "text" in value:
            if not isinstance(value["text"], str):
                raise ValidationFailed(f"`{field}.text` must be a string, got {_json_type(value['text'])}")
            return TextInput(value["text"])
        for key in IMAGE_KEYS:
            if key in value:
                if not isinstance(value[key], str):
                    raise ValidationFailed(f"`{field}.{key}` must be a string (a URL, base64 or a data URI), "
                                           f"got {_json_type(value[key])}")
                return ImageInput(value[key], key)
        for key in OTHER_KEYS:
            if key in value:
                return OtherInput(key, value[key] if isinstance(value[key], str) else "")
        raise ValidationFailed(f"`{field}` must have a `text` (or `image`, `url`, `bytes`) key")
    raise ValidationFailed(f"`{field}` must be a string or an object with `text`, got {_json_type(value)}")


def input_list(body: Any, shape: str, required: str = "`input`",
               listed: str = 'strings or {"text"} objects') -> tuple[EmbedInput, ...]:
    """The inputs of a public body (`{"input": "..." | [...], ...}`): one input or a list of them.

    Raises:
        ValidationFailed: the body is not an object with `input` (naming the keys it needs, `required`, and a `shape`
            to send), or `input` is neither an input nor a list (naming what a list holds, `listed`).
    """
    if not isinstance(body, dict) or "input" not in body:
        raise ValidationFailed(f"the body must be a JSON object with {required}: {shape}")
    raw = body["input"]
    if isinstance(raw, (str, dict)):
        raw = [raw]
    if not isinstance(raw, list):
        raise ValidationFailed(f"`input` must be a string or a list of {listed}")
    return tuple(embed_input(item, f"input[{i}]") for i, item in enumerate(raw))


def envelope(body: Mapping[str, Any], shape: str = "") -> tuple[Mapping[str, Any], tuple[EmbedInput, ...], list[Any]]:
    """The SageMaker envelope (`{"data": [items] | item, "parameters"?}`): its parameters (echoed back in the answer),
    its inputs, and each input's id (as sent, else a random hex id).

    Raises:
        ValidationFailed: `parameters` is not an object that can be echoed, `data` is neither a list nor one input
            (naming a `shape` to send, when given), or an input or its id does not parse.
    """
    params = echoed(mapping(body.get("parameters"), "parameters"), "parameters")
    data = body["data"]
    if not isinstance(data, (list, dict)):
        raise ValidationFailed("`data` must be a list of inputs or one input object" + (f": {shape}" if shape else ""))
    inputs, ids = [], []
    for index, item in enumerate(data if isinstance(data, list) else [data]):
        inputs.append(embed_input(item, f"data[{index}]"))
        given = item_id(item.get("id"), f"data[{index}].id") if isinstance(item, dict) else None
        ids.append(given if given is not None else uuid.uuid4().hex)
    return params, tuple(inputs), ids


def input_schema() -> dict[str, Any]:
    """What `embed_input` reads, as a JSON Schema (the OpenAPI document, container/openapi.py): a string, or an
    object read by the first of its keys in `embed_input`'s order."""
    branches: list[dict[str, Any]] = [{"type": "string", "description": "a text"}]
    earlier: list[str] = []

    def keyed(key: str, value: dict[str, Any]) -> dict[str, Any]:
        branch = {"type": "object", "required": [key], "properties": {key: value}}
        if earlier:
            branch["not"] = {"anyOf": [{"required": [other]} for other in earlier]}
        earlier.append(key)
        return branch

    branches.append(keyed("text", {"type": "string", "description": "a text"}))
    for key in IMAGE_KEYS:
        branches.append(keyed(key, {"type": "string", "description": "an image: an http(s) URL (when the operator "
                                                                      "allows fetching), base64 or a data URI; "
                                                                      "multimodal models only"}))
    for key in OTHER_KEYS:
        branches.append(keyed(key, {"description": "a PDF (base64, a data URI, or an http(s) URL when the operator "
                                                   "allows fetching), read as its pages by models that read images; "
                                                   "otherwise refused by index" if key == "pdf" else
                                                   "read by no model yet: refused by index"}))
    return {"oneOf": branches}


def render_input(item: EmbedInput) -> dict[str, str]:
    """An input as it is echoed back (a returned rerank document): `{"text"}`, or what else it is under the key it
    came in (also used to estimate a batch answer's size, before any model refuses what it cannot read)."""
    if isinstance(item, TextInput):
        return {"text": item.text}
    if isinstance(item, ImageInput):
        return {item.key: item.source}
    return {item.kind: item.source}


PAGE_SCHEMA = {"type": "integer", "minimum": 1, "description": "the page (1-based) of the PDF input this row is"}


def origin(origin: Origin) -> dict[str, int]:
    """An embeddings row's `index` (its input's), and `page` for a PDF's page."""
    return {"index": origin.index} if origin.page is None else {"index": origin.index, "page": origin.page}


@dataclass(frozen=True)
class Option:
    """One optional field of a request: how it is read, and how the OpenAPI document shows it (one definition for
    both, so the document cannot drift from the parser). `read(value, field)` gets None when the field is absent."""

    name: str
    read: Callable[[Any, str], Any]
    schema: Mapping[str, Any]
    description: str

    def parse(self, source: Mapping[str, Any], prefix: str = "") -> Any:
        return self.read(source.get(self.name), prefix + self.name)

    def property_schema(self) -> dict[str, Any]:
        """The field in a body's JSON Schema; null reads as left out."""
        return {"anyOf": [dict(self.schema), {"type": "null"}], "description": self.description}


def flag(default: bool) -> Callable[[Any, str], bool]:
    """`optional_bool` with its default."""
    return lambda value, field: optional_bool(value, field, default)


def boolean_schema(default: bool) -> dict[str, Any]:
    """true/false, or the strings "true"/"false" in any case, as some form encoders send."""
    return {"oneOf": [{"type": "boolean"}, {"type": "string", "pattern": "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"}],
            "default": default}


# an integer, or a numeric string ("1024") as some clients send: the values `optional_int` reads
INTEGER_BOUND = 10**18 - 1
INTEGER_SCHEMA = {"oneOf": [{"type": "integer", "minimum": -INTEGER_BOUND, "maximum": INTEGER_BOUND},
                            {"type": "string", "pattern": f"^\\s*{_INTEGER.pattern}\\s*$"}]}
_EMBEDDING_TYPE = {"type": "string", "enum": [t.value for t in EmbeddingType]}

# Contract §2c: the options every embedding request reads (the public API's body, SageMaker's `parameters`). A form's
# own options (sparse's `top_k`) and the flag that asks it beside another form (`return_sparse`) are its dialect's
# (`EmbeddingForm.options`, `EmbeddingForm.asked_beside`); `embed_options()` lists them all.
EMBED_OPTIONS = (
    Option("task", optional_str, {"type": "string"},
           "a task the model declares (GET /v1/models lists them): it selects the task's LoRA adapter and/or "
           "prepends its prompt. An unknown task is refused (422 UNKNOWN_TASK) on a model whose tasks select "
           "adapters, and falls back to the model's default on a model whose tasks are prompts only"),
    Option("dimensions", optional_int, INTEGER_SCHEMA,
           "cut each vector to its first N dimensions (Matryoshka), then normalise"),
    Option("normalized", flag(True), boolean_schema(True), "scale each vector to unit length"),
    Option("late_chunking", flag(False), boolean_schema(False),
           "run the inputs through the model as one sequence, then pool each input's own tokens"),
    Option("truncate", flag(True), boolean_schema(True),
           "cut inputs longer than the model's max length; false makes them an error"),
    Option("input_type", input_type, {"type": "string", "enum": list(INPUT_TYPE_TASKS)},
           "query or document: selects the retrieval task when no `task` is given"),
    Option("adapter", optional_str, {"type": "string"},
           "a LoRA adapter the endpoint holds (GET /adapters lists them), for every input, in place of the one the "
           "task selects; SageMaker's X-Amzn-SageMaker-Adapter-Identifier header says the same"),
)
ENCODING_OPTION = Option(
    "embedding_type", encoding,
    {"oneOf": [_EMBEDDING_TYPE, {"type": "array", "items": _EMBEDDING_TYPE, "minItems": 1}]},
    "how vectors go on the wire; a list answers each embedding as an object keyed by type. "
    "`encoding_format` (OpenAI's name) is read as a synonym")
ENCODING_SYNONYM = "encoding_format"


@lru_cache(maxsize=1)
def _forms() -> tuple[tuple[tuple[type, tuple[Option, ...]], ...], tuple[tuple[str, Option], ...]]:
    """The forms' own option sets (their type, and their options on the wire), in registration order; and the flags
    that ask a form beside another (its name, its flag), in their rank order."""
    from container import dialects

    own = tuple((operations.named(wire.name).options, wire.form.options) for wire in dialects.registered()
                if wire.form is not None and wire.form.options)
    beside = tuple((spec.name, dialects.named(spec.name).form.asked_beside) for spec in operations.beside())
    return own, beside


def embed_options() -> tuple[Option, ...]:
    """Every option an embeddings body may carry, in the order they are read: the shared ones (EMBED_OPTIONS), each
    form's own, then the flags that ask a form beside another."""
    own, beside = _forms()
    return (*EMBED_OPTIONS, *(option for _, options in own for option in options), *(flag for _, flag in beside))


def embed_request(inputs: tuple[EmbedInput, ...], options: Mapping[str, Any],
                  prefix: str = "") -> tuple[EmbedRequest, Encoding]:
    """The options of contract §2c (`embed_options()`), read from `options` (field names in errors get `prefix`).

    Returns the request and how its vectors go on the wire. OpenAI's `encoding_format` is read as a
    synonym of `embedding_type`.
    """
    shared = {option.name: option.parse(options, prefix) for option in EMBED_OPTIONS}
    own, beside = _forms()
    form_options = []
    for kind, parsed in own:
        value = kind(**{option.name: option.parse(options, prefix) for option in parsed})
        if value != kind():  # left out when it asks nothing: what the form reads then
            form_options.append(value)
    also = tuple(name for name, flag in beside if flag.parse(options, prefix))
    request = EmbedRequest(inputs=inputs, **shared, also=also, form_options=tuple(form_options))
    type_key = ENCODING_OPTION.name if options.get(ENCODING_OPTION.name) is not None else ENCODING_SYNONYM
    return request, ENCODING_OPTION.read(options.get(type_key), prefix + type_key)


def options_schema() -> dict[str, Any]:
    """The properties `embed_options()` and the encoding add to a request body (or SageMaker's `parameters`)."""
    properties = {option.name: option.property_schema() for option in (*embed_options(), ENCODING_OPTION)}
    properties[ENCODING_SYNONYM] = {**ENCODING_OPTION.property_schema(), "description": "synonym of `embedding_type`"}
    return properties


def _shown(value: Any) -> str:
    """A caller's value in an error message, cut short: an error never echoes a whole input back."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "an array", dict: "an object"}.get(type(value), type(value).__name__)
