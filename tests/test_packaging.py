"""packaging/: catalog, SageMaker and Marketplace requests, Azure files, checked with the clouds' own schemas."""

from __future__ import annotations

import ast
import copy
import json
import math
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
import _samples  # noqa: E402
import aws_listing  # noqa: E402
import azure_assets  # noqa: E402
import build_artifact  # noqa: E402
import model_package  # noqa: E402

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/searchbox:1.0"
ROLE = "arn:aws:iam::123456789012:role/SageMakerValidation"
LAYOUT = model_package.S3Layout("my-bucket", "searchbox-minilm-embeddings")
# azure-ai-ml's schemas use marshmallow APIs that marshmallow 4 deprecates: its noise, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.Marshmallow4Warning")


@pytest.fixture
def raw_catalog() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


# What the example product's real-time types would cost per hour, sold per instance-hour instead of per unit.
HOURLY_REALTIME = {"ml.c6i.xlarge": 0.08, "ml.m5.xlarge": 0.08, "ml.g5.xlarge": 0.40}


@pytest.fixture
def product():
    """The example product: real-time sold per 1,000 tokens, batch transform per hour."""
    return _catalog.load_catalog(EXAMPLE)[0]


@pytest.fixture
def hourly_product(raw_catalog):
    """The example product sold per instance-hour: no `pricing` block, real-time hourly prices."""
    entry = raw_catalog["products"][0]
    del entry["pricing"]
    entry["prices_per_hour"]["realtime"] = dict(HOURLY_REALTIME)
    return _parse(raw_catalog)[0]


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
    assert product.pricing == _catalog.Pricing("per_inference", "tokens", 1000, 0.00002)
    assert product.pricing.serving_config() == {"unit": "tokens", "tokens_per_unit": 1000}
    # per-inference: real-time hourly prices may be left out (0), batch transform keeps its hourly prices
    assert product.prices_per_hour["realtime"] == {"ml.c6i.xlarge": 0.0, "ml.m5.xlarge": 0.0, "ml.g5.xlarge": 0.0}
    assert product.prices_per_hour["batch"]["ml.g5.xlarge"] == 0.4
    assert product.azure.endpoint_name == "searchbox-minilm"
    assert product.azure.plan == _catalog.AzurePlan(
        "minilm-embeddings-gpu", "all-MiniLM-L6-v2 embeddings, per GPU-hour", "gpu_hour", 0.40, 1,
        ("US", "CA", "GB", "DE", "FR"))


def test_hourly_pricing_is_the_default(hourly_product, raw_catalog):
    assert hourly_product.pricing == _catalog.Pricing() and hourly_product.pricing.metering is None
    assert hourly_product.pricing.serving_config() is None
    assert hourly_product.prices_per_hour["realtime"] == HOURLY_REALTIME
    raw_catalog["products"][0]["pricing"] = {"model": "hourly"}
    raw_catalog["products"][0]["prices_per_hour"]["realtime"] = dict(HOURLY_REALTIME)
    assert _parse(raw_catalog)[0].pricing == hourly_product.pricing


@pytest.mark.parametrize(("pricing", "expected"), [
    ({"model": "per_inference", "unit": "request", "price_per_unit": 0.001}, {"unit": "request"}),
    ({"model": "per_inference", "unit": "input", "price_per_unit": 0.0001}, {"unit": "input"}),
    ({"model": "per_inference", "unit": "tokens", "tokens_per_unit": 1, "price_per_unit": 0.00000002},
     {"unit": "tokens", "tokens_per_unit": 1}),
])
def test_per_inference_units_become_the_servers_metering(raw_catalog, pricing, expected):
    """What the catalog writes into searchbox.json is read back by the server's own parser as the same unit."""
    from model_handlers.metering import parse_metering

    raw_catalog["products"][0]["pricing"] = pricing
    priced = _parse(raw_catalog)[0].pricing
    assert priced.serving_config() == expected
    assert parse_metering(priced.serving_config(), "searchbox.json") == priced.metering


@pytest.mark.parametrize(("edit", "field", "reason"), [
    (lambda p: p["instance_types"]["realtime"].append("ml.m5.huge"),
     "products[0].instance_types.realtime[3]", "unknown instance type 'ml.m5.huge'"),
    (lambda p: p["instance_types"]["batch"].append("g5.xlarge"),
     "products[0].instance_types.batch[2]", "unknown instance type"),
    (lambda p: p["prices_per_hour"]["batch"].pop("ml.g5.xlarge"),
     "products[0].prices_per_hour.batch.ml.g5.xlarge", "no price for this instance type"),
    (lambda p: p["prices_per_hour"]["batch"].update({"ml.p3.2xlarge": 3.0}),
     "products[0].prices_per_hour.batch.ml.p3.2xlarge", "priced but not listed"),
    (lambda p: p["prices_per_hour"].update(realtime={**HOURLY_REALTIME, "ml.p3.2xlarge": 3.0}),
     "products[0].prices_per_hour.realtime.ml.p3.2xlarge", "priced but not listed"),
    (lambda p: p.update(name="a" * 64), "products[0].name", "64 characters; SageMaker allows at most 63"),
    (lambda p: p.update(name="bad_name"), "products[0].name", "must match"),
    (lambda p: p.update(name="-leading-hyphen"), "products[0].name", "must match"),
    (lambda p: p.update(free_trial_days=3), "products[0].free_trial_days", "5..31"),
    (lambda p: p.update(free_trial_days=32), "products[0].free_trial_days", "5..31"),
    (lambda p: p.update(regions=["us-east-1", "Frankfurt"]), "products[0].regions[1]", "not an AWS region"),
    (lambda p: p.update(kind="classifier"), "products[0].kind",
     "not one of bge-m3, embedding, generative-reranker, listwise-reranker, multi-vector, multimodal, reranker"),
    (lambda p: p.update(eula="missing.md"), "products[0].eula", "does not exist"),
    (lambda p: p.update(prices={}), "products[0].prices", "unknown field"),
    (lambda p: p["instance_types"]["recommended"].update(batch="ml.c6i.xlarge"),
     "products[0].instance_types.recommended.batch", "not in"),
    (lambda p: p["azure"].update(gpus_per_instance=0), "products[0].azure.gpus_per_instance", "integer >= 1"),
    # pricing
    (lambda p: p.update(pricing="per_inference"), "products[0].pricing", "must be a mapping"),
    (lambda p: p["pricing"].update(model="monthly"), "products[0].pricing.model", "not hourly or per_inference"),
    (lambda p: p["pricing"].update(currency="EUR"), "products[0].pricing.currency", "unknown field"),
    (lambda p: p["pricing"].pop("unit"), "products[0].pricing.unit", "missing"),
    (lambda p: p["pricing"].update(unit="characters"), "products[0].pricing.unit",
     "not one of request, input, tokens"),
    (lambda p: p["pricing"].pop("tokens_per_unit"), "products[0].pricing.tokens_per_unit", "missing"),
    (lambda p: p["pricing"].update(tokens_per_unit=0), "products[0].pricing.tokens_per_unit", ">= 1"),
    (lambda p: p["pricing"].update(tokens_per_unit=2.5), "products[0].pricing.tokens_per_unit", "whole number"),
    (lambda p: p["pricing"].update(unit="request"), "products[0].pricing.tokens_per_unit", "only with unit tokens"),
    (lambda p: p["pricing"].pop("price_per_unit"), "products[0].pricing.price_per_unit", "missing"),
    (lambda p: p["pricing"].update(price_per_unit=0), "products[0].pricing.price_per_unit", "> 0"),
    (lambda p: p["pricing"].update(price_per_unit=-0.1), "products[0].pricing.price_per_unit", "> 0"),
    (lambda p: p["pricing"].update(price_per_unit="cheap"), "products[0].pricing.price_per_unit", "> 0"),
    (lambda p: p["pricing"].update(price_per_unit=True), "products[0].pricing.price_per_unit", "> 0"),
    (lambda p: p["pricing"].update(price_per_unit=0.000000001), "products[0].pricing.price_per_unit",
     "more than 8 decimals"),
    (lambda p: p.update(pricing={"model": "hourly", "unit": "tokens"}), "products[0].pricing.unit",
     "only with model per_inference"),
    (lambda p: p["prices_per_hour"].pop("batch"), "products[0].prices_per_hour.batch", "must map"),
    (lambda p: p["prices_per_hour"].update(realtime={"ml.g5.xlarge": 0.4}),
     "products[0].prices_per_hour.realtime.ml.c6i.xlarge", "no price"),
    (lambda p: p.pop("pricing"), "products[0].prices_per_hour.realtime", "must map"),
    # the Azure Marketplace plan
    (lambda p: p["azure"].pop("plan"), "products[0].azure.plan", "missing"),
    (lambda p: p["azure"].update(surcharge_per_gpu_hour=0.4), "products[0].azure.surcharge_per_gpu_hour",
     "moved into the plan"),
    (lambda p: p["azure"].update(sku="x"), "products[0].azure.sku", "unknown field"),
    (lambda p: p["azure"]["plan"].update(id="Minilm GPU"), "products[0].azure.plan.id", "lowercase"),
    (lambda p: p["azure"]["plan"].update(id="a" * 51), "products[0].azure.plan.id", "1-50"),
    (lambda p: p["azure"]["plan"].update(name=" "), "products[0].azure.plan.name", "one line"),
    (lambda p: p["azure"]["plan"].update(name="two\nlines"), "products[0].azure.plan.name", "one line"),
    (lambda p: p["azure"]["plan"].update(unit="token"), "products[0].azure.plan.unit",
     "not one of gpu_hour, core_hour"),
    (lambda p: p["azure"]["plan"].update(price_per_unit=-1), "products[0].azure.plan.price_per_unit", ">= 0"),
    (lambda p: p["azure"]["plan"].update(free_trial_months=2), "products[0].azure.plan.free_trial_months",
     "not one of 0, 1, 3, 6"),
    (lambda p: p["azure"]["plan"].update(markets=[]), "products[0].azure.plan.markets", "non-empty"),
    (lambda p: p["azure"]["plan"].update(markets=["US", "USA"]), "products[0].azure.plan.markets[1]",
     "two-letter country code"),
    (lambda p: p["azure"]["plan"].update(markets=["US", "US"]), "products[0].azure.plan.markets", "twice"),
    (lambda p: p["azure"]["plan"].update(currency="EUR"), "products[0].azure.plan.currency", "unknown field"),
    (lambda p: p["azure"].pop("gpus_per_instance"), "products[0].azure.gpus_per_instance", "missing"),
    (lambda p: (p["azure"]["plan"].update(unit="core_hour"), p["azure"].pop("cores_per_instance")),
     "products[0].azure.cores_per_instance", "missing"),
    (lambda p: p.update(tasks={"retrieval.query": {"prefix": "q: "}}), "products[0].tasks.retrieval.query",
     "prompt string"),
    (lambda p: p.update(classifiers={"topics": "no-such-examples.jsonl"}), "products[0].classifiers.topics",
     "does not exist"),
    (lambda p: p.update(classifier_min_accuracy=1.5), "products[0].classifier_min_accuracy", "from 0 to 1"),
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
    raw_catalog["products"][0]["prices_per_hour"]["batch"].pop("ml.m5.xlarge")
    raw_catalog["products"][0]["description"] = str(PACKAGING / "example" / "description.md")
    raw_catalog["products"][0]["eula"] = str(PACKAGING / "example" / "eula.md")
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(raw_catalog))
    result = subprocess.run([sys.executable, str(PACKAGING / "model_package.py"), "--catalog", str(catalog),
                             "--image", IMAGE, "--bucket", "my-bucket", "--role-arn", ROLE,
                             "-o", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "products[0].prices_per_hour.batch.ml.m5.xlarge: no price" in result.stderr
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


# The dimension keys AWS documents for ML products (API reference, "Update pricing terms"): "<instance type>.m.i.r"
# hourly real-time inference, "<instance type>.m.i.b" batch transform, "m.i.c" real-time per inference.
DIMENSION_KEY = re.compile(r"ml\.[a-z0-9-]+\.[a-z0-9]+\.m\.i\.[rb]|m\.i\.c")


def _pricing_terms(request: dict) -> tuple[dict[str, float], dict]:
    """({dimension key: price} of the single rate card, the free-trial term) of a StartChangeSet request."""
    changes = {c["ChangeType"]: c for c in request["ChangeSet"]}
    assert set(changes) == {"AddDeliveryOptions", "UpdatePricingTerms"}
    pricing = changes["UpdatePricingTerms"]
    assert pricing["Entity"]["Type"] == "Offer@1.0" and pricing["DetailsDocument"]["PricingModel"] == "Usage"
    usage, trial = pricing["DetailsDocument"]["Terms"]
    assert usage["Type"] == "UsageBasedPricingTerm" and usage["CurrencyCode"] == "USD"
    assert len(usage["RateCards"]) == 1  # "You must include one RateCard only within this array"
    card = usage["RateCards"][0]["RateCard"]
    priced = {r["DimensionKey"]: r["Price"] for r in card}
    assert len(priced) == len(card) and all(DIMENSION_KEY.fullmatch(k) for k in priced), priced
    return priced, trial


def test_hourly_change_set_prices_every_instance_type(hourly_product):
    request = aws_listing.change_set(hourly_product, model_package_arn="arn:aws:sagemaker:us-east-1:1:model-package/x",
                                     product_id="prod-abc", offer_id="offer-abc")
    _aws.validate_request("marketplace-catalog", "StartChangeSet", request)
    priced, trial = _pricing_terms(request)
    expected = {f"{t}.m.i.r": HOURLY_REALTIME[t] for t in hourly_product.instance_types["realtime"]} | {
        "ml.m5.xlarge.m.i.b": 0.08, "ml.g5.xlarge.m.i.b": 0.4}
    assert priced == expected  # every supported instance type, real-time and batch; no per-inference dimension
    assert trial == {"Type": "FreeTrialPricingTerm", "Duration": "P30D",
                     "Grants": [{"DimensionKey": k} for k in priced]}
    changes = {c["ChangeType"]: c for c in request["ChangeSet"]}
    assert changes["AddDeliveryOptions"]["Entity"] == {"Type": "MachineLearningProduct@1.0", "Identifier": "prod-abc"}
    option = changes["AddDeliveryOptions"]["DetailsDocument"]["DeliveryOptions"][0]["Details"]
    assert option["SagemakerModelPackageDeliveryOptionDetails"]["RecommendedInstanceTypes"] == {
        "RealtimeInference": "ml.g5.xlarge", "BatchTransform": "ml.g5.xlarge"}


def test_per_inference_change_set_adds_m_i_c_beside_the_hourly_dimensions(product):
    request = aws_listing.change_set(product, model_package_arn="arn:aws:sagemaker:us-east-1:1:model-package/x",
                                     product_id="prod-abc", offer_id="offer-abc")
    _aws.validate_request("marketplace-catalog", "StartChangeSet", request)
    priced, trial = _pricing_terms(request)
    assert priced == {"ml.c6i.xlarge.m.i.r": 0.0, "ml.m5.xlarge.m.i.r": 0.0, "ml.g5.xlarge.m.i.r": 0.0,
                      "m.i.c": 0.00002, "ml.m5.xlarge.m.i.b": 0.08, "ml.g5.xlarge.m.i.b": 0.4}
    # the trial waives every priced dimension, the per-inference one included
    assert [g["DimensionKey"] for g in trial["Grants"]] == list(priced)
    assert json.loads(json.dumps(request)) == request  # what start-change-set.json holds reads back the same


def test_a_change_set_without_a_trial_has_no_trial_term(raw_catalog):
    raw_catalog["products"][0]["free_trial_days"] = 0
    request = aws_listing.change_set(_parse(raw_catalog)[0], model_package_arn="arn:aws:sagemaker:us-east-1:1:"
                                     "model-package/x", product_id="prod-abc", offer_id="offer-abc")
    terms = request["ChangeSet"][1]["DetailsDocument"]["Terms"]
    assert [t["Type"] for t in terms] == ["UsageBasedPricingTerm"]


def test_botocore_refuses_a_broken_pricing_change(product):
    """The validation is real: a change set AWS's model rejects does not pass."""
    request = aws_listing.change_set(product, model_package_arn="arn:aws:sagemaker:us-east-1:1:model-package/x",
                                     product_id="prod-abc", offer_id="offer-abc")
    request["ChangeSet"][1]["ChangeType"] = ""
    with pytest.raises(_aws.RequestInvalid, match="ChangeType"):
        _aws.validate_request("marketplace-catalog", "StartChangeSet", request)


def _code_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", markdown, flags=re.DOTALL)


def test_listing_files(hourly_product, tmp_path):
    product = hourly_product
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
    # hourly: the buyer reads the hourly prices in the usage information too, and that nothing is metered
    billing = usage.split("## Pricing and billing", 1)[1].split("## Performance", 1)[0]
    assert "| ml.g5.xlarge | $0.400 | $0.400 |" in billing and "reports no usage" in billing
    assert "ConsumedUnits" not in usage + pricing and "m.i.c" not in usage + pricing

    notebook = json.loads((tmp_path / "aws" / "sample-notebook.ipynb").read_text())
    assert notebook["nbformat"] == 4
    code = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    for source in code:
        ast.parse(source)
    joined = "\n".join(code)
    for call in ("create_model(", "create_endpoint(", "invoke_endpoint(", "create_transform_job(", "delete_endpoint("):
        assert call in joined


def test_the_listing_describes_zero_shot_classification_and_the_artifacts_classifiers(hourly_product, raw_catalog,
                                                                                       tmp_path):
    shipped = [{"name": "topics", "labels": ["cooking", "sport", "weather"], "examples": 24,
                "held_out_accuracy": 0.875}]
    usage = aws_listing.usage_markdown(hourly_product, tmp_path / "missing.md", classifiers=shipped)
    section = usage.split("## Classification", 1)[1].split("## boto3", 1)[0]
    assert "zero-shot" in section and "SEARCHBOX_CLASSIFY_LABELS" in section
    assert "| `topics` | cooking, sport, weather | 24 | 87.5% |" in section
    assert "| `topics`" not in aws_listing.usage_markdown(hourly_product, tmp_path / "missing.md")
    raw_catalog["products"][0]["kind"] = "reranker"  # a kind that does not classify says nothing of it
    assert "## Classification" not in aws_listing.usage_markdown(_parse(raw_catalog)[0], tmp_path / "missing.md")


def test_usage_information_without_benchmark_says_so(hourly_product, tmp_path):
    usage = aws_listing.usage_markdown(hourly_product, tmp_path / "missing.md")
    assert "was not found" in usage


def test_every_kind_has_samples_and_the_public_route_of_what_they_ask():
    """A registered kind can be listed: its samples are in packaging/_samples.py, and the listing's curl goes to the
    route of the operation its sample asks (the model layer names no route)."""
    from model_handlers import kinds

    routes = {"embedding": "/v1/embeddings", "reranker": "/v1/rerank", "generative-reranker": "/v1/rerank",
              "listwise-reranker": "/v1/rerank", "vision-language-reranker": "/v1/rerank",
              "multimodal": "/v1/embeddings", "vision-language-embedding": "/v1/embeddings",
              "multi-vector": "/v1/multi-vector", "sparse": "/v1/sparse-embeddings", "bge-m3": "/v1/embeddings"}
    assert sorted(kinds.names()) == sorted(routes)
    for name, route in routes.items():
        assert _samples.public_path(name) == route
        assert _samples.of(name).csv.endswith("\n")
    with pytest.raises(KeyError, match="unknown kind"):
        _samples.of("colbert-ish")


def test_per_inference_worked_example_is_the_samples_real_usage(product, app, tmp_path):
    """The listing's worked example is what the real model answers to the sample request the listing shows.

    The sample goes to the in-process server (the embedded model, as the example catalog packages it: no tasks);
    its answer's `usage` is summed as a buyer would, and the units and price recomputed from the catalog's terms.
    """
    answer = app.post("/invocations", _samples.of(product.kind).request)
    assert answer.status_code == 200, answer.text
    tokens = sum(item["usage"]["total_tokens"] for item in answer.json()["data"])
    units = math.ceil(tokens / 1000)  # 1 unit = 1,000 tokens, rounded up per request
    price = f"${units * 0.00002:.5f}"
    assert tokens > 0 and units == 1 and price == "$0.00002"

    written = aws_listing.write_listing(product, tmp_path / "aws", model_package_arn="arn:aws:sagemaker:us-east-1:"
                                        "123456789012:model-package/x", product_id="prod-1", offer_id="offer-1",
                                        bench=tmp_path / "no-bench.md")  # measures the sample itself
    assert {p.name for p in written} >= {"usage-information.md", "pricing.md", "start-change-set.json"}
    usage = (tmp_path / "aws" / "usage-information.md").read_text()
    pricing = (tmp_path / "aws" / "pricing.md").read_text()
    sent = json.loads(_code_blocks(usage, "json")[0])
    assert sent == _samples.of(product.kind).request  # the example is about the request the buyer sees
    billing = usage.split("## Pricing and billing", 1)[1].split("## Performance", 1)[0]
    example = (f"the items' `usage.total_tokens` in its answer add up to {tokens} tokens; at 1 unit = 1,000 tokens, "
               f"rounded up per request, that is {units} unit")
    header = f'`X-Amzn-Inference-Metering: {{"Dimension": "inference.count", "ConsumedUnits": {units}}}`'
    cost = f"costs {units} x $0.00002 = {price}."
    for text in (billing, pricing):
        assert example in text and header in text and cost in text, text
        assert "A request whose usage comes to 2,500 tokens is 3 units: $0.00006." in text
        assert "1 unit = 1,000 tokens of usage, rounded up per request" in text
        assert "never billed" in text and "CloudWatch" in text
    assert "embeds 2 texts" in billing and "sample request above" in billing
    assert "sample request of the usage information" in pricing
    # batch transform stays hourly, and says so with its prices
    assert "batch transform $0.080 (ml.m5.xlarge), $0.400 (ml.g5.xlarge) per hour" in billing
    assert "| ml.g5.xlarge | $0.400 | $0.000 |" in pricing and "| ml.c6i.xlarge | not offered | $0.000 |" in pricing
    assert "## Real-time endpoints: $0.00002 per unit" in pricing
    assert "software price waived on every dimension: per unit and per hour" in pricing


@pytest.mark.parametrize(("pricing", "sample", "expected"), [
    ({"unit": "input", "price_per_unit": 0.0001}, build_artifact.SampleFigures(inputs=2, tokens=6, units=2),
     "at 1 unit per input, that is 2 units, which its answer reports as `X-Amzn-Inference-Metering: "
     '{"Dimension": "inference.count", "ConsumedUnits": 2}`, and costs 2 x $0.0001 = $0.0002.'),
    ({"unit": "request", "price_per_unit": 0.001}, build_artifact.SampleFigures(inputs=2, tokens=6, units=1),
     "at 1 unit per request, whatever it holds, that is 1 unit, which its answer reports as "
     '`X-Amzn-Inference-Metering: {"Dimension": "inference.count", "ConsumedUnits": 1}`, and costs 1 x $0.001 = '
     "$0.001."),
])
def test_worked_example_of_each_unit(raw_catalog, pricing, sample, expected):
    raw_catalog["products"][0]["pricing"] = {"model": "per_inference", **pricing}
    product = _parse(raw_catalog)[0]
    assert expected in aws_listing.worked_example(product, sample)
    with pytest.raises(AssertionError, match="this is a bug"):  # figures the server did not count are refused
        aws_listing.worked_example(product, build_artifact.SampleFigures(sample.inputs, sample.tokens, 7))


def test_azure_files_load_with_azure_ai_ml(product, tmp_path):
    written = azure_assets.write_azure(product, tmp_path, image="myacr.azurecr.io/searchbox:1.0")
    assert {p.name for p in written} == {"model.yml", "environment.yml", "endpoint.yml", "deployment.yml",
                                         "marketplace-plan.md", "marketplace-plan.json"}
    loaded = azure_assets.load_back(tmp_path)
    environment, deployment = loaded["environment.yml"], loaded["deployment.yml"]
    assert environment.image == "myacr.azurecr.io/searchbox:1.0"
    config = environment.inference_config
    # liveness on /health (answered while the model loads), readiness on /ping (only once it is loaded)
    assert (config.liveness_route.path, config.readiness_route.path, config.scoring_route.path) == (
        "/health", "/ping", "/score")
    assert {config.liveness_route.port, config.readiness_route.port, config.scoring_route.port} == {8080}
    # README's custom-container section names the same routes as the generated environment, nowhere another
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f"`liveness_route` at\n`{{path: {config.liveness_route.path}, port: 8080}}`" in readme
    assert f"`readiness_route` at `{{path: {config.readiness_route.path}, port: 8080}}`" in readme
    assert "`liveness_route` and\n`readiness_route` at `{path: /ping" not in readme
    assert deployment.request_settings.request_timeout_ms == 90_000
    assert deployment.request_settings.max_concurrent_requests_per_instance > 1
    assert deployment.liveness_probe.timeout == 2 and deployment.readiness_probe.failure_threshold == 30
    assert deployment.instance_type == "Standard_NC4as_T4_v3"
    assert loaded["endpoint.yml"].auth_mode == "key"
    assert loaded["model.yml"].type == "custom_model"
    plan = (tmp_path / "marketplace-plan.md").read_text()
    assert "| software surcharge, per GPU-hour | $0.40 |" in plan
    assert "| Standard_NC4as_T4_v3 (1 GPU) per instance-hour | $0.40 |" in plan
    assert "Plan `minilm-embeddings-gpu`: all-MiniLM-L6-v2 embeddings, per GPU-hour." in plan
    assert "Free trial: 1 month" in plan and "Markets: US, CA, GB, DE, FR." in plan
    assert "only for models Microsoft hosts" in plan and "per compute hour" in plan
    assert json.loads((tmp_path / "marketplace-plan.json").read_text()) == {
        "plan_id": "minilm-embeddings-gpu", "plan_name": "all-MiniLM-L6-v2 embeddings, per GPU-hour",
        "billing": {"model": "per compute hour: the VM at Azure's price, plus this plan's software surcharge",
                    "unit": "gpu_hour", "price_per_unit_usd": 0.4, "units_per_instance": 1,
                    "price_per_instance_hour_usd": 0.4, "prorated": "per minute"},
        "free_trial_months": 1, "markets": ["US", "CA", "GB", "DE", "FR"],
        "deployment": {"instance_type": "Standard_NC4as_T4_v3", "instance_count": 1, "gpus_per_instance": 1,
                       "cores_per_instance": 4, "endpoint_name": "searchbox-minilm"},
        "model": {"served_name": "all-MiniLM-L6-v2", "kind": "embedding"}}


def test_azure_plan_per_core_hour(raw_catalog, tmp_path):
    """A CPU deployment priced per core-hour: the plan multiplies by the VM's cores, and needs no GPU count."""
    azure = raw_catalog["products"][0]["azure"]
    azure.update(instance_type="Standard_D8s_v5", cores_per_instance=8)
    azure.pop("gpus_per_instance")
    azure["plan"].update(id="minilm-cpu", name="Per core-hour", unit="core_hour", price_per_unit=0.0125,
                         free_trial_months=0, markets=["US"])
    product = _parse(raw_catalog)[0]
    assert product.azure.surcharge_per_instance_hour == 0.1
    azure_assets.write_azure(product, tmp_path, image="myacr.azurecr.io/searchbox:1.0")
    plan = (tmp_path / "marketplace-plan.md").read_text()
    assert "| software surcharge, per core-hour | $0.0125 |" in plan
    assert "| Standard_D8s_v5 (8 cores) per instance-hour | $0.10 |" in plan and "No free trial." in plan
    document = json.loads((tmp_path / "marketplace-plan.json").read_text())
    assert document["billing"]["unit"] == "core_hour" and document["billing"]["price_per_instance_hour_usd"] == 0.1
    assert document["deployment"]["gpus_per_instance"] == 0
    assert azure_assets.load_back(tmp_path)["deployment.yml"].instance_type == "Standard_D8s_v5"


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


@pytest.mark.parametrize("model, kind", [("generative_reranker_dir", "generative-reranker"),
                                         ("reranker_dir", "reranker"),
                                         ("jina_m0_dir", "vision-language-reranker")])
def test_a_rerankers_listing_says_how_it_scores_and_whether_it_takes_an_instruction(raw_catalog, tmp_path, request,
                                                                                     model, kind):
    """README (Generative rerankers): a generative reranker takes an `instruction`, a cross-encoder refuses it; the
    listing's usage information says which, and how the model scores, beside its summary."""
    entry = raw_catalog["products"][0]
    entry.update(model_dir=str(request.getfixturevalue(model)), kind=kind)
    product = _parse(raw_catalog)[0]
    aws_listing.write_listing(product, tmp_path / "aws", model_package_arn="arn:aws:sagemaker:us-east-1:"
                              "123456789012:model-package/x", product_id="prod-1", offer_id="offer-1")
    usage = (tmp_path / "aws" / "usage-information.md").read_text()
    if model == "generative_reranker_dir":
        assert "a generative reranker" in usage and "yes/no judgement" in usage
        assert "`instruction` is what the judge is told to look for" in usage
    elif model == "jina_m0_dir":
        # README (Vision-language rerankers): texts and images on either side, no instruction
        assert "text and image queries; text, image and PDF documents" in usage
        assert "either side a text or an image" in usage
        assert "`instruction` is refused (422 INVALID_OPTION)" in usage
    else:
        assert "a cross-encoder reads each (query, document) pair" in usage
        assert "`instruction` is refused (422 INVALID_OPTION)" in usage
