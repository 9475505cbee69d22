"""Upload a product's artifact and validation sample to S3 and create its SageMaker model package.

    python packaging/publish.py --catalog packaging/catalog.example.yaml [--product NAME] \\
        --artifact dist/NAME/model.tar.gz --image 123456789012.dkr.ecr.us-east-1.amazonaws.com/searchbox:1.0 \\
        --bucket my-bucket --role-arn arn:aws:iam::123456789012:role/SageMakerValidation [--no-dry-run]

A dry run (the default) prints every call it would make, with its parameters, and touches nothing.
`--no-dry-run` makes them with boto3 and your usual AWS credentials and region (`AWS_ENDPOINT_URL` or
`--endpoint-url` points it at another endpoint, e.g. a local moto server).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _aws  # noqa: E402
import _catalog  # noqa: E402
import _files  # noqa: E402
import model_package  # noqa: E402


@dataclass
class Call:
    """One AWS call: which client, which method, which parameters."""

    service: str
    method: str
    params: dict[str, Any]
    # What the parameters stand for when printed (file bodies are shown by name, not content).
    shown: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.service}.{self.method}({json.dumps({**self.params, **self.shown}, indent=2)})"


def plan(product: _catalog.Product, *, artifact: Path, image: str, layout: model_package.S3Layout, role_arn: str,
         region: str, image_digest: str | None = None, create_bucket: bool = False) -> list[Call]:
    """Every call of a publication, in order; the model package request is validated with botocore first."""
    request = model_package.model_package_request(product, image=image, layout=layout, role_arn=role_arn,
                                                  image_digest=image_digest)
    calls = []
    if create_bucket:
        bucket = {"Bucket": layout.bucket}
        if region != "us-east-1":
            bucket["CreateBucketConfiguration"] = {"LocationConstraint": region}
        calls.append(Call("s3", "create_bucket", bucket))
    calls.append(Call("s3", "upload_file", {"Filename": str(artifact), "Bucket": layout.bucket,
                                            "Key": layout.key(model_package.ARTIFACT_FILE)}))
    sample = model_package.sample_input(product.kind).encode()
    calls.append(Call("s3", "put_object", {"Bucket": layout.bucket, "Key": layout.key(model_package.SAMPLE_FILE),
                                           "Body": sample, "ContentType": "text/csv"},
                      shown={"Body": f"<{len(sample)} bytes of {product.kind} sample CSV>"}))
    calls.append(Call("sagemaker", "create_model_package", request))
    return calls


def execute(calls: list[Call], *, region: str, endpoint_url: str | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Make the calls with boto3; returns the create_model_package response."""
    import boto3

    session = boto3.session.Session(region_name=region)
    clients = {}
    response: dict[str, Any] = {}
    for call in calls:
        if call.service not in clients:
            clients[call.service] = session.client(call.service, endpoint_url=endpoint_url)
        log(f"-> {call.service}.{call.method} {call.params.get('Key') or call.params.get('ModelPackageName') or ''}")
        if call.method == "upload_file":
            _upload(clients["s3"], call.params)
            continue
        response = getattr(clients[call.service], call.method)(**call.params)
    return response


def _upload(s3, params: dict[str, Any]) -> None:
    from tqdm import tqdm

    size = Path(params["Filename"]).stat().st_size
    with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc="upload", disable=None,
              file=sys.stderr, leave=False) as bar:
        s3.upload_file(params["Filename"], params["Bucket"], params["Key"], Callback=bar.update)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--product", help="the catalog product (default: the only one)")
    parser.add_argument("--artifact", required=True, type=Path, help="model.tar.gz from build_artifact.py")
    model_package.add_location_arguments(parser)
    parser.add_argument("--region", help="AWS region (default: the catalog product's first region)")
    parser.add_argument("--endpoint-url", help="send every call to this endpoint instead of AWS")
    parser.add_argument("--create-bucket", action="store_true", help="create the bucket first")
    parser.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=True,
                        help="print the calls without making them (default); --no-dry-run makes them")
    args = parser.parse_args(argv)
    try:
        product = _catalog.find_product(_catalog.load_catalog(args.catalog), args.product)
        _files.require_file(args.artifact, "--artifact", "build it with build_artifact.py")
        region = args.region or product.regions[0]
        layout = model_package.S3Layout.from_arguments(args.bucket, args.prefix, product.name)
        calls = plan(product, artifact=args.artifact, image=args.image, layout=layout, role_arn=args.role_arn,
                     region=region, image_digest=args.image_digest, create_bucket=args.create_bucket)
    except (_catalog.CatalogError, _aws.RequestInvalid, _aws.BucketInvalid, _files.InputError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"# dry run: {len(calls)} calls in {region}; nothing was sent (--no-dry-run sends them)")
        for call in calls:
            print(call.describe())
        return 0
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response = execute(calls, region=region, endpoint_url=args.endpoint_url)
    except (BotoCoreError, ClientError) as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    print(f"created {response.get('ModelPackageArn')}")
    print("SageMaker now runs the validation profile (a batch transform of the sample); follow it with "
          f"aws sagemaker describe-model-package --model-package-name {product.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
