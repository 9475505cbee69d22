"""Runs one client library against searchbox, in the clients' own venv (tests/reference_env.py `clients_python`).

`python integration_clients_driver.py <client> <json args>` prints a JSON object of what the library returned.
The boto3-based clients reach the server through the SageMaker emulator (tests/sagemaker_runtime.py), named by
AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME and, for jina-sagemaker's DescribeEndpoint, AWS_ENDPOINT_URL_SAGEMAKER (boto3's own
settings); Cohere's SDK builds the AWS URL itself, so its
HTTP transport is pointed at the emulator (the SDK still builds, signs and parses every request). Each client is
configured as its documentation shows; nothing here shapes a body or reads an answer for it.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List

REGION = "us-east-1"


def openai_client(args: Dict[str, Any]) -> Dict[str, Any]:
    from openai import OpenAI

    client = OpenAI(base_url=args["server"] + "/v1", api_key="unused")
    default = client.embeddings.create(input=args["texts"], model="searchbox")  # the SDK asks for base64
    floats = client.embeddings.create(input=args["texts"], model="searchbox", encoding_format="float", dimensions=64)
    return {"default": [item.embedding for item in default.data], "usage": default.usage.total_tokens,
            "float_64": [item.embedding for item in floats.data]}


def langchain(args: Dict[str, Any]) -> Dict[str, Any]:
    from langchain_community.embeddings import SagemakerEndpointEmbeddings
    from langchain_community.embeddings.sagemaker_endpoint import EmbeddingsContentHandler

    class ContentHandler(EmbeddingsContentHandler):
        """The handler of LangChain's SageMaker embeddings documentation, unchanged."""

        content_type = "application/json"
        accepts = "application/json"

        def transform_input(self, inputs: list[str], model_kwargs: Dict) -> bytes:
            input_str = json.dumps({"inputs": inputs, **model_kwargs})
            return input_str.encode("utf-8")

        def transform_output(self, output) -> List[List[float]]:
            response_json = json.loads(output.read().decode("utf-8"))
            return response_json["vectors"]

    embeddings = SagemakerEndpointEmbeddings(endpoint_name=args["endpoint"], region_name=REGION,
                                             content_handler=ContentHandler(), model_kwargs={"answer": "vectors"})
    return {"documents": embeddings.embed_documents(args["texts"]), "query": embeddings.embed_query(args["query"])}


def llamaindex(args: Dict[str, Any]) -> Dict[str, Any]:
    from llama_index.embeddings.sagemaker_endpoint import SageMakerEmbedding

    model = SageMakerEmbedding(endpoint_name=args["endpoint"], region_name=REGION)  # its default IOHandler
    return {"documents": model.get_text_embedding_batch(args["texts"]),
            "query": model.get_query_embedding(args["query"])}


def cohere(args: Dict[str, Any]) -> Dict[str, Any]:
    import httpx
    from cohere import SagemakerClientV2

    class ToEmulator(httpx.HTTPTransport):
        """What DNS would do for the AWS host: the request the SDK built and signed goes to the emulator."""

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            emulator = httpx.URL(args["emulator"])
            request.url = request.url.copy_with(scheme=emulator.scheme, host=emulator.host, port=emulator.port)
            return super().handle_request(request)

    client = SagemakerClientV2(aws_region=REGION, aws_access_key="test", aws_secret_key="test")
    client._client_wrapper.httpx_client.httpx_client._transport = ToEmulator()
    embedded = client.embed(model=args["endpoint"], texts=args["texts"], input_type="search_document",
                            embedding_types=["float"])
    ranked = client.rerank(model=args["endpoint"], query=args["query"], documents=args["documents"], top_n=2)
    return {"float": embedded.embeddings.float_,
            "ranked": [(hit.index, hit.relevance_score) for hit in ranked.results]}


def jina_sagemaker(args: Dict[str, Any]) -> Dict[str, Any]:
    """Jina's client connected as its README shows (an endpoint name and the model package's ARN, which picks the
    request shape), then each call of `args["calls"]`: `[method, keyword arguments]`, enums by their values."""
    from jina_sagemaker import Client, InputType, Task

    client = Client(region_name=REGION)
    client.connect_to_endpoint(args["endpoint"], args["arn"])
    answers = []
    for method, kwargs in args["calls"]:
        if "input_type" in kwargs:
            kwargs["input_type"] = InputType(kwargs["input_type"])
        if "task_type" in kwargs:
            kwargs["task_type"] = Task(kwargs["task_type"])
        answers.append(getattr(client, method)(**kwargs))
    client.close()
    return {"answers": answers}


def listing(args: Dict[str, Any]) -> Dict[str, Any]:
    """A listing's Python example run as its buyer would, the ARN and role filled in; what it printed and its
    `result`."""
    import contextlib
    import io

    printed = io.StringIO()
    namespace = {"MODEL_PACKAGE_ARN": args["arn"], "ROLE_ARN": "arn:aws:iam::000000000000:role/buyer"}
    with contextlib.redirect_stdout(printed):
        exec(compile(args["code"], "listing", "exec"), namespace)  # noqa: S102 (the listing's code is the test)
    return {"printed": printed.getvalue(), "result": namespace.get("result")}


if __name__ == "__main__":
    run = {"openai": openai_client, "langchain": langchain, "llamaindex": llamaindex, "cohere": cohere,
           "jina-sagemaker": jina_sagemaker, "listing": listing}[sys.argv[1]]
    print(json.dumps(run(json.loads(sys.argv[2]))))
