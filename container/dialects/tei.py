"""Hugging Face bodies on /invocations: text-embeddings-inference (TEI) and the Inference Toolkit's `{"inputs"}`.

What TEI's SageMaker image answers, and so what many notebooks, the LangChain/LlamaIndex SageMaker content handlers
and OpenSearch's SageMaker connector blueprints send (integrations.md cites each source):

- embed: `{"inputs": "text" | ["text", ...], "normalize", "truncate", "dimensions", "prompt_name"}` -> a list of
  vectors `[[...], ...]`. With `"answer": "vectors"` (the key LangChain's and LlamaIndex's `model_kwargs` add to the
  body) the same vectors come as `{"vectors": [[...], ...]}`, which their documented handlers read.
- rerank: `{"query", "texts", "return_text", "truncate", "raw_scores"}` -> `[{"index", "score", "text"?}]`, best
  first.

searchbox's options keep their place: `truncate` (TEI's default is to refuse long inputs; searchbox's to cut them,
kept when the field is absent), `normalize`, `dimensions`, and `prompt_name` naming one of the model's tasks.
"""

from __future__ import annotations

from typing import Any

from container.dialects import Decoded, Shape, fields
from container.encodings import Encoding
from container.errors import ValidationFailed
from model_handlers.operations.embed import EMBED
from model_handlers.types import EmbedRequest, EmbedResult, RerankRequest, RerankResult

_EMBED_EXAMPLE = '{"inputs": ["..."]}'
_RERANK_EXAMPLE = '{"query": "...", "texts": ["..."]}'
_ANSWERS = ("vectors",)
EMBED_KEYS = frozenset({"inputs", "normalize", "truncate", "truncation_direction", "dimensions", "prompt_name",
                        "answer", "parameters"})
RERANK_KEYS = frozenset({"query", "texts", "return_text", "truncate", "truncation_direction", "raw_scores"})


def _texts(raw: Any, field: str) -> tuple:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ValidationFailed(f"`{field}` must be a string or a list of strings")
    return tuple(fields.embed_input(item, f"{field}[{i}]") for i, item in enumerate(items))


def _truncation(body: dict[str, Any]) -> None:
    if body.get("truncation_direction") not in (None, "Right", "right"):
        raise ValidationFailed("`truncation_direction` must be Right: searchbox cuts the end of a long input")


def decode_embed(body: dict[str, Any]) -> Decoded:
    _truncation(body)
    answer = fields.choice(body.get("answer"), "answer", _ANSWERS)
    request = EmbedRequest(
        inputs=_texts(body["inputs"], "inputs"),
        task=fields.optional_str(body.get("prompt_name"), "prompt_name"),
        dimensions=fields.optional_int(body.get("dimensions"), "dimensions"),
        normalized=fields.optional_bool(body.get("normalize"), "normalize", True),
        truncate=fields.optional_bool(body.get("truncate"), "truncate", True),
        operation=EMBED,
    )
    keyed = answer == "vectors"

    def render(result: EmbedResult) -> Any:
        vectors = [Encoding().render(vector) for vector in result.vectors]
        return {"vectors": vectors} if keyed else vectors

    return Decoded(request, render, Encoding())


def decode_rerank(body: dict[str, Any]) -> Decoded:
    _truncation(body)
    query = body["query"]
    if not isinstance(query, str):
        raise ValidationFailed("`query` must be a string")
    return_text = fields.optional_bool(body.get("return_text"), "return_text", False)
    if fields.optional_bool(body.get("raw_scores"), "raw_scores", False):
        raise ValidationFailed("`raw_scores` must be false: searchbox answers each model's own relevance scores")
    request = RerankRequest(query=fields.embed_input(query, "query"), documents=_texts(body["texts"], "texts"),
                            return_documents=return_text)

    def render(result: RerankResult) -> list[dict[str, Any]]:
        hits = []
        for hit in result.hits:
            item: dict[str, Any] = {"index": hit.index, "score": hit.relevance_score}
            if return_text:
                item["text"] = request.documents[hit.index].text
            hits.append(item)
        return hits

    return Decoded(request, render)


SHAPES = (
    Shape("tei-embed", "Hugging Face TEI / Inference Toolkit embed", _EMBED_EXAMPLE,
          lambda body: isinstance(body, dict) and "inputs" in body, decode_embed, EMBED_KEYS),
    Shape("tei-rerank", "Hugging Face TEI rerank", _RERANK_EXAMPLE,
          lambda body: isinstance(body, dict) and "texts" in body and "query" in body, decode_rerank, RERANK_KEYS),
)
