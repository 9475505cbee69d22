"""Write the Azure ML files of a catalog product and load each back with azure-ai-ml to prove it valid.

    python packaging/azure_assets.py --catalog packaging/catalog.example.yaml [--product NAME] \\
        --image myregistry.azurecr.io/searchbox:1.0 -o dist/NAME/azure [--artifact dist/NAME/model.tar.gz]

Files: `model.yml` (custom_model, `path: model`), `environment.yml` (the image, `inference_config` with
liveness on /health, readiness on /ping and scoring on /score, port 8080), `endpoint.yml` (key auth),
`deployment.yml` (request timeout and concurrency raised, probe timings), and the Azure Marketplace plan
from the catalog's `azure.plan`: `marketplace-plan.md` (for the vendor and buyers: how the model is billed on
Azure) and `marketplace-plan.json` (the same fields, for whatever enters them in Partner Center). With
`--artifact` the model is unpacked into `model/`, ready for `az ml model create -f model.yml`. The files are
written and loaded back beside the output directory and moved into it only when all of them load: a refusal
leaves it as it was.

How Azure bills it: a managed online endpoint bills the deployment's VMs per hour (Azure's price), plus the plan's
software surcharge per GPU-hour or core-hour of those VMs. Per-token (serverless, pay-as-you-go) billing exists
only for models Microsoft hosts itself, not for a custom container on the buyer's compute; AWS-style
per-inference metering has no Azure counterpart here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _catalog  # noqa: E402
import _files  # noqa: E402

PORT = 8080
# Azure's default is 5 s; the container itself gives up on a request after SEARCHBOX_REQUEST_TIMEOUT_S
# (60 s), so the caller sees the container's JSON 503 rather than Azure's bare 408.
REQUEST_TIMEOUT_MS = 90_000
# Azure's default is 1 request at a time; the image batches concurrent requests on one model copy
# (64 gunicorn threads), which only pays off when Azure lets them through.
MAX_CONCURRENT_REQUESTS = 32
SCHEMA = "https://azuremlschemas.azureedge.net/latest/{}.schema.json"
PLAN_FILE = "marketplace-plan.md"
PLAN_JSON = "marketplace-plan.json"
MODEL_DIR = "model"
# Liveness: the server answers GET /health as soon as its worker runs, while the model still loads; readiness:
# GET /ping answers 200 only once the model is loaded and warmed up. Probing liveness on /ping would have Azure
# restart a container that is merely still loading a large model.
LIVENESS_PATH = "/health"
READINESS_PATH = "/ping"
SCORING_PATH = "/score"


def documents(product: _catalog.Product, image: str, version: str = "1") -> dict[str, dict]:
    offer = product.azure
    if offer is None:
        raise _catalog.CatalogError(f"azure: product {product.name!r} has no 'azure' section in the catalog")
    route = {"port": PORT}
    probe = {"initial_delay": 10, "period": 10, "timeout": 2, "failure_threshold": 30, "success_threshold": 1}
    return {
        "model.yml": {
            "$schema": SCHEMA.format("model"),
            "name": product.name, "version": version, "type": "custom_model", "path": MODEL_DIR,
            "description": product.short_description,
        },
        "environment.yml": {
            "$schema": SCHEMA.format("environment"),
            "name": f"{product.name}-env", "version": version, "image": image,
            "inference_config": {
                "liveness_route": {"path": LIVENESS_PATH, **route},
                "readiness_route": {"path": READINESS_PATH, **route},
                "scoring_route": {"path": SCORING_PATH, **route},
            },
        },
        "endpoint.yml": {
            "$schema": SCHEMA.format("managedOnlineEndpoint"),
            "name": offer.endpoint_name, "auth_mode": "key", "description": product.title,
        },
        "deployment.yml": {
            "$schema": SCHEMA.format("managedOnlineDeployment"),
            "name": "default", "endpoint_name": offer.endpoint_name,
            "model": f"azureml:{product.name}:{version}",
            "environment": f"azureml:{product.name}-env:{version}",
            "instance_type": offer.instance_type, "instance_count": offer.instance_count,
            "request_settings": {"request_timeout_ms": REQUEST_TIMEOUT_MS,
                                 "max_concurrent_requests_per_instance": MAX_CONCURRENT_REQUESTS},
            "liveness_probe": dict(probe), "readiness_probe": dict(probe),
        },
    }


def load_back(directory: Path) -> dict[str, object]:
    """Load every file with azure-ai-ml's own loaders; raises what the SDK raises for an invalid file."""
    from azure.ai.ml import load_environment, load_model, load_online_deployment, load_online_endpoint

    return {
        "model.yml": load_model(directory / "model.yml"),
        "environment.yml": load_environment(directory / "environment.yml"),
        "endpoint.yml": load_online_endpoint(directory / "endpoint.yml"),
        "deployment.yml": load_online_deployment(directory / "deployment.yml"),
    }


def plan_document(product: _catalog.Product) -> dict:
    """marketplace-plan.json: the Azure Marketplace plan of the catalog, as a vendor enters it in Partner Center."""
    offer = product.azure
    plan = offer.plan
    return {
        "plan_id": plan.id,
        "plan_name": plan.name,
        "billing": {
            "model": "per compute hour: the VM at Azure's price, plus this plan's software surcharge",
            "unit": plan.unit,
            "price_per_unit_usd": plan.price_per_unit,
            "units_per_instance": offer.units_per_instance,
            "price_per_instance_hour_usd": offer.surcharge_per_instance_hour,
            "prorated": "per minute",
        },
        "free_trial_months": plan.free_trial_months,
        "markets": list(plan.markets),
        "deployment": {"instance_type": offer.instance_type, "instance_count": offer.instance_count,
                       "gpus_per_instance": offer.gpus_per_instance, "cores_per_instance": offer.cores_per_instance,
                       "endpoint_name": offer.endpoint_name},
        "model": {"served_name": product.served_name, "kind": product.kind},
    }


def plan_markdown(product: _catalog.Product) -> str:
    offer = product.azure
    plan = offer.plan
    counted = (f"{offer.gpus_per_instance} GPU" if plan.unit == "gpu_hour"
               else f"{offer.cores_per_instance} core{'s' * (offer.cores_per_instance != 1)}")
    trial = (f"Free trial: {plan.free_trial_months} month{'s' * (plan.free_trial_months != 1)} without the software "
             "surcharge (Azure still bills the VMs)." if plan.free_trial_months else "No free trial.")
    return "\n".join([
        f"# Azure Marketplace plan: {product.title}", "",
        f"Plan `{plan.id}`: {plan.name}.", "",
        (f"Model `{product.served_name}` ({product.kind}) on Azure ML managed online endpoints. Azure bills the "
         "deployment per compute hour: the virtual machines at Azure's own price, plus this plan's software surcharge "
         f"per {plan.unit_words} of those machines, pro-rated per minute, through Azure Marketplace."), "",
        "| billing dimension | price |", "|---|---|",
        f"| software surcharge, per {plan.unit_words} | {_catalog.usd(plan.price_per_unit)} |",
        f"| {offer.instance_type} ({counted}) per instance-hour | {_catalog.usd(offer.surcharge_per_instance_hour)} |",
        "",
        f"Recommended deployment: {offer.instance_count} x `{offer.instance_type}`.", "",
        trial, "",
        f"Markets: {', '.join(plan.markets)}.", "",
        ("Not per token: Azure's serverless pay-as-you-go billing per token exists only for models Microsoft hosts "
         "itself; this model runs as a custom container on the buyer's managed compute, so it is sold per compute "
         "hour here, however it is priced on AWS. The `usage` in every answer still counts its tokens exactly, for "
         "the buyer's own accounting."), "",
        "Plan description (buyer-facing): " + product.short_description, "",
    ])


def write_azure(product: _catalog.Product, out_dir: Path, *, image: str, artifact: Path | None = None) -> list[Path]:
    """Write the files (and unpack `artifact` into model/), all or nothing: `out_dir` changes only on success.

    Raises:
        _catalog.CatalogError: the product has no 'azure' section.
        _files.InputError: `artifact` is missing or not a gzipped tar.
    """
    import yaml

    texts = {name: yaml.safe_dump(document, sort_keys=False) for name, document in documents(product, image).items()}
    texts[PLAN_FILE] = plan_markdown(product)
    texts[PLAN_JSON] = json.dumps(plan_document(product), indent=2) + "\n"
    if artifact is not None:
        _files.require_file(artifact, "--artifact", "build it with build_artifact.py")
    # model/ is replaced whole: a file of an earlier artifact must not survive beside the new one's manifest.
    with _files.staged_output(out_dir, whole=(MODEL_DIR,)) as staged:
        for name, text in texts.items():
            (staged / name).write_text(text, encoding="utf-8")
        if artifact is not None:
            _unpack(artifact, staged / MODEL_DIR)
        load_back(staged)
    return [out_dir / name for name in texts] + ([out_dir / MODEL_DIR] if artifact is not None else [])


def _unpack(artifact: Path, target: Path) -> None:
    target.mkdir()
    try:
        with tarfile.open(artifact, "r:gz") as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise _files.InputError(f"--artifact: {artifact} is not a readable model.tar.gz ({exc}); "
                                "build it with build_artifact.py") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--product", help="the catalog product (default: the only one)")
    parser.add_argument("--image", required=True, help="the searchbox image in your Azure container registry")
    parser.add_argument("--artifact", type=Path, help="model.tar.gz to unpack into model/ for model.yml")
    parser.add_argument("-o", "--out-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        product = _catalog.find_product(_catalog.load_catalog(args.catalog), args.product)
        written = write_azure(product, args.out_dir, image=args.image, artifact=args.artifact)
    except (_catalog.CatalogError, _files.InputError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    print("loaded back with azure-ai-ml: load_model, load_environment, load_online_endpoint, load_online_deployment")
    return 0


if __name__ == "__main__":
    sys.exit(main())
