"""The SageMaker envelope that the `jina-sagemaker` client sends (contract §2a)."""

from __future__ import annotations

import uuid
from typing import Any

from container.dialects import Decoded
from container.dialects import fields
from container.errors import ValidationFailed
from model_handlers.types import EmbedResult


def decode(body: dict[str, Any]) -> Decoded:
    params = fields.echoed(fields.mapping(body.get("parameters"), "parameters"), "parameters")
    data = body["data"]
    items = data if isinstance(data, list) else [data]
    if not isinstance(data, (list, dict)):
        raise ValidationFailed("`data` must be a list of inputs or one input object")
    inputs, ids = [], []
    for index, item in enumerate(items):
        inputs.append(fields.embed_input(item, f"data[{index}]"))
        given = fields.item_id(item.get("id"), f"data[{index}].id") if isinstance(item, dict) else None
        ids.append(given if given is not None else uuid.uuid4().hex)
    request, types_as_list = fields.embed_request(tuple(inputs), params, prefix="parameters.")

    def render(result: EmbedResult) -> dict[str, Any]:
        return {
            "data": [
                {"id": item_id, "embedding": fields.render_embedding(encoded, types_as_list),
                 "usage": {"total_tokens": tokens}}
                for item_id, encoded, tokens in zip(ids, result.embeddings, result.token_counts)
            ],
            "parameters": params,
        }

    return Decoded(request, render)
