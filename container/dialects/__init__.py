"""Wire dialects: each turns a JSON body into a typed request plus a renderer for its result.

Routes only dispatch; which dialect a body speaks is decided here, by its keys (contract §2, §3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

from container.errors import ValidationFailed
from model_handlers.types import EmbedRequest, EmbedResult, RerankRequest, RerankResult

TypedRequest = Union[EmbedRequest, RerankRequest]
TypedResult = Union[EmbedResult, RerankResult]


@dataclass(frozen=True)
class Decoded:
    """A typed request and how to render its result in the dialect it came in."""

    request: TypedRequest
    render: Callable[[Any], dict]


def decode_invocation(body: Any) -> Decoded:
    """`/invocations` and `/score`: the SageMaker envelope or the public API, told apart by keys.

    A `data` holding `query`/`documents` (object or one-element list) is a SageMaker rerank; a body with
    `query`/`documents` and neither `data` nor `input` is a public rerank; the rest are embeddings.
    """
    from container.dialects import public, rerank, sagemaker

    if isinstance(body, dict):
        if "data" in body:
            if rerank.is_sagemaker_rerank(body["data"]):
                return rerank.decode_sagemaker(body)
            return sagemaker.decode(body)
        if "input" in body:
            return public.decode_embeddings(body)
        if rerank.is_public_rerank(body):
            return rerank.decode_public(body)
    raise ValidationFailed(
        "the body must be a JSON object with `data` (SageMaker envelope: {\"data\": [{\"text\": \"...\"}]}), "
        "`input` (embeddings API: {\"input\": [\"...\"]}) "
        "or `query` and `documents` (rerank API: {\"query\": \"...\", \"documents\": [\"...\"]})"
    )
