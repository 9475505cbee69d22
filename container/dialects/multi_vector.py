"""Operation `multi-vector` on the wire (contract §2e): POST /v1/multi-vector.

`{"model", "input", "input_type": "query" | "document", "dimensions", "embedding_type"}` ->
`{"model", "object": "list", "usage": {"total_tokens"}, "data": [{"object": "embeddings", "index",
"embeddings": [[...], ...]}]}`: one row per kept token of each input, each row cut to `dimensions`, normalised
and encoded on its own (base64 per row, bits packed per row). The body's fields are the embeddings API's
(dialects/public.py); in the SageMaker envelope a multi-vector model answers each item under `embeddings`. A model
of single vectors refuses it, naming the route it answers (container/engine.py).
"""

from __future__ import annotations

from container.dialects import EmbeddingForm, Route, WireOperation, embed, fields, public
from container.encodings import schema as embedding_schema
from model_handlers.operations.multi_vector import MULTI_VECTOR, SPEC

ASKED_BESIDE = fields.Option(SPEC.beside.option, fields.flag(False), fields.boolean_schema(False),
                             "BGE-M3: add each input's ColBERT token vectors (`multi_vector`) from the same forward "
                             "pass; jina-embeddings-v4: answer its token vectors instead, under `embeddings` (as "
                             "Jina's API does); other models refuse it")
FORM = EmbeddingForm("embeddings", ("total_tokens",), lambda: embedding_schema(matrix=True), beside="multi_vector",
                     asked_beside=ASKED_BESIDE)

WIRE = WireOperation(
    name=MULTI_VECTOR,
    hint=('multi-vector embeddings: {"input": ["..."], "input_type": "query"} to /v1/multi-vector, '
          'or {"data": [{"text": "..."}], "parameters": {"input_type": "query"}} to /invocations'),
    routes=(Route("/v1/multi-vector", lambda body: public.decode_embeddings(body, MULTI_VECTOR), "multiVector",
                  "One vector per token of each input (ColBERT models)", "EmbeddingsRequest", "MultiVectorResponse"),),
    schemas=lambda: {"MultiVectorResponse": public.response_schema(FORM)},
    # the embeddings bodies of /invocations are claimed by the first form (dialects/embed.py) for every form
    invocation_bodies=(),
    invocation_answers=("MultiVectorResponse",),
    body_keys=(),
    estimate=embed.estimate,
    listing=embed.WIRE.listing,
    form=FORM,
)
