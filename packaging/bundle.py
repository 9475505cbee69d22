"""From a catalog product to a complete listing bundle in one directory, every part validated.

    python packaging/bundle.py --catalog packaging/catalog.example.yaml [--product NAME] -o dist/NAME \\
        --image 123456789012.dkr.ecr.us-east-1.amazonaws.com/searchbox:1.0 --bucket my-bucket \\
        --role-arn arn:aws:iam::123456789012:role/SageMakerValidation [--azure-image myacr.azurecr.io/searchbox:1.0]

Writes, under the output directory:
    model.tar.gz                    build_artifact.py (loaded and run once before it is written)
    create-model-package.json       model_package.py (botocore-validated), validation/input.csv
    aws/                            aws_listing.py: usage information, pricing, change set, notebook
    azure/                          azure_assets.py: model/environment/endpoint/deployment YAML, plan
Then `publish.py` uploads the artifact and creates the model package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _aws  # noqa: E402
import _catalog  # noqa: E402
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
    parser.add_argument("--bench", type=Path, default=aws_listing.DEFAULT_BENCH)
    args = parser.parse_args(argv)
    out: Path = args.out_dir
    try:
        product = _catalog.find_product(_catalog.load_catalog(args.catalog), args.product)
        layout = model_package.S3Layout(args.bucket, args.prefix if args.prefix is not None else product.name)
        # Cheap checks first: a request SageMaker would refuse should not cost an artifact build.
        model_package.model_package_request(product, image=args.image, layout=layout, role_arn=args.role_arn,
                                            image_digest=args.image_digest)
        report = build_artifact.build_artifact(product.model_dir, out / model_package.ARTIFACT_FILE,
                                               served_name=product.served_name, kind=product.kind,
                                               tasks=product.tasks, remote_code=product.remote_code)
        print(f"artifact  {report.output} ({report.size / 1e6:.1f} MB, sha256 {report.sha256[:16]}...): "
              f"{report.check}")
        model_package.write_model_package(product, out, image=args.image, layout=layout, role_arn=args.role_arn,
                                          image_digest=args.image_digest)
        print(f"package   {out / model_package.REQUEST_FILE}, {out / model_package.SAMPLE_FILE}")
        arn = f"arn:aws:sagemaker:{product.regions[0]}:ACCOUNT:model-package/{product.name}"
        aws_listing.write_listing(product, out / "aws", model_package_arn=arn, product_id="prod-REPLACE-ME",
                                  offer_id="offer-REPLACE-ME", bench=args.bench)
        print(f"listing   {out / 'aws'}/ (usage-information.md, pricing.md, start-change-set.json, "
              "sample-notebook.ipynb)")
        if product.azure is not None:
            azure_assets.write_azure(product, out / "azure", image=args.azure_image or args.image,
                                     artifact=report.output)
            print(f"azure     {out / 'azure'}/ (model, environment, endpoint, deployment YAML; marketplace-plan.md)")
    except (_catalog.CatalogError, _aws.RequestInvalid, build_artifact.BuildRefused) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    if not aws_listing.performance_markdown(args.bench)[1]:
        print(f"warning: no benchmark tables in {args.bench}; the listing needs latency/throughput figures",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
