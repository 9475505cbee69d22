"""Write the SageMaker `CreateModelPackage` request of a catalog product, checked offline against botocore.

    python packaging/model_package.py --catalog packaging/catalog.example.yaml [--product NAME] \\
        --image 123456789012.dkr.ecr.us-east-1.amazonaws.com/searchbox:1.0 --bucket my-bucket \\
        --role-arn arn:aws:iam::123456789012:role/SageMakerValidation -o dist/NAME

Writes `create-model-package.json` (the request: image, ModelDataUrl, content types, instance types,
a batch-transform validation profile, CertifyForMarketplace) and `validation/input.csv` (the sample the
validation profile transforms; `publish.py` uploads both). The S3 layout under `s3://BUCKET/PREFIX/`:
`model.tar.gz`, `validation/input.csv`, `validation/output/`. `--bucket` takes a bucket name or an
`s3://BUCKET[/PREFIX]` URL; PREFIX defaults to the product name.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _aws  # noqa: E402
import _catalog  # noqa: E402
import _samples  # noqa: E402

REQUEST_FILE = "create-model-package.json"
SAMPLE_FILE = "validation/input.csv"
ARTIFACT_FILE = "model.tar.gz"
# What the image reads (contract §2, §4) and writes: JSON for real-time and CSV batches, JSON Lines line by line.
CONTENT_TYPES = ["application/json", "text/csv", "application/jsonlines"]
RESPONSE_TYPES = ["application/json", "application/jsonlines"]
# SageMaker real-time bodies are capped at 6 MiB; one batch request stays within that too.
MAX_PAYLOAD_MB = 6

@dataclass(frozen=True)
class S3Layout:
    """Where a product's files live in S3: `s3://bucket/prefix/...` (no prefix: at the bucket's root)."""

    bucket: str
    prefix: str

    def __post_init__(self) -> None:
        problem = _aws.bucket_name_problem(self.bucket)
        if problem:
            raise _aws.BucketInvalid(f"--bucket: {self.bucket!r} is not a valid S3 bucket name ({problem}); "
                                     f"{_aws.BUCKET_HINT}")

    @classmethod
    def from_arguments(cls, bucket: str, prefix: str | None, default_prefix: str) -> S3Layout:
        """The layout --bucket and --prefix name (see `_aws.s3_location`); raises _aws.BucketInvalid."""
        return cls(*_aws.s3_location(bucket, prefix, default_prefix))

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"


def sample_input(kind: str) -> str:
    """The batch-transform sample of a model kind (packaging/_samples.py): CSV rows in both quotings clients send."""
    return _samples.of(kind).csv


def model_package_request(product: _catalog.Product, *, image: str, layout: S3Layout, role_arn: str,
                          image_digest: str | None = None) -> dict:
    """The CreateModelPackage request of `product`, validated with botocore's SageMaker model.

    Raises:
        _aws.RequestInvalid: the request SageMaker would refuse, with the path of each problem.
    """
    container = {"Image": image, "ModelDataUrl": layout.url(ARTIFACT_FILE)}
    if image_digest:
        container["ImageDigest"] = image_digest
    request = {
        "ModelPackageName": product.name,
        "ModelPackageDescription": product.short_description,
        "InferenceSpecification": {
            "Containers": [container],
            "SupportedContentTypes": CONTENT_TYPES,
            "SupportedResponseMIMETypes": RESPONSE_TYPES,
            "SupportedRealtimeInferenceInstanceTypes": list(product.instance_types["realtime"]),
            "SupportedTransformInstanceTypes": list(product.instance_types["batch"]),
        },
        "ValidationSpecification": {
            "ValidationRole": role_arn,
            "ValidationProfiles": [{
                "ProfileName": "batch-csv",
                "TransformJobDefinition": {
                    "MaxConcurrentTransforms": 1,
                    "MaxPayloadInMB": MAX_PAYLOAD_MB,
                    "BatchStrategy": "MultiRecord",
                    "TransformInput": {
                        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": layout.url(SAMPLE_FILE)}},
                        "ContentType": "text/csv",
                        "CompressionType": "None",
                        "SplitType": "Line",
                    },
                    "TransformOutput": {
                        "S3OutputPath": layout.url("validation/output/"),
                        "Accept": "application/json",
                        "AssembleWith": "Line",
                    },
                    "TransformResources": {"InstanceType": product.recommended["batch"], "InstanceCount": 1},
                },
            }],
        },
        "CertifyForMarketplace": True,
    }
    _aws.validate_request("sagemaker", "CreateModelPackage", request)
    return request


def write_model_package(product: _catalog.Product, out_dir: Path, **kwargs) -> dict:
    """Write the request and the validation sample; the request is checked before anything is written."""
    request = model_package_request(product, **kwargs)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REQUEST_FILE).write_text(json.dumps(request, indent=2) + "\n", encoding="utf-8")
    sample = out_dir / SAMPLE_FILE
    sample.parent.mkdir(parents=True, exist_ok=True)
    sample.write_text(sample_input(product.kind), encoding="utf-8")
    return request


def add_location_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", required=True, help="the searchbox image URI in the seller's ECR")
    parser.add_argument("--image-digest", help="sha256:... of the image (pins the exact build)")
    parser.add_argument("--bucket", required=True,
                        help="S3 bucket for the artifact and the validation sample: a bucket name (my-bucket) or "
                             "an S3 URL, s3://my-bucket or s3://my-bucket/some/prefix")
    parser.add_argument("--prefix", help="key prefix in the bucket (default: the prefix of an s3:// --bucket URL, "
                                         "else the product name; '' for the bucket's root); refused when --bucket's "
                                         "URL holds a prefix too")
    parser.add_argument("--role-arn", required=True, help="IAM role SageMaker assumes to run the validation job")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--product", help="the catalog product (default: the only one)")
    add_location_arguments(parser)
    parser.add_argument("-o", "--out-dir", required=True)
    args = parser.parse_args(argv)
    try:
        product = _catalog.find_product(_catalog.load_catalog(args.catalog), args.product)
        layout = S3Layout.from_arguments(args.bucket, args.prefix, product.name)
        write_model_package(product, Path(args.out_dir), image=args.image, layout=layout, role_arn=args.role_arn,
                            image_digest=args.image_digest)
    except (_catalog.CatalogError, _aws.RequestInvalid, _aws.BucketInvalid) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.out_dir) / REQUEST_FILE} (valid against botocore's SageMaker CreateModelPackage)")
    print(f"wrote {Path(args.out_dir) / SAMPLE_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
