"""A model directory's JSON files (config.json, tokenizer_config.json, sentence_bert_config.json, modules.json,
1_Pooling/config.json, searchbox.json, ...), read one way by every kind and by the serving config.

The one error policy: a file that is not there reads as empty ({}, or [] for a list), since every one of them is
optional to some layout and the reader cannot tell which; a kind that cannot do without a file or a key says so
itself, naming it. A file that is there but is not valid JSON, or holds another type than the object (or list of
objects) it must, is a `ModelDirectoryError` naming the file: a broken file is never read as an absent one.
No torch: `serve` reads these in the gunicorn master.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from model_handlers.errors import ModelDirectoryError


def read_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; {} when there is no such file.

    Raises:
        ModelDirectoryError: the file is not valid JSON, or holds no JSON object.
    """
    value = _read(path, {})
    if not isinstance(value, dict):
        raise ModelDirectoryError(f"{path} must hold a JSON object")
    return value


def parse_object(text: str, where: str) -> dict[str, Any]:
    """The JSON object in `text`, a document a model directory holds elsewhere than in a file of its own (an ONNX
    graph's metadata), under the same policy; `where` names it in the error.

    Raises:
        ModelDirectoryError: not valid JSON, or no JSON object.
    """
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ModelDirectoryError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelDirectoryError(f"{where} must hold a JSON object")
    return value


def read_list(path: Path) -> list[dict[str, Any]]:
    """The JSON list of objects in `path` (modules.json); [] when there is no such file.

    Raises:
        ModelDirectoryError: the file is not valid JSON, or holds no list of JSON objects.
    """
    value = _read(path, [])
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ModelDirectoryError(f"{path} must hold a JSON list of objects")
    return value


def _read(path: Path, missing: Any) -> Any:
    path = Path(path)
    if not path.is_file():
        return missing
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelDirectoryError(f"{path} is not valid JSON: {exc}") from exc
