"""packaging/: catalog, SageMaker and Marketplace requests, Azure files, checked with the clouds' own schemas."""

from __future__ import annotations

import ast
import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PACKAGING = Path(__file__).resolve().parent.parent / "packaging"
EXAMPLE = PACKAGING / "catalog.example.yaml"
sys.path.insert(0, str(PACKAGING))

import _aws  # noqa: E402
import _catalog  # noqa: E402
import aws_listing  # noqa: E402
import azure_assets  # noqa: E402
import model_package  # noqa: E402

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/searchbox:1.0"
ROLE = "arn:aws:iam::123456789012:role/SageMakerValidation"
LAYOUT = model_package.S3Layout("my-bucket", "searchbox-minilm-embeddings")
# azure-ai-ml's schemas use marshmallow APIs that marshmallow 4 deprecates: its noise, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.Marshmallow4Warning")


@pytest.fixture
def raw_catalog() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


@pytest.fixture
def product():
    return _catalog.load_catalog(EXAMPLE)[0]


def _parse(raw: dict):
    return _catalog.parse_catalog(raw, base_dir=PACKAGING)


def test_the_packaging_name_still_means_pypis_library():
    """packaging/ holds scripts, not a package: `import packaging` from the repository root is PyPI's."""
    probe = "import packaging, packaging.version; print(packaging.__file__); print(packaging.version.Version('1.2'))"
    for cwd in (PACKAGING.parent, PACKAGING):
        result = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "site-packages" in result.stdout and result.stdout.splitlines()[1] == "1.2"
    assert not (PACKAGING / "__init__.py").exists()
    import packaging as in_this_process  # with packaging/ itself on sys.path, as the scripts have it

    assert "site-packages" in in_this_process.__file__


def test_example_catalog_is_valid(product):
    assert product.name == "searchbox-minilm-embeddings"
    assert product.model_dir.is_dir() and (product.model_dir / "model.safetensors").is_file()
    assert product.instance_types["batch"] == ("ml.m5.xlarge", "ml.g5.xlarge")
    assert product.prices_per_hour["realtime"]["ml.g5.xlarge"] == 0.4
    assert product.azure.endpoint_name == "searchbox-minilm"


@pytest.mark.parametrize(("edit", "field", "reason"), [
    (lambda p: p["instance_types"]["realtime"].append("ml.m5.huge"),
     "products[0].instance_types.realtime[3]", "unknown instance type 'ml.m5.huge'"),
    (lambda p: p["instance_types"]["batch"].append("g5.xlarge"),
     "products[0].instance_types.batch[2]", "unknown instance type"),
    (lambda p: p["prices_per_hour"]["batch"].pop("ml.g5.xlarge"),
     "products[0].prices_per_hour.batch.ml.g5.xlarge", "no price for this instance type"),
    (lambda p: p["prices_per_hour"]["realtime"].update({"ml.p3.2xlarge": 3.0}),
     "products[0].prices_per_hour.realtime.ml.p3.2xlarge", "priced but not listed"),
    (lambda p: p.update(name="a" * 64), "products[0].name", "64 characters; SageMaker allows at most 63"),
    (lambda p: p.update(name="bad_name"), "products[0].name", "must match"),
    (lambda p: p.update(name="-leading-hyphen"), "products[0].name", "must match"),
    (lambda p: p.update(free_trial_days=3), "products[0].free_trial_days", "5..120"),
    (lambda p: p.update(regions=["us-east-1", "Frankfurt"]), "products[0].regions[1]", "not an AWS region"),
    (lambda p: p.update(kind="classifier"), "products[0].kind", "not one of embedding, multi-vector, reranker"),
    (lambda p: p.update(eula="missing.md"), "products[0].eula", "does not exist"),
    (lambda p: p.update(pricing={}), "products[0].pricing", "unknown field"),
    (lambda p: p["instance_types"]["recommended"].update(batch="ml.c6i.xlarge"),
     "products[0].instance_types.recommended.batch", "not in"),
    (lambda p: p["azure"].update(gpus_per_instance=0), "products[0].azure.gpus_per_instance", "integer >= 1"),
    (lambda p: p.update(tasks={"retrieval.query": {"prefix": "q: "}}), "products[0].tasks.retrieval.query",
     "prompt string"),
])
def test_broken_catalog_names_the_field(raw_catalog, edit, field, reason):
    edit(raw_catalog["products"][0])
    with pytest.raises(_catalog.CatalogError) as caught:
        _parse(raw_catalog)
    message = str(caught.value)
    assert message.startswith(field + ":"), message
    assert reason in message


def test_instance_types_come_from_botocores_service_model():
    enums = _catalog.instance_type_enums()
    service = _service_json()
    assert enums["realtime"] == set(service["shapes"]["ProductionVariantInstanceType"]["enum"])
    assert enums["batch"] == set(service["shapes"]["TransformInstanceType"]["enum"])
    assert "ml.g5.xlarge" in enums["realtime"] and "ml.g5.xlarge" in enums["batch"]


def _service_json() -> dict:
    """The bundled file itself (recent botocore wheels ship it gzipped)."""
    import gzip

    import botocore

    path = Path(botocore.__file__).parent / "data" / "sagemaker" / "2017-07-24" / "service-2.json"
    if path.is_file():
        return json.loads(path.read_text())
    return json.loads(gzip.decompress(path.with_suffix(".json.gz").read_bytes()))


def test_broken_catalog_from_the_command_line(raw_catalog, tmp_path):
    raw_catalog["products"][0]["prices_per_hour"]["realtime"].pop("ml.m5.xlarge")
    raw_catalog["products"][0]["description"] = str(PACKAGING / "example" / "description.md")
    raw_catalog["products"][0]["eula"] = str(PACKAGING / "example" / "eula.md")
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(raw_catalog))
    result = subprocess.run([sys.executable, str(PACKAGING / "model_package.py"), "--catalog", str(catalog),
                             "--image", IMAGE, "--bucket", "my-bucket", "--role-arn", ROLE,
                             "-o", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "products[0].prices_per_hour.realtime.ml.m5.xlarge: no price" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_model_package_request_passes_botocore_validation(product, tmp_path):
    from botocore.validate import validate_parameters

    request = model_package.write_model_package(product, tmp_path, image=IMAGE, layout=LAYOUT, role_arn=ROLE)
    shape = _aws.operation_model("sagemaker", "CreateModelPackage").input_shape
    validate_parameters(request, shape)  # botocore's own validator, raising on any problem
    assert json.loads((tmp_path / model_package.REQUEST_FILE).read_text()) == request
    assert request["CertifyForMarketplace"] is True
    spec = request["InferenceSpecification"]
    assert spec["Containers"] == [{"Image": IMAGE,
                                   "ModelDataUrl": "s3://my-bucket/searchbox-minilm-embeddings/model.tar.gz"}]
    assert spec["SupportedContentTypes"] == ["application/json", "text/csv", "application/jsonlines"]
    assert spec["SupportedRealtimeInferenceInstanceTypes"] == list(product.instance_types["realtime"])
    assert spec["SupportedTransformInstanceTypes"] == list(product.instance_types["batch"])
    profile = request["ValidationSpecification"]["ValidationProfiles"][0]["TransformJobDefinition"]
    assert profile["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == LAYOUT.url("validation/input.csv")
    assert profile["TransformInput"]["ContentType"] == "text/csv"
    assert profile["TransformInput"]["SplitType"] == "Line" and profile["TransformOutput"]["AssembleWith"] == "Line"
    assert profile["TransformResources"]["InstanceType"] == product.recommended["batch"]
    assert (tmp_path / model_package.SAMPLE_FILE).read_text() == model_package.sample_input("embedding")


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("ValidationSpecification", "ValidationRole"), "arn:aws:iam::12:role/x", "does not match"),
    (("InferenceSpecification", "Containers", 0, "ModelDataUrl"), "ftp://bucket/model.tar.gz", "does not match"),
    (("InferenceSpecification", "SupportedTransformInstanceTypes", 0), "ml.nope.large", "is not one of"),
    (("ValidationSpecification", "ValidationProfiles", 0, "TransformJobDefinition", "BatchStrategy"),
     "Everything", "is not one of"),
    (("ModelPackageName",), "x" * 64, "at most 63"),
    (("CertifyForMarketplace",), "yes", "Invalid type"),
])
def test_a_request_sagemaker_would_refuse_is_caught_offline(product, path, value, expected):
    request = copy.deepcopy(model_package.model_package_request(product, image=IMAGE, layout=LAYOUT, role_arn=ROLE))
    target = request
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(_aws.RequestInvalid, match=expected):
        _aws.validate_request("sagemaker", "CreateModelPackage", request)


def test_change_set_prices_every_instance_type(product):
    request = aws_listing.change_set(product, model_package_arn="arn:aws:sagemaker:us-east-1:1:model-package/x",
                                     product_id="prod-abc", offer_id="offer-abc")
    changes = {c["ChangeType"]: c for c in request["ChangeSet"]}
    assert set(changes) == {"AddDeliveryOptions", "UpdatePricingTerms"}
    assert changes["AddDeliveryOptions"]["Entity"] == {"Type": "MachineLearningProduct@1.0", "Identifier": "prod-abc"}
    usage, trial = changes["UpdatePricingTerms"]["DetailsDocument"]["Terms"]
    priced = {r["DimensionKey"]: r["Price"] for r in usage["RateCards"][0]["RateCard"]}
    expected = {f"{t}.m.i.b" for t in product.instance_types["realtime"]} | {
        f"{t}.a.t" for t in product.instance_types["batch"]}
    assert set(priced) == expected
    assert priced["ml.g5.xlarge.m.i.b"] == 0.4
    assert trial == {"Type": "FreeTrialPricingTerm", "Duration": "P30D",
                     "Grants": [{"DimensionKey": k} for k in priced]}
    option = changes["AddDeliveryOptions"]["DetailsDocument"]["DeliveryOptions"][0]["Details"]
    assert option["SagemakerModelPackageDeliveryOptionDetails"]["RecommendedInstanceTypes"] == {
        "RealtimeInference": "ml.g5.xlarge", "BatchTransform": "ml.g5.xlarge"}
    _aws.validate_request("marketplace-catalog", "StartChangeSet", request)


def _code_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", markdown, flags=re.DOTALL)


def test_listing_files(product, tmp_path):
    bench = tmp_path / "results.md"
    bench.write_text("# Benchmark\n\nsome prose\n\n## ml.g5.xlarge\n\n| clients | texts/s | p50 ms |\n|---|---|---|\n"
                     "| 1 | 250 | 4.1 |\n")
    written = aws_listing.write_listing(product, tmp_path / "aws", model_package_arn="arn:aws:sagemaker:us-east-1:"
                                        "123456789012:model-package/x", product_id="prod-1", offer_id="offer-1",
                                        bench=bench)
    assert {p.name for p in written} >= {"usage-information.md", "pricing.md", "start-change-set.json",
                                         "sample-notebook.ipynb"}
    usage = (tmp_path / "aws" / "usage-information.md").read_text()
    # every JSON sample parses and has the contract's shape
    request, response = (json.loads(block) for block in _code_blocks(usage, "json")[:2])
    assert request["data"][1] == {"text": "world", "id": "w1"}
    assert [set(item) for item in response["data"]] == [{"id", "embedding", "usage"}] * 2
    batch_output = json.loads(_code_blocks(usage, "json")[2])
    assert batch_output["parameters"] == {} and batch_output["data"][0]["id"] == "1"
    assert _code_blocks(usage, "csv")[0] == model_package.sample_input("embedding")
    for block in _code_blocks(usage, "python"):
        ast.parse(block)
    assert "invoke_endpoint" in usage and "from jina_sagemaker import Client" in usage
    assert "| 1 | 250 | 4.1 |" in usage and "### ml.g5.xlarge" in usage
    pricing = (tmp_path / "aws" / "pricing.md").read_text()
    assert "| ml.c6i.xlarge | $0.080 | not offered |" in pricing and "30 days" in pricing

    notebook = json.loads((tmp_path / "aws" / "sample-notebook.ipynb").read_text())
    assert notebook["nbformat"] == 4
    code = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    for source in code:
        ast.parse(source)
    joined = "\n".join(code)
    for call in ("create_model(", "create_endpoint(", "invoke_endpoint(", "create_transform_job(", "delete_endpoint("):
        assert call in joined


def test_usage_information_without_benchmark_says_so(product, tmp_path):
    usage = aws_listing.usage_markdown(product, tmp_path / "missing.md")
    assert "was not found" in usage


def test_azure_files_load_with_azure_ai_ml(product, tmp_path):
    written = azure_assets.write_azure(product, tmp_path, image="myacr.azurecr.io/searchbox:1.0")
    assert {p.name for p in written} == {"model.yml", "environment.yml", "endpoint.yml", "deployment.yml",
                                         "marketplace-plan.md"}
    loaded = azure_assets.load_back(tmp_path)
    environment, deployment = loaded["environment.yml"], loaded["deployment.yml"]
    assert environment.image == "myacr.azurecr.io/searchbox:1.0"
    config = environment.inference_config
    assert (config.liveness_route.path, config.readiness_route.path, config.scoring_route.path) == (
        "/ping", "/ping", "/score")
    assert config.scoring_route.port == 8080
    assert deployment.request_settings.request_timeout_ms == 90_000
    assert deployment.request_settings.max_concurrent_requests_per_instance > 1
    assert deployment.liveness_probe.timeout == 2 and deployment.readiness_probe.failure_threshold == 30
    assert deployment.instance_type == "Standard_NC4as_T4_v3"
    assert loaded["endpoint.yml"].auth_mode == "key"
    assert loaded["model.yml"].type == "custom_model"
    plan = (tmp_path / "marketplace-plan.md").read_text()
    assert "per GPU-hour" in plan and "| software surcharge, per GPU-hour | $0.400 |" in plan


def test_azure_loader_rejects_a_broken_deployment(product, tmp_path):
    """The load-back is a real check: azure-ai-ml refuses a file that breaks its schema."""
    azure_assets.write_azure(product, tmp_path, image="myacr.azurecr.io/searchbox:1.0")
    deployment = yaml.safe_load((tmp_path / "deployment.yml").read_text())
    deployment["request_settings"]["request_timeout_ms"] = "ninety seconds"
    (tmp_path / "deployment.yml").write_text(yaml.safe_dump(deployment))
    from marshmallow.exceptions import ValidationError

    with pytest.raises(ValidationError) as caught:
        azure_assets.load_back(tmp_path)
    assert "request_timeout_ms" in str(caught.value) and "Not a valid integer" in str(caught.value)
