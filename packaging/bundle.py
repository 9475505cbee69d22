"""From a catalog product to a complete listing bundle in one directory, every part validated.

    python packaging/bundle.py --catalog packaging/catalog.example.yaml [--product NAME] -o dist/NAME \\
        --image 123456789012.dkr.ecr.us-east-1.amazonaws.com/searchbox:1.0 --bucket my-bucket \\
        --role-arn arn:aws:iam::123456789012:role/SageMakerValidation [--azure-image myacr.azurecr.io/searchbox:1.0] \\
        [--product-id prod-... --offer-id offer-... --model-package-arn arn:aws:sagemaker:...]

Writes, under the output directory:
    model.tar.gz                    build_artifact.py (loaded and run once before it is written; searchbox.json
                                    `metering` from the catalog's pricing)
    create-model-package.json       model_package.py (botocore-validated), validation/input.csv
    aws/                            aws_listing.py: usage information, pricing, change set, notebook
                                    (and TODO.md while --product-id, --offer-id or --model-package-arn is missing)
    azure/                          azure_assets.py: model/environment/endpoint/deployment YAML, the
                                    Marketplace plan (marketplace-plan.md, marketplace-plan.json)
Then `publish.py` uploads the artifact and creates the model package; run this again with the ARN it prints.
Everything is built beside the output directory and moved into it at the end: a refusal leaves it as it was.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _aws  # noqa: E402
import _catalog  # noqa: E402
import _files  # noqa: E402
import aws_listing  # noqa: E402
import azure_assets  # noqa: E402
import build_artifact  # noqa: E402
import model_package  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--product", help="the catalog product (default: the only one)")
    parser.add_argument("-o", "--out-dir", required=True, type=Path)
    model_package.add_location_arguments(parser)
    parser.add_argument("--azure-image", help="the image in your Azure registry (default: --image)")
    parser.add_argument("--compresslevel", type=int, default=6, choices=range(0, 10), metavar="0-9",
                        help="gzip level of model.tar.gz, as build_artifact.py's (0 stores: quick drafts)")
    aws_listing.add_listing_arguments(parser)
    args = parser.parse_args(argv)
    try:
        product = _catalog.find_product(_catalog.load_catalog(args.catalog), args.product)
        bench = aws_listing.bench_path(args.bench)
        layout = model_package.S3Layout.from_arguments(args.bucket, args.prefix, product.name)
        arn = aws_listing.model_package_arn(product, args.model_package_arn)
        # Cheap checks first: a request AWS would refuse should not cost an artifact build.
        model_package.model_package_request(product, image=args.image, layout=layout, role_arn=args.role_arn,
                                            image_digest=args.image_digest)
        aws_listing.change_set(product, model_package_arn=arn, product_id=args.product_id, offer_id=args.offer_id)
        done = write_bundle(product, args, layout=layout, model_package_arn=arn, bench=bench)
    except (_catalog.CatalogError, _aws.RequestInvalid, _aws.BucketInvalid, _files.InputError,
            build_artifact.BuildRefused) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    print("\n".join(done))
    aws_listing.warn_unfinished(bench, aws_listing.placeholders(product_id=args.product_id, offer_id=args.offer_id,
                                                                model_package_arn=arn))
    return 0


def write_bundle(product: _catalog.Product, args: argparse.Namespace, *, layout: model_package.S3Layout,
                 model_package_arn: str, bench: Path) -> list[str]:
    """Build every part into a staging directory, moved into --out-dir only once all of them are written.

    aws/ and azure/ are replaced whole, so that no file of an earlier run (a TODO.md, an old model) survives.
    Returns the lines to print, naming the final paths.
    """
    out: Path = args.out_dir
    with _files.staged_output(out, whole=("aws", "azure")) as staged:
        report = build_artifact.build_artifact(product.model_dir, staged / model_package.ARTIFACT_FILE,
                                               served_name=product.served_name, kind=product.kind,
                                               tasks=product.tasks, remote_code=product.remote_code,
                                               metering=product.pricing.serving_config(),
                                               backend=product.backend, quantize=product.quantize,
                                               classifiers=product.classifiers,
                                               classifier_min_accuracy=product.classifier_min_accuracy,
                                               compresslevel=args.compresslevel)
        done = [(f"artifact  {out / model_package.ARTIFACT_FILE} ({report.size / 1e6:.1f} MB, "
                 f"sha256 {report.sha256[:16]}...): {report.check}; billing {report.billing}")]
        if report.quality is not None:
            done.append(f"onnx      {report.quality.summary()}")
        model_package.write_model_package(product, staged, image=args.image, layout=layout, role_arn=args.role_arn,
                                          image_digest=args.image_digest)
        done.append(f"package   {out / model_package.REQUEST_FILE}, {out / model_package.SAMPLE_FILE}")
        # the listing's worked example takes what the sample consumed in this very build: one model load, not two
        written = aws_listing.write_listing(product, staged / "aws", model_package_arn=model_package_arn,
                                            product_id=args.product_id, offer_id=args.offer_id, bench=bench,
                                            sample=report.sample, quality=report.quality,
                                            classifiers=report.classifiers)
        done.append(f"listing   {out / 'aws'}/ ({', '.join(path.name for path in written)})")
        if product.azure is not None:
            azure_assets.write_azure(product, staged / "azure", image=args.azure_image or args.image,
                                     artifact=report.output)
            done.append(f"azure     {out / 'azure'}/ (model, environment, endpoint, deployment YAML; "
                        f"{azure_assets.PLAN_FILE}, {azure_assets.PLAN_JSON})")
    return done


if __name__ == "__main__":
    sys.exit(main())
