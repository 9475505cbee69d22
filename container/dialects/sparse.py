"""Operation `sparse` on the wire (contract §2i): POST /v1/sparse-embeddings.

`{"model", "input", "input_type", "truncate", "top_k", "min_weight", "return_tokens"}` -> `{"model", "object": "list",
"usage": {"total_tokens"}, "data": [{"object": "sparse_embedding", "index", "sparse_embedding": {"indices": [...],
"values": [...], "tokens"?: [...]}}]}`: token ids ascending, their weights. The body's fields are the embeddings
API's (dialects/public.py); in the SageMaker envelope and batch transform a sparse model answers each item under
`sparse_embedding`. `embedding_type` does not apply: weights always go as JSON numbers.
"""

from __future__ import annotations

from typing import Any

from container.dialects import ITEM_OVERHEAD_BYTES, EmbeddingForm, Listing, Route, WireOperation, fields, public
from container.encodings import Encoding
from model_handlers.operations.sparse import SPARSE, SPEC, SparseOptions, SparseVector

# What one kept entry takes in an answer: an id (up to 6 digits), a float32 weight as JSON (up to 14 characters),
# commas, and a token string when asked.
ENTRY_BYTES = 48
# Entries a sparse vector keeps when `top_k` does not bound it, for the estimate of a batch answer: SPLADE
# documents keep a few hundred (its FLOPS regularisation); a body whose answer runs past the cap is refused then.
EXPECTED_ENTRIES = 512


# The sparse form's own options (`SparseOptions`), read from every embeddings body: applied where it answers, asked
# or asked beside a dense vector (`return_sparse`), ignored elsewhere.
OPTIONS = (
    fields.Option("top_k", fields.optional_int, fields.INTEGER_SCHEMA,
                  "sparse embeddings: keep the k largest weights of each input"),
    fields.Option("min_weight", fields.optional_float, {"type": "number"},
                  "sparse embeddings: keep weights above this only"),
    fields.Option("return_tokens", fields.flag(False), fields.boolean_schema(False),
                  "sparse embeddings: answer the vocabulary string of each kept token id under `tokens`"),
)
ASKED_BESIDE = fields.Option(SPEC.beside.option, fields.flag(False), fields.boolean_schema(False),
                             "BGE-M3: add each input's sparse vector (`sparse_embedding`: indices, values; `top_k`, "
                             "`min_weight` and `return_tokens` apply) from the same forward pass; other models "
                             "refuse it")


def value(vector: SparseVector, encoding: Encoding) -> dict[str, Any]:
    answer = {"indices": vector.indices, "values": vector.values}
    if vector.tokens is not None:
        answer["tokens"] = list(vector.tokens)
    return answer


def token_weights(vector: SparseVector) -> dict[str, float]:
    """One input's weights keyed by vocabulary string (the vector must carry `tokens`: `return_tokens`), as
    Elasticsearch's and OpenSearch's sparse fields index them."""
    return {token: float(weight) for token, weight in zip(vector.tokens, vector.values)}


def schema() -> dict[str, Any]:
    return {"type": "object", "required": ["indices", "values"], "properties": {
        "indices": {"type": "array", "items": {"type": "integer"}, "description": "token ids, ascending"},
        "values": {"type": "array", "items": {"type": "number"}, "description": "their weights, each > 0"},
        "tokens": {"type": "array", "items": {"type": "string"},
                   "description": "the vocabulary strings of `indices` (with return_tokens)"}}}


def estimate(request, encoding: Encoding | None, pipeline: Any) -> int:
    """About the bytes of a sparse answer: its kept entries (`top_k`, else the expected count) and each input's own."""
    entries = min(request.options_of(SparseOptions).top_k or EXPECTED_ENTRIES, pipeline.dimensions or EXPECTED_ENTRIES)
    return len(request.inputs) * (entries * ENTRY_BYTES + ITEM_OVERHEAD_BYTES)


FORM = EmbeddingForm("sparse_embedding", ("total_tokens",), schema, value, beside="sparse_embedding", options=OPTIONS,
                     asked_beside=ASKED_BESIDE)

WIRE = WireOperation(
    name=SPARSE,
    hint=('sparse embeddings: {"input": ["..."], "top_k": 128} to /v1/sparse-embeddings, '
          'or {"data": [{"text": "..."}]} to /invocations'),
    routes=(Route("/v1/sparse-embeddings", lambda body: public.decode_embeddings(body, SPARSE), "sparseEmbeddings",
                  "One sparse vector (token ids and weights) per input (SPLADE models)", "EmbeddingsRequest",
                  "SparseEmbeddingsResponse"),),
    schemas=lambda: {"SparseEmbeddingsResponse": public.response_schema(FORM)},
    # the embeddings bodies of /invocations are claimed by the first form (dialects/embed.py) for every form
    invocation_bodies=(),
    invocation_answers=("SparseEmbeddingsResponse",),
    body_keys=(),
    estimate=estimate,
    listing=Listing("embeds {count} text{s} into sparse vectors", "the items' `usage.total_tokens` in its answer"),
    form=FORM,
)
