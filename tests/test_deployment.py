"""packaging/deployment.py and the capacity file: sizing from measured capacity, checked with the clouds' own models,
replayed against moto. Every expected number below is worked out by hand from the fixture's levels."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import requests
import yaml

from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
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


def _level(concurrency: int, inputs_per_s: float, errors: int = 0) -> _capacity.Level:
    return _capacity.Level(concurrency, inputs_per_s, inputs_per_s, 100.0, 200.0, errors)


def _size(levels, rows=1_000, mb=1.0, *, target_hours=1.0, max_instances=4, max_rows_per_body=1_000_000):
    return deployment.batch_size(rows, mb, tuple(levels), target_hours=target_hours, max_instances=max_instances,
                                 max_rows_per_body=max_rows_per_body)


def test_a_batch_size_ignores_levels_that_had_errors():
    # the 4-call level is the fastest but failed calls: of 1 and 2 calls, 2 (180/s) is the best and its own knee;
    # 1,000 rows/MB at 90/s per call: 27 MB answers in 300 s (half the 600 s limit), 28 MB would not
    size = _size([_level(1, 100.0), _level(2, 180.0), _level(4, 400.0, errors=3)])
    assert (size.max_concurrent_transforms, size.max_payload_mb, size.rows_per_payload) == (2, 27, 27_000)
    assert size.seconds_per_payload == pytest.approx(300.0)
    assert size.inputs_per_s == 180.0


def test_a_batch_size_from_levels_that_all_had_errors_still_goes_by_concurrency():
    # nothing clean: every level counts, in concurrency order whatever order the file gave them in; 4 calls
    # (400/s, the best) at 100/s each: 30 MB answers in 300 s, and 4 x 25 MB is the 100 MB budget
    size = _size([_level(4, 400.0, errors=1), _level(2, 180.0, errors=1), _level(1, 100.0, errors=1)])
    assert (size.max_concurrent_transforms, size.max_payload_mb) == (4, 25)


def test_a_level_at_exactly_ninety_percent_of_the_best_is_the_knee():
    # 90 inputs/s is 0.9 x 100: one call is enough; 90/s per call -> 27 MB of 1,000 rows in 300 s
    size = _size([_level(1, 90.0), _level(2, 100.0)])
    assert (size.max_concurrent_transforms, size.max_payload_mb) == (1, 27)


def test_a_payload_of_exactly_the_rows_per_body_is_allowed():
    # 1,000 rows/MB and 5,000 rows per body: 5 MB holds exactly 5,000 rows (5 s at 1,000/s), 6 MB would not fit
    size = _size([_level(1, 1_000.0)], max_rows_per_body=5_000)
    assert (size.max_payload_mb, size.rows_per_payload) == (5, 5_000)
    assert size.seconds_per_payload == pytest.approx(5.0)


def test_batch_instances_and_hours_follow_the_target_hours():
    # one instance does 100/s x 2 h x 3,600 s = 720,000 rows in the 2 h target: one row more than three
    # instances' worth needs a fourth; four then take 2,160,001 / 400 / 3,600 = 1.5000007 h
    size = _size([_level(1, 100.0)], rows=2_160_001, mb=21_600.01, target_hours=2.0, max_instances=10)
    assert size.instances == 4
    assert size.hours == pytest.approx(2_160_001 / 400 / 3_600, rel=1e-9)
    capped = _size([_level(1, 100.0)], rows=2_160_001, mb=21_600.01, target_hours=2.0, max_instances=3)
    assert capped.instances == 3
    assert capped.hours == pytest.approx(2_160_001 / 300 / 3_600, rel=1e-9)


def test_a_batch_too_slow_even_for_one_megabyte_names_the_slowest_clean_level():
    # 100,000 rows/MB; the slowest clean level is 2 calls at 10/s (5/s each): 1 MB takes 20,000 s
    with pytest.raises(deployment.Refused) as caught:
        _size([_level(4, 16.0), _level(2, 10.0), _level(1, 50.0, errors=2)], rows=100_000)
    assert str(caught.value) == (
        "--input-mb: a 1 MB payload holds ~100000 rows: 20000 s with one call in flight at the measured 10.0 "
        "inputs/s (half the 600 s per call is allowed), or more than the container's 1000000 rows per body")


@pytest.mark.parametrize("missing", ["input_rows", "input_mb"])
def test_a_batch_job_needs_both_its_rows_and_its_size(missing):
    with pytest.raises(deployment.Refused) as caught:
        deployment.batch(options(**{missing: None}))
    assert str(caught.value) == ("--input-rows: the batch job is sized for an input: give --input-rows (lines) and "
                                 "--input-mb (total size)")


@pytest.mark.parametrize(("rows", "mb"), [(0, 120.0), (1_000_000, 0.0), (1_000_000, -1.0)])
def test_a_batch_input_of_no_rows_or_no_size_is_refused(rows, mb):
    with pytest.raises(deployment.Refused) as caught:
        deployment.batch(options(input_rows=rows, input_mb=mb))
    assert str(caught.value) == "--input-rows: --input-rows and --input-mb must be > 0"


def test_the_smallest_batch_input_is_sized():
    # one row in half a megabyte is a real input (the limits are > 0): one instance, one call in flight would do
    job = params(deployment.batch(options(input_rows=1, input_mb=0.5)), "CreateTransformJob")
    assert job["TransformResources"]["InstanceCount"] == 1


def test_the_batch_job_writes_where_the_plan_says_and_retries_once():
    variant = deployment.batch(options())
    job = params(variant, "CreateTransformJob")
    # --bucket s3://my-bucket/minilm: the URL's prefix is the key prefix
    assert job["TransformOutput"]["S3OutputPath"] == "s3://my-bucket/minilm/batch/output/"
    assert job["ModelClientConfig"] == {"InvocationsTimeoutInSeconds": 600, "InvocationsMaxRetries": 1}
    # 1,000,000 rows of 120 MB: 8,333 rows/MB; 4 calls (150/s, 37.5/s each) of 1 MB: 8,333 rows in 222 s;
    # two instances at 150/s: 1,000,000 / 300 / 3,600 = 0.93 h
    assert variant.plan[1] == ("- throughput: 150.0 inputs/s per instance with 4 calls in flight (the fewest measured "
                               "to reach 90% of the best throughput; fewer where a 1 MB payload would not answer in "
                               "time)")
    assert variant.plan[2] == "- input: 1000000 rows, 120 MB: 2 instance(s) (target 1 h, at most 4): about 0.93 h"
    assert variant.plan[3] == ("- MaxConcurrentTransforms 4 x MaxPayloadInMB 1 = 4 <= 100; a payload of ~8333 rows "
                               "answers in ~222 s (per-call limit 600 s)")
    assert variant.plan[4] == ("- text/csv, SplitType Line, BatchStrategy MultiRecord, AssembleWith Line; a template: "
                               "TransformJobName must be new for every job")


def test_a_batch_job_on_an_unmeasured_type_uses_the_stated_assumption():
    measured = [measurement("local", "batch")]
    variant = deployment.batch(options(measurements=measured, assume_from="local"))
    assert variant.plan[0].startswith("- capacity: ASSUMED (--assume-capacity-from local)")


def test_realtime_plan_states_the_target_it_tracks_and_how_it_was_derived():
    # the fixture's query curve at headroom 0.5 (test_sustained_level_and_targets_follow_the_p95_target):
    # 100 requests/s, 2.33 in flight, 6,000 invocations a minute; --min-instances 1..--max-instances 4
    concurrency = deployment.realtime(options())
    assert concurrency.plan[3] == (
        "- target tracking: 2.33 concurrent requests per instance (high-resolution, every 10 s): in flight at 100 "
        "requests/s on the measured curve (sustained rate x headroom 0.5); 1..4 instances of ml.m5.xlarge; "
        "scale-out cooldown 60 s, scale-in cooldown 300 s")
    invocations = deployment.realtime(options(metric="invocations"))
    assert invocations.plan[3] == (
        "- target tracking: 6000 invocations per instance per minute: 100 requests/s x 60 (sustained rate x headroom "
        "0.5); 1..4 instances of ml.m5.xlarge; scale-out cooldown 60 s, scale-in cooldown 300 s")
    # --p95-ms replaces the measurement's own 1,000 ms target in what the plan says it sustains
    assert concurrency.plan[1].startswith("- sustained at p95 <= 1000 ms: ")
    assert deployment.realtime(options(p95_ms=100.0)).plan[1].startswith("- sustained at p95 <= 100 ms: ")


def test_serverless_memory_of_exactly_a_step_takes_that_step():
    # 4,096 MB resident + 25% is 5,120 MB exactly: serverless' 5 GB step, not the 6 GB one
    variant = deployment.serverless(options(measurements=fixture_measurements(rss_mb=4096.0)))
    serverless = params(variant, "CreateEndpointConfig")["ProductionVariants"][0]["ServerlessConfig"]
    assert serverless["MemorySizeInMB"] == 5120
    assert variant.plan[0].startswith("- memory 5120 MB: resident memory 4096 MB measured (")
    assert variant.plan[0].endswith(") + 25%, rounded up to serverless' 1 GB steps")
    assert variant.plan[1:] == [
        "- MaxConcurrency 20 (--serverless-max-concurrency): serverless scales itself, from zero, within it; "
        "requests and answers of at most 4 MB, 60 s per request, no GPU",
        "- throughput per concurrent invocation is not measured here (serverless gives vCPUs in proportion to "
        "memory): load-test before relying on it"]
    # the fixture's 600 MB + 25% = 750 MB: the smallest step
    assert deployment.serverless(options()).plan[0].startswith("- memory 1024 MB: resident memory 600 MB measured (")


def test_serverless_refusals_state_the_numbers():
    # 5,000 MB + 25% = 6,250 MB, rounded up to 64 MB: 6,272 MB; the largest serverless size is 6,144 MB
    with pytest.raises(deployment.Refused) as caught:
        deployment.serverless(options(measurements=fixture_measurements(rss_mb=5000.0)))
    assert str(caught.value) == ("ServerlessConfig.MemorySizeInMB: the model needs 6272 MB (resident memory measured "
                                 "5000 MB + 25%); serverless allows at most 6144 MB")
    with pytest.raises(deployment.Refused) as caught:
        deployment.serverless(options(serverless_max_concurrency=201))
    assert str(caught.value) == ("--serverless-max-concurrency: 201 is outside 1..200 "
                                 "(ServerlessConfig.MaxConcurrency)")
    with pytest.raises(deployment.Refused, match=r"^--serverless-max-concurrency: 0 is outside 1\.\.200"):
        deployment.serverless(options(serverless_max_concurrency=0))
    for limit in (1, 200):  # both ends of ServerlessConfig.MaxConcurrency's range are allowed
        variant = deployment.serverless(options(serverless_max_concurrency=limit))
        assert params(variant, "CreateEndpointConfig")["ProductionVariants"][0]["ServerlessConfig"][
            "MaxConcurrency"] == limit


def test_serverless_refusal_for_gpus_lists_every_realtime_type():
    raw = yaml.safe_load(CATALOG.read_text())
    raw["products"][0]["instance_types"] = {"realtime": ["ml.g5.xlarge", "ml.g4dn.xlarge"], "batch": ["ml.g5.xlarge"]}
    raw["products"][0]["prices_per_hour"]["batch"] = {"ml.g5.xlarge": 0.4}
    product = _catalog.parse_catalog(raw, base_dir=PACKAGING)[0]
    with pytest.raises(deployment.Refused) as caught:
        deployment.serverless(options(product=product))
    assert str(caught.value) == ("instance_types.realtime: every real-time type of searchbox-minilm-embeddings has an "
                                 "accelerator (ml.g5.xlarge, ml.g4dn.xlarge); serverless inference has no GPU")


def test_inference_component_wakes_from_zero_on_the_first_failed_call():
    variant = deployment.inference_component(options())
    step = f"{NAME}-ic-NoCapacityInvocationFailures"
    # Sum >= 1 over one minute: the first call that finds no copy adds one (SageMaker's example waits for a second)
    assert params(variant, "PutMetricAlarm") == {
        "AlarmName": step, "AlarmDescription": "A call reached the endpoint with no copy: add one",
        "MetricName": "NoCapacityInvocationFailures", "Namespace": "AWS/SageMaker",
        "Dimensions": [{"Name": "InferenceComponentName", "Value": f"{NAME}-ic"}],
        "Statistic": "Sum", "Period": 60, "EvaluationPeriods": 1, "DatapointsToAlarm": 1, "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold", "TreatMissingData": "notBreaching",
        "AlarmActions": ["{{PolicyARN:" + step + "}}"]}
    assert params(variant, "CreateEndpointConfig")["ProductionVariants"][0]["InitialInstanceCount"] == 1
    assert variant.plan[3] == ("- one copy needs 4 CPU cores (the torch threads measured) and 768 MB (resident "
                               "600 MB + 25%)")
    assert variant.plan[5] == (f"- from zero: step policy {step} (+1 copy) on alarm NoCapacityInvocationFailures >= 1 "
                               "in a minute; calls fail until a copy is in service (minutes): a client must retry them")
    assert variant.plan[1].startswith("- sustained at p95 <= 1000 ms: ")
    assert deployment.inference_component(options(p95_ms=100.0)).plan[1].startswith("- sustained at p95 <= 100 ms: ")


def test_an_inference_component_measured_on_a_gpu_asks_for_one():
    measured = fixture_measurements() + [measurement("ml.g5.xlarge", "query", gpu="NVIDIA A10G")]
    variant = deployment.inference_component(options(instance_type="ml.g5.xlarge", measurements=measured))
    assert params(variant, "CreateInferenceComponent")["Specification"]["ComputeResourceRequirements"] == {
        "NumberOfCpuCoresRequired": 4.0, "MinMemoryRequiredInMb": 768, "NumberOfAcceleratorDevicesRequired": 1.0}
    assert variant.plan[3] == ("- one copy needs 4 CPU cores (the torch threads measured) and 768 MB (resident "
                               "600 MB + 25%), 1 GPU")


def test_azure_deployment_and_autoscale_load_with_the_azure_sdks(tmp_path):
    variant = deployment.azure(options())
    deployment.write(tmp_path, [variant], {}, options())  # loads both back before moving them in
    from azure.ai.ml import load_environment, load_online_deployment

    loaded = load_online_deployment(tmp_path / "azure" / "deployment.yml")
    assert loaded.request_settings.max_concurrent_requests_per_instance == 8  # measured on Standard_NC4as_T4_v3
    # the environment the deployment names is written beside it, with the image asked for
    environment = load_environment(tmp_path / "azure" / "environment.yml")
    assert (environment.image, f"azureml:{environment.name}:{environment.version}") == (
        "myacr.azurecr.io/searchbox:1.0", yaml.safe_load((tmp_path / "azure" / "deployment.yml").read_text())[
            "environment"])
    assert environment.inference_config.scoring_route.path == "/score"  # azureml-inference-server-http's route
    assert "az ml environment create -f environment.yml" in "\n".join(variant.plan)  # the plan says it comes first
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


# --- the command line ------------------------------------------------------------------------------------------------
# In this process (deployment.main), where mutation testing traces it and no interpreter start costs ~1.5 s; one test
# runs the script itself, for its entry point and its sys.path.

REQUIRED = {"--catalog": CATALOG, "--instance-type": "ml.m5.xlarge", "--role-arn": ROLE}
BUILD_FLAGS = {"--image": IMAGE, "--model-data": MODEL_DATA, "--bucket": "s3://my-bucket/minilm",
               "--input-rows": "1000000", "--input-mb": "120"}


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def _main(*argv) -> Ran:
    """deployment.main in this process; argparse's own refusals (SystemExit) become a return code as in a shell."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = deployment.main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return Ran(code, out.getvalue(), err.getvalue())


def _build_argv(capacity, out, *extra, drop=()) -> list[str]:
    flags = {**REQUIRED, **BUILD_FLAGS, "--capacity": capacity, "-o": out}
    return ["build", *(str(x) for flag, value in flags.items() if flag not in drop for x in (flag, value)), *extra]


def _build(tmp_path, capacity, *extra, out=None, drop=()):
    out = out or tmp_path / "deploy"
    return _main(*_build_argv(capacity, out, *extra, drop=drop)), out


def _calls(out: Path, variant: str) -> list[dict]:
    """requests.json as written, read with json alone: the format `apply` (and anyone else) reads."""
    return json.loads((out / variant / "requests.json").read_text())


def _written(out: Path, variant: str, operation: str, index: int = 0) -> dict:
    return [c["params"] for c in _calls(out, variant) if c["operation"] == operation][index]


def _autoscale(out: Path) -> dict:
    return json.loads((out / "azure" / "autoscale.json").read_text())


def test_the_script_runs_as_a_command(tmp_path, capacity_file):
    """The one run of the script itself: its `__main__` and the sys.path it sets up to import its neighbours."""
    out = tmp_path / "deploy"
    result = subprocess.run([sys.executable, str(PACKAGING / "deployment.py"),
                             *_build_argv(capacity_file, out, "--variant", "realtime")],
                            capture_output=True, text=True, cwd=PACKAGING.parent, check=False)  # README's cwd
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"wrote {out / 'realtime' / 'requests.json'}", f"wrote {out / 'plan.md'}"]
    assert _calls(out, "realtime")[0]["operation"] == "CreateModel"


def test_build_from_the_command_line_writes_every_variant_and_the_plan(tmp_path, capacity_file):
    result, out = _build(tmp_path, capacity_file)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # every variant built: nothing skipped, nothing assumed
    folders = ("realtime", "async", "serverless", "inference-component", "batch")
    assert result.stdout.splitlines() == [f"wrote {out / v / 'requests.json'}" for v in folders] + [
        f"wrote {out / 'azure' / name}" for name in ("environment.yml", "deployment.yml", "autoscale.json")] + [
        f"wrote {out / 'plan.md'}"]
    for variant in folders:
        calls = deployment.load_calls(out / variant / "requests.json")  # validated again on load
        assert calls
    first = _calls(out, "realtime")[0]
    assert first == {"service": "sagemaker", "operation": "CreateModel", "params": {
        "ModelName": NAME, "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": MODEL_DATA},
        "ExecutionRoleArn": ROLE, "EnableNetworkIsolation": True}}
    assert {p.name for p in (out / "azure").iterdir()} == {"environment.yml", "deployment.yml", "autoscale.json"}
    plan = (out / "plan.md").read_text()
    assert "SEARCHBOX_ASYNC=1" in plan and "measured: all-MiniLM-L6-v2 (torch)" in plan
    assert "issue" not in plan.lower()  # the plan speaks to whoever deploys, not of the project's history


def test_build_defaults_are_the_documented_ones(tmp_path, capacity_file):
    """README's Scaling section: headroom 0.5 (SageMaker's SAFETY_FACTOR), target tracking on concurrent requests,
    scale-in cooldown 300 s and scale-out 60 s; the plan's 1..4 instances, MaxConcurrency 20, a batch job of an
    hour on text/csv, and Azure placeholders in eastus. Each number worked by hand from the fixture's levels."""
    result, out = _build(tmp_path, capacity_file)
    assert result.returncode == 0, result.stderr
    assert _written(out, "realtime", "PutScalingPolicy")["PolicyName"] == f"{NAME}-concurrency"
    assert _target(out) == {
        "TargetValue": 2.33, "PredefinedMetricSpecification": {
            "PredefinedMetricType": "SageMakerVariantConcurrentRequestsPerModelHighResolution"},
        "ScaleInCooldown": 300, "ScaleOutCooldown": 60}
    assert _range(out, "realtime") == (1, 4)
    assert _written(out, "realtime", "CreateEndpointConfig")["ProductionVariants"][0]["InitialInstanceCount"] == 1
    # 6.25 requests/s (200 inputs/s in requests of 32) x 300 s of queued work
    assert _target(out, "async")["TargetValue"] == 1875.0
    assert "NotificationConfig" not in _async_output(out)
    assert _written(out, "serverless", "CreateEndpointConfig")["ProductionVariants"][0]["ServerlessConfig"] == {
        "MemorySizeInMB": 1024, "MaxConcurrency": 20}
    assert _job(out) == (4, 1, 2)
    assert _job_formats(out) == ("text/csv", "application/json")
    autoscale = _autoscale(out)
    assert autoscale["location"] == "eastus"
    assert autoscale["properties"]["targetResourceUri"] == (
        "/subscriptions/<subscription-id>/resourceGroups/<resource-group>/providers/"
        "Microsoft.MachineLearningServices/workspaces/<workspace>/onlineEndpoints/searchbox-minilm/deployments/default")
    # the capacity file README names, bench/capacity.json, read when --capacity is not given
    default = _build(tmp_path, capacity_file, "--variant", "serverless", out=tmp_path / "default",
                     drop=("--capacity",))[0]
    named = _build(tmp_path, ROOT / "bench" / "capacity.json", "--variant", "serverless", out=tmp_path / "named")[0]
    assert (default.returncode, default.stderr) == (named.returncode, named.stderr)
    if named.returncode == 0:
        assert (tmp_path / "default" / "plan.md").read_text() == (tmp_path / "named" / "plan.md").read_text()


def _target(out, variant="realtime"):
    return _written(out, variant, "PutScalingPolicy")["TargetTrackingScalingPolicyConfiguration"]


def _range(out, variant):
    register = _written(out, variant, "RegisterScalableTarget")
    return register["MinCapacity"], register["MaxCapacity"]


def _async_output(out):
    return _written(out, "async", "CreateEndpointConfig")["AsyncInferenceConfig"]["OutputConfig"]


def _job(out):
    job = _written(out, "batch", "CreateTransformJob")
    return job["MaxConcurrentTransforms"], job["MaxPayloadInMB"], job["TransformResources"]["InstanceCount"]


def _job_formats(out):
    job = _written(out, "batch", "CreateTransformJob")
    return job["TransformInput"]["ContentType"], job["TransformOutput"]["Accept"]


SNS = "arn:aws:sns:us-east-1:123456789012:"
PACKAGE = "arn:aws:sagemaker:us-east-1:123456789012:model-package/minilm"
AZURE_DEPLOYMENT = ("/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.MachineLearningServices"
                    "/workspaces/ws-1/onlineEndpoints/searchbox-minilm/deployments/default")


@pytest.mark.parametrize(("flags", "variant", "read", "expected"), [
    # p95 <= 100 ms holds up to 4 in flight (150 requests/s); x 0.5 x 60
    (["--p95-ms", "100", "--metric", "invocations"], "realtime", lambda out: _target(out)["TargetValue"], 4500.0),
    # 200 requests/s x 0.25: exactly the 50/s measured at 1 in flight
    (["--headroom", "0.25", "--metric", "concurrency"], "realtime", lambda out: _target(out)["TargetValue"], 1.0),
    (["--metric", "invocations"], "realtime",
     lambda out: (_target(out)["PredefinedMetricSpecification"]["PredefinedMetricType"], _target(out)["TargetValue"]),
     ("SageMakerVariantInvocationsPerInstance", 6000.0)),
    (["--min-instances", "2", "--max-instances", "6"], "realtime",
     lambda out: (*_range(out, "realtime"),
                  _written(out, "realtime", "CreateEndpointConfig")["ProductionVariants"][0]["InitialInstanceCount"]),
     (2, 6, 2)),
    (["--min-instances", "0"], "realtime", lambda out: _range(out, "realtime"), (1, 4)),  # real-time keeps one
    (["--scale-in-cooldown", "600", "--scale-out-cooldown", "120"], "realtime",
     lambda out: (_target(out)["ScaleInCooldown"], _target(out)["ScaleOutCooldown"]), (600, 120)),
    (["--name", "my-endpoint"], "realtime",
     lambda out: (_written(out, "realtime", "CreateEndpoint"), _written(out, "realtime", "PutScalingPolicy")[
         "PolicyName"]),
     ({"EndpointName": "my-endpoint", "EndpointConfigName": "my-endpoint"}, "my-endpoint-concurrency")),
    (["--product", NAME], "realtime", lambda out: _written(out, "realtime", "CreateModel")["ModelName"], NAME),
    (["--model-package-arn", PACKAGE], "realtime",
     lambda out: _written(out, "realtime", "CreateModel")["PrimaryContainer"], {"ModelPackageName": PACKAGE}),
    # 6.25 requests/s x 60 s of queued work per instance
    (["--async-backlog-s", "60"], "async", lambda out: _target(out, "async")["TargetValue"], 375.0),
    (["--max-instances", "6"], "async", lambda out: _range(out, "async"), (0, 6)),
    (["--sns-success-topic", SNS + "done", "--sns-error-topic", SNS + "failed"], "async",
     lambda out: _async_output(out)["NotificationConfig"],
     {"SuccessTopic": SNS + "done", "ErrorTopic": SNS + "failed"}),
    # --bucket and --prefix: the prefix from the URL, else --prefix ('' is the bucket's root), else --name
    (["--bucket", "my-bucket"], "async", lambda out: _async_output(out)["S3OutputPath"],
     f"s3://my-bucket/{NAME}/async/output/"),
    (["--bucket", "my-bucket", "--name", "other"], "async", lambda out: _async_output(out)["S3FailurePath"],
     "s3://my-bucket/other/async/failures/"),
    (["--bucket", "my-bucket", "--prefix", "team/embed"], "async", lambda out: _async_output(out)["S3OutputPath"],
     "s3://my-bucket/team/embed/async/output/"),
    (["--bucket", "my-bucket", "--prefix", ""], "batch",
     lambda out: _written(out, "batch", "CreateTransformJob")["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"],
     "s3://my-bucket/batch/input/"),
    (["--serverless-max-concurrency", "50"], "serverless",
     lambda out: _written(out, "serverless", "CreateEndpointConfig")["ProductionVariants"][0]["ServerlessConfig"],
     {"MemorySizeInMB": 1024, "MaxConcurrency": 50}),
    # (MaxConcurrentTransforms, MaxPayloadInMB, instances); 1,000,000 rows in 120 MB is (4, 1, 2) by default.
    # 833 rows/MB: 8 calls of 9 MB (test_batch_job_is_sized_for_its_input); 100,000 rows fit one instance's hour
    (["--input-rows", "100000"], "batch", _job, (8, 9, 1)),
    # the same 833 rows/MB from 1,000,000 rows in 1200 MB: 8 x 9 MB at 200 inputs/s is 1.39 h: 2 instances
    (["--input-mb", "1200"], "batch", _job, (8, 9, 2)),
    # 1,000,000 rows at 150 inputs/s is 1.85 h: one instance within 2 hours
    (["--target-hours", "2"], "batch", _job, (4, 1, 1)),
    (["--content-type", "application/jsonlines"], "batch", _job_formats,
     ("application/jsonlines", "application/jsonlines")),
    (["--content-type", "text/csv"], "batch", _job_formats, ("text/csv", "application/json")),
    (["--azure-subscription", "sub-1", "--azure-resource-group", "rg-1", "--azure-workspace", "ws-1",
      "--azure-location", "westeurope"], "azure",
     lambda out: (_autoscale(out)["location"], _autoscale(out)["properties"]["targetResourceUri"]),
     ("westeurope", AZURE_DEPLOYMENT)),
    (["--min-instances", "2", "--max-instances", "5"], "azure",
     lambda out: _autoscale(out)["properties"]["profiles"][0]["capacity"],
     {"minimum": "2", "maximum": "5", "default": "2"}),
    # the T4 was measured against 1000 ms: +1 instance past 80% of 400 ms, -1 under half of it
    (["--p95-ms", "400", "--scale-out-cooldown", "180", "--scale-in-cooldown", "900"], "azure",
     lambda out: [(r["metricTrigger"]["threshold"], r["scaleAction"]["cooldown"])
                  for r in _autoscale(out)["properties"]["profiles"][0]["rules"]],
     [(320.0, "PT3M"), (70.0, "PT3M"), (200.0, "PT15M"), (30.0, "PT15M")]),
])
def test_each_build_flag_reaches_the_written_requests(tmp_path, capacity_file, flags, variant, read, expected):
    result, out = _build(tmp_path, capacity_file, "--variant", variant, *flags,
                         drop=("--image", "--model-data") if "--model-package-arn" in flags else ())
    assert result.returncode == 0, result.stderr
    assert read(out) == expected


@pytest.mark.parametrize(("flags", "drop", "stderr"), [
    ([], ("--catalog",), "the following arguments are required: --catalog"),
    ([], ("--instance-type",), "the following arguments are required: --instance-type"),
    ([], ("--role-arn",), "the following arguments are required: --role-arn"),
    ([], ("-o",), "the following arguments are required: -o/--out-dir"),
    (["--variant", "spot"], (), "argument --variant: invalid choice: 'spot'"),
    (["--metric", "latency"], (), "argument --metric: invalid choice: 'latency'"),
    (["--content-type", "application/json"], (), "argument --content-type: invalid choice: 'application/json'"),
    (["--headroom", "half"], (), "argument --headroom: invalid float value: 'half'"),
    (["--min-instances", "1.5"], (), "argument --min-instances: invalid int value: '1.5'"),
])
def test_argparse_refuses_a_missing_or_unknown_flag_value_by_name(tmp_path, capacity_file, flags, drop, stderr):
    result, out = _build(tmp_path, capacity_file, *flags, drop=drop)
    assert result.returncode == 2 and stderr in result.stderr and not out.exists()


def test_help_lists_every_flag_the_readme_documents():
    """README's Scaling section names these; --help is where someone looks for them."""
    build_help = _main("build", "--help")
    assert build_help.returncode == 0
    for flag in ("--catalog", "--instance-type", "--image", "--model-data", "--role-arn", "--bucket", "--input-rows",
                 "--input-mb", "--target-hours", "-o", "--assume-capacity-from LABEL", "--metric",
                 "--serverless-max-concurrency", "--p95-ms", "--headroom", "--min-instances", "--max-instances"):
        assert f" {flag}" in build_help.stdout, flag
    apply_help = _main("apply", "--help")
    assert apply_help.returncode == 0 and "--no-dry-run" in apply_help.stdout


def test_a_command_is_required():
    none = _main()
    assert none.returncode == 2 and "the following arguments are required: command" in none.stderr
    missing = _main("apply")
    assert missing.returncode == 2 and "the following arguments are required: requests" in missing.stderr


def test_build_refusals_name_the_flag_and_write_nothing(tmp_path, capacity_file):
    result, out = _build(tmp_path, capacity_file, "--instance-type", "ml.c6i.xlarge", "--variant", "realtime")
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.startswith("refused: --instance-type: ml.c6i.xlarge was not measured")
    result, out = _build(tmp_path, tmp_path / "missing.json")
    assert result.returncode == 2 and result.stderr.startswith("refused: --capacity:") and not out.exists()
    result, out = _build(tmp_path, capacity_file, "--instance-type", "ml.c6i.xlarge", "--variant", "realtime",
                         "--assume-capacity-from", "local")
    assert result.returncode == 0
    assert result.stderr == ("ASSUMED capacity: ml.c6i.xlarge sized from local (--assume-capacity-from); "
                             "see plan.md\n")
    assert "**Assumption:**" in (out / "plan.md").read_text()


NAME_52 = "a" * 52  # SageMaker's 63 characters less the longest suffix, "-serverless" (11)


@pytest.mark.parametrize(("flags", "drop", "refusal"), [
    (["--name", NAME_52 + "b"], (), (f"--name: '{NAME_52}b' is 53 characters; at most 52, so that every "
                                     "variant's suffix still fits SageMaker's 63")),
    (["--name", "bad_name"], (), "--name: 'bad_name' must match"),
    (["--product", "nope"], (), "--product: no product 'nope'; the catalog holds searchbox-minilm-embeddings"),
    (["--model-package-arn", "arn:aws:sagemaker:us-east-1:123456789012:model-package/x"], (),
     ("--model-package-arn: give either --model-package-arn (a subscribed Marketplace package) or --image with "
      "--model-data (your own image and model.tar.gz), not both or neither")),
    ([], ("--image", "--model-data"), "--model-package-arn: give either"),
    ([], ("--model-data",), "--model-package-arn: give either"),
    ([], ("--image",), "--model-package-arn: give either"),
    (["--min-instances", "-1"], (), "--max-instances: 4 must be >= 1 and >= --min-instances -1"),
    (["--max-instances", "0", "--min-instances", "0"], (), "--max-instances: 0 must be >= 1 and >= --min-instances 0"),
    (["--max-instances", "2", "--min-instances", "3"], (), "--max-instances: 2 must be >= 1 and >= --min-instances 3"),
    (["--bucket", "s3://my-bucket/minilm", "--prefix", "other"], (),
     "--prefix: 'other' and the prefix 'minilm' in --bucket s3://my-bucket/minilm both name the key prefix"),
    ([], ("--bucket",), "--bucket: needed for this variant"),
    (["--role-arn", "SageMakerExec"], (), "sagemaker CreateModel:"),  # botocore's model refuses a bare role name
])
def test_options_are_refused_by_flag(tmp_path, capacity_file, flags, drop, refusal):
    result, out = _build(tmp_path, capacity_file, "--variant", "async", *flags, drop=drop)
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.startswith(f"refused: {refusal}"), result.stderr
    assert result.stdout == ""


def test_limits_of_the_options_are_inclusive(tmp_path, capacity_file):
    longest, out = _build(tmp_path, capacity_file, "--variant", "serverless", "--name", NAME_52)
    assert longest.returncode == 0, longest.stderr
    assert _written(out, "serverless", "CreateEndpoint")["EndpointName"] == NAME_52 + "-serverless"
    equal, out = _build(tmp_path, capacity_file, "--variant", "realtime", "--min-instances", "3",
                        "--max-instances", "3", out=tmp_path / "equal")
    assert equal.returncode == 0, equal.stderr
    assert _range(out, "realtime") == (3, 3)


def test_variant_is_repeatable_and_builds_only_those(tmp_path, capacity_file):
    result, out = _build(tmp_path, capacity_file, "--variant", "batch", "--variant", "realtime")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["batch", "plan.md", "realtime"]
    assert result.stdout.splitlines() == [f"wrote {out / 'batch' / 'requests.json'}",
                                          f"wrote {out / 'realtime' / 'requests.json'}", f"wrote {out / 'plan.md'}"]


def test_a_variant_that_cannot_be_built_is_skipped_unless_asked_for(tmp_path, capacity_file):
    package = ["--model-package-arn", "arn:aws:sagemaker:us-east-1:123456789012:model-package/x"]
    serverless_refusal = ("--model-package-arn: serverless inference does not run AWS Marketplace model packages; "
                          "deploy the image with --image and --model-data, or choose another variant")
    result, out = _build(tmp_path, capacity_file, *package, drop=("--image", "--model-data"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == (f"skipped serverless: {serverless_refusal}\nskipped azure: --azure-image: the image in "
                             "your Azure registry (or --image) is needed for Azure\n")
    assert sorted(p.name for p in out.iterdir()) == ["async", "batch", "inference-component", "plan.md", "realtime"]
    assert f"## Not built\n\n- serverless: {serverless_refusal}\n" in (out / "plan.md").read_text()
    with_azure, out = _build(tmp_path, capacity_file, *package, "--azure-image", "myacr.azurecr.io/searchbox:1.0",
                             drop=("--image", "--model-data"), out=tmp_path / "with-azure")
    assert with_azure.returncode == 0 and (out / "azure" / "autoscale.json").is_file()
    asked, out = _build(tmp_path, capacity_file, *package, "--variant", "serverless", "--variant", "realtime",
                        drop=("--image", "--model-data"), out=tmp_path / "asked")
    assert asked.returncode == 2 and asked.stderr == f"refused: {serverless_refusal}\n" and not out.exists()
    # an unmeasured instance type: the variants sized from it are skipped, serverless and Azure are not
    unmeasured, out = _build(tmp_path, capacity_file, "--instance-type", "ml.c6i.xlarge", out=tmp_path / "c6i")
    assert unmeasured.returncode == 0, unmeasured.stderr
    assert sorted(p.name for p in out.iterdir()) == ["azure", "plan.md", "serverless"]
    assert unmeasured.stderr.startswith("skipped realtime: --instance-type: ml.c6i.xlarge was not measured")


def test_nothing_buildable_is_refused_naming_every_reason(tmp_path):
    capacity = tmp_path / "onnx-only.json"  # measurements of another backend than the product's torch
    capacity.write_text(_capacity.dumps(fixture_measurements(backend="onnx")))
    result, out = _build(tmp_path, capacity)
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.startswith("refused: --variant: nothing could be built: realtime: --capacity: no "
                                     "measurement of all-MiniLM-L6-v2 (torch, query")
    for variant in ("async", "serverless", "inference-component", "batch", "azure"):
        assert f"; {variant}: " in result.stderr


# --- apply ------------------------------------------------------------------------------------------------------


def _dry_run(calls: list[dict], region: str, methods: list[str]) -> str:
    """What a dry run prints: a header counting the calls expected (one per method named), then each call as boto3's
    method with its parameters as JSON."""
    header = f"# dry run: {len(methods)} calls in {region}; nothing was sent (--no-dry-run sends them)\n"
    return header + "".join(f"{call['service']}.{method}({json.dumps(call['params'], indent=2)})\n"
                            for call, method in zip(calls, methods))


def test_apply_is_a_dry_run_by_default(tmp_path, capacity_file, moto_url):
    built, out = _build(tmp_path, capacity_file, "--variant", "realtime")
    assert built.returncode == 0, built.stderr
    requests_json = out / "realtime" / "requests.json"
    dry = _main("apply", requests_json, "--endpoint-url", moto_url)
    assert dry.returncode == 0 and dry.stderr == ""
    assert dry.stdout == _dry_run(_calls(out, "realtime"), "us-east-1", [
        "create_model", "create_endpoint_config", "create_endpoint", "register_scalable_target", "put_scaling_policy"])
    assert _main("apply", requests_json, "--region", "eu-west-1", "--dry-run").stdout.startswith(
        "# dry run: 5 calls in eu-west-1;")
    assert _client("sagemaker", moto_url).list_endpoints()["Endpoints"] == []


@pytest.mark.parametrize(("content", "refusal"), [
    (None, "requests: {path} does not exist; build it with `deployment.py build` (requests.json)"),
    ('[{"service": "sagemaker"}]', "requests: {path} is not a requests.json written by deployment.py ("),
    ('[{"service": "sagemaker", "operation": "CreateEndpoint", "params": {"EndpointName": "x"}}]',
     "sagemaker CreateEndpoint: "),
])
def test_apply_refuses_what_build_did_not_write(tmp_path, content, refusal):
    path = tmp_path / "requests.json"
    if content is not None:
        path.write_text(content)
    result = _main("apply", path, "--no-dry-run")
    assert result.returncode == 2 and result.stderr.startswith("refused: " + refusal.format(path=path))
    assert result.stdout == ""


@pytest.fixture
def aws_env(monkeypatch):
    """Credentials for moto and nothing else: no region, profile or endpoint from whoever runs the tests."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def test_a_dry_run_prints_every_call_it_would_make(tmp_path, capacity_file):
    # the fast tier's own dry run (the moto test checks the same against a server): nothing is sent, so no server
    built, out = _build(tmp_path, capacity_file, "--variant", "batch")
    assert built.returncode == 0, built.stderr
    dry = _main("apply", out / "batch" / "requests.json", "--region", "eu-west-1")
    assert (dry.returncode, dry.stderr) == (0, "")
    assert dry.stdout == _dry_run(_calls(out, "batch"), "eu-west-1", ["create_model", "create_transform_job"])


def test_a_call_that_cannot_connect_fails_naming_the_endpoint(tmp_path, aws_env, monkeypatch):
    # one attempt: botocore would otherwise retry a refused connection with backoff
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    path = tmp_path / "requests.json"
    path.write_text(json.dumps([{"service": "sagemaker", "operation": "CreateEndpoint",
                                 "params": {"EndpointName": "x", "EndpointConfigName": "x"}}]))
    result = _main("apply", path, "--no-dry-run", "--region", "eu-west-1", "--endpoint-url", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert result.stdout == "-> sagemaker CreateEndpoint x\n"
    assert result.stderr == 'failed: Could not connect to the endpoint URL: "http://127.0.0.1:9/"\n'


def test_a_placeholder_naming_no_earlier_policy_fails_before_any_call(tmp_path, aws_env):
    alarm = {"service": "cloudwatch", "operation": "PutMetricAlarm", "params": {
        "AlarmName": "a", "MetricName": "m", "Namespace": "AWS/SageMaker", "Statistic": "Sum", "Period": 60,
        "EvaluationPeriods": 1, "Threshold": 1.0, "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "AlarmActions": ["{{PolicyARN:nowhere}}"]}}
    path = tmp_path / "requests.json"
    path.write_text(json.dumps([alarm]))
    result = _main("apply", path, "--no-dry-run", "--endpoint-url", "http://127.0.0.1:9")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == ("failed: requests: {{PolicyARN:nowhere}} names no scaling policy put earlier in the "
                             "file\n")


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


def test_the_whole_sequence_against_moto(tmp_path, capacity_file, moto_url, aws_env):
    """Create model, endpoint config, endpoint, register target, put policies and alarm, then describe them back.
    (moto has no inference components: that variant is checked against botocore's model only.)"""
    result, out = _build(tmp_path, capacity_file)
    assert result.returncode == 0, result.stderr
    for variant in ("realtime", "async", "serverless", "batch"):
        applied = _main("apply", out / variant / "requests.json", "--no-dry-run", "--endpoint-url", moto_url)
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
    # a call SageMaker refuses (an endpoint of a config that does not exist) stops apply, and it says why
    missing = tmp_path / "missing-config.json"
    missing.write_text(json.dumps([{"service": "sagemaker", "operation": "CreateEndpoint",
                                    "params": {"EndpointName": "other", "EndpointConfigName": "nowhere"}}]))
    failed = _main("apply", missing, "--no-dry-run", "--endpoint-url", moto_url)
    assert failed.returncode == 1 and failed.stderr.startswith("failed: An error occurred ("), failed.stderr
    assert failed.stdout.startswith("-> sagemaker CreateEndpoint ")  # logged before the call that failed


def test_execute_logs_each_call_and_returns_the_policies_arns(tmp_path, capacity_file, moto_url, aws_env):
    result, out = _build(tmp_path, capacity_file, "--variant", "async")
    assert result.returncode == 0, result.stderr
    logged: list[str] = []
    policies = deployment.execute(deployment.load_calls(out / "async" / "requests.json"), region="eu-west-1",
                                  endpoint_url=moto_url, log=logged.append)
    name = f"{NAME}-async"
    assert logged == [f"-> sagemaker CreateModel {name}", f"-> sagemaker CreateEndpointConfig {name}",
                      f"-> sagemaker CreateEndpoint {name}",
                      f"-> application-autoscaling RegisterScalableTarget endpoint/{name}/variant/AllTraffic",
                      f"-> application-autoscaling PutScalingPolicy {name}-backlog",
                      f"-> application-autoscaling PutScalingPolicy {name}-HasBacklogWithoutCapacity",
                      f"-> cloudwatch PutMetricAlarm {name}-HasBacklogWithoutCapacity"]
    scaling = boto3.client("application-autoscaling", region_name="eu-west-1", endpoint_url=moto_url)
    described = {p["PolicyName"]: p["PolicyARN"] for p in scaling.describe_scaling_policies(
        ServiceNamespace="sagemaker")["ScalingPolicies"]}
    assert policies == described and set(policies) == {f"{name}-backlog", f"{name}-HasBacklogWithoutCapacity"}
    assert all(":eu-west-1:" in arn for arn in policies.values())  # the region asked for, not a default
    alarm = boto3.client("cloudwatch", region_name="eu-west-1", endpoint_url=moto_url).describe_alarms(
        AlarmNames=[f"{name}-HasBacklogWithoutCapacity"])["MetricAlarms"][0]
    assert alarm["AlarmActions"] == [policies[f"{name}-HasBacklogWithoutCapacity"]]
    assert _client("sagemaker", moto_url).list_endpoints()["Endpoints"] == []  # nothing in us-east-1
