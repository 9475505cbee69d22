"""Operation `embed` on the wire (contract §2): POST /v1/embeddings, and the embeddings bodies of /invocations.

A vector per input, under `embedding`: `{"input", ...}` (dialects/public.py) or the SageMaker envelope
(dialects/sagemaker.py). On /invocations those two bodies ask for the served model's own form of embeddings, so
this dialect, the first form, claims them for every form (a multi-vector model answers them with token vectors).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from container import dialects
from container.dialects import (
    ITEM_OVERHEAD_BYTES, Decoded, EmbeddingForm, Listing, Route, WireOperation, public, sagemaker,
)
from container.encodings import Encoding, schema as embedding_schema, vector_bytes
from model_handlers.operations.embed import EMBED
from model_handlers.types import EmbedRequest


def invocation(body: Mapping[str, Any]) -> Decoded | None:
    """An embeddings body on /invocations: the SageMaker envelope (`data`) or the public body (`input`), asking for
    the served model's own form."""
    if "data" in body:
        return sagemaker.decode(body)
    if "input" in body:
        return public.decode_embeddings(body, None)
    return None


def estimate(request: EmbedRequest, encoding: Encoding | None, pipeline: Any) -> int:
    """An upper bound of an embeddings answer's bytes: its vectors (one per input, or per kept token) in the encodings
    asked, and what each answered input adds."""
    dims = request.dimensions or pipeline.dimensions or 0
    own = pipeline.answer_rows(request) * vector_bytes(dims, encoding) + len(request.inputs) * ITEM_OVERHEAD_BYTES
    # the forms asked beside it (BGE-M3's return_sparse, return_multivector), as their own answers would be
    alone = replace(request, also=())
    return own + sum(dialects.named(name).estimate(replace(alone, operation=name), encoding, pipeline)
                     for name in request.also)


FORM = EmbeddingForm("embedding", ("total_tokens", "prompt_tokens"), embedding_schema)

WIRE = WireOperation(
    name=EMBED,
    hint='embeddings: {"input": ["..."]} to /v1/embeddings, or {"data": [{"text": "..."}]} to /invocations',
    routes=(Route("/v1/embeddings", lambda body: public.decode_embeddings(body, EMBED), "embeddings",
                  "One vector per input (Jina's embeddings API; OpenAI's `encoding_format` accepted)",
                  "EmbeddingsRequest", "EmbeddingsResponse"),),
    schemas=lambda: {"EmbeddingsRequest": public.request_schema(), "EmbeddingsResponse": public.response_schema(FORM),
                     "SageMakerRequest": sagemaker.request_schema(), "SageMakerResponse": sagemaker.response_schema()},
    invocation_bodies=("SageMakerRequest", "EmbeddingsRequest"),
    invocation_answers=("SageMakerResponse", "EmbeddingsResponse"),
    body_keys=("data", "input", "parameters"),
    estimate=estimate,
    listing=Listing("embeds {count} text{s}", "the items' `usage.total_tokens` in its answer"),
    invocation=invocation,
    invocation_fallback=True,
    form=FORM,
)
