"""Write the AWS Marketplace listing of a catalog product: usage information, pricing, Catalog API change set, notebook.

    python packaging/aws_listing.py --catalog packaging/catalog.example.yaml [--product NAME] -o dist/NAME/aws \\
        [--model-package-arn arn:aws:sagemaker:...] [--product-id ID] [--offer-id ID] [--bench bench/results.md]

Files: `usage-information.md` (real-time and batch formats with samples, a boto3 and a jina-sagemaker
example, performance figures from the benchmark output when present), `pricing.md`,
`start-change-set.json` (a StartChangeSet request: `AddDeliveryOptions` on the `MachineLearningProduct@1.0`
entity and `UpdatePricingTerms` pricing every supported instance type, checked against botocore's
marketplace-catalog model), and `sample-notebook.ipynb` (creates an endpoint, runs a batch transform on
its own sample data, cleans up).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _aws  # noqa: E402
import _catalog  # noqa: E402
import model_package  # noqa: E402

DEFAULT_BENCH = Path(__file__).resolve().parent.parent / "bench" / "results.md"
ENTITY_TYPE = "MachineLearningProduct@1.0"
# Pricing dimensions the Catalog API generates for ML products: one per instance type and use
# (".m.i.b" real-time inference, ".a.t" batch transform), as in the seller guide's examples.
REALTIME_SUFFIX = ".m.i.b"
BATCH_SUFFIX = ".a.t"


def dimension_keys(product: _catalog.Product) -> dict[str, float]:
    """Every priced dimension of `product`: {dimension key: USD per hour}."""
    keys = {f"{t}{REALTIME_SUFFIX}": p for t, p in product.prices_per_hour["realtime"].items()}
    keys.update({f"{t}{BATCH_SUFFIX}": p for t, p in product.prices_per_hour["batch"].items()})
    return keys


def change_set(product: _catalog.Product, *, model_package_arn: str, product_id: str, offer_id: str,
               notebook_url: str = "", sample_urls: tuple[str, str] = ("", "")) -> dict:
    """The StartChangeSet request: a new version (delivery option) of the product, and its prices."""
    details = {
        "SagemakerModelPackageDeliveryOptionDetails": {
            "ModelPackageArn": model_package_arn,
            "UsageInstructions": "See the usage information: real-time JSON (SageMaker envelope or "
                                 "OpenAI/Jina API) and batch CSV / JSON Lines.",
            "RecommendedInstanceTypes": {
                "RealtimeInference": product.recommended["realtime"],
                "BatchTransform": product.recommended["batch"],
            },
        }
    }
    option = details["SagemakerModelPackageDeliveryOptionDetails"]
    if notebook_url:
        option["SampleNotebookUrl"] = notebook_url
    if any(sample_urls):
        option["InputProperties"] = {"SampleInput": {"RealtimeInferenceUrl": sample_urls[0],
                                                     "BatchTranformUrl": sample_urls[1]}}
    keys = dimension_keys(product)
    terms = [{
        "Type": "UsageBasedPricingTerm",
        "CurrencyCode": "USD",
        "RateCards": [{"RateCard": [{"DimensionKey": key, "Price": price} for key, price in keys.items()]}],
    }]
    if product.free_trial_days:
        terms.append({"Type": "FreeTrialPricingTerm", "Duration": f"P{product.free_trial_days}D",
                      "Grants": [{"DimensionKey": key} for key in keys]})
    request = {
        "Catalog": "AWSMarketplace",
        "ChangeSetName": f"{product.name} version",
        "ChangeSet": [
            {
                "ChangeType": "AddDeliveryOptions",
                "Entity": {"Type": ENTITY_TYPE, "Identifier": product_id},
                "DetailsDocument": {
                    "Version": {"VersionTitle": product.title,
                                "ReleaseNotes": f"{product.served_name} served by searchbox"},
                    "DeliveryOptions": [{"Details": details}],
                },
            },
            {
                "ChangeType": "UpdatePricingTerms",
                "Entity": {"Type": "Offer@1.0", "Identifier": offer_id},
                "DetailsDocument": {"PricingModel": "Usage", "Terms": terms},
            },
        ],
    }
    _aws.validate_request("marketplace-catalog", "StartChangeSet", request)
    return request


def pricing_markdown(product: _catalog.Product) -> str:
    rows = ["| instance type | real-time (USD/hour) | batch transform (USD/hour) |", "|---|---|---|"]
    types = list(dict.fromkeys(product.instance_types["realtime"] + product.instance_types["batch"]))
    for instance_type in types:
        realtime = product.prices_per_hour["realtime"].get(instance_type)
        batch = product.prices_per_hour["batch"].get(instance_type)
        rows.append(f"| {instance_type} | {_money(realtime)} | {_money(batch)} |")
    trial = (f"Free trial: {product.free_trial_days} days (software price waived; SageMaker infrastructure is billed)."
             if product.free_trial_days else "No free trial.")
    return "\n".join([
        f"# Pricing: {product.title}", "",
        "Software price per instance-hour, prorated per minute, billed by AWS on top of the SageMaker "
        "instance price. Recommended: real-time "
        f"`{product.recommended['realtime']}`, batch `{product.recommended['batch']}`.", "",
        *rows, "", trial, "", f"Regions: {', '.join(product.regions)}.", "",
    ])


def _money(value: float | None) -> str:
    return "not offered" if value is None else f"${value:.3f}"


def performance_markdown(bench: Path | None) -> tuple[str, bool]:
    """The benchmark's tables (with their headings), and whether there were any."""
    if bench is None or not bench.is_file():
        return ("Latency and throughput figures come from `bench/results.md`, which was not found when this "
                "listing was written: run the benchmark on the recommended instance type and rebuild the listing.",
                False)
    kept, heading = [], None
    for line in bench.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            heading = "###" + line.lstrip("#")
        elif line.lstrip().startswith("|"):
            if heading:
                kept += ["", heading, ""]
                heading = None
            kept.append(line.strip())
    if not kept:
        return f"`{bench.name}` holds no result tables yet.", False
    return f"Measured by the project's benchmark (`{bench.name}`):\n" + "\n".join(kept), True


def usage_markdown(product: _catalog.Product, bench: Path | None = DEFAULT_BENCH) -> str:
    performance, _ = performance_markdown(bench)
    if product.kind == "reranker":
        realtime_request = {"data": {"query": "What is the capital of Germany?",
                                     "documents": [{"text": "Berlin is the capital of Germany."},
                                                   {"text": "Bananas are yellow."}], "top_n": 2}}
        realtime_response = {"data": [{"query_usage": {"total_tokens": 9}, "docs_usage": {"total_tokens": 14},
                                       "results": [{"index": 0, "relevance_score": 0.97,
                                                    "document": {"text": "Berlin is the capital of Germany."},
                                                    "usage": {"total_tokens": 9}},
                                                   {"index": 1, "relevance_score": 0.01,
                                                    "document": {"text": "Bananas are yellow."},
                                                    "usage": {"total_tokens": 5}}]}], "parameters": {}}
        public = ('curl https://HOST/v1/rerank -H "Content-Type: application/json" -d \'{"model": "%s", '
                  '"query": "capital of Germany?", "documents": ["Berlin ...", "Bananas ..."], "top_n": 1}\''
                  % product.served_name)
        batch_columns = "`id,query,documents,top_n` (documents: a JSON array of strings or `{\"text\"}` objects)"
        batch_output = ('{"data":[{"id":"q1","query_usage":{"total_tokens":9},"docs_usage":{"total_tokens":21},'
                        '"results":[{"index":0,"relevance_score":0.97,"document":{"text":"Berlin is the capital of '
                        'Germany."},"usage":{"total_tokens":9}}]}],"parameters":{}}')
        jina_call = ('client.rerank(query="What is the capital of Germany?",\n'
                     '                      documents=["Berlin is the capital of Germany.", "Bananas are yellow."])')
    else:
        realtime_request = {"data": [{"text": "hello"}, {"text": "world", "id": "w1"}],
                            "parameters": {"task": "retrieval.query", "dimensions": 128}}
        realtime_response = {"data": [{"id": "3f2a9c4e0b1d4e7f8a6b5c4d3e2f1a0b", "embedding": [0.0123, -0.0456, 0.0789],
                                       "usage": {"total_tokens": 3}},
                                      {"id": "w1", "embedding": [0.0321, 0.0654, -0.0987],
                                       "usage": {"total_tokens": 3}}],
                             "parameters": {"task": "retrieval.query", "dimensions": 128}}
        public = ('curl https://HOST/v1/embeddings -H "Content-Type: application/json" -d \'{"model": "%s", '
                  '"input": ["hello", "world"], "embedding_type": "float", "dimensions": 128}\''
                  % product.served_name)
        batch_columns = "`id,text`"
        batch_output = ('{"data":[{"id":"1","embedding":[0.0123,-0.0456,0.0789],"usage":{"total_tokens":9}},'
                        '{"id":"2","embedding":[0.0321,0.0654,-0.0987],"usage":{"total_tokens":19}}],"parameters":{}}')
        jina_call = 'client.embed(texts=["hello", "world"])'
    sample_csv = model_package.sample_input(product.kind)
    return textwrap.dedent("""\
        # {title}: usage information

        Model `{served}` ({kind}) in the searchbox inference image. The container runs network-isolated;
        every response is JSON, every error is JSON `{{"detail", "code", "request_id"}}` naming what to fix.
        Supported content types: `application/json`, `text/csv`, `application/jsonlines`.

        ## Real-time inference

        `invoke_endpoint` with `ContentType: application/json`, body in the SageMaker envelope
        (what the `jina-sagemaker` client sends; embedding vectors below are cut to 3 values):

        ```json
        {request}
        ```

        Response:

        ```json
        {response}
        ```

        The OpenAI / Jina public API body is accepted at the same endpoint too:

        ```sh
        {public}
        ```

        ## Batch transform

        Input: `text/csv` without header, one record per line, columns {columns}; both plain
        (`\\,` escapes) and fully double-quoted RFC 4180 rows are read. Use `SplitType=Line`,
        `BatchStrategy=MultiRecord`, `AssembleWith=Line`, at most 6 MB per request. Sample input:

        ```csv
        {sample_csv}```

        Output: one compact JSON object per request, newline-terminated, each record's id echoed:

        ```json
        {batch_output}
        ```

        `application/jsonlines` input (any real-time body per line) gives one JSON line out per line in.

        ## boto3

        ```python
        import json, boto3

        runtime = boto3.client("sagemaker-runtime", region_name="{region}")
        response = runtime.invoke_endpoint(
            EndpointName="{name}",
            ContentType="application/json",
            Body=json.dumps({compact_request}),
        )
        print(json.loads(response["Body"].read())["data"])
        ```

        ## jina-sagemaker

        ```python
        # pip install jina-sagemaker
        from jina_sagemaker import Client

        client = Client(region_name="{region}")
        client.create_endpoint(arn=MODEL_PACKAGE_ARN, role=ROLE_ARN, endpoint_name="{name}",
                               instance_type="{realtime_type}")
        client.connect_to_endpoint(endpoint_name="{name}")
        result = {jina_call}
        client.create_transform_job(arn=MODEL_PACKAGE_ARN, role=ROLE_ARN, n_instances=1,
                                    instance_type="{batch_type}", input_path="input.csv", output_path="output/")
        client.delete_endpoint()
        ```

        ## Performance

        Recommended instance types: real-time `{realtime_type}`, batch transform `{batch_type}`.

        {performance}
        """).format(
        title=product.title, served=product.served_name, kind=product.kind,
        request=json.dumps(realtime_request, indent=2), response=json.dumps(realtime_response, indent=2),
        public=public, columns=batch_columns, sample_csv=sample_csv, batch_output=batch_output,
        region=product.regions[0], name=product.name, compact_request=json.dumps(realtime_request),
        jina_call=jina_call, realtime_type=product.recommended["realtime"], batch_type=product.recommended["batch"],
        performance=performance,
    )


def notebook(product: _catalog.Product, model_package_arn: str) -> dict:
    """A notebook (nbformat 4) that subscribes nothing and needs no buyer data: endpoint, one call, batch, cleanup."""
    sample_csv = model_package.sample_input(product.kind)
    if product.kind == "reranker":
        body = {"data": {"query": "What is the capital of Germany?",
                         "documents": ["Berlin is the capital of Germany.", "Bananas are yellow."]}}
    else:
        body = {"data": [{"text": "hello"}, {"text": "world"}]}
    cells = [
        ("markdown", f"# {product.title}\n\nDeploy the model package to a real-time endpoint, call it, run a batch "
                     "transform on the sample below, and delete what was created. Subscribe to the listing first; "
                     "run this with an IAM role allowed to use SageMaker and the S3 bucket."),
        ("code", f"import json\nimport time\n\nimport boto3\n\nREGION = {product.regions[0]!r}\n"
                 f"MODEL_PACKAGE_ARN = {model_package_arn!r}  # from the listing's usage instructions\n"
                 "ROLE_ARN = 'arn:aws:iam::123456789012:role/YourSageMakerRole'  # your SageMaker execution role\n"
                 "BUCKET = 'your-bucket'  # for the batch transform input and output\n"
                 f"NAME = {product.name[:40]!r} + time.strftime('-%Y%m%d%H%M%S')\n\n"
                 "sm = boto3.client('sagemaker', region_name=REGION)\n"
                 "runtime = boto3.client('sagemaker-runtime', region_name=REGION)\n"
                 "s3 = boto3.client('s3', region_name=REGION)"),
        ("markdown", "## Create the model and a real-time endpoint"),
        ("code", "sm.create_model(ModelName=NAME, ExecutionRoleArn=ROLE_ARN, EnableNetworkIsolation=True,\n"
                 "                PrimaryContainer={'ModelPackageName': MODEL_PACKAGE_ARN})\n"
                 "sm.create_endpoint_config(EndpointConfigName=NAME, ProductionVariants=[{\n"
                 "    'VariantName': 'AllTraffic', 'ModelName': NAME, 'InitialInstanceCount': 1,\n"
                 f"    'InstanceType': {product.recommended['realtime']!r}}}])\n"
                 "sm.create_endpoint(EndpointName=NAME, EndpointConfigName=NAME)\n"
                 "sm.get_waiter('endpoint_in_service').wait(EndpointName=NAME)"),
        ("code", f"body = {body!r}\n"
                 "response = runtime.invoke_endpoint(EndpointName=NAME, ContentType='application/json',\n"
                 "                                   Body=json.dumps(body))\n"
                 "print(json.dumps(json.loads(response['Body'].read()), indent=2)[:2000])"),
        ("markdown", "## Batch transform on a sample file"),
        ("code", f"sample = {sample_csv!r}\n"
                 "s3.put_object(Bucket=BUCKET, Key=f'{NAME}/input/input.csv', Body=sample.encode())\n"
                 "sm.create_transform_job(\n"
                 "    TransformJobName=NAME, ModelName=NAME, MaxPayloadInMB=6, BatchStrategy='MultiRecord',\n"
                 "    TransformInput={'DataSource': {'S3DataSource': {'S3DataType': 'S3Prefix',\n"
                 "                                                    'S3Uri': f's3://{BUCKET}/{NAME}/input/'}},\n"
                 "                    'ContentType': 'text/csv', 'SplitType': 'Line'},\n"
                 "    TransformOutput={'S3OutputPath': f's3://{BUCKET}/{NAME}/output/', 'AssembleWith': 'Line',\n"
                 "                     'Accept': 'application/json'},\n"
                 f"    TransformResources={{'InstanceType': {product.recommended['batch']!r}, 'InstanceCount': 1}})\n"
                 "sm.get_waiter('transform_job_completed_or_stopped').wait(TransformJobName=NAME)\n"
                 "output = s3.get_object(Bucket=BUCKET, Key=f'{NAME}/output/input.csv.out')['Body'].read()\n"
                 "for line in output.decode().splitlines():\n"
                 "    print(line[:300])"),
        ("markdown", "## Clean up"),
        ("code", "sm.delete_endpoint(EndpointName=NAME)\nsm.delete_endpoint_config(EndpointConfigName=NAME)\n"
                 "sm.delete_model(ModelName=NAME)"),
    ]
    return {
        "cells": [
            {"cell_type": kind, "metadata": {}, "source": source.splitlines(keepends=True),
             **({"execution_count": None, "outputs": []} if kind == "code" else {})}
            for kind, source in cells
        ],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def write_listing(product: _catalog.Product, out_dir: Path, *, model_package_arn: str, product_id: str,
                  offer_id: str, bench: Path | None = DEFAULT_BENCH) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    request = change_set(product, model_package_arn=model_package_arn, product_id=product_id, offer_id=offer_id)
    nb = notebook(product, model_package_arn)
    for i, cell in enumerate(nb["cells"]):
        cell["id"] = f"cell-{i}"
    files = {
        "usage-information.md": usage_markdown(product, bench),
        "pricing.md": pricing_markdown(product),
        "start-change-set.json": json.dumps(request, indent=2) + "\n",
        "sample-notebook.ipynb": json.dumps(nb, indent=1) + "\n",
        "description.md": product.description,
        "eula.md": product.eula_path.read_text(encoding="utf-8"),
    }
    for name, text in files.items():
        (out_dir / name).write_text(text, encoding="utf-8")
    return [out_dir / name for name in files]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--product", help="the catalog product (default: the only one)")
    parser.add_argument("-o", "--out-dir", required=True)
    parser.add_argument("--model-package-arn", default="arn:aws:sagemaker:REGION:ACCOUNT:model-package/NAME",
                        help="the model package (from publish.py); a placeholder until it exists")
    parser.add_argument("--product-id", default="prod-REPLACE-ME", help="the Marketplace product entity id")
    parser.add_argument("--offer-id", default="offer-REPLACE-ME", help="the product's public offer entity id")
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH, help="benchmark results (markdown tables)")
    args = parser.parse_args(argv)
    try:
        product = _catalog.find_product(_catalog.load_catalog(args.catalog), args.product)
        if "REGION" in args.model_package_arn:
            args.model_package_arn = (f"arn:aws:sagemaker:{product.regions[0]}:123456789012:"
                                      f"model-package/{product.name}")
        written = write_listing(product, Path(args.out_dir), model_package_arn=args.model_package_arn,
                                product_id=args.product_id, offer_id=args.offer_id, bench=args.bench)
    except (_catalog.CatalogError, _aws.RequestInvalid) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    if not performance_markdown(args.bench)[1]:
        print(f"warning: no benchmark tables in {args.bench}; the listing needs latency/throughput figures",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
