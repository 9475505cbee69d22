"""packaging/deployment.py and the capacity file: sizing from measured capacity, checked with the clouds' own models,
replayed against moto. Every expected number below is worked out by hand from the fixture's levels."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import requests
import yaml

from conftest import free_port

PACKAGING = Path(__file__).resolve().parent.parent / "packaging"
sys.path.insert(0, str(PACKAGING))

import _aws  # noqa: E402
import _capacity  # noqa: E402
import _catalog  # noqa: E402
import deployment  # noqa: E402

CATALOG = PACKAGING / "catalog.example.yaml"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/searchbox:1.0"
MODEL_DATA = "s3://my-bucket/minilm/model.tar.gz"
ROLE = "arn:aws:iam::123456789012:role/SageMakerExec"
NAME = "searchbox-minilm-embeddings"
pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.Marshmallow4Warning")

# inputs/s and p95 ms at 1, 2, 4, 8, 16 concurrent requests: p95 <= 1000 ms holds up to 8 (200 inputs/s)
INPUTS = (50.0, 90.0, 150.0, 200.0, 210.0)
P95 = (30.0, 40.0, 60.0, 900.0, 1500.0)


def measurement(label: str, shape: str, *, rss_mb: float = 600.0, gpu: str | None = None,
                backend: str = "torch") -> _capacity.Measurement:
    per = _capacity.SHAPES[shape]
    levels = tuple(_capacity.Level(c, x / per, x, p / 2, p) for c, x, p in zip((1, 2, 4, 8, 16), INPUTS, P95))
    machine = _capacity.Machine(label, None if label == "local" else label, "AMD EPYC", 4, 16000, gpu,
                                1 if gpu else 0)
    return _capacity.Measurement("all-MiniLM-L6-v2", "embedding", backend, shape, per, "/invocations", machine,
                                 "2026-11-30T10:00:00Z", 4, rss_mb, 1000.0, levels)


def fixture_measurements(**kwargs) -> list[_capacity.Measurement]:
    found = [measurement(label, shape, **kwargs) for label in ("local", "ml.m5.xlarge") for shape in ("query", "batch")]
    return found + [measurement("Standard_NC4as_T4_v3", "query", gpu="Tesla T4", **kwargs)]


@pytest.fixture
def capacity_file(tmp_path) -> Path:
    path = tmp_path / "capacity.json"
    path.write_text(_capacity.dumps(fixture_measurements()))
    return path


def options(**overrides) -> deployment.Options:
    values = dict(product=_catalog.load_catalog(CATALOG)[0], name=NAME, instance_type="ml.m5.xlarge",
                  role_arn=ROLE, image=IMAGE, model_data=MODEL_DATA, model_package_arn=None,
                  bucket="s3://my-bucket/minilm", prefix=None, measurements=fixture_measurements(),
                  input_rows=1_000_000, input_mb=120.0, azure_image="myacr.azurecr.io/searchbox:1.0")
    values.update(overrides)
    return deployment.Options(**values)


def params(variant: deployment.Variant, operation: str, index: int = 0) -> dict:
    return [c.params for c in variant.calls if c.action == operation][index]


# --- the capacity file ---------------------------------------------------------------------------------------------


def test_capacity_file_round_trips_and_merges_by_key(tmp_path):
    path = tmp_path / "capacity.json"
    _capacity.write(path, fixture_measurements())
    assert _capacity.load(path) == sorted(fixture_measurements(), key=lambda m: m.key)
    # a new run on the same machine replaces its entry and keeps the others
    faster = measurement("local", "query", rss_mb=700.0)
    held = _capacity.write(path, [faster])
    assert len(held) == 5 and faster in _capacity.load(path)
    assert [m.rss_mb for m in _capacity.load(path) if m.key == faster.key] == [700.0]


def test_sustained_level_and_targets_follow_the_p95_target():
    m = measurement("local", "query")
    assert m.sustained().concurrency == 8  # 900 ms <= 1000 ms; 16 concurrent is 1500 ms
    assert m.sustained(100).concurrency == 4  # the best level within 100 ms
    assert m.saturation().requests_per_s == 210.0
    targets = _capacity.targets(m, None, 0.5)
    # 200 requests/s x 0.5 = 100/s, between 2 in flight (90/s) and 4 (150/s): 2 + 2 x 10/60
    assert targets.concurrency == 2.33
    assert targets.invocations_per_minute == 6000.0  # (200 requests/s x 0.5) x 60, SageMaker's formula
    assert targets.max_concurrent_per_instance == 8
    with pytest.raises(_capacity.CapacityError, match=r"--p95-ms: no measured level .* meets p95 <= 20 ms"):
        _capacity.targets(m, 20, 0.5)
    with pytest.raises(_capacity.CapacityError, match="--headroom"):
        _capacity.targets(m, None, 1.5)


@pytest.mark.parametrize(("edit", "field"), [
    (lambda raw: raw.update(schema="other/1"), "schema"),
    (lambda raw: raw["measurements"][0]["levels"][1].update(p95_ms=-1), "measurements[0].levels[1].p95_ms"),
    (lambda raw: raw["measurements"][1]["machine"].pop("cores"), "measurements[1].machine.cores"),
    (lambda raw: raw["measurements"][2].update(backend="tensorrt"), "measurements[2].backend"),
    (lambda raw: raw["measurements"].append(copy.deepcopy(raw["measurements"][0])), "measurements[5]"),
])
def test_a_broken_capacity_file_names_the_field(capacity_file, edit, field):
    raw = json.loads(capacity_file.read_text())
    edit(raw)
    capacity_file.write_text(json.dumps(raw))
    with pytest.raises(_capacity.CapacityError) as caught:
        _capacity.load(capacity_file)
    assert f"{capacity_file}: {field}" in str(caught.value)


# --- the builder -----------------------------------------------------------------------------------------------------


def test_realtime_tracks_measured_concurrency_with_headroom():
    variant = deployment.realtime(options())
    deployment.validate(variant.calls)
    assert [c.action for c in variant.calls] == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint",
                                                    "RegisterScalableTarget", "PutScalingPolicy"]
    assert params(variant, "CreateModel")["EnableNetworkIsolation"] is True
    assert "Environment" not in params(variant, "CreateModel")["PrimaryContainer"]
    config = params(variant, "PutScalingPolicy")["TargetTrackingScalingPolicyConfiguration"]
    assert config == {"TargetValue": 2.33, "PredefinedMetricSpecification": {
        "PredefinedMetricType": "SageMakerVariantConcurrentRequestsPerModelHighResolution"},
        "ScaleInCooldown": 300, "ScaleOutCooldown": 60}
    assert params(variant, "RegisterScalableTarget") == {
        "ServiceNamespace": "sagemaker", "ResourceId": f"endpoint/{NAME}/variant/AllTraffic",
        "ScalableDimension": "sagemaker:variant:DesiredInstanceCount", "MinCapacity": 1, "MaxCapacity": 4}
    tags = params(variant, "CreateEndpointConfig")["Tags"]
    assert tags == [{"Key": "searchbox:capacity", "Value": "measured:all-MiniLM-L6-v2:torch:query:2026-11-30"}]
    invocations = deployment.realtime(options(metric="invocations"))
    assert params(invocations, "PutScalingPolicy")["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 6000.0


def test_async_scales_on_backlog_to_zero_and_back_and_tells_the_container():
    variant = deployment.asynchronous(options(sns_error_topic="arn:aws:sns:us-east-1:123456789012:errors"))
    deployment.validate(variant.calls)
    model = params(variant, "CreateModel")
    assert model["PrimaryContainer"]["Environment"] == {"SEARCHBOX_ASYNC": "1"}
    config = params(variant, "CreateEndpointConfig")["AsyncInferenceConfig"]
    topic = "arn:aws:sns:us-east-1:123456789012:errors"
    assert config == {"OutputConfig": {"S3OutputPath": "s3://my-bucket/minilm/async/output/",
                                       "S3FailurePath": "s3://my-bucket/minilm/async/failures/",
                                       "NotificationConfig": {"ErrorTopic": topic}},
                      "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 8}}
    assert params(variant, "RegisterScalableTarget")["MinCapacity"] == 0
    tracking = params(variant, "PutScalingPolicy", 0)["TargetTrackingScalingPolicyConfiguration"]
    # 200 inputs/s in requests of 32 = 6.25 requests/s, x 300 s of queued work per instance
    assert tracking["TargetValue"] == 1875.0
    assert tracking["CustomizedMetricSpecification"]["MetricName"] == "ApproximateBacklogSizePerInstance"
    step = params(variant, "PutScalingPolicy", 1)
    alarm = params(variant, "PutMetricAlarm")
    assert step["PolicyType"] == "StepScaling" and alarm["MetricName"] == "HasBacklogWithoutCapacity"
    assert alarm["AlarmActions"] == [deployment.policy_arn_placeholder(step["PolicyName"])]


def test_inference_components_scale_copies_to_zero_with_measured_requirements():
    variant = deployment.inference_component(options())
    deployment.validate(variant.calls)
    config = params(variant, "CreateEndpointConfig")
    assert config["ExecutionRoleArn"] == ROLE and "ModelName" not in config["ProductionVariants"][0]
    assert config["ProductionVariants"][0]["ManagedInstanceScaling"] == {
        "Status": "ENABLED", "MinInstanceCount": 0, "MaxInstanceCount": 4}
    component = params(variant, "CreateInferenceComponent")
    # 4 torch threads measured; resident 600 MB x 1.25 = 750, rounded up to 768
    assert component["Specification"]["ComputeResourceRequirements"] == {
        "NumberOfCpuCoresRequired": 4.0, "MinMemoryRequiredInMb": 768}
    assert component["RuntimeConfig"] == {"CopyCount": 1}
    assert params(variant, "RegisterScalableTarget")["ScalableDimension"] == \
        "sagemaker:inference-component:DesiredCopyCount"
    assert params(variant, "RegisterScalableTarget")["MinCapacity"] == 0
    tracking = params(variant, "PutScalingPolicy", 0)["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == \
        "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution"
    assert tracking["TargetValue"] == 2.33
    assert params(variant, "PutMetricAlarm")["MetricName"] == "NoCapacityInvocationFailures"


def test_serverless_fits_the_model_in_memory_or_refuses_by_name():
    variant = deployment.serverless(options())
    deployment.validate(variant.calls)
    assert params(variant, "CreateEndpointConfig")["ProductionVariants"][0]["ServerlessConfig"] == {
        "MemorySizeInMB": 1024, "MaxConcurrency": 20}
    assert "EnableNetworkIsolation" not in params(variant, "CreateModel")
    with pytest.raises(deployment.Refused, match=r"^ServerlessConfig.MemorySizeInMB: the model needs 6272 MB"):
        deployment.serverless(options(measurements=fixture_measurements(rss_mb=5000.0)))
    with pytest.raises(deployment.Refused, match=r"^--model-package-arn: serverless inference does not run"):
        deployment.serverless(options(model_package_arn="arn:aws:sagemaker:us-east-1:123456789012:model-package/x",
                                      image=None, model_data=None))
    with pytest.raises(deployment.Refused, match=r"^--serverless-max-concurrency: 500"):
        deployment.serverless(options(serverless_max_concurrency=500))


def test_serverless_is_refused_for_a_gpu_only_product():
    raw = yaml.safe_load(CATALOG.read_text())
    raw["products"][0]["instance_types"] = {"realtime": ["ml.g5.xlarge"], "batch": ["ml.g5.xlarge"]}
    raw["products"][0]["prices_per_hour"]["batch"] = {"ml.g5.xlarge": 0.4}
    product = _catalog.parse_catalog(raw, base_dir=PACKAGING)[0]
    with pytest.raises(deployment.Refused, match=r"^instance_types.realtime: .*serverless inference has no GPU"):
        deployment.serverless(options(product=product))


def test_batch_job_is_sized_for_its_input():
    variant = deployment.batch(options())
    deployment.validate(variant.calls)
    job = params(variant, "CreateTransformJob")
    # 8,333 rows/MB: at 8 calls (200 inputs/s, 25/s each) 1 MB takes 333 s > 300; at 4 calls (150 inputs/s,
    # 37.5/s each) 1 MB takes 222 s, 2 MB 444 s: 4 x 1 MB; 1,000,000 rows / (150/s x 3600 s) -> 2 instances
    assert (job["MaxConcurrentTransforms"], job["MaxPayloadInMB"]) == (4, 1)
    assert job["TransformResources"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 2}
    assert (job["BatchStrategy"], job["TransformInput"]["SplitType"], job["TransformOutput"]["AssembleWith"]) == (
        "MultiRecord", "Line", "Line")
    assert job["TransformInput"]["ContentType"] == "text/csv"
    # longer rows: 833 rows/MB, 8 calls at 25/s each: 9 MB answers in 300 s, 10 MB would not; 8 x 9 = 72 <= 100
    wide = params(deployment.batch(options(input_rows=100_000)), "CreateTransformJob")
    assert (wide["MaxConcurrentTransforms"], wide["MaxPayloadInMB"]) == (8, 9)
    assert wide["TransformResources"]["InstanceCount"] == 1


def test_every_batch_size_keeps_within_the_payload_budget():
    levels = measurement("local", "batch").levels
    for rows, mb in ((10, 1.0), (1_000, 3.0), (50_000, 100.0), (100_000, 10.0), (3_000_000, 400.0)):
        size = deployment.batch_size(rows, mb, levels, target_hours=1, max_instances=4, max_rows_per_body=50_000)
        assert size.max_concurrent_transforms * size.max_payload_mb <= 100
        assert size.rows_per_payload <= 50_000 and size.seconds_per_payload <= 300
    with pytest.raises(deployment.Refused, match=r"^--input-mb: a 1 MB payload holds"):
        deployment.batch_size(10_000_000, 1.0, levels, target_hours=1, max_instances=4, max_rows_per_body=50_000)


def test_azure_deployment_and_autoscale_load_with_the_azure_sdks(tmp_path):
    variant = deployment.azure(options())
    deployment.write(tmp_path, [variant], {}, options())  # loads both back before moving them in
    from azure.ai.ml import load_online_deployment

    loaded = load_online_deployment(tmp_path / "azure" / "deployment.yml")
    assert loaded.request_settings.max_concurrent_requests_per_instance == 8  # measured on Standard_NC4as_T4_v3
    assert loaded.liveness_probe.timeout == 2
    autoscale = json.loads((tmp_path / "azure" / "autoscale.json").read_text())
    profile = autoscale["properties"]["profiles"][0]
    assert profile["capacity"] == {"minimum": "1", "maximum": "4", "default": "1"}
    metrics = [(r["metricTrigger"]["metricName"], r["metricTrigger"]["operator"], r["metricTrigger"]["threshold"])
               for r in profile["rules"]]
    assert metrics == [("RequestLatency_P95", "GreaterThan", 800.0), ("GpuUtilizationPercentage", "GreaterThan", 70.0),
                       ("RequestLatency_P95", "LessThan", 500.0), ("GpuUtilizationPercentage", "LessThan", 30.0)]


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda d: d["properties"]["profiles"][0]["rules"][0]["scaleAction"].pop("cooldown"),
     "scaleAction.cooldown: required"),
    (lambda d: d["properties"]["profiles"][0]["rules"][0]["metricTrigger"].update(operator="Above"),
     "'Above' is not one of Equals"),
    (lambda d: d["properties"].update(enable=True), "properties.enable: not a member"),
    (lambda d: d["properties"]["profiles"][0]["rules"][1]["metricTrigger"].update(timeWindow="5 minutes"),
     "'5 minutes' is not an ISO 8601 duration"),
])
def test_the_autoscale_check_is_the_sdks_model(edit, reason):
    document = json.loads(deployment.azure(options()).files["autoscale.json"])
    deployment.check_autoscale(copy.deepcopy(document))
    edit(document)
    with pytest.raises(deployment.Refused, match=r"^autoscale.json: ") as caught:
        deployment.check_autoscale(document)
    assert reason in str(caught.value)


def test_an_unmeasured_instance_type_is_refused_unless_an_assumption_is_stated():
    with pytest.raises(_capacity.CapacityError) as caught:
        deployment.realtime(options(instance_type="ml.c6i.xlarge"))
    message = str(caught.value)
    assert message.startswith("--instance-type: ml.c6i.xlarge was not measured")
    assert "local (" in message and "ml.m5.xlarge (" in message and "--assume-capacity-from" in message
    variant = deployment.realtime(options(instance_type="ml.c6i.xlarge", assume_from="local"))
    assert variant.plan[0].startswith("- capacity: ASSUMED (--assume-capacity-from local)")
    assert params(variant, "CreateEndpointConfig")["Tags"][0]["Value"].startswith("assumed-from-local:")
    with pytest.raises(_capacity.CapacityError, match=r"^--assume-capacity-from: 'ml.p4d.24xlarge'"):
        deployment.realtime(options(instance_type="ml.c6i.xlarge", assume_from="ml.p4d.24xlarge"))


@pytest.mark.parametrize(("variant", "mode", "listed"), [
    ("realtime", "realtime", "ml.c6i.xlarge, ml.m5.xlarge, ml.g5.xlarge"),
    ("asynchronous", "realtime", "ml.c6i.xlarge, ml.m5.xlarge, ml.g5.xlarge"),
    ("inference_component", "realtime", "ml.c6i.xlarge, ml.m5.xlarge, ml.g5.xlarge"),
    ("batch", "batch", "ml.m5.xlarge, ml.g5.xlarge")])
def test_an_instance_type_the_product_does_not_list_is_refused_even_when_measured(variant, mode, listed):
    """catalog.example.yaml's product lists its instance types per mode (the `listed` strings are copied from its
    `instance_types`): a measured type outside that list is not the product's to deploy on."""
    measured = fixture_measurements() + [measurement("ml.c5.xlarge", shape) for shape in ("query", "batch")]
    with pytest.raises(deployment.Refused) as caught:
        getattr(deployment, variant)(options(instance_type="ml.c5.xlarge", measurements=measured))
    assert str(caught.value) == (f"--instance-type: ml.c5.xlarge is not a {mode} instance type of the product "
                                 f"(searchbox-minilm-embeddings: instance_types.{mode} lists {listed})")


def test_a_realtime_only_instance_type_is_refused_for_a_batch_job():
    measured = fixture_measurements() + [measurement("ml.c6i.xlarge", shape) for shape in ("query", "batch")]
    assert deployment.realtime(options(instance_type="ml.c6i.xlarge", measurements=measured)).calls
    with pytest.raises(deployment.Refused, match=r"^--instance-type: ml.c6i.xlarge is not a batch instance type"):
        deployment.batch(options(instance_type="ml.c6i.xlarge", measurements=measured))


def test_a_request_botocore_would_refuse_is_caught():
    variant = deployment.realtime(options(max_instances=4))
    params(variant, "CreateEndpointConfig")["ProductionVariants"][0]["InstanceType"] = "ml.m5.huge"
    with pytest.raises(_aws.RequestInvalid, match=r"ProductionVariants\[0\].InstanceType: 'ml.m5.huge'"):
        deployment.validate(variant.calls)


def _build(tmp_path, capacity, *extra, out=None):
    out = out or tmp_path / "deploy"
    command = [sys.executable, str(PACKAGING / "deployment.py"), "build", "--catalog", str(CATALOG),
               "--instance-type", "ml.m5.xlarge", "--image", IMAGE, "--model-data", MODEL_DATA, "--role-arn", ROLE,
               "--bucket", "s3://my-bucket/minilm", "--capacity", str(capacity), "--input-rows", "1000000",
               "--input-mb", "120", "-o", str(out), *extra]
    return subprocess.run(command, capture_output=True, text=True), out


def test_build_from_the_command_line_writes_every_variant_and_the_plan(tmp_path, capacity_file):
    result, out = _build(tmp_path, capacity_file)
    assert result.returncode == 0, result.stderr
    for variant in ("realtime", "async", "serverless", "inference-component", "batch"):
        calls = deployment.load_calls(out / variant / "requests.json")  # validated again on load
        assert calls
    assert {p.name for p in (out / "azure").iterdir()} == {"deployment.yml", "autoscale.json"}
    plan = (out / "plan.md").read_text()
    assert "SEARCHBOX_ASYNC=1" in plan and "measured: all-MiniLM-L6-v2 (torch)" in plan
    assert "issue" not in plan.lower()  # the plan speaks to whoever deploys, not of the project's history


def test_build_refusals_name_the_flag_and_write_nothing(tmp_path, capacity_file):
    result, out = _build(tmp_path, capacity_file, "--instance-type", "ml.c6i.xlarge", "--variant", "realtime")
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.startswith("refused: --instance-type: ml.c6i.xlarge was not measured")
    result, out = _build(tmp_path, tmp_path / "missing.json")
    assert result.returncode == 2 and result.stderr.startswith("refused: --capacity:") and not out.exists()
    result, out = _build(tmp_path, capacity_file, "--instance-type", "ml.c6i.xlarge", "--variant", "realtime",
                         "--assume-capacity-from", "local")
    assert result.returncode == 0 and "ASSUMED capacity" in result.stderr
    assert "**Assumption:**" in (out / "plan.md").read_text()


# --- moto: the whole sequence, described back --------------------------------------------------------------------


@pytest.fixture
def moto_url():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    requests.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()
    yield url
    server.stop()


def _client(service: str, url: str):
    return boto3.client(service, region_name="us-east-1", endpoint_url=url, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def test_the_whole_sequence_against_moto(tmp_path, capacity_file, moto_url):
    """Create model, endpoint config, endpoint, register target, put policies and alarm, then describe them back.
    (moto has no inference components: that variant is checked against botocore's model only.)"""
    result, out = _build(tmp_path, capacity_file)
    assert result.returncode == 0, result.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    for variant in ("realtime", "async", "serverless", "batch"):
        applied = subprocess.run([sys.executable, str(PACKAGING / "deployment.py"), "apply",
                                  str(out / variant / "requests.json"), "--no-dry-run", "--endpoint-url", moto_url],
                                 capture_output=True, text=True, env=env)
        assert applied.returncode == 0, applied.stderr
    sagemaker, scaling, cloudwatch = (_client(s, moto_url) for s in ("sagemaker", "application-autoscaling",
                                                                     "cloudwatch"))
    assert sagemaker.describe_endpoint(EndpointName=NAME)["EndpointConfigName"] == NAME
    assert sagemaker.describe_model(ModelName=f"{NAME}-async")["PrimaryContainer"]["Environment"] == {
        "SEARCHBOX_ASYNC": "1"}
    async_config = sagemaker.describe_endpoint_config(EndpointConfigName=f"{NAME}-async")
    assert async_config["AsyncInferenceConfig"]["ClientConfig"] == {"MaxConcurrentInvocationsPerInstance": 8}
    serverless = sagemaker.describe_endpoint_config(EndpointConfigName=f"{NAME}-serverless")
    assert serverless["ProductionVariants"][0]["ServerlessConfig"]["MemorySizeInMB"] == 1024
    job = sagemaker.describe_transform_job(TransformJobName=f"{NAME}-batch")
    assert (job["MaxConcurrentTransforms"], job["MaxPayloadInMB"], job["TransformResources"]["InstanceCount"]) == (
        4, 1, 2)
    targets = {t["ResourceId"]: t for t in scaling.describe_scalable_targets(ServiceNamespace="sagemaker")[
        "ScalableTargets"]}
    assert (targets[f"endpoint/{NAME}/variant/AllTraffic"]["MinCapacity"],
            targets[f"endpoint/{NAME}-async/variant/AllTraffic"]["MinCapacity"]) == (1, 0)
    policies = {p["PolicyName"]: p for p in scaling.describe_scaling_policies(ServiceNamespace="sagemaker")[
        "ScalingPolicies"]}
    assert policies[f"{NAME}-concurrency"]["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 2.33
    step = policies[f"{NAME}-async-HasBacklogWithoutCapacity"]
    assert step["PolicyType"] == "StepScaling"
    alarm = cloudwatch.describe_alarms(AlarmNames=[f"{NAME}-async-HasBacklogWithoutCapacity"])["MetricAlarms"][0]
    assert alarm["AlarmActions"] == [step["PolicyARN"]]  # the placeholder became the policy's real ARN
    assert (alarm["MetricName"], alarm["Threshold"], alarm["EvaluationPeriods"]) == (
        "HasBacklogWithoutCapacity", 1.0, 2)


def test_apply_is_a_dry_run_by_default(tmp_path, capacity_file, moto_url):
    built, out = _build(tmp_path, capacity_file, "--variant", "realtime")
    assert built.returncode == 0, built.stderr
    dry = subprocess.run([sys.executable, str(PACKAGING / "deployment.py"), "apply",
                          str(out / "realtime" / "requests.json"), "--endpoint-url", moto_url],
                         capture_output=True, text=True)
    assert dry.returncode == 0 and "dry run: 5 calls" in dry.stdout and "create_endpoint_config(" in dry.stdout
    assert _client("sagemaker", moto_url).list_endpoints()["Endpoints"] == []
