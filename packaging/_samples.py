"""What a buyer of each kind sends and gets: the bodies of the artifact's load check and of the listing.

Wire text, not model code: the SageMaker envelope the `jina-sagemaker` client sends (build_artifact.py's load check
sends it through the server's own decoder), an abridged answer to show, the public API's body (its path is the
route of the operation the envelope asks, from container/dialects), batch-transform rows and an abridged CSV
answer, the jina-sagemaker call. One entry per registered kind (model_handlers/kinds); a kind without one has no
listing (`of` says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from container import dialects
from model_handlers import kinds


@dataclass(frozen=True)
class Samples:
    """`request` the SageMaker envelope; `response` an abridged answer; `public_request` the public API equivalent;
    `csv` batch-transform rows in both quotings; `batch_output` an abridged CSV answer; `client_call` the
    jina-sagemaker call."""

    request: Mapping[str, Any]
    response: Mapping[str, Any]
    public_request: Mapping[str, Any]
    csv: str
    batch_output: str
    client_call: str


# Batch-transform rows of every kind whose CSV layout is `id,text`, in both quotings the clients write.
TEXT_ROWS_CSV = ("1,When are you open\\, really?\n"
                 '"2","Berlin is the capital and largest city of Germany, by both area and population."\n'
                 "3,Semantic search finds documents by meaning rather than by keywords.\n"
                 '"4","The jina-sagemaker client rewrites every CSV row fully quoted, ""like this""."\n')
# What a dense embedding kind answers those rows (abridged).
DENSE_BATCH_OUTPUT = ('{"data":[{"id":"1","embedding":[0.0123,-0.0456,0.0789],"usage":{"total_tokens":9}},'
                      '{"id":"2","embedding":[0.0321,0.0654,-0.0987],"usage":{"total_tokens":19}}],"parameters":{}}')
# An 8x8 PNG (orange below blue), the image the multimodal samples send: small enough for a listing, real enough to
# decode.
SAMPLE_PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAG0lEQVR42mPUiDrBgA0wMeAApEswPqvQoLUdAJtZAt9S/OPOAAAAAE"
              "lFTkSuQmCC")

SAMPLES: Mapping[str, Samples] = {
    "embedding": Samples(
        # the load check sends this to every model of the kind: no option a small model could refuse
        request={"data": [{"text": "hello"}, {"text": "world", "id": "w1"}], "parameters": {"task": "retrieval.query"}},
        response={"data": [{"id": "3f2a9c4e0b1d4e7f8a6b5c4d3e2f1a0b", "embedding": [0.0123, -0.0456, 0.0789],
                            "usage": {"total_tokens": 3}},
                           {"id": "w1", "embedding": [0.0321, 0.0654, -0.0987], "usage": {"total_tokens": 3}}],
                  "parameters": {"task": "retrieval.query"}},
        public_request={"input": ["hello", "world"], "embedding_type": "float", "dimensions": 128},
        csv=TEXT_ROWS_CSV,
        batch_output=DENSE_BATCH_OUTPUT,
        client_call='client.embed(texts=["hello", "world"])',
    ),
    "reranker": Samples(
        request={"data": {"query": "What is the capital of Germany?",
                          "documents": [{"text": "Berlin is the capital of Germany."}, {"text": "Bananas are yellow."}],
                          "top_n": 2}},
        response={"data": [{"query_usage": {"total_tokens": 9}, "docs_usage": {"total_tokens": 14},
                            "results": [{"index": 0, "relevance_score": 0.97,
                                         "document": {"text": "Berlin is the capital of Germany."},
                                         "usage": {"total_tokens": 9}},
                                        {"index": 1, "relevance_score": 0.01,
                                         "document": {"text": "Bananas are yellow."}, "usage": {"total_tokens": 5}}]}],
                  "parameters": {}},
        public_request={"query": "capital of Germany?", "documents": ["Berlin ...", "Bananas ..."], "top_n": 1},
        csv=('"q1","What is the capital of Germany?","[""Berlin is the capital of Germany."", '
             '""Bananas are yellow."", ""Germany borders France.""]","2"\n'
             '"q2","How do embeddings work?","[""Embeddings map text to vectors."", ""Paris is in France.""]","1"\n'),
        batch_output=('{"data":[{"id":"q1","query_usage":{"total_tokens":9},"docs_usage":{"total_tokens":21},'
                      '"results":[{"index":0,"relevance_score":0.97,"document":{"text":"Berlin is the capital of '
                      'Germany."},"usage":{"total_tokens":9}}]}],"parameters":{}}'),
        client_call=('client.rerank(query="What is the capital of Germany?",\n'
                     '                      documents=["Berlin is the capital of Germany.", "Bananas are yellow."])'),
    ),
    "generative-reranker": Samples(
        # a judge prompt per document: the template's tokens are billed to the document each prompt reads
        request={"data": {"query": "What is the capital of Germany?",
                          "documents": [{"text": "Berlin is the capital of Germany."}, {"text": "Bananas are yellow."}],
                          "top_n": 2, "instruction": "Given a web search query, retrieve relevant passages"}},
        response={"data": [{"query_usage": {"total_tokens": 16}, "docs_usage": {"total_tokens": 188},
                            "results": [{"index": 0, "relevance_score": 0.9981,
                                         "document": {"text": "Berlin is the capital of Germany."},
                                         "usage": {"total_tokens": 96}},
                                        {"index": 1, "relevance_score": 0.0004,
                                         "document": {"text": "Bananas are yellow."}, "usage": {"total_tokens": 92}}]}],
                  "parameters": {}},
        public_request={"query": "capital of Germany?", "documents": ["Berlin ...", "Bananas ..."], "top_n": 1,
                        "instruction": "Given a web search query, retrieve relevant passages"},
        csv=('"q1","What is the capital of Germany?","[""Berlin is the capital of Germany."", '
             '""Bananas are yellow."", ""Germany borders France.""]","2"\n'
             '"q2","How do embeddings work?","[""Embeddings map text to vectors."", ""Paris is in France.""]","1"\n'),
        batch_output=('{"data":[{"id":"q1","query_usage":{"total_tokens":24},"docs_usage":{"total_tokens":285},'
                      '"results":[{"index":0,"relevance_score":0.9981,"document":{"text":"Berlin is the capital of '
                      'Germany."},"usage":{"total_tokens":96}}]}],"parameters":{}}'),
        client_call=('client.rerank(query="What is the capital of Germany?",\n'
                     '                      documents=["Berlin is the capital of Germany.", "Bananas are yellow."])'),
    ),
    "multimodal": Samples(
        # the load check sends this through the server's own parser: one text and one base64 PNG
        request={"data": [{"text": "A photo of a cat"}, {"image": SAMPLE_PNG, "id": "img-1"}], "parameters": {}},
        response={"data": [{"id": "3f2a9c4e0b1d4e7f8a6b5c4d3e2f1a0b", "embedding": [0.0123, -0.0456, 0.0789],
                            "usage": {"total_tokens": 7}},
                           {"id": "img-1", "embedding": [0.0321, 0.0654, -0.0987], "usage": {"total_tokens": 1000}}],
                  "parameters": {}},
        public_request={"input": [{"text": "A photo of a cat"}, {"image": SAMPLE_PNG}], "dimensions": 128},
        csv=("1,A photo of a cat\\, sleeping,,\n"
             f'"2","","","{SAMPLE_PNG}"\n'
             f'"3","","data:image/png;base64,{SAMPLE_PNG}",""\n'),
        batch_output=('{"data":[{"id":"1","embedding":[0.0123,-0.0456,0.0789],"usage":{"total_tokens":9}},'
                      '{"id":"2","embedding":[0.0321,0.0654,-0.0987],"usage":{"total_tokens":1000}}],"parameters":{}}'),
        client_call=('client.embed(texts=["A photo of a cat"],\n'
                     '                      image_bytes=[base64.b64encode(open("cat.png", "rb").read()).decode()])'),
    ),
    "multi-vector": Samples(
        # what `client.embed(texts="...", use_colbert=True, input_type=InputType.QUERY)` sends
        request={"data": {"text": "What is late interaction?"}, "parameters": {"input_type": "query"}},
        response={"data": [{"id": "3f2a9c4e0b1d4e7f8a6b5c4d3e2f1a0b",
                            "embeddings": [[0.0123, -0.0456, 0.0789], [0.0321, 0.0654, -0.0987], [-0.011, 0.042, 0.09]],
                            "usage": {"total_tokens": 32}}],
                  "parameters": {"input_type": "query"}},
        public_request={"input": ["What is late interaction?"], "input_type": "query", "embedding_type": "float"},
        csv=TEXT_ROWS_CSV,
        batch_output=('{"data":[{"id":"1","embeddings":[[0.0123,-0.0456,0.0789],[0.0321,0.0654,-0.0987]],'
                      '"usage":{"total_tokens":10}},{"id":"2","embeddings":[[0.0111,0.0222,-0.0333]],'
                      '"usage":{"total_tokens":20}}],"parameters":{}}'),
        client_call=('client.embed(texts=["What is late interaction?"], use_colbert=True,\n'
                     '                     input_type=InputType.QUERY)  # documents: InputType.DOCUMENT'),
    ),
    "sparse": Samples(
        request={"data": [{"text": "What is learned sparse retrieval?"}], "parameters": {"top_k": 3}},
        response={"data": [{"id": "3f2a9c4e0b1d4e7f8a6b5c4d3e2f1a0b",
                            "sparse_embedding": {"indices": [2047, 9413, 12850], "values": [1.21, 2.03, 0.87]},
                            "usage": {"total_tokens": 9}}],
                  "parameters": {"top_k": 3}},
        public_request={"input": ["What is learned sparse retrieval?"], "top_k": 3, "return_tokens": True},
        csv=TEXT_ROWS_CSV,
        batch_output=('{"data":[{"id":"1","sparse_embedding":{"indices":[2330,2024,2017],"values":[1.4,0.9,0.3]},'
                      '"usage":{"total_tokens":9}}],"parameters":{}}'),
        client_call='client.embed(texts=["What is learned sparse retrieval?"])  # answers sparse_embedding items',
    ),
    "bge-m3": Samples(
        request={"data": [{"text": "hello"}, {"text": "world", "id": "w1"}], "parameters": {"return_sparse": True}},
        response={"data": [{"id": "3f2a9c4e0b1d4e7f8a6b5c4d3e2f1a0b", "embedding": [0.0123, -0.0456, 0.0789],
                            "sparse_embedding": {"indices": [33600], "values": [0.187]},
                            "usage": {"total_tokens": 3}},
                           {"id": "w1", "embedding": [0.0321, 0.0654, -0.0987],
                            "sparse_embedding": {"indices": [8999], "values": [0.241]}, "usage": {"total_tokens": 3}}],
                  "parameters": {"return_sparse": True}},
        public_request={"input": ["hello", "world"], "return_sparse": True, "return_multivector": True},
        csv=TEXT_ROWS_CSV,
        batch_output=DENSE_BATCH_OUTPUT,
        client_call='client.embed(texts=["hello", "world"])',
    ),
}
SAMPLES = {**SAMPLES, "vision-language-embedding": Samples(
    # what `client.embed(texts=[...], image_bytes=[...], task_type=Task.RETRIEVAL_QUERY)` sends a v4 package
    request={"data": [{"text": "A photo of a cat"}, {"image": SAMPLE_PNG, "id": "img-1"}],
             "parameters": {"task": "retrieval.query", "late_chunking": False, "return_multivector": False}},
    response={"data": [{"id": "3f2a9c4e0b1d4e7f8a6b5c4d3e2f1a0b", "embedding": [0.0123, -0.0456, 0.0789],
                        "usage": {"total_tokens": 7}},
                       {"id": "img-1", "embedding": [0.0321, 0.0654, -0.0987], "usage": {"total_tokens": 4}}],
              "parameters": {"task": "retrieval.query", "late_chunking": False, "return_multivector": False}},
    public_request={"input": [{"text": "A photo of a cat"}, {"image": SAMPLE_PNG}], "task": "retrieval.query",
                    "dimensions": 128},
    csv=SAMPLES["multimodal"].csv,
    batch_output=('{"data":[{"id":"1","embedding":[0.0123,-0.0456,0.0789],"usage":{"total_tokens":9}},'
                  '{"id":"2","embedding":[0.0321,0.0654,-0.0987],"usage":{"total_tokens":4}}],"parameters":{}}'),
    client_call=('client.embed(texts=["A photo of a cat"], task_type=Task.RETRIEVAL_QUERY,\n'
                 '                      image_bytes=[base64.b64encode(open("cat.png", "rb").read()).decode()],\n'
                 '                      return_multivector=False)  # True: one 128-d vector per token'),
)}
# A listwise reranker (jina-reranker-v3) takes the same rerank bodies and answers them the same way.
SAMPLES = {**SAMPLES, "listwise-reranker": SAMPLES["reranker"]}
_M0_DOCUMENTS = [{"text": "Berlin is the capital of Germany."}, {"image": SAMPLE_PNG}]
SAMPLES = {**SAMPLES, "vision-language-reranker": Samples(
    # the body jina-sagemaker sends an m0-style reranker: `data` a one-element list, text and image documents; each
    # (query, document) pair is one row of the model, an image billed its visual tokens (one per 28x28 pixels after
    # the processor's resize: 4 for this 8x8 PNG, enlarged to 56x56)
    request={"data": [{"documents": _M0_DOCUMENTS, "query": "What is the capital of Germany?", "top_n": 2}]},
    response={"data": [{"query_usage": {"total_tokens": 16}, "docs_usage": {"total_tokens": 38},
                        "results": [{"index": 0, "relevance_score": 0.91, "document": _M0_DOCUMENTS[0],
                                     "usage": {"total_tokens": 23}},
                                    {"index": 1, "relevance_score": 0.12, "document": _M0_DOCUMENTS[1],
                                     "usage": {"total_tokens": 15}}]}],
              "parameters": {}},
    public_request={"query": "capital of Germany?", "documents": ["Berlin ...", {"image": SAMPLE_PNG}], "top_n": 1},
    csv=('"q1","What is the capital of Germany?","[""Berlin is the capital of Germany."", '
         f'{{""image"": ""{SAMPLE_PNG}""}}]","2"\n'
         '"q2","How do embeddings work?","[""Embeddings map text to vectors."", ""Paris is in France.""]","1"\n'),
    batch_output=('{"data":[{"id":"q1","query_usage":{"total_tokens":16},"docs_usage":{"total_tokens":38},'
                  '"results":[{"index":0,"relevance_score":0.91,"document":{"text":"Berlin is the capital of '
                  'Germany."},"usage":{"total_tokens":23}}]}],"parameters":{}}'),
    # the client sends an m0 reranker's body wrapped in a one-element list (its model package's name says m0)
    client_call=('client.rerank(query="What is the capital of Germany?",\n'
                 '                      documents=["Berlin is the capital of Germany.",\n'
                 '                                 {"image": base64.b64encode(open("cat.png", "rb").read()).decode()}])'),
)}


def of(kind: str) -> Samples:
    """The samples of the kind called `kind`.

    Raises:
        KeyError: a registered kind without samples (it cannot be listed), or no such kind.
    """
    kinds.named(kind)
    if kind not in SAMPLES:
        raise KeyError(f"kind {kind} has no samples to list it with; add them to packaging/_samples.py")
    return SAMPLES[kind]


def sample_operation(kind: str) -> str:
    """What the kind's sample request asks of it (an envelope of embeddings: the kind's own form)."""
    model_kind = kinds.named(kind)
    return model_kind.asked(dialects.decode_invocation(of(kind).request).request.operation)


def public_path(kind: str) -> str:
    """The public route the kind's `public_request` goes to: that of the operation its sample asks."""
    return dialects.named(sample_operation(kind)).routes[0].path
