"""Field parsers shared by the dialects: each checks one JSON value and names the field when it is wrong."""

from __future__ import annotations

from typing import Any, Mapping

from container.errors import ValidationFailed
from model_handlers.types import EmbedInput, EmbedRequest, EmbeddingType, ImageInput, TextInput

_IMAGE_KEYS = ("image", "url", "bytes")
_TYPE_NAMES = ", ".join(t.value for t in EmbeddingType)


def mapping(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationFailed(f"`{field}` must be a JSON object, got {_json_type(value)}")
    return value


def optional_int(value: Any, field: str) -> int | None:
    """An int, or a numeric string ("1024"), as some clients send for `dimensions`."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValidationFailed(f"`{field}` must be an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value.strip())
    raise ValidationFailed(f"`{field}` must be an integer, got {value!r}"[:200])


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


def embedding_types(value: Any, field: str) -> tuple[tuple[EmbeddingType, ...], bool]:
    """The requested types, and whether they came as a list (then the answer is keyed by type)."""
    if value is None:
        return (EmbeddingType.FLOAT,), False
    as_list = isinstance(value, list)
    values = value if as_list else [value]
    if as_list and not values:
        raise ValidationFailed(f"`{field}` must name at least one of {_TYPE_NAMES}")
    types = []
    for item in values:
        try:
            types.append(EmbeddingType(item))
        except ValueError:
            raise ValidationFailed(f"`{field}` must be one of {_TYPE_NAMES} (or a list of them), got {item!r}"[:200]) from None
    return tuple(dict.fromkeys(types)), as_list


def embed_input(value: Any, field: str) -> EmbedInput:
    """One input: a bare string, {"text"}, or an image as {"image"}, {"url"} or {"bytes"}."""
    if isinstance(value, str):
        return TextInput(value)
    if isinstance(value, dict):
        if "text" in value:
            if not isinstance(value["text"], str):
                raise ValidationFailed(f"`{field}.text` must be a string, got {_json_type(value['text'])}")
            return TextInput(value["text"])
        for key in _IMAGE_KEYS:
            if key in value:
                if not isinstance(value[key], str):
                    raise ValidationFailed(f"`{field}.{key}` must be a string, got {_json_type(value[key])}")
                return ImageInput(value[key])
        raise ValidationFailed(f"`{field}` must have a `text` (or `image`, `url`, `bytes`) key")
    raise ValidationFailed(f"`{field}` must be a string or an object with `text`, got {_json_type(value)}")


def embed_request(inputs: tuple[EmbedInput, ...], options: Mapping[str, Any],
                  prefix: str = "") -> tuple[EmbedRequest, bool]:
    """The options of contract §2c, read from `options` (field names in errors get `prefix`).

    Returns the request and whether the embedding types came as a list (answer keyed by type).
    OpenAI's `encoding_format` is read as a synonym of `embedding_type`.
    """
    type_key = "embedding_type" if options.get("embedding_type") is not None else "encoding_format"
    types, types_as_list = embedding_types(options.get(type_key), prefix + type_key)
    request = EmbedRequest(
        inputs=inputs,
        task=optional_str(options.get("task"), prefix + "task"),
        dimensions=optional_int(options.get("dimensions"), prefix + "dimensions"),
        normalized=optional_bool(options.get("normalized"), prefix + "normalized", True),
        embedding_types=types,
        late_chunking=optional_bool(options.get("late_chunking"), prefix + "late_chunking", False),
        truncate=optional_bool(options.get("truncate"), prefix + "truncate", True),
        input_type=optional_str(options.get("input_type"), prefix + "input_type"),
    )
    return request, types_as_list


def render_embedding(encoded: Mapping[EmbeddingType, Any], as_list: bool) -> Any:
    if as_list:
        return {kind.value: value for kind, value in encoded.items()}
    return next(iter(encoded.values()))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "an array", dict: "an object"}.get(type(value), type(value).__name__)
