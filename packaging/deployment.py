"""Deployments past one instance, sized from measured capacity: SageMaker real-time, async, serverless, inference
components and batch transform requests, an Azure managed online deployment with its autoscale settings, a Vertex AI
Model, endpoint and batch prediction job, and Kubernetes manifests with a HorizontalPodAutoscaler.

    python packaging/deployment.py build --catalog packaging/catalog.example.yaml [--product NAME] \\
        --instance-type ml.m5.xlarge --image 123456789012.dkr.ecr.us-east-1.amazonaws.com/searchbox:1.0 \\
        --model-data s3://my-bucket/minilm/model.tar.gz --role-arn arn:aws:iam::123456789012:role/SageMakerExec \\
        --bucket s3://my-bucket/minilm [--capacity bench/capacity.json] [--variant realtime ...] -o dist/NAME/deploy
    python packaging/deployment.py apply dist/NAME/deploy/realtime/requests.json [--region us-east-1] \\
        [--endpoint-url URL] [--no-dry-run]

`build` writes, under the output directory, one folder per variant holding `requests.json`: the AWS calls in the
order they are made, each checked with botocore's own validator against its service model (sagemaker,
application-autoscaling, cloudwatch); `azure/` holds `deployment.yml` (loaded back with azure-ai-ml) and
`autoscale.json` (a Microsoft.Insights/autoscalesettings resource, loaded back with azure-mgmt-monitor's model);
`vertex/` and `vertex-batch/` hold `requests.json`: Vertex AI v1 request messages in JSON, each read back with
google-cloud-aiplatform's types; `kubernetes/` holds `searchbox.yaml` (checked with kubernetes-validate) and the
Prometheus adapter's rule; `--target` picks a platform's variants (sagemaker, azure, vertex, kubernetes);
`plan.md` says how every number was derived and from which measurement. `apply` makes the calls of one
requests.json (a dry run unless --no-dry-run), putting each step-scaling policy's ARN into the alarm that
triggers it.

Sizing comes from the capacity file `bench/capacity.py` writes (format: `_capacity.py`). An instance type that was
not measured is refused, naming what was measured; `--assume-capacity-from LABEL` sizes from another measured
machine instead, and every output says so.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _aws  # noqa: E402
import _capacity  # noqa: E402
import _catalog  # noqa: E402
import _files  # noqa: E402
import azure_assets  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CAPACITY = ROOT / "bench" / "capacity.json"
VARIANTS = ("realtime", "async", "serverless", "inference-component", "batch", "azure", "vertex", "vertex-batch",
            "kubernetes")
# --target names a group of variants; without --target or --variant, SageMaker's and Azure's are built
TARGETS = {"sagemaker": ("realtime", "async", "serverless", "inference-component", "batch"), "azure": ("azure",),
           "vertex": ("vertex", "vertex-batch"), "kubernetes": ("kubernetes",)}
DEFAULT_VARIANTS = TARGETS["sagemaker"] + TARGETS["azure"]
REQUESTS_FILE = "requests.json"
PLAN_FILE = "plan.md"
VARIANT_NAME = "AllTraffic"
# Read by the container (SEARCHBOX_ASYNC in container/settings.py): raise the body limit and request deadline toward
# asynchronous inference's 1 GB and 1 hour. The builder sets it on every async endpoint's model, and nowhere else.
ASYNC_ENV = {"SEARCHBOX_ASYNC": "1"}
# The longest suffix a variant adds to --name ("-serverless"), within SageMaker's 63 characters.
LONGEST_SUFFIX = len("-serverless")
NAME_MAX = 63 - LONGEST_SUFFIX
SCALE_IN_COOLDOWN_S = _capacity.SCALE_IN_COOLDOWN_S
SCALE_OUT_COOLDOWN_S = _capacity.SCALE_OUT_COOLDOWN_S
# Asynchronous inference (docs.aws.amazon.com/sagemaker/latest/dg/async-inference-autoscale.html): target tracking
# on ApproximateBacklogSizePerInstance, and the step policy + alarm on HasBacklogWithoutCapacity that lets an
# endpoint at zero instances scale out on the first queued request.
BACKLOG_METRIC = "ApproximateBacklogSizePerInstance"
FROM_ZERO_ASYNC_METRIC = "HasBacklogWithoutCapacity"
# Inference components (docs.aws.amazon.com/sagemaker/latest/dg/endpoint-auto-scaling-zero-instances.html):
# SageMaker emits NoCapacityInvocationFailures when a call reaches an endpoint with no copy to serve it.
FROM_ZERO_IC_METRIC = "NoCapacityInvocationFailures"
ASYNC_BACKLOG_S = 300  # queued work per instance (seconds at the measured rate) before async adds an instance
# Serverless inference: memory 1024-6144 MB in 1 GB steps, concurrency 1-200 (botocore's ServerlessConfig shape;
# docs.aws.amazon.com/sagemaker/latest/dg/serverless-endpoints.html); no GPUs, no network isolation, no AWS
# Marketplace model packages (the serverless feature exclusions).
SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
SERVERLESS_MAX_CONCURRENCY = 20
MEMORY_HEADROOM = 1.25  # resident memory measured at ready, plus a quarter for request buffers and peaks
# Batch transform (CreateTransformJob): MaxConcurrentTransforms x MaxPayloadInMB <= 100; one call may take
# InvocationsTimeoutInSeconds (the container's own batch deadline, SEARCHBOX_BATCH_TIMEOUT_S, is 600 s too).
BATCH_TIMEOUT_S = 600
BATCH_PAYLOAD_BUDGET_MB = 100
ACCELERATED_FAMILIES = ("ml.g", "ml.p", "ml.inf", "ml.trn", "ml.dl")
# Azure Monitor autoscale (learn.microsoft.com/azure/azure-monitor/autoscale; the resource is
# Microsoft.Insights/autoscalesettings): metrics of the deployment resource, sampled every minute.
AZURE_AUTOSCALE_API = "2022-10-01"
AZURE_DEPLOYMENT_NAME = "default"


class Refused(ValueError):
    """The deployment cannot be built as asked; the message starts with the flag or field to fix."""


# --- calls -----------------------------------------------------------------------------------------------------


@dataclass
class Call:
    """One AWS API call: service (botocore's name), action (the API operation), parameters."""

    service: str
    action: str
    params: dict[str, Any]

    @property
    def method(self) -> str:
        from botocore import xform_name

        return xform_name(self.action)

    def to_json(self) -> dict[str, Any]:
        return {"service": self.service, "operation": self.action, "params": self.params}


def policy_arn_placeholder(policy_name: str) -> str:
    """Stands for the ARN PutScalingPolicy returns for `policy_name`; `apply` puts the real one in."""
    return f"{{{{PolicyARN:{policy_name}}}}}"


def validate(calls: list[Call]) -> None:
    for call in calls:
        _aws.validate_request(call.service, call.action, call.params)


# --- inputs ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    product: _catalog.Product
    name: str
    instance_type: str | None
    role_arn: str | None
    image: str | None
    model_data: str | None
    model_package_arn: str | None
    bucket: str | None
    prefix: str | None
    measurements: list[_capacity.Measurement]
    assume_from: str | None = None
    p95_ms: float | None = None
    headroom: float = _capacity.DEFAULT_HEADROOM
    metric: str = "concurrency"
    min_instances: int = 1
    max_instances: int = 4
    scale_in_cooldown_s: int = SCALE_IN_COOLDOWN_S
    scale_out_cooldown_s: int = SCALE_OUT_COOLDOWN_S
    async_backlog_s: float = ASYNC_BACKLOG_S
    sns_success_topic: str | None = None
    sns_error_topic: str | None = None
    serverless_max_concurrency: int = SERVERLESS_MAX_CONCURRENCY
    input_rows: int | None = None
    input_mb: float | None = None
    target_hours: float = 1.0
    content_type: str = "text/csv"
    azure_image: str | None = None
    azure_subscription: str = "<subscription-id>"
    azure_resource_group: str = "<resource-group>"
    azure_workspace: str = "<workspace>"
    azure_location: str = "eastus"
    gcp_project: str = "<project>"
    gcp_region: str = "us-central1"
    vertex_image: str | None = None
    vertex_artifact_uri: str | None = None
    vertex_machine_type: str | None = None
    vertex_accelerator: str | None = None
    vertex_bucket: str | None = None
    kubernetes_image: str | None = None
    kubernetes_node: str | None = None
    kubernetes_model: str | None = None
    kubernetes_metric: str = "in-flight"
    kubernetes_namespace: str = "default"
    kubernetes_service_account: str | None = None
    kubernetes_init_image: str | None = None
    classifier_store: str | None = None

    @property
    def backend(self) -> str:
        return f"{self.product.backend}-int8" if self.product.quantize == "int8" else self.product.backend

    def s3(self, *parts: str) -> str:
        if self.bucket is None:
            raise Refused("--bucket: needed for this variant (asynchronous output, batch input and output); "
                          f"{_aws.BUCKET_HINT}")
        try:
            bucket, prefix = _aws.s3_location(self.bucket, self.prefix, self.name)
        except _aws.BucketInvalid as exc:
            raise Refused(str(exc)) from exc
        return "s3://" + "/".join(p for p in (bucket, prefix, *parts) if p) + "/"


@dataclass
class Variant:
    """One built variant: its calls (or files, for Azure) and the lines plan.md gives it."""

    name: str
    calls: list[Call] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    plan: list[str] = field(default_factory=list)


# --- sizing ----------------------------------------------------------------------------------------------------


def sizing(options: Options, shape: str, instance_type: str, *, flag: str = "--instance-type") -> tuple[
        _capacity.Found, _capacity.Targets]:
    found = _capacity.find(options.measurements, model=options.product.served_name, backend=options.backend,
                           shape=shape, instance_type=instance_type, assume_from=options.assume_from, flag=flag)
    return found, _capacity.targets(found.measurement, options.p95_ms, options.headroom)


def accelerated(instance_type: str) -> bool:
    return instance_type.startswith(ACCELERATED_FAMILIES)


def memory_mb(measurement: _capacity.Measurement) -> int:
    """Memory one copy of the model needs: resident memory measured at ready plus headroom, rounded up to 64 MB."""
    return int(math.ceil(measurement.rss_mb * MEMORY_HEADROOM / 64) * 64)


def capacity_tag(found: _capacity.Found) -> dict[str, str]:
    """A tag saying where the sizing came from, in the characters SageMaker tag values allow."""
    m = found.measurement
    kind = "measured" if found.assumed_from is None else f"assumed-from-{found.assumed_from}"
    value = f"{kind}:{m.model}:{m.backend}:{m.shape}:{m.date[:10]}"
    return {"Key": "searchbox:capacity", "Value": "".join(c if c.isalnum() or c in "_.:/=+-@" else "-"
                                                          for c in value)[:256]}


def scaling_lines(found: _capacity.Found, targets: _capacity.Targets, p95_ms: float | None) -> list[str]:
    level = targets.level
    limit = found.measurement.p95_target_ms if p95_ms is None else p95_ms
    return [f"- capacity: {found.source}",
            f"- sustained at p95 <= {limit:g} ms: {level.requests_per_s:.1f} requests/s, {level.inputs_per_s:.1f} "
            f"inputs/s with {level.concurrency} requests in flight (p95 {level.p95_ms:.0f} ms)",
            f"- headroom (safety factor): {targets.headroom:g}"]


# --- SageMaker building blocks ---------------------------------------------------------------------------------


def create_model(options: Options, model_name: str, *, environment: dict[str, str] | None = None,
                 network_isolation: bool = True) -> Call:
    if options.model_package_arn:
        container: dict[str, Any] = {"ModelPackageName": options.model_package_arn}
    else:
        container = {"Image": options.image, "ModelDataUrl": options.model_data}
    environment = {**(environment or {}), **store_environment(options)}
    if environment:
        container["Environment"] = dict(environment)
    if options.classifier_store and "://" in options.classifier_store:
        if options.model_package_arn:
            raise Refused(f"--classifier-store: {options.classifier_store} cannot be reached from a Marketplace model "
                          "package, which SageMaker runs network-isolated; use --image with --model-data")
        network_isolation = False  # an isolated container reaches no object store: trained classifiers need it
    params: dict[str, Any] = {"ModelName": model_name, "PrimaryContainer": container,
                              "ExecutionRoleArn": options.role_arn}
    if network_isolation:
        # the image needs no network (nothing downloads at start or request time); Marketplace packages require it
        params["EnableNetworkIsolation"] = True
    return Call("sagemaker", "CreateModel", params)


# --- the classifier store (POST /v1/train) ---------------------------------------------------------------------

STORE_ENV = "SEARCHBOX_CLASSIFIER_STORE"
# the narrowest predefined roles that read and write objects (Cloud Storage's, Azure's built-in role)
GCS_STORE_ROLE = "roles/storage.objectUser"
AZURE_STORE_ROLE = "Storage Blob Data Contributor"
STORE_POLICY_NAME = "searchbox-classifier-store"


def store_environment(options: Options) -> dict[str, str]:
    """The setting every target's container gets when a classifier store is named."""
    return {STORE_ENV: options.classifier_store} if options.classifier_store else {}


def store_location(url: str) -> tuple[str, str, str]:
    """(scheme, bucket or container, prefix) of an object-store URL; the scheme is "" for a local directory."""
    scheme, found, rest = url.partition("://")
    if not found:
        return "", "", url
    bucket, _, prefix = rest.partition("/")
    return scheme, bucket, prefix.strip("/")


def check_store(url: str | None) -> None:
    if not url:
        return
    scheme, bucket, _ = store_location(url)
    if scheme not in ("", "s3", "gs", "az") or (scheme and not bucket):
        raise Refused(f"--classifier-store: {url!r}: s3://bucket/prefix, gs://bucket/prefix, az://container/prefix "
                      "or a directory (a volume every instance mounts)")


def store_policy(options: Options) -> Call | None:
    """For an s3:// store: the role's inline policy granting exactly the store's prefix (objects read, written and
    deleted under it; the bucket listed only there)."""
    scheme, bucket, prefix = store_location(options.classifier_store or "")
    if scheme != "s3":
        return None
    objects = f"arn:aws:s3:::{bucket}/{prefix}/*" if prefix else f"arn:aws:s3:::{bucket}/*"
    listing = {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}"}
    if prefix:
        listing["Condition"] = {"StringLike": {"s3:prefix": [f"{prefix}/*"]}}
    document = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], "Resource": objects},
        listing]}
    role = (options.role_arn or "").rpartition("/")[2] or "<role-name>"
    return Call("iam", "PutRolePolicy", {"RoleName": role, "PolicyName": STORE_POLICY_NAME,
                                         "PolicyDocument": json.dumps(document)})


def store_plan(options: Options, target: str) -> list[str]:
    """What plan.md says of the store for one target: where it is set, and what grants it."""
    url = options.classifier_store
    if not url:
        return []
    scheme, bucket, prefix = store_location(url)
    where = {"sagemaker": "the model's Environment", "azure": "deployment.yml's environment_variables",
             "vertex": "the Model's containerSpec.env", "kubernetes": "the Deployment's container env"}[target]
    lines = [f"- classifier store: {STORE_ENV}={url} in {where} (classifiers trained on the endpoint, shared by "
             "every instance)"]
    grants = {("s3", "sagemaker"): f"the IAM call PutRolePolicy ({STORE_POLICY_NAME}) grants the execution role "
                                    "s3:GetObject, s3:PutObject, s3:DeleteObject on "
                                    f"arn:aws:s3:::{bucket}/{prefix + '/' if prefix else ''}* and s3:ListBucket "
                                    "under that prefix; network isolation is off so the container reaches S3",
              ("gs", "vertex"): f"grant the endpoint's service account {GCS_STORE_ROLE} on gs://{bucket}: gcloud "
                                f"storage buckets add-iam-policy-binding gs://{bucket} --member="
                                f"serviceAccount:<service-account> --role={GCS_STORE_ROLE}",
              ("az", "azure"): f"grant the deployment's managed identity the role {AZURE_STORE_ROLE} on the container "
                               f"{bucket}: az role assignment create --assignee <identity> --role "
                               f"'{AZURE_STORE_ROLE}' --scope <storage-account-id>/blobServices/default/containers/"
                               f"{bucket}; set AZURE_STORAGE_ACCOUNT_NAME too"}
    if (scheme, target) in grants:
        lines.append(f"- permissions: {grants[(scheme, target)]}")
    elif scheme:
        lines.append(f"- permissions: a {scheme}:// store from {target}: give the container credentials for it "
                     "(read, write and delete objects under the prefix)")
    return lines


def variant_target(endpoint: str) -> dict[str, str]:
    return {"ServiceNamespace": "sagemaker", "ResourceId": f"endpoint/{endpoint}/variant/{VARIANT_NAME}",
            "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}


def register(target: dict[str, str], minimum: int, maximum: int) -> Call:
    return Call("application-autoscaling", "RegisterScalableTarget",
                {**target, "MinCapacity": minimum, "MaxCapacity": maximum})


def target_tracking(target: dict[str, str], policy_name: str, value: float, metric: dict[str, Any],
                    options: Options) -> Call:
    return Call("application-autoscaling", "PutScalingPolicy", {
        "PolicyName": policy_name, **target, "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": value, **metric,
            "ScaleInCooldown": options.scale_in_cooldown_s, "ScaleOutCooldown": options.scale_out_cooldown_s}})


def step_from_zero(target: dict[str, str], policy_name: str, aggregation: str, cooldown_s: int) -> Call:
    """One instance (or copy) more whenever the alarm fires: what leaving zero takes (target tracking cannot)."""
    return Call("application-autoscaling", "PutScalingPolicy", {
        "PolicyName": policy_name, **target, "PolicyType": "StepScaling",
        "StepScalingPolicyConfiguration": {
            "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": aggregation, "Cooldown": cooldown_s,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}]}})


def check_instance_type(options: Options, mode: str) -> None:
    listed = options.product.instance_types[mode]
    if options.instance_type not in listed:
        raise Refused(f"--instance-type: {options.instance_type} is not a {mode} instance type of the product "
                      f"({options.product.name}: instance_types.{mode} lists {', '.join(listed)})")


# --- variants --------------------------------------------------------------------------------------------------


def realtime(options: Options) -> Variant:
    """A real-time endpoint whose instance count tracks in-flight requests (or invocations) per instance."""
    check_instance_type(options, "realtime")
    found, targets = sizing(options, "query", options.instance_type)
    name = options.name
    target = variant_target(name)
    if options.metric == "concurrency":
        metric = {"PredefinedMetricSpecification": {
            "PredefinedMetricType": "SageMakerVariantConcurrentRequestsPerModelHighResolution"}}
        value, what = targets.concurrency, "concurrent requests per instance (high-resolution, every 10 s)"
    else:
        metric = {"PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}}
        value, what = targets.invocations_per_minute, "invocations per instance per minute"
    calls = [
        create_model(options, name),
        Call("sagemaker", "CreateEndpointConfig", {
            "EndpointConfigName": name,
            "ProductionVariants": [{"VariantName": VARIANT_NAME, "ModelName": name,
                                    "InstanceType": options.instance_type,
                                    "InitialInstanceCount": max(1, options.min_instances)}],
            "Tags": [capacity_tag(found)]}),
        Call("sagemaker", "CreateEndpoint", {"EndpointName": name, "EndpointConfigName": name}),
        register(target, max(1, options.min_instances), options.max_instances),
        target_tracking(target, f"{name}-{options.metric}", value, metric, options),
    ]
    derived = (f"in flight at {targets.rate:g} requests/s on the measured curve" if options.metric == "concurrency"
               else f"{targets.rate:g} requests/s x 60")
    plan = scaling_lines(found, targets, options.p95_ms) + [
        f"- target tracking: {value:g} {what}: {derived} (sustained rate x headroom {targets.headroom:g}); "
        f"{max(1, options.min_instances)}..{options.max_instances} instances of {options.instance_type}; "
        f"scale-out cooldown {options.scale_out_cooldown_s} s, scale-in cooldown {options.scale_in_cooldown_s} s"]
    return Variant("realtime", calls, plan=plan)


def asynchronous(options: Options) -> Variant:
    """An asynchronous endpoint: S3 in and out, scaled on its backlog, down to zero and back."""
    check_instance_type(options, "realtime")
    found, targets = sizing(options, "batch", options.instance_type)
    name = f"{options.name}-async"
    target = variant_target(name)
    output: dict[str, Any] = {"S3OutputPath": options.s3("async", "output"),
                              "S3FailurePath": options.s3("async", "failures")}
    notification = {k: v for k, v in (("SuccessTopic", options.sns_success_topic),
                                      ("ErrorTopic", options.sns_error_topic)) if v}
    if notification:
        output["NotificationConfig"] = notification
    backlog = max(1.0, round(targets.level.requests_per_s * options.async_backlog_s, 1))
    step_name = f"{name}-{FROM_ZERO_ASYNC_METRIC}"
    calls = [
        create_model(options, name, environment=ASYNC_ENV),
        Call("sagemaker", "CreateEndpointConfig", {
            "EndpointConfigName": name,
            "ProductionVariants": [{"VariantName": VARIANT_NAME, "ModelName": name,
                                    "InstanceType": options.instance_type, "InitialInstanceCount": 1}],
            "AsyncInferenceConfig": {
                "OutputConfig": output,
                "ClientConfig": {"MaxConcurrentInvocationsPerInstance": targets.max_concurrent_per_instance}},
            "Tags": [capacity_tag(found)]}),
        Call("sagemaker", "CreateEndpoint", {"EndpointName": name, "EndpointConfigName": name}),
        register(target, 0, options.max_instances),
        target_tracking(target, f"{name}-backlog", backlog, {"CustomizedMetricSpecification": {
            "MetricName": BACKLOG_METRIC, "Namespace": "AWS/SageMaker",
            "Dimensions": [{"Name": "EndpointName", "Value": name}], "Statistic": "Average"}}, options),
        step_from_zero(target, step_name, "Average", options.scale_in_cooldown_s),
        Call("cloudwatch", "PutMetricAlarm", {
            "AlarmName": step_name,
            "AlarmDescription": "Queued asynchronous requests and no instance: scale out from zero",
            "MetricName": FROM_ZERO_ASYNC_METRIC, "Namespace": "AWS/SageMaker",
            "Dimensions": [{"Name": "EndpointName", "Value": name}],
            "Statistic": "Average", "Period": 60, "EvaluationPeriods": 2, "DatapointsToAlarm": 2,
            "Threshold": 1.0, "ComparisonOperator": "GreaterThanOrEqualToThreshold", "TreatMissingData": "missing",
            "AlarmActions": [policy_arn_placeholder(step_name)]}),
    ]
    plan = scaling_lines(found, targets, options.p95_ms) + [
        f"- the model's container gets {', '.join(f'{k}={v}' for k, v in ASYNC_ENV.items())}: it takes bodies of up to "
        "1 GB and gives each request up to 1 hour, as asynchronous inference allows, and runs a JSON Lines body from "
        "disk a slice of lines at a time",
        f"- MaxConcurrentInvocationsPerInstance {targets.max_concurrent_per_instance}: the measured concurrency",
        f"- target tracking: {backlog:g} queued requests per instance = {targets.level.requests_per_s:.1f} "
        f"requests/s x {options.async_backlog_s:g} s of work; 0..{options.max_instances} instances",
        f"- from zero: step policy {step_name} (+1 instance) on alarm {FROM_ZERO_ASYNC_METRIC} >= 1 for 2 minutes",
        f"- results: {output['S3OutputPath']}, failures: {output['S3FailurePath']}"]
    return Variant("async", calls, plan=plan)


def serverless(options: Options) -> Variant:
    """A serverless endpoint, where the model fits serverless inference's limits; refused by name where not."""
    product = options.product
    if options.model_package_arn:
        raise Refused("--model-package-arn: serverless inference does not run AWS Marketplace model packages; "
                      "deploy the image with --image and --model-data, or choose another variant")
    if all(accelerated(t) for t in product.instance_types["realtime"]):
        raise Refused(f"instance_types.realtime: every real-time type of {product.name} has an accelerator "
                      f"({', '.join(product.instance_types['realtime'])}); serverless inference has no GPU")
    measurement = _capacity.any_machine(options.measurements, model=product.served_name, backend=options.backend)
    needed = memory_mb(measurement)
    fitting = [size for size in SERVERLESS_MEMORY_MB if size >= needed]
    if not fitting:
        raise Refused(f"ServerlessConfig.MemorySizeInMB: the model needs {needed} MB (resident memory measured "
                      f"{measurement.rss_mb:.0f} MB + {MEMORY_HEADROOM - 1:.0%}); serverless allows at most "
                      f"{SERVERLESS_MEMORY_MB[-1]} MB")
    if not 1 <= options.serverless_max_concurrency <= 200:
        raise Refused(f"--serverless-max-concurrency: {options.serverless_max_concurrency} is outside 1..200 "
                      "(ServerlessConfig.MaxConcurrency)")
    name = f"{options.name}-serverless"
    config = {"MemorySizeInMB": fitting[0], "MaxConcurrency": options.serverless_max_concurrency}
    calls = [
        create_model(options, name, network_isolation=False),  # serverless endpoints refuse network isolation
        Call("sagemaker", "CreateEndpointConfig", {
            "EndpointConfigName": name,
            "ProductionVariants": [{"VariantName": VARIANT_NAME, "ModelName": name, "ServerlessConfig": config}]}),
        Call("sagemaker", "CreateEndpoint", {"EndpointName": name, "EndpointConfigName": name}),
    ]
    plan = [f"- memory {fitting[0]} MB: resident memory {measurement.rss_mb:.0f} MB measured "
            f"({measurement.describe()}) + {MEMORY_HEADROOM - 1:.0%}, rounded up to serverless' 1 GB steps",
            f"- MaxConcurrency {config['MaxConcurrency']} (--serverless-max-concurrency): serverless scales itself, "
            "from zero, within it; requests and answers of at most 4 MB, 60 s per request, no GPU",
            "- throughput per concurrent invocation is not measured here (serverless gives vCPUs in proportion "
            "to memory): load-test before relying on it"]
    return Variant("serverless", calls, plan=plan)


def inference_component(options: Options) -> Variant:
    """An endpoint of inference components: copies scale on concurrent requests per copy, instances follow, to
    zero and back."""
    check_instance_type(options, "realtime")
    found, targets = sizing(options, "query", options.instance_type)
    measurement = found.measurement
    name = f"{options.name}-ic"
    target = {"ServiceNamespace": "sagemaker", "ResourceId": f"inference-component/{name}",
              "ScalableDimension": "sagemaker:inference-component:DesiredCopyCount"}
    requirements: dict[str, Any] = {"NumberOfCpuCoresRequired": float(measurement.torch_threads),
                                    "MinMemoryRequiredInMb": memory_mb(measurement)}
    if measurement.machine.gpu_count:
        requirements["NumberOfAcceleratorDevicesRequired"] = 1.0
    step_name = f"{name}-{FROM_ZERO_IC_METRIC}"
    calls = [
        create_model(options, name),
        Call("sagemaker", "CreateEndpointConfig", {
            "EndpointConfigName": name, "ExecutionRoleArn": options.role_arn,
            "ProductionVariants": [{
                "VariantName": VARIANT_NAME, "InstanceType": options.instance_type, "InitialInstanceCount": 1,
                "ManagedInstanceScaling": {"Status": "ENABLED", "MinInstanceCount": 0,
                                           "MaxInstanceCount": options.max_instances},
                "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}}],
            "Tags": [capacity_tag(found)]}),
        Call("sagemaker", "CreateEndpoint", {"EndpointName": name, "EndpointConfigName": name}),
        Call("sagemaker", "CreateInferenceComponent", {
            "InferenceComponentName": name, "EndpointName": name, "VariantName": VARIANT_NAME,
            "Specification": {"ModelName": name, "ComputeResourceRequirements": requirements},
            "RuntimeConfig": {"CopyCount": 1}}),
        register(target, 0, options.max_instances),
        target_tracking(target, f"{name}-concurrency", targets.concurrency, {"PredefinedMetricSpecification": {
            "PredefinedMetricType": "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution"}}, options),
        step_from_zero(target, step_name, "Maximum", options.scale_out_cooldown_s),
        # SageMaker's example alarms on Sum > 1, i.e. a second failed call; >= 1 wakes the endpoint on the first.
        Call("cloudwatch", "PutMetricAlarm", {
            "AlarmName": step_name, "AlarmDescription": "A call reached the endpoint with no copy: add one",
            "MetricName": FROM_ZERO_IC_METRIC, "Namespace": "AWS/SageMaker",
            "Dimensions": [{"Name": "InferenceComponentName", "Value": name}],
            "Statistic": "Sum", "Period": 60, "EvaluationPeriods": 1, "DatapointsToAlarm": 1, "Threshold": 1.0,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold", "TreatMissingData": "notBreaching",
            "AlarmActions": [policy_arn_placeholder(step_name)]}),
    ]
    plan = scaling_lines(found, targets, options.p95_ms) + [
        f"- one copy needs {requirements['NumberOfCpuCoresRequired']:g} CPU cores (the torch threads measured) and "
        f"{requirements['MinMemoryRequiredInMb']} MB (resident {measurement.rss_mb:.0f} MB + "
        f"{MEMORY_HEADROOM - 1:.0%})" + (", 1 GPU" if measurement.machine.gpu_count else ""),
        f"- target tracking: {targets.concurrency:g} concurrent requests per copy (high-resolution): in flight at "
        f"{targets.rate:g} requests/s (sustained x headroom {targets.headroom:g}); 0..{options.max_instances} copies, "
        f"managed instance scaling 0..{options.max_instances} instances of {options.instance_type}",
        f"- from zero: step policy {step_name} (+1 copy) on alarm {FROM_ZERO_IC_METRIC} >= 1 in a minute; calls "
        "fail until a copy is in service (minutes): a client must retry them"]
    return Variant("inference-component", calls, plan=plan)


@dataclass(frozen=True)
class BatchSize:
    instances: int
    max_concurrent_transforms: int
    max_payload_mb: int
    rows_per_payload: int
    seconds_per_payload: float
    hours: float
    inputs_per_s: float  # per instance, at max_concurrent_transforms calls in flight


def batch_size(rows: int, megabytes: float, levels: tuple[_capacity.Level, ...], *, target_hours: float,
               max_instances: int, max_rows_per_body: int, timeout_s: float = BATCH_TIMEOUT_S) -> BatchSize:
    """Size a transform job from measured `levels` (concurrency -> inputs/s of one instance).

    MaxConcurrentTransforms: the fewest concurrent calls that reach 90% of the best measured throughput (more only
    split the same throughput between more calls, each then slower). MaxPayloadInMB: the largest payload that keeps
    MaxConcurrentTransforms x MaxPayloadInMB <= 100, holds at most the container's rows per body and answers
    within half the per-call timeout at its share of the throughput; where even 1 MB is too slow, fewer concurrent
    calls are tried. Instances: enough for `rows` in `target_hours`, at most `max_instances`.

    Raises:
        Refused: even one call of 1 MB would not answer in time or would hold too many rows.
    """
    rows_per_mb = rows / megabytes
    clean = sorted((lv for lv in levels if lv.errors == 0), key=lambda lv: lv.concurrency) or sorted(
        levels, key=lambda lv: lv.concurrency)
    best = max(lv.inputs_per_s for lv in clean)
    knee = next(lv for lv in clean if lv.inputs_per_s >= 0.9 * best)
    for level in [lv for lv in clean if lv.concurrency <= knee.concurrency][::-1]:
        per_call_rate = level.inputs_per_s / level.concurrency
        for mb in range(BATCH_PAYLOAD_BUDGET_MB // level.concurrency, 0, -1):
            if mb * rows_per_mb <= max_rows_per_body and mb * rows_per_mb / per_call_rate <= timeout_s / 2:
                instances = max(1, min(max_instances, math.ceil(rows / (level.inputs_per_s * target_hours * 3600))))
                rows_per_payload = int(mb * rows_per_mb)
                return BatchSize(instances, level.concurrency, mb, rows_per_payload,
                                 rows_per_payload / per_call_rate, rows / (level.inputs_per_s * instances) / 3600,
                                 level.inputs_per_s)
    slowest = clean[0]
    raise Refused(f"--input-mb: a 1 MB payload holds ~{rows_per_mb:.0f} rows: "
                  f"{rows_per_mb / (slowest.inputs_per_s / slowest.concurrency):.0f} s with one call in flight at the "
                  f"measured {slowest.inputs_per_s:.1f} inputs/s (half the {timeout_s:.0f} s per call is allowed), or "
                  f"more than the container's {max_rows_per_body} rows per body")


def batch(options: Options) -> Variant:
    """A batch transform job template sized for the given input."""
    check_instance_type(options, "batch")
    if options.input_rows is None or options.input_mb is None:
        raise Refused("--input-rows: the batch job is sized for an input: give --input-rows (lines) and "
                      "--input-mb (total size)")
    if options.input_rows < 1 or options.input_mb <= 0:
        raise Refused("--input-rows: --input-rows and --input-mb must be > 0")
    # a batch job wants throughput: its deadline is per call, not a p95, so no latency target applies
    found = _capacity.find(options.measurements, model=options.product.served_name, backend=options.backend,
                           shape="batch", instance_type=options.instance_type, assume_from=options.assume_from)
    from container.settings import MAX_BATCH_ROWS as max_rows
    size = batch_size(options.input_rows, options.input_mb, found.measurement.levels,
                      target_hours=options.target_hours, max_instances=options.max_instances,
                      max_rows_per_body=max_rows)
    name = f"{options.name}-batch"
    calls = [
        create_model(options, name),
        Call("sagemaker", "CreateTransformJob", {
            "TransformJobName": name, "ModelName": name,
            "MaxConcurrentTransforms": size.max_concurrent_transforms, "MaxPayloadInMB": size.max_payload_mb,
            "BatchStrategy": "MultiRecord",
            "ModelClientConfig": {"InvocationsTimeoutInSeconds": BATCH_TIMEOUT_S, "InvocationsMaxRetries": 1},
            "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                               "S3Uri": options.s3("batch", "input")}},
                               "ContentType": options.content_type, "SplitType": "Line", "CompressionType": "None"},
            "TransformOutput": {"S3OutputPath": options.s3("batch", "output"), "AssembleWith": "Line",
                                "Accept": "application/jsonlines" if "jsonlines" in options.content_type
                                else "application/json"},
            "TransformResources": {"InstanceType": options.instance_type, "InstanceCount": size.instances},
            "Tags": [capacity_tag(found)]}),
    ]
    plan = [f"- capacity: {found.source}",
            f"- throughput: {size.inputs_per_s:.1f} inputs/s per instance with {size.max_concurrent_transforms} "
            "calls in flight (the fewest measured to reach 90% of the best throughput; fewer where a 1 MB payload "
            "would not answer in time)",
            f"- input: {options.input_rows} rows, {options.input_mb:g} MB: {size.instances} instance(s) "
            f"(target {options.target_hours:g} h, at most {options.max_instances}): about {size.hours:.2f} h",
            f"- MaxConcurrentTransforms {size.max_concurrent_transforms} x MaxPayloadInMB {size.max_payload_mb} = "
            f"{size.max_concurrent_transforms * size.max_payload_mb} <= 100; a payload of ~{size.rows_per_payload} "
            f"rows answers in ~{size.seconds_per_payload:.0f} s (per-call limit {BATCH_TIMEOUT_S} s)",
            f"- {options.content_type}, SplitType Line, BatchStrategy MultiRecord, AssembleWith Line; a template: "
            "TransformJobName must be new for every job"]
    return Variant("batch", calls, plan=plan)


def azure(options: Options) -> Variant:
    """The Azure managed online deployment, sized from capacity, and its Azure Monitor autoscale settings."""
    import yaml

    offer = options.product.azure
    if offer is None:
        raise Refused(f"azure: product {options.product.name!r} has no 'azure' section in the catalog")
    found, targets = sizing(options, "query", offer.instance_type, flag="azure.instance_type")
    image = options.azure_image or options.image
    if not image:
        raise Refused("--azure-image: the image in your Azure registry (or --image) is needed for Azure")
    minimum = max(1, options.min_instances)  # a managed online deployment keeps at least one instance
    documents = azure_assets.documents(options.product, image)
    deployment = documents["deployment.yml"]
    deployment["instance_count"] = max(minimum, offer.instance_count)
    deployment["request_settings"]["max_concurrent_requests_per_instance"] = targets.max_concurrent_per_instance
    if store_environment(options):
        deployment["environment_variables"] = {**deployment.get("environment_variables", {}),
                                               **store_environment(options)}
    deployment_id = (f"/subscriptions/{options.azure_subscription}/resourceGroups/{options.azure_resource_group}"
                     f"/providers/Microsoft.MachineLearningServices/workspaces/{options.azure_workspace}"
                     f"/onlineEndpoints/{offer.endpoint_name}/deployments/{AZURE_DEPLOYMENT_NAME}")
    p95 = found.measurement.p95_target_ms if options.p95_ms is None else options.p95_ms
    utilization = "GpuUtilizationPercentage" if offer.gpus_per_instance else "CpuUtilizationPercentage"
    autoscale = autoscale_settings(
        name=f"{offer.endpoint_name}-{AZURE_DEPLOYMENT_NAME}-autoscale", location=options.azure_location,
        deployment_id=deployment_id, minimum=minimum, maximum=options.max_instances,
        default=deployment["instance_count"], p95_ms=p95, utilization_metric=utilization,
        cooldown_out_min=max(1, options.scale_out_cooldown_s // 60), cooldown_in_min=options.scale_in_cooldown_s // 60)
    # the deployment names its environment (azureml:<product>-env:1): written beside it, so the image given is the
    # one the deployment runs
    files = {"environment.yml": yaml.safe_dump(documents["environment.yml"], sort_keys=False),
             "deployment.yml": yaml.safe_dump(deployment, sort_keys=False),
             "autoscale.json": json.dumps(autoscale, indent=2) + "\n"}
    plan = scaling_lines(found, targets, options.p95_ms) + [
        f"- environment.yml: the image {image} and searchbox's routes; create it first (az ml environment create "
        f"-f environment.yml), then the deployment that names it ({deployment['environment']})",
        f"- deployment.yml: request_settings.max_concurrent_requests_per_instance "
        f"{targets.max_concurrent_per_instance} (the measured concurrency), request_timeout_ms "
        f"{azure_assets.REQUEST_TIMEOUT_MS}, instance_count {deployment['instance_count']}",
        f"- autoscale.json: {minimum}..{options.max_instances} instances; +1 when the deployment's RequestLatency_P95 "
        f"exceeds {0.8 * p95:g} ms (80% of the target) or {utilization} 70% over 5 minutes; -1 when both are low "
        "(latency under half the target, utilization under 30%) over 10 minutes. Azure Monitor compares a "
        "deployment's total, not per instance, so the measured rate sets the per-instance concurrency and "
        "the latency threshold rather than a requests-per-minute rule",
        f"- placeholders to fill in autoscale.json: {options.azure_subscription}, {options.azure_resource_group}, "
        f"{options.azure_workspace} (--azure-subscription, --azure-resource-group, --azure-workspace); apply: "
        f"az rest --method put --url 'https://management.azure.com{autoscale['id']}?api-version="
        f"{AZURE_AUTOSCALE_API}' --body @autoscale.json"]
    return Variant("azure", files=files, plan=plan)


def autoscale_settings(*, name: str, location: str, deployment_id: str, minimum: int, maximum: int, default: int,
                       p95_ms: float, utilization_metric: str, cooldown_out_min: int, cooldown_in_min: int) -> dict:
    """A Microsoft.Insights/autoscalesettings resource (ARM JSON) for one managed online deployment."""

    def rule(metric: str, operator: str, threshold: float, window_min: int, direction: str, cooldown_min: int) -> dict:
        return {"metricTrigger": {"metricName": metric, "metricResourceUri": deployment_id, "timeGrain": "PT1M",
                                  "statistic": "Average", "timeWindow": f"PT{window_min}M",
                                  "timeAggregation": "Average", "operator": operator, "threshold": float(threshold)},
                "scaleAction": {"direction": direction, "type": "ChangeCount", "value": "1",
                                "cooldown": f"PT{cooldown_min}M"}}

    group = deployment_id.split("/providers/")[0]
    return {
        "id": f"{group}/providers/Microsoft.Insights/autoscalesettings/{name}",
        "location": location,
        "properties": {
            "name": name, "enabled": True, "targetResourceUri": deployment_id,
            "profiles": [{
                "name": "measured-capacity",
                "capacity": {"minimum": str(minimum), "maximum": str(maximum), "default": str(default)},
                "rules": [
                    rule("RequestLatency_P95", "GreaterThan", round(0.8 * p95_ms, 1), 5, "Increase", cooldown_out_min),
                    rule(utilization_metric, "GreaterThan", 70, 5, "Increase", cooldown_out_min),
                    # Azure scales in only when every scale-in rule of the profile holds
                    rule("RequestLatency_P95", "LessThan", round(0.5 * p95_ms, 1), 10, "Decrease", cooldown_in_min),
                    rule(utilization_metric, "LessThan", 30, 10, "Decrease", cooldown_in_min),
                ]}]}}


def check_autoscale(document: dict) -> None:
    """Check `document` against azure-mgmt-monitor's own model of the resource (AutoscaleSettingResource): every
    key known to the model, every required member present, list sizes, value types, ISO 8601 durations and the
    enumerations the SDK defines. Raises Refused listing each problem with its path.
    """
    from azure.mgmt.monitor import models

    problems: list[str] = []
    _model_problems(models.AutoscaleSettingResource, document, "", problems, models)
    if problems:
        raise Refused("autoscale.json: " + "; ".join(problems))


# Members of the autoscale model whose strings are enumerations in the SDK.
_AZURE_ENUMS = {"operator": "ComparisonOperationType", "statistic": "MetricStatisticType",
                "time_aggregation": "TimeAggregationType", "direction": "ScaleDirection", "type": "ScaleType"}


def _model_problems(model, data: Any, path: str, problems: list[str], models) -> None:
    if not isinstance(data, dict):
        problems.append(f"{path or 'the document'}: must be an object")
        return
    seen: set[str] = set()
    flattened: dict[str, set[str]] = {}
    for attr, desc in model._attribute_map.items():  # the SDK's map of members to REST keys and types
        keys = desc["key"].split(".")  # "properties.profiles": flattened into a nested object
        seen.add(keys[0])
        if len(keys) == 2:
            flattened.setdefault(keys[0], set()).add(keys[1])
        value: Any = data
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        where = f"{path}.{desc['key']}" if path else desc["key"]
        rules = model._validation.get(attr, {})
        if value is None:
            if rules.get("required"):
                problems.append(f"{where}: required")
            continue
        kind = desc["type"]
        if kind.startswith("[") and kind.endswith("]"):
            if not isinstance(value, list):
                problems.append(f"{where}: must be a list")
                continue
            if len(value) < rules.get("min_items", 0) or len(value) > rules.get("max_items", len(value)):
                problems.append(f"{where}: {len(value)} items, allowed {rules.get('min_items', 0)}.."
                                f"{rules.get('max_items', 'any')}")
            item_model = getattr(models, kind[1:-1], None)
            for i, item in enumerate(value):
                if item_model is not None:
                    _model_problems(item_model, item, f"{where}[{i}]", problems, models)
            continue
        sub_model = getattr(models, kind, None)
        if sub_model is not None and hasattr(sub_model, "_attribute_map"):
            _model_problems(sub_model, value, where, problems, models)
        elif kind == "duration":
            import isodate

            try:
                isodate.parse_duration(value)
            except (isodate.ISO8601Error, TypeError):
                problems.append(f"{where}: {value!r} is not an ISO 8601 duration like PT5M")
        elif kind in ("str", "float", "bool", "int") and not isinstance(
                value, {"str": str, "float": (int, float), "bool": bool, "int": int}[kind]):
            problems.append(f"{where}: {value!r} is not a {kind}")
        elif attr in _AZURE_ENUMS and getattr(models, _AZURE_ENUMS[attr], None) is not None:
            allowed = [e.value for e in getattr(models, _AZURE_ENUMS[attr])]
            if value not in allowed:
                problems.append(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    unknown = sorted(set(data) - seen) + sorted(
        f"{outer}.{inner}" for outer, inners in flattened.items() if isinstance(data.get(outer), dict)
        for inner in set(data[outer]) - inners)
    for key in unknown:
        problems.append(f"{path + '.' if path else ''}{key}: not a member of the SDK's {model.__name__}")


# --- Google Cloud Vertex AI ------------------------------------------------------------------------------------
# The requests are the v1 API's request messages in their JSON form (what REST takes, and what
# `aiplatform_v1.<Method>Request.from_json` reads for the Python client), each read back with
# google-cloud-aiplatform's own types, which refuse an unknown field, a wrong type or an unknown enum value.
# Vertex's contract ("Custom container requirements for inference"): the container listens on AIP_HTTP_PORT (the
# first of containerSpec.ports) and is told AIP_PREDICT_ROUTE, AIP_HEALTH_ROUTE and AIP_STORAGE_URI (the Model's
# artifactUri, copied by the container itself at start) from the Model resource written here.
VERTEX_PORT = 8080
VERTEX_PREDICT_ROUTE = "/vertex"  # `serve` answers Vertex's {"instances": [...]} wherever AIP_PREDICT_ROUTE says
VERTEX_HEALTH_ROUTE = "/ping"  # readiness: 200 once the model is loaded and warm, 503 before and while draining
VERTEX_REQUESTS_FILE = "requests.json"
# DedicatedResources.autoscalingMetricSpecs (machine_resources.proto): CPU utilization, and the accelerator's duty
# cycle where the machine has one; Vertex scales out when either is above its target, in when both are below.
VERTEX_CPU_METRIC = "aiplatform.googleapis.com/prediction/online/cpu/utilization"
VERTEX_GPU_METRIC = "aiplatform.googleapis.com/prediction/online/accelerator/duty_cycle"
VERTEX_METHODS = {"UploadModel": "UploadModelRequest", "CreateEndpoint": "CreateEndpointRequest",
                  "DeployModel": "DeployModelRequest", "CreateBatchPredictionJob": "CreateBatchPredictionJobRequest"}


def vertex_requests_problems(requests: list[dict[str, Any]]) -> list[str]:
    """Each request read back with google-cloud-aiplatform's v1 request type; one line per refusal."""
    from google.cloud import aiplatform_v1

    problems = []
    for i, item in enumerate(requests):
        method = item.get("method")
        if method not in VERTEX_METHODS:
            problems.append(f"[{i}].method: {method!r} is not one of {', '.join(VERTEX_METHODS)}")
            continue
        try:
            getattr(aiplatform_v1, VERTEX_METHODS[method]).from_json(json.dumps(item.get("request")))
        except Exception as exc:  # json_format.ParseError, TypeError: the library's own refusal, whatever its class
            problems.append(f"[{i}] {method}: {str(exc).splitlines()[0]}")
    return problems


def check_vertex(requests: list[dict[str, Any]]) -> None:
    problems = vertex_requests_problems(requests)
    if problems:
        raise Refused("vertex requests.json: " + "; ".join(problems))


def vertex_parent(options: Options) -> str:
    return f"projects/{options.gcp_project}/locations/{options.gcp_region}"


def vertex_machine(options: Options) -> dict[str, Any]:
    """MachineSpec from --vertex-machine-type and --vertex-accelerator TYPE[:COUNT]."""
    if not options.vertex_machine_type:
        raise Refused("--vertex-machine-type: the Compute Engine machine type to serve on (e.g. n1-standard-4, "
                      "g2-standard-4 with --vertex-accelerator NVIDIA_L4), measured with `make capacity "
                      "INSTANCE_TYPE=<it>` or sized with --assume-capacity-from")
    spec: dict[str, Any] = {"machineType": options.vertex_machine_type}
    if options.vertex_accelerator:
        kind, _, count = options.vertex_accelerator.partition(":")
        if count and not (count.isdigit() and int(count) > 0):
            raise Refused(f"--vertex-accelerator: {options.vertex_accelerator!r}: TYPE[:COUNT], COUNT a whole "
                          "number > 0")
        spec["acceleratorType"] = kind
        spec["acceleratorCount"] = int(count or 1)
    return spec


def vertex_model_name(options: Options) -> str:
    return f"{vertex_parent(options)}/models/{options.name}"


def upload_model(options: Options, found: _capacity.Found) -> dict[str, Any]:
    image = options.vertex_image or options.image
    if not image:
        raise Refused("--vertex-image: the image in your Artifact Registry (or --image) is needed for Vertex AI")
    if not (options.vertex_artifact_uri or "").startswith("gs://"):
        raise Refused(f"--vertex-artifact-uri: {options.vertex_artifact_uri!r}: the gs:// directory holding the "
                      "model directory (it becomes AIP_STORAGE_URI, which the container copies at start)")
    return {"method": "UploadModel", "request": {
        "parent": vertex_parent(options), "modelId": options.name,
        "model": {
            "displayName": options.name, "artifactUri": options.vertex_artifact_uri,
            "containerSpec": {
                "imageUri": image, "predictRoute": VERTEX_PREDICT_ROUTE, "healthRoute": VERTEX_HEALTH_ROUTE,
                "ports": [{"containerPort": VERTEX_PORT}],
                "env": [{"name": "SEARCHBOX_MODEL_NAME", "value": options.product.served_name}]
                + [{"name": key, "value": value} for key, value in store_environment(options).items()]},
            "labels": {"searchbox-capacity": gcp_label(capacity_tag(found)["Value"])}}}}


def gcp_label(value: str) -> str:
    """A label value as Google Cloud allows it: lowercase letters, digits, - and _, at most 63 characters."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in value.lower())[:63]


def vertex(options: Options) -> Variant:
    """A Vertex AI Model (the image and its routes), an endpoint and the model deployed on it, its replicas scaled
    on utilization with targets from the measured capacity."""
    machine = vertex_machine(options)
    found, targets = sizing(options, "query", options.vertex_machine_type, flag="--vertex-machine-type")
    gpu = "acceleratorType" in machine
    if found.measurement.machine.gpu_count and not gpu:
        raise Refused(f"--vertex-accelerator: the capacity sizing {options.vertex_machine_type} was measured with a "
                      f"GPU ({found.measurement.machine.gpu}); name the accelerator to deploy with it")
    minimum = max(1, options.min_instances)  # Vertex keeps at least one replica (scale to zero is a preview)
    utilization = max(1, min(100, round(100 * targets.headroom)))
    specs = [{"metricName": VERTEX_CPU_METRIC, "target": utilization}]
    if gpu:
        specs.append({"metricName": VERTEX_GPU_METRIC, "target": utilization})
    endpoint = f"{vertex_parent(options)}/endpoints/{options.name}"
    requests = [
        upload_model(options, found),
        {"method": "CreateEndpoint", "request": {"parent": vertex_parent(options), "endpointId": options.name,
                                                 "endpoint": {"displayName": options.name}}},
        {"method": "DeployModel", "request": {
            "endpoint": endpoint,
            "deployedModel": {
                "model": vertex_model_name(options), "displayName": options.name,
                "dedicatedResources": {"machineSpec": machine, "minReplicaCount": minimum,
                                       "maxReplicaCount": options.max_instances,
                                       "autoscalingMetricSpecs": specs}},
            "trafficSplit": {"0": 100}}},
    ]
    check_vertex(requests)
    plan = scaling_lines(found, targets, options.p95_ms) + [
        f"- Model {options.name}: image {options.vertex_image or options.image}, predictRoute "
        f"{VERTEX_PREDICT_ROUTE}, healthRoute {VERTEX_HEALTH_ROUTE}, port {VERTEX_PORT} (AIP_HTTP_PORT); artifactUri "
        f"{options.vertex_artifact_uri} becomes AIP_STORAGE_URI, which the container copies before it starts",
        f"- {minimum}..{options.max_instances} replicas of {options.vertex_machine_type}"
        + (f" with {machine['acceleratorCount']} x {machine['acceleratorType']}" if gpu else ""),
        f"- autoscaling: CPU utilization{' and accelerator duty cycle' if gpu else ''} target {utilization}% = "
        f"headroom {targets.headroom:g} x 100%: a replica at the measured sustained rate "
        f"({targets.level.requests_per_s:.1f} requests/s) is taken as fully used, so the target leaves it serving "
        f"about {targets.rate:g} requests/s (Vertex's default target is 60%)",
        "- Vertex also lists aiplatform.googleapis.com/prediction/online/request_count as an autoscaling metric; "
        "the unit of its target is not documented in the references checked, so it is not written here",
        f"- apply in order with the v1 client: aiplatform_v1.<Method>Request.from_json(...) for each request "
        f"(UploadModel, CreateEndpoint, DeployModel) in {options.gcp_region}"]
    return Variant("vertex", files={VERTEX_REQUESTS_FILE: json.dumps(requests, indent=2) + "\n"}, plan=plan)


def vertex_batch(options: Options) -> Variant:
    """A Vertex AI batch prediction job on the uploaded Model: JSON Lines in and out of Cloud Storage, its replicas
    sized for the input from the measured batch throughput."""
    machine = vertex_machine(options)
    if options.input_rows is None or options.input_rows < 1:
        raise Refused("--input-rows: the batch prediction job is sized for an input: give --input-rows (lines, > 0)")
    if not (options.vertex_bucket or "").startswith("gs://"):
        raise Refused(f"--vertex-bucket: {options.vertex_bucket!r}: a gs://bucket[/prefix] for the job's JSON Lines "
                      "input and output")
    found = _capacity.find(options.measurements, model=options.product.served_name, backend=options.backend,
                           shape="batch", instance_type=options.vertex_machine_type, assume_from=options.assume_from,
                           flag="--vertex-machine-type")
    measurement = found.measurement
    best = max((lv for lv in measurement.levels if lv.errors == 0), key=lambda lv: lv.inputs_per_s,
               default=measurement.saturation())
    replicas = max(1, min(options.max_instances,
                          math.ceil(options.input_rows / (best.inputs_per_s * options.target_hours * 3600))))
    hours = options.input_rows / (best.inputs_per_s * replicas) / 3600
    base = options.vertex_bucket.rstrip("/")
    upload = upload_model(options, found)
    requests = [upload, {"method": "CreateBatchPredictionJob", "request": {
        "parent": vertex_parent(options),
        "batchPredictionJob": {
            "displayName": f"{options.name}-batch", "model": vertex_model_name(options),
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [f"{base}/batch/input/*.jsonl"]}},
            "outputConfig": {"predictionsFormat": "jsonl",
                             "gcsDestination": {"outputUriPrefix": f"{base}/batch/output/"}},
            "dedicatedResources": {"machineSpec": machine, "startingReplicaCount": replicas,
                                   "maxReplicaCount": replicas},
            "manualBatchTuningParameters": {"batchSize": measurement.inputs_per_request},
            "labels": {"searchbox-capacity": gcp_label(capacity_tag(found)["Value"])}}}}]
    check_vertex(requests)
    plan = [f"- capacity: {found.source}",
            f"- throughput: {best.inputs_per_s:.1f} inputs/s per replica (the best error-free measured level, "
            f"{best.concurrency} requests of {measurement.inputs_per_request} in flight)",
            f"- input: {options.input_rows} lines: {replicas} replica(s) of {options.vertex_machine_type} (target "
            f"{options.target_hours:g} h, at most {options.max_instances}): about {hours:.2f} h",
            f"- batchSize {measurement.inputs_per_request}: the instances of one request, the request shape measured",
            f"- JSON Lines in ({base}/batch/input/*.jsonl), JSON Lines out ({base}/batch/output/), one prediction "
            "line per instance; UploadModel first where the Model is not uploaded yet (the vertex folder's)"]
    return Variant("vertex-batch", files={VERTEX_REQUESTS_FILE: json.dumps(requests, indent=2) + "\n"}, plan=plan)


# --- Kubernetes ------------------------------------------------------------------------------------------------
# One builder writes the manifests, from the same capacity arithmetic as every other target (a Helm chart would
# repeat it in templates). Checked offline with kubernetes-validate against the OpenAPI schemas of
# KUBERNETES_VERSION, strictly (an unknown field is refused).
KUBERNETES_VERSION = "1.31.0"
KUBERNETES_FILE = "searchbox.yaml"
ADAPTER_FILE = "prometheus-adapter-rules.yaml"
# The per-pod signal: inputs queued or running in the batcher (container/telemetry.py, summed over the pod's
# workers). For query-shaped traffic (one input a request) it is the requests the model holds in flight, what
# SageMaker's ConcurrentRequestsPerModel counts.
IN_FLIGHT_METRIC = "searchbox_queue_depth"
MODEL_MOUNT = "/models"
# HorizontalPodAutoscaler behavior, written out: the documented defaults ("Horizontal Pod Autoscaling",
# kubernetes.io: scale up by 100% or 4 pods every 15 s, whichever is more, no stabilization; scale down by up to
# 100% every 15 s after a 300 s stabilization window).
HPA_SCALE_UP_PERCENT = 100
HPA_SCALE_UP_PODS = 4
HPA_POLICY_PERIOD_S = 15
HPA_TOLERANCE = 0.1
# where no init image is given: the clouds' own command-line images
INIT_IMAGES = {"s3": "amazon/aws-cli:2.22.0", "gs": "google/cloud-sdk:502.0.0-slim"}


def drain_grace_s() -> float:
    from container.settings import ENV_GRACE, SETTINGS

    return float(next(s for s in SETTINGS if s.name == ENV_GRACE).default_value({}))


def model_source(options: Options) -> tuple[list[dict], list[dict], str, str]:
    """(init containers, volumes, SEARCHBOX_MODEL_DIR, plan line) for --kubernetes-model."""
    uri = options.kubernetes_model or ""
    target = f"{MODEL_MOUNT}/model"
    if uri.startswith("pvc:") and len(uri) > 4:
        return [], [{"name": "model", "persistentVolumeClaim": {"claimName": uri[4:], "readOnly": True}}], target, (
            f"- the model: the PersistentVolumeClaim {uri[4:]} holds the model directory at its root, mounted "
            f"read-only at {target}")
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme == "s3":
        command = ["aws", "s3", "cp", "--recursive", "--no-progress", uri, target]
    elif scheme == "gs":
        command = ["sh", "-c", f"mkdir -p {target} && gcloud storage cp --recursive '{uri.rstrip('/')}/*' {target}"]
    elif scheme == "https" and ".blob." in uri:
        # AKS workload identity injects these variables into the pod of a labelled service account
        account = uri.split("://", 1)[1].split(".", 1)[0]
        container, _, prefix = uri.split("://", 1)[1].split("/", 1)[1].partition("/")
        command = ["sh", "-c", 'az login --service-principal -u "$AZURE_CLIENT_ID" -t "$AZURE_TENANT_ID" '
                   '--federated-token "$(cat $AZURE_FEDERATED_TOKEN_FILE)" >/dev/null && '
                   f"az storage blob download-batch --auth-mode login --account-name {account} -s {container} "
                   f"--pattern '{prefix.rstrip('/')}/*' -d {MODEL_MOUNT}"]
        target = f"{MODEL_MOUNT}/{prefix.rstrip('/')}" if prefix else MODEL_MOUNT
    else:
        raise Refused(f"--kubernetes-model: {uri!r}: s3://bucket/dir, gs://bucket/dir, "
                      "https://ACCOUNT.blob.core.windows.net/CONTAINER/dir (the model directory) or pvc:CLAIM")
    image = options.kubernetes_init_image or INIT_IMAGES.get(scheme)
    if not image:
        raise Refused("--kubernetes-init-image: an image with the Azure CLI (az) is needed to copy from Azure Blob")
    init = [{"name": "copy-model", "image": image, "command": command,
             "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT}]}]
    return init, [{"name": "model", "emptyDir": {}}], target, (
        f"- the model: init container copy-model ({image}) copies {uri} into an emptyDir before the server starts, "
        "with the pod's own cloud identity (--kubernetes-service-account: IRSA, GKE Workload Identity, AKS workload "
        "identity); the server reads it read-only")


def kubernetes(options: Options) -> Variant:
    """Deployment, Service, PodDisruptionBudget and HorizontalPodAutoscaler for a cluster of your own."""
    import yaml

    image = options.kubernetes_image or options.image
    if not image:
        raise Refused("--kubernetes-image: the searchbox image your cluster pulls (or --image) is needed")
    if not options.kubernetes_node:
        raise Refused("--kubernetes-node: the measured machine label the pods run on (an instance type, or `local` "
                      "for the machine `make capacity` ran on); see bench/capacity.json")
    found, targets = sizing(options, "query", options.kubernetes_node, flag="--kubernetes-node")
    measurement = found.measurement
    init, volumes, model_dir, model_line = model_source(options)
    name, labels = options.name, {"app.kubernetes.io/name": "searchbox", "app.kubernetes.io/instance": options.name}
    grace = drain_grace_s()
    termination = int(math.ceil(grace)) + 10
    memory = memory_mb(measurement)
    resources: dict[str, Any] = {"requests": {"cpu": str(measurement.torch_threads), "memory": f"{memory}Mi"},
                                 "limits": {"memory": f"{memory}Mi"}}
    gpus = 1 if measurement.machine.gpu_count else 0
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = str(gpus)
    minimum = max(1, options.min_instances)
    in_flight = round(targets.concurrency * measurement.inputs_per_request, 2)
    if options.kubernetes_metric == "cpu":
        utilization = max(1, min(100, round(100 * targets.headroom)))
        metric = {"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": utilization}}}
        metric_line = (f"- HPA metric: CPU utilization {utilization}% of the requested {measurement.torch_threads} "
                       f"cores = headroom {targets.headroom:g} x 100% (a pod at the measured sustained rate is taken "
                       "as fully used; needs only metrics-server)")
    else:
        metric = {"type": "Pods", "pods": {"metric": {"name": IN_FLIGHT_METRIC},
                                           "target": {"type": "AverageValue",
                                                      "averageValue": f"{round(in_flight * 1000)}m"}}}
        metric_line = (f"- HPA metric: {IN_FLIGHT_METRIC} (GET /metrics: inputs queued or running in the pod's "
                       f"batcher) averaging {in_flight:g} per pod: in flight at {targets.rate:g} requests/s (sustained "
                       f"x headroom {targets.headroom:g}) x {measurement.inputs_per_request} input(s) a request, read "
                       "off the measured curve; served by the Prometheus adapter's custom metrics API "
                       f"({ADAPTER_FILE})")
    pod_spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": termination,
        "containers": [{
            "name": "searchbox", "image": image,
            "ports": [{"name": "http", "containerPort": VERTEX_PORT}],
            "env": [{"name": "SEARCHBOX_MODEL_DIR", "value": model_dir},
                    {"name": "SEARCHBOX_TORCH_THREADS", "value": str(measurement.torch_threads)}]
            + [{"name": key, "value": value} for key, value in store_environment(options).items()],
            "resources": resources,
            "readinessProbe": {"httpGet": {"path": "/ping", "port": "http"}, "periodSeconds": 5,
                               "failureThreshold": 2},
            "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10,
                              "failureThreshold": 3, "timeoutSeconds": 5},
            "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True}]}],
        "volumes": volumes}
    if init:
        pod_spec["initContainers"] = init
    if options.kubernetes_service_account:
        pod_spec["serviceAccountName"] = options.kubernetes_service_account
    meta = {"name": name, "namespace": options.kubernetes_namespace, "labels": labels}
    documents = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {
            **meta, "annotations": {"searchbox/capacity": capacity_tag(found)["Value"]}},
         "spec": {"selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels, "annotations": {
                      "prometheus.io/scrape": "true", "prometheus.io/port": str(VERTEX_PORT),
                      "prometheus.io/path": "/metrics"}}, "spec": pod_spec}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta,
         "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta,
         "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}}},
        {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta,
         "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                  "minReplicas": minimum, "maxReplicas": options.max_instances, "metrics": [metric],
                  "behavior": {
                      "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
                          {"type": "Percent", "value": HPA_SCALE_UP_PERCENT, "periodSeconds": HPA_POLICY_PERIOD_S},
                          {"type": "Pods", "value": HPA_SCALE_UP_PODS, "periodSeconds": HPA_POLICY_PERIOD_S}]},
                      "scaleDown": {"stabilizationWindowSeconds": options.scale_in_cooldown_s, "policies": [
                          {"type": "Percent", "value": 100, "periodSeconds": HPA_POLICY_PERIOD_S}]}}}},
    ]
    check_kubernetes(documents)
    adapter = {"rules": [{
        "seriesQuery": f'{IN_FLIGHT_METRIC}{{namespace!="",pod!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": f"^{IN_FLIGHT_METRIC}$", "as": IN_FLIGHT_METRIC},
        "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)"}]}
    class Plain(yaml.SafeDumper):  # the labels repeat as written, not as YAML anchors a reader must follow
        def ignore_aliases(self, data: Any) -> bool:
            return True

    files = {KUBERNETES_FILE: yaml.dump_all(documents, Dumper=Plain, sort_keys=False)}
    if options.kubernetes_metric != "cpu":
        files[ADAPTER_FILE] = ("# prometheus-adapter's rules (its Helm values' `rules.custom`): the pods metric the "
                               "HorizontalPodAutoscaler reads\n" + yaml.safe_dump(adapter, sort_keys=False))
    plan = scaling_lines(found, targets, options.p95_ms) + [
        f"- {KUBERNETES_FILE}: Deployment, Service (port 80 -> 8080), PodDisruptionBudget (maxUnavailable 1: a drain "
        f"never blocks, one pod at a time goes) and HorizontalPodAutoscaler (autoscaling/v2), checked against "
        f"Kubernetes {KUBERNETES_VERSION}'s schemas; namespace {options.kubernetes_namespace}",
        f"- resources: requests {measurement.torch_threads} CPU (the torch threads measured, also set as "
        f"SEARCHBOX_TORCH_THREADS) and {memory}Mi (resident {measurement.rss_mb:.0f} MB + "
        f"{MEMORY_HEADROOM - 1:.0%}, rounded up to 64), memory limit the same; no CPU limit (throttling only adds "
        "latency)" + (f"; nvidia.com/gpu {gpus} (measured on {measurement.machine.gpu})" if gpus else ""),
        f"- probes: readiness GET /ping (200 once warm, 503 while loading and draining), liveness GET /health; "
        f"terminationGracePeriodSeconds {termination} = the server's drain grace "
        f"({grace:g} s, SEARCHBOX_GRACEFUL_TIMEOUT_S) + 10 s",
        model_line,
        metric_line,
        f"- HPA: {minimum}..{options.max_instances} pods; desired = ceil(current x metric / target), no change "
        f"within a {HPA_TOLERANCE:g} tolerance; scale up at most +{HPA_SCALE_UP_PERCENT}% or +{HPA_SCALE_UP_PODS} pods "
        f"per {HPA_POLICY_PERIOD_S} s (the larger), no stabilization; scale down after a "
        f"{options.scale_in_cooldown_s} s stabilization window (--scale-in-cooldown); replayed by "
        "`make scale SCALE_ARGS=\"--autoscaler hpa\"`",
        "- the Deployment leaves spec.replicas out: the HPA owns the count (as kubernetes.io advises), so applying "
        "the file again does not reset it",
        f"- apply: kubectl apply -f {KUBERNETES_FILE}"]
    return Variant("kubernetes", files=files, plan=plan)


def kubernetes_problems(documents: list[dict]) -> list[str]:
    """Each manifest checked by kubernetes-validate against KUBERNETES_VERSION's schemas, unknown fields refused."""
    import kubernetes_validate

    problems = []
    for document in documents:
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError,
                kubernetes_validate.InvalidSchemaError) as exc:
            where = f"{document.get('kind')} {document.get('metadata', {}).get('name')}"
            message = getattr(exc, "message", None) or str(exc)
            path = ".".join(str(p) for p in getattr(exc, "path", ()) or ())
            problems.append(f"{where}: {path + ': ' if path else ''}{message}")
    return problems


def check_kubernetes(documents: list[dict]) -> None:
    problems = kubernetes_problems(documents)
    if problems:
        raise Refused(f"{KUBERNETES_FILE}: " + "; ".join(problems))


BUILDERS: dict[str, Callable[[Options], Variant]] = {
    "realtime": realtime, "async": asynchronous, "serverless": serverless,
    "inference-component": inference_component, "batch": batch, "azure": azure, "vertex": vertex,
    "vertex-batch": vertex_batch, "kubernetes": kubernetes}


# --- build -----------------------------------------------------------------------------------------------------


def build(options: Options, variants: list[str], *, explicit: bool) -> tuple[list[Variant], dict[str, str]]:
    """Build and validate the variants. With `explicit` a variant that cannot be built refuses the whole run;
    otherwise it is skipped and the reason returned."""
    built, skipped = [], {}
    for name in variants:
        try:
            variant = BUILDERS[name](options)
        except (Refused, _capacity.CapacityError) as exc:
            if explicit:
                raise
            skipped[name] = str(exc)
            continue
        target = next(t for t, names in TARGETS.items() if name in names)
        policy = store_policy(options) if target == "sagemaker" else None
        if policy is not None:
            variant.calls.insert(0, policy)  # the role may write the store before the model starts
        variant.plan += store_plan(options, "vertex" if target.startswith("vertex") else target)
        validate(variant.calls)
        built.append(variant)
    return built, skipped


def write(out_dir: Path, built: list[Variant], skipped: dict[str, str], options: Options) -> list[Path]:
    """Write every variant beside the output directory, check Azure's files there, then move them in."""
    written = []
    with _files.staged_output(out_dir, whole=tuple(v.name for v in built)) as staged:
        for variant in built:
            folder = staged / variant.name
            folder.mkdir()
            if variant.calls:
                (folder / REQUESTS_FILE).write_text(
                    json.dumps([call.to_json() for call in variant.calls], indent=2) + "\n", encoding="utf-8")
                written.append(out_dir / variant.name / REQUESTS_FILE)
            for file_name, text in variant.files.items():
                (folder / file_name).write_text(text, encoding="utf-8")
                written.append(out_dir / variant.name / file_name)
            if variant.name == "azure":
                load_back_azure(folder)
        (staged / PLAN_FILE).write_text(plan_markdown(built, skipped, options), encoding="utf-8")
        written.append(out_dir / PLAN_FILE)
    return written


def load_back_azure(folder: Path) -> None:
    """environment.yml and deployment.yml with azure-ai-ml's loaders, autoscale.json with azure-mgmt-monitor's model."""
    from azure.ai.ml import load_environment, load_online_deployment

    load_environment(folder / "environment.yml")
    load_online_deployment(folder / "deployment.yml")
    check_autoscale(json.loads((folder / "autoscale.json").read_text(encoding="utf-8")))


def plan_markdown(built: list[Variant], skipped: dict[str, str], options: Options) -> str:
    product = options.product
    if any(v.calls for v in built):
        lines = [f"# Deployments of {product.title}", "",
                 f"Model `{product.served_name}` ({options.backend}), instance type `{options.instance_type}`. Every "
                 "request below was checked with botocore's validator against its service model; apply one folder "
                 f"with `python packaging/deployment.py apply <folder>/{REQUESTS_FILE} --no-dry-run`.", ""]
    else:
        lines = [f"# Deployments of {product.title}", "", f"Model `{product.served_name}` ({options.backend}).", ""]
    if any(v.name.startswith("vertex") for v in built):
        lines += ["Vertex AI requests (vertex*/requests.json) are v1 API request messages in JSON, each read back "
                  "with google-cloud-aiplatform's own types.", ""]
    if any(v.name == "kubernetes" for v in built):
        lines += [f"Kubernetes manifests (kubernetes/{KUBERNETES_FILE}) were checked with kubernetes-validate "
                  f"against Kubernetes {KUBERNETES_VERSION}'s schemas, unknown fields refused.", ""]
    assumed = {options.assume_from} - {None}
    if assumed:
        lines += [f"**Assumption:** capacity not measured on the instance type; sized from the measurement on "
                  f"`{', '.join(assumed)}` (--assume-capacity-from). Measure it there before relying on it.", ""]
    for variant in built:
        lines += [f"## {variant.name}", "", *variant.plan, ""]
        if variant.calls:
            lines += ["Calls, in order: " + ", ".join(f"`{c.service} {c.action}`" for c in variant.calls), ""]
    if skipped:
        lines += ["## Not built", ""] + [f"- {name}: {why}" for name, why in skipped.items()] + [""]
    return "\n".join(lines)


# --- apply -----------------------------------------------------------------------------------------------------


def load_calls(path: Path) -> list[Call]:
    _files.require_file(path, "requests", f"build it with `deployment.py build` ({REQUESTS_FILE})")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(raw, list) and raw and isinstance(raw[0], dict) and raw[0].get("method") in VERTEX_METHODS:
            raise _files.InputError(f"requests: {path} holds Vertex AI requests: `apply` makes AWS calls; send these "
                                    "with Google's v1 client (README: Deploying on Vertex AI)")
        calls = [Call(item["service"], item["operation"], item["params"]) for item in raw]
    except (ValueError, KeyError, TypeError) as exc:
        raise _files.InputError(f"requests: {path} is not a {REQUESTS_FILE} written by deployment.py ({exc})") from exc
    validate(calls)
    return calls


def execute(calls: list[Call], *, region: str, endpoint_url: str | None = None,
            log: Callable[[str], None] = print) -> dict[str, str]:
    """Make the calls with boto3 in order; returns the ARN of every scaling policy by name."""
    import boto3

    session = boto3.session.Session(region_name=region)
    clients: dict[str, Any] = {}
    policies: dict[str, str] = {}
    for call in calls:
        params = _resolve(call.params, policies)
        if call.service not in clients:
            clients[call.service] = session.client(call.service, endpoint_url=endpoint_url)
        client = clients[call.service]
        log(f"-> {call.service} {call.action} {_label(params)}")
        response = getattr(client, call.method)(**params)
        if call.action == "PutScalingPolicy":
            policies[params["PolicyName"]] = response["PolicyARN"]
    return policies


def _resolve(value: Any, policies: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _resolve(v, policies) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, policies) for v in value]
    if isinstance(value, str) and value.startswith("{{PolicyARN:") and value.endswith("}}"):
        name = value[len("{{PolicyARN:"):-2]
        if name not in policies:
            raise _files.InputError(f"requests: {value} names no scaling policy put earlier in the file")
        return policies[name]
    return value


def _label(params: dict[str, Any]) -> str:
    for key in ("ModelName", "EndpointConfigName", "EndpointName", "InferenceComponentName", "PolicyName",
                "AlarmName", "TransformJobName", "ResourceId"):
        if key in params:
            return str(params[key])
    return ""


# --- command line ----------------------------------------------------------------------------------------------


def options_from(args: argparse.Namespace) -> Options:
    product = _catalog.find_product(_catalog.load_catalog(args.catalog), args.product)
    name = args.name or product.name
    if len(name) > NAME_MAX:
        raise Refused(f"--name: {name!r} is {len(name)} characters; at most {NAME_MAX}, so that every variant's "
                      f"suffix still fits SageMaker's 63")
    _catalog.check_name(name, "--name")
    if bool(args.model_package_arn) == bool(args.image and args.model_data) and sagemaker_asked(args):
        raise Refused("--model-package-arn: give either --model-package-arn (a subscribed Marketplace package) or "
                      "--image with --model-data (your own image and model.tar.gz), not both or neither")
    check_store(args.classifier_store)
    if args.min_instances < 0 or args.max_instances < max(1, args.min_instances):
        raise Refused(f"--max-instances: {args.max_instances} must be >= 1 and >= --min-instances {args.min_instances}")
    return Options(
        product=product, name=name, instance_type=args.instance_type, role_arn=args.role_arn, image=args.image,
        model_data=args.model_data, model_package_arn=args.model_package_arn, bucket=args.bucket, prefix=args.prefix,
        measurements=_capacity.load(args.capacity), assume_from=args.assume_capacity_from, p95_ms=args.p95_ms,
        headroom=args.headroom, metric=args.metric, min_instances=args.min_instances,
        max_instances=args.max_instances, scale_in_cooldown_s=args.scale_in_cooldown,
        scale_out_cooldown_s=args.scale_out_cooldown, async_backlog_s=args.async_backlog_s,
        sns_success_topic=args.sns_success_topic, sns_error_topic=args.sns_error_topic,
        serverless_max_concurrency=args.serverless_max_concurrency, input_rows=args.input_rows,
        input_mb=args.input_mb, target_hours=args.target_hours, content_type=args.content_type,
        azure_image=args.azure_image, azure_subscription=args.azure_subscription,
        azure_resource_group=args.azure_resource_group, azure_workspace=args.azure_workspace,
        azure_location=args.azure_location, gcp_project=args.gcp_project, gcp_region=args.gcp_region,
        vertex_image=args.vertex_image, vertex_artifact_uri=args.vertex_artifact_uri,
        vertex_machine_type=args.vertex_machine_type, vertex_accelerator=args.vertex_accelerator,
        vertex_bucket=args.vertex_bucket, kubernetes_image=args.kubernetes_image,
        kubernetes_node=args.kubernetes_node, kubernetes_model=args.kubernetes_model,
        kubernetes_metric=args.kubernetes_metric, kubernetes_namespace=args.kubernetes_namespace,
        kubernetes_service_account=args.kubernetes_service_account, kubernetes_init_image=args.kubernetes_init_image,
        classifier_store=args.classifier_store)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="write the requests of every variant, validated, and plan.md")
    b.add_argument("--catalog", required=True)
    b.add_argument("--product", help="the catalog product (default: the only one)")
    b.add_argument("--name", help="endpoint/model name stem (default: the product name)")
    b.add_argument("--instance-type", help="SageMaker instance type to deploy on (must be measured); required for "
                                           "SageMaker's variants")
    b.add_argument("--variant", action="append", choices=VARIANTS,
                   help="build only these (repeatable); default: every variant the product allows, the rest listed "
                        "in plan.md with the reason")
    b.add_argument("--image", help="the searchbox image URI in your ECR")
    b.add_argument("--model-data", help="s3:// URL of model.tar.gz")
    b.add_argument("--model-package-arn", help="a subscribed AWS Marketplace model package, instead of image + data")
    b.add_argument("--role-arn", help="IAM role SageMaker assumes (CreateModel ExecutionRoleArn); required for "
                                      "SageMaker's variants")
    b.add_argument("--bucket", help="bucket or s3://bucket/prefix for async output and batch input/output")
    b.add_argument("--prefix", help="key prefix (default: the s3:// URL's, else --name)")
    b.add_argument("--capacity", default=str(DEFAULT_CAPACITY), help="capacity file (bench/capacity.py)")
    b.add_argument("--assume-capacity-from", metavar="LABEL",
                   help="size an unmeasured instance type from this measured machine, stated as an assumption")
    b.add_argument("--p95-ms", type=float, help="p95 latency target (default: the one the capacity was measured at)")
    b.add_argument("--headroom", type=float, default=_capacity.DEFAULT_HEADROOM,
                   help="share of measured capacity to target (SageMaker's SAFETY_FACTOR; default 0.5)")
    b.add_argument("--metric", choices=("concurrency", "invocations"), default="concurrency",
                   help="real-time target tracking on ConcurrentRequestsPerModel (high-resolution) or "
                        "InvocationsPerInstance")
    b.add_argument("--min-instances", type=int, default=1)
    b.add_argument("--max-instances", type=int, default=4)
    b.add_argument("--scale-in-cooldown", type=int, default=SCALE_IN_COOLDOWN_S, help="seconds")
    b.add_argument("--scale-out-cooldown", type=int, default=SCALE_OUT_COOLDOWN_S, help="seconds")
    b.add_argument("--async-backlog-s", type=float, default=ASYNC_BACKLOG_S,
                   help="async: queued work per instance, in seconds at the measured rate, to track")
    b.add_argument("--sns-success-topic", help="async: SNS topic ARN told of each result")
    b.add_argument("--sns-error-topic", help="async: SNS topic ARN told of each failure")
    b.add_argument("--serverless-max-concurrency", type=int, default=SERVERLESS_MAX_CONCURRENCY)
    b.add_argument("--input-rows", type=int, help="batch: lines in the input")
    b.add_argument("--input-mb", type=float, help="batch: total input size in MB")
    b.add_argument("--target-hours", type=float, default=1.0, help="batch: how long the job may take")
    b.add_argument("--content-type", default="text/csv", choices=("text/csv", "application/jsonlines"))
    b.add_argument("--azure-image", help="the image in your Azure registry (default: --image)")
    b.add_argument("--azure-subscription", default="<subscription-id>")
    b.add_argument("--azure-resource-group", default="<resource-group>")
    b.add_argument("--azure-workspace", default="<workspace>")
    b.add_argument("--azure-location", default="eastus")
    b.add_argument("--target", action="append", choices=tuple(TARGETS),
                   help="build this platform's variants (repeatable): sagemaker, azure, vertex (vertex, vertex-batch), "
                        "kubernetes")
    b.add_argument("--gcp-project", default="<project>", help="vertex: the Google Cloud project")
    b.add_argument("--gcp-region", default="us-central1", help="vertex: the region of the Model and endpoint")
    b.add_argument("--vertex-image", help="vertex: the image in your Artifact Registry (default: --image)")
    b.add_argument("--vertex-artifact-uri", help="vertex: gs:// directory of the model (becomes AIP_STORAGE_URI)")
    b.add_argument("--vertex-machine-type", help="vertex: machine type, e.g. n1-standard-4 (must be measured)")
    b.add_argument("--vertex-accelerator", metavar="TYPE[:COUNT]",
                   help="vertex: accelerator of each replica, e.g. NVIDIA_L4 or NVIDIA_TESLA_T4:1")
    b.add_argument("--vertex-bucket", help="vertex-batch: gs://bucket[/prefix] for JSON Lines input and output")
    b.add_argument("--kubernetes-image", help="kubernetes: the image your cluster pulls (default: --image)")
    b.add_argument("--kubernetes-node", metavar="LABEL",
                   help="kubernetes: the measured machine label the pods run on (bench/capacity.json)")
    b.add_argument("--kubernetes-model", help="kubernetes: s3://, gs://, https://ACCOUNT.blob.core.windows.net/... "
                                              "model directory (copied by an init container) or pvc:CLAIM")
    b.add_argument("--kubernetes-metric", choices=("in-flight", "cpu"), default="in-flight",
                   help="kubernetes: HPA on in-flight inputs per pod (Prometheus adapter) or CPU utilization")
    b.add_argument("--kubernetes-namespace", default="default")
    b.add_argument("--kubernetes-service-account", help="kubernetes: the pods' service account (cloud identity)")
    b.add_argument("--kubernetes-init-image", help="kubernetes: the image copying the model (default: the cloud's CLI)")
    b.add_argument("--classifier-store", metavar="URL",
                   help="where classifiers trained on the endpoint are kept (SEARCHBOX_CLASSIFIER_STORE): "
                        "s3://bucket/prefix, gs://bucket/prefix or az://container/prefix; set on every target, and "
                        "its permissions granted (IAM policy on SageMaker, the roles named for Vertex and Azure)")
    b.add_argument("-o", "--out-dir", required=True, type=Path)
    b.set_defaults(build_parser=b)  # refusals of flags only some targets need, in argparse's own words
    a = commands.add_parser("apply", help="make the calls of one requests.json (dry run by default)")
    a.add_argument("requests", type=Path)
    a.add_argument("--region", default="us-east-1")
    a.add_argument("--endpoint-url", help="send every call to this endpoint instead of AWS (e.g. a moto server)")
    a.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=True)
    return parser


def selected(args: argparse.Namespace) -> list[str]:
    asked = list(args.variant or []) + [v for t in args.target or [] for v in TARGETS[t]]
    return list(dict.fromkeys(asked)) or list(DEFAULT_VARIANTS)


def sagemaker_asked(args: argparse.Namespace) -> bool:
    return any(v in TARGETS["sagemaker"] for v in selected(args))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "apply":
        return apply_command(args)
    missing = [flag for flag, value in (("--instance-type", args.instance_type), ("--role-arn", args.role_arn))
               if value is None and sagemaker_asked(args)]
    if missing:  # SageMaker's variants need them; Vertex and Kubernetes do not
        args.build_parser.error(f"the following arguments are required: {', '.join(missing)}")
    try:
        options = options_from(args)
        built, skipped = build(options, selected(args), explicit=bool(args.variant or args.target))
        if not built:
            raise Refused("--variant: nothing could be built: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        written = write(args.out_dir, built, skipped, options)
    except (_catalog.CatalogError, _capacity.CapacityError, Refused, _aws.RequestInvalid, _files.InputError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    if options.assume_from:
        machine = options.instance_type or options.vertex_machine_type or options.kubernetes_node
        print(f"ASSUMED capacity: {machine} sized from {options.assume_from} "
              "(--assume-capacity-from); see plan.md", file=sys.stderr)
    return 0


def apply_command(args: argparse.Namespace) -> int:
    try:
        calls = load_calls(args.requests)
    except (_files.InputError, _aws.RequestInvalid) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"# dry run: {len(calls)} calls in {args.region}; nothing was sent (--no-dry-run sends them)")
        for call in calls:
            print(f"{call.service}.{call.method}({json.dumps(call.params, indent=2)})")
        return 0
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        execute(calls, region=args.region, endpoint_url=args.endpoint_url)
    except (BotoCoreError, ClientError, _files.InputError) as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
