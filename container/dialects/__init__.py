"""Wire dialects: each turns a body into typed requests plus a renderer for their results.

Routes only dispatch; which dialect a JSON body speaks is decided here, by its keys (contract §2, §3).
`Decoded` is one JSON body's request; `Records` what the dispatcher runs for any body (one JSON request,
or the many of a batch-transform CSV or JSON Lines body).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

from sagemaker_inference import content_types

from container.encodings import Encoding
from container.errors import ValidationFailed
from model_handlers.types import EmbedRequest, EmbedResult, RerankRequest, RerankResult

TypedRequest = Union[EmbedRequest, RerankRequest]
TypedResult = Union[EmbedResult, RerankResult]
JSON = content_types.JSON


@dataclass(frozen=True)
class Decoded:
    """A typed request, how to render its result in the dialect it came in, and (embeddings) in which encodings."""

    request: TypedRequest
    render: Callable[[Any], dict]
    encoding: Encoding | None = None


@dataclass(frozen=True)
class Records:
    """A body decoded into typed requests to run, and how to render their results as one body.

    Attributes:
        requests: the typed requests, each run through the model.
        origins: where each request came from ("line 3", "lines 1-2048"), to prefix its errors; "" for none.
        render: the results (one per request, same order) to the response body.
        content_type: the response's media type.
        concurrent: run the requests side by side (small ones, so the batcher packs them together)
            rather than one after the other (large ones, each filling whole forward passes).
    """

    requests: Sequence[TypedRequest]
    origins: Sequence[str]
    render: Callable[[list[TypedResult]], bytes]
    content_type: str = JSON
    concurrent: bool = True
    encodings: Sequence[Encoding | None] = ()  # per request, when known: what the answer's size depends on


def decode_invocation(body: Any) -> Decoded:
    """`/invocations` and `/score`: the SageMaker envelope or the public API, told apart by keys.

    A `data` holding `query`/`documents` (object or one-element list) is a SageMaker rerank; a body with
    `query`/`documents` and neither `data` nor `input` is a public rerank; the rest are embeddings, in the form
    the served model makes (one vector per input, or one per token for a multi-vector model).
    """
    from container.dialects import public, rerank, sagemaker

    if isinstance(body, dict):
        if "data" in body:
            if rerank.is_sagemaker_rerank(body["data"]):
                return rerank.decode_sagemaker(body)
            return sagemaker.decode(body)
        if "input" in body:
            # the served model's own form: single vectors, or token vectors from a multi-vector model
            return public.decode_embeddings(body, operation=None)
        if rerank.is_public_rerank(body):
            return rerank.decode_public(body)
    raise ValidationFailed(
        "the body must be a JSON object with `data` (SageMaker envelope: {\"data\": [{\"text\": \"...\"}]}), "
        "`input` (embeddings API: {\"input\": [\"...\"]}) "
        "or `query` and `documents` (rerank API: {\"query\": \"...\", \"documents\": [\"...\"]})"
    )
