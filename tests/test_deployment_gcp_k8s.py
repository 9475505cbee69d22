"""packaging/deployment.py's Vertex AI and Kubernetes targets and bench/scale.py's HorizontalPodAutoscaler replay.

The built requests are read back with google-cloud-aiplatform's own v1 request types and the manifests with
kubernetes-validate, here in the test (not through the builder's own checks), and a broken one is shown refused.
Expected numbers are worked by hand from the fixture's levels (test_deployment.py's: 50, 90, 150, 200, 210 inputs/s
at 1, 2, 4, 8, 16 in flight; p95 <= 1000 ms holds to 8; resident 600 MB; 4 torch threads)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "packaging"))

import deployment  # noqa: E402
from test_deployment import CATALOG, IMAGE, ROLE, _main, fixture_measurements, measurement, options  # noqa: E402

from bench import scale  # noqa: E402

aiplatform_v1 = pytest.importorskip("google.cloud.aiplatform_v1")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::marshmallow.warnings.Marshmallow4Warning")]

REQUEST_TYPES = {"UploadModel": aiplatform_v1.UploadModelRequest, "CreateEndpoint": aiplatform_v1.CreateEndpointRequest,
                 "DeployModel": aiplatform_v1.DeployModelRequest,
                 "CreateBatchPredictionJob": aiplatform_v1.CreateBatchPredictionJobRequest}
K8S_VERSION = "1.31.0"


def gcp(**overrides) -> deployment.Options:
    values = dict(vertex_machine_type="n1-standard-4", vertex_artifact_uri="gs://models/minilm",
                  vertex_bucket="gs://jobs/minilm", gcp_project="my-project", assume_from="local",
                  kubernetes_node="local", kubernetes_model="s3://models/minilm")
    values.update(overrides)
    return options(**values)


def requests_of(variant: deployment.Variant) -> list[dict]:
    return json.loads(variant.files["requests.json"])


def read_back(item: dict):
    """The library's own parse of the JSON form: unknown fields, wrong types and unknown enum values raise."""
    return REQUEST_TYPES[item["method"]].from_json(json.dumps(item["request"]))


def manifests(variant: deployment.Variant) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(variant.files["searchbox.yaml"])}


# --- Vertex AI -------------------------------------------------------------------------------------------------------


def test_vertex_requests_read_back_with_aiplatform_types_and_carry_the_measured_targets():
    variant = deployment.vertex(gcp())
    upload, endpoint, deploy = (read_back(item) for item in requests_of(variant))
    spec = upload.model.container_spec
    assert (spec.image_uri, spec.predict_route, spec.health_route) == (IMAGE, "/vertex", "/ping")
    assert [p.container_port for p in spec.ports] == [8080]  # AIP_HTTP_PORT's default
    assert upload.model.artifact_uri == "gs://models/minilm"  # what Vertex gives the container as AIP_STORAGE_URI
    assert upload.parent == "projects/my-project/locations/us-central1"
    assert endpoint.endpoint_id == "searchbox-minilm-embeddings"
    resources = deploy.deployed_model.dedicated_resources
    assert deploy.deployed_model.model == "projects/my-project/locations/us-central1/models/searchbox-minilm-embeddings"
    assert resources.machine_spec.machine_type == "n1-standard-4"
    assert resources.machine_spec.accelerator_count == 0
    assert (resources.min_replica_count, resources.max_replica_count) == (1, 4)
    # headroom 0.5 of a replica at its sustained rate: 50% CPU utilization, no accelerator metric without a GPU
    assert [(m.metric_name, m.target) for m in resources.autoscaling_metric_specs] == [
        ("aiplatform.googleapis.com/prediction/online/cpu/utilization", 50)]
    assert dict(deploy.traffic_split) == {"0": 100}


def test_a_gpu_replica_scales_on_duty_cycle_too_and_needs_its_accelerator_named():
    gpu = fixture_measurements() + [measurement("g2-standard-4", "query", gpu="NVIDIA L4")]
    variant = deployment.vertex(gcp(measurements=gpu, vertex_machine_type="g2-standard-4", assume_from=None,
                                    vertex_accelerator="NVIDIA_L4"))
    deploy = read_back(requests_of(variant)[2])
    machine = deploy.deployed_model.dedicated_resources.machine_spec
    assert (machine.accelerator_type.name, machine.accelerator_count) == ("NVIDIA_L4", 1)
    assert [m.metric_name.rsplit("/", 2)[-2] for m in deploy.deployed_model.dedicated_resources
            .autoscaling_metric_specs] == ["cpu", "accelerator"]
    with pytest.raises(deployment.Refused, match="^--vertex-accelerator: the capacity sizing g2-standard-4"):
        deployment.vertex(gcp(measurements=gpu, vertex_machine_type="g2-standard-4", assume_from=None))


@pytest.mark.parametrize(("edit", "says"), [
    (lambda r: r[0]["request"]["model"]["containerSpec"].update(predictPath="/x"), "predictPath"),
    (lambda r: r[2]["request"]["deployedModel"]["dedicatedResources"].update(minReplicaCount="one"), "minReplicaCount"),
    (lambda r: r[2]["request"]["deployedModel"]["dedicatedResources"]["machineSpec"].update(
        acceleratorType="NVIDIA_TESLA_T5"), "NVIDIA_TESLA_T5"),
])
def test_the_aiplatform_check_refuses_a_bad_field(edit, says):
    broken = copy.deepcopy(requests_of(deployment.vertex(gcp())))
    edit(broken)
    with pytest.raises(Exception):
        [read_back(item) for item in broken]  # the library itself refuses it
    with pytest.raises(deployment.Refused, match=says):
        deployment.check_vertex(broken)
    with pytest.raises(deployment.Refused, match="^--vertex-accelerator"):
        deployment.vertex(gcp(vertex_accelerator="NVIDIA_L4:zero"))


def test_vertex_batch_job_is_sized_for_its_input_from_the_batch_throughput():
    job = read_back(requests_of(deployment.vertex_batch(gcp(input_rows=1_000_000)))[1]).batch_prediction_job
    # the best measured level: 210 inputs/s; 1,000,000 lines in 1 h: ceil(1e6 / (210 x 3600)) = ceil(1.32) = 2
    assert (job.dedicated_resources.starting_replica_count, job.dedicated_resources.max_replica_count) == (2, 2)
    assert job.manual_batch_tuning_parameters.batch_size == 32  # the measured batch shape's inputs per request
    assert (job.input_config.instances_format, job.output_config.predictions_format) == ("jsonl", "jsonl")
    assert list(job.input_config.gcs_source.uris) == ["gs://jobs/minilm/batch/input/*.jsonl"]
    assert job.output_config.gcs_destination.output_uri_prefix == "gs://jobs/minilm/batch/output/"
    # 10 million lines would take 14 replicas: capped at --max-instances
    capped = read_back(requests_of(deployment.vertex_batch(gcp(input_rows=10_000_000)))[1]).batch_prediction_job
    assert capped.dedicated_resources.starting_replica_count == 4


# --- Kubernetes ------------------------------------------------------------------------------------------------------


def test_manifests_validate_against_the_kubernetes_schemas_with_measured_numbers():
    variant = deployment.kubernetes(gcp())
    docs = manifests(variant)
    for doc in docs.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert set(docs) == {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # 4 torch threads measured; 600 MB resident x 1.25 = 750, rounded up to 64: 768
    assert container["resources"] == {"requests": {"cpu": "4", "memory": "768Mi"}, "limits": {"memory": "768Mi"}}
    assert container["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    from container.settings import ENV_GRACE, SETTINGS  # the server's own drain grace (20 s, README's table)

    grace = next(s for s in SETTINGS if s.name == ENV_GRACE).default_value({})
    assert pod["terminationGracePeriodSeconds"] > grace
    init = pod["initContainers"][0]
    assert "s3://models/minilm" in init["command"] and init["volumeMounts"][0]["mountPath"] == "/models"
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    # 200 requests/s sustained x 0.5 = 100/s: between 2 in flight (90/s) and 4 (150/s): 2 + 2 x 10/60 = 2.33
    assert hpa["metrics"] == [{"type": "Pods", "pods": {"metric": {"name": "searchbox_queue_depth"},
                                                        "target": {"type": "AverageValue", "averageValue": "2330m"}}}]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 4)
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert "searchbox_queue_depth" in variant.files["prometheus-adapter-rules.yaml"]


def test_cpu_metric_and_gpu_pods_and_a_volume_instead_of_a_copy():
    gpu = fixture_measurements() + [measurement("a10-node", "query", gpu="NVIDIA A10G")]
    variant = deployment.kubernetes(gcp(measurements=gpu, kubernetes_node="a10-node", assume_from=None,
                                        kubernetes_metric="cpu", kubernetes_model="pvc:minilm"))
    docs = manifests(variant)
    for doc in docs.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "initContainers" not in pod and pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "minilm"
    assert docs["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 50
    assert "prometheus-adapter-rules.yaml" not in variant.files


@pytest.mark.parametrize("edit", [
    lambda d: d[0]["spec"]["template"]["spec"]["containers"][0].update(readinessProbes={}),
    lambda d: d[3]["spec"].update(maxReplicas="four"),
])
def test_a_broken_manifest_is_refused(edit):
    docs = list(yaml.safe_load_all(deployment.kubernetes(gcp()).files["searchbox.yaml"]))
    edit(docs)
    with pytest.raises(kubernetes_validate.ValidationError):
        for doc in docs:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    with pytest.raises(deployment.Refused, match="^searchbox.yaml: "):
        deployment.check_kubernetes(docs)


def test_the_command_line_builds_kubernetes_without_sagemaker_flags(tmp_path, capacity_file):
    out = tmp_path / "deploy"
    result = _main("build", "--catalog", CATALOG, "--target", "kubernetes", "--image", IMAGE, "--kubernetes-node",
                   "local", "--kubernetes-model", "gs://models/minilm", "--capacity", capacity_file, "-o", out)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "kubernetes").iterdir()) == ["prometheus-adapter-rules.yaml",
                                                                     "searchbox.yaml"]
    plan = (out / "plan.md").read_text()
    assert "## kubernetes" in plan and "terminationGracePeriodSeconds 30" in plan and "averaging 2.33 per pod" in plan
    asked = _main("build", "--catalog", CATALOG, "--target", "sagemaker", "--instance-type", "ml.m5.xlarge",
                  "--capacity", capacity_file, "-o", tmp_path / "sm")
    assert asked.returncode == 2 and "the following arguments are required: --role-arn" in asked.stderr
    assert ROLE  # the SageMaker flags stay as they were where SageMaker is built (test_deployment.py)


def test_the_command_line_builds_vertex_and_apply_does_not_take_its_requests(tmp_path, capacity_file):
    out = tmp_path / "deploy"
    result = _main("build", "--catalog", CATALOG, "--target", "vertex", "--image", IMAGE, "--vertex-machine-type",
                   "n1-standard-4", "--assume-capacity-from", "local", "--vertex-artifact-uri", "gs://models/minilm",
                   "--vertex-bucket", "gs://jobs/minilm", "--input-rows", "1000000", "--gcp-project", "p1",
                   "--capacity", capacity_file, "-o", out)
    assert result.returncode == 0, result.stderr
    assert "ASSUMED capacity: n1-standard-4 sized from local" in result.stderr
    for folder in ("vertex", "vertex-batch"):
        for item in json.loads((out / folder / "requests.json").read_text()):
            read_back(item)
    assert json.loads((out / "vertex" / "requests.json").read_text())[0]["request"]["parent"] == \
        "projects/p1/locations/us-central1"
    refused = _main("apply", out / "vertex" / "requests.json")
    assert refused.returncode == 2 and "holds Vertex AI requests" in refused.stderr
    unmeasured = _main("build", "--catalog", CATALOG, "--target", "vertex", "--image", IMAGE, "--vertex-machine-type",
                       "n1-standard-4", "--vertex-artifact-uri", "gs://models/minilm", "--capacity", capacity_file,
                       "-o", tmp_path / "unmeasured")
    assert unmeasured.returncode == 2 and "refused: --vertex-machine-type: n1-standard-4 was not measured" in \
        unmeasured.stderr


@pytest.fixture
def capacity_file(tmp_path) -> Path:
    import _capacity

    path = tmp_path / "capacity.json"
    path.write_text(_capacity.dumps(fixture_measurements()))
    return path


# --- the HorizontalPodAutoscaler replayed ----------------------------------------------------------------------------


def test_hpa_recommendation_follows_the_documented_formula():
    # 2 pods averaging 5 in flight against 2.5: ceil(2 x 5 / 2.5) = 4
    assert scale.hpa_recommendation(2, 0, 10.0, 2.5, 0.1) == 4
    # ratio 5.4 / 5 = 1.08: within the 0.1 tolerance, no change
    assert scale.hpa_recommendation(2, 0, 5.4, 2.5, 0.1) == 2
    # down: 2 pods averaging 1 against 2.5: ceil(2 x 0.4) = 1
    assert scale.hpa_recommendation(2, 0, 2.0, 2.5, 0.1) == 1
    # 2 starting pods count as 0 when scaling up: 10 / (4 x 2.5) = 1.0, no change
    assert scale.hpa_recommendation(2, 2, 10.0, 2.5, 0.1) == 4
    # 1 starting pod counts as 100% when scaling down: (1 + 2.5) / (3 x 2.5) = 0.467; ceil(3 x 0.467) = 2
    assert scale.hpa_recommendation(2, 1, 1.0, 2.5, 0.1) == 2


def test_hpa_replay_limits_scale_up_and_waits_out_the_scale_down_window():
    curve = scale.Instance.of(measurement("local", "query").levels)
    policy = scale.HpaPolicy(2.33, min_replicas=1, max_replicas=20, start_s=30)
    # 1000 requests/s at once: the first decision may add at most max(+100%, +4 pods) = 5 pods
    result = scale.simulate_hpa(lambda t: 1000.0, 60, curve, policy)
    first_at, before, after = result.scaling[0]
    assert (first_at, before, after) == (15, 1, 5)
    # load falls at 10 min: no scale-down is decided within 300 s of it
    busy = scale.simulate_hpa(lambda t: 400.0 if t < 600 else 20.0, 1500, curve, policy)
    downs = [t for t, a, b in busy.scaling if b < a and t > 600]
    assert downs and min(downs) >= 600 + 300


def test_readme_kubernetes_command_builds_as_written(tmp_path):
    """README's Hosts > Kubernetes build command, its flags as written, on a capacity file holding its node label."""
    import shlex

    import _capacity

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("### Kubernetes (private cloud, on-premises)", 1)[1].split("```sh\n", 1)[1].split("```")[0]
    command = block.split("packaging/deployment.py ", 1)[1].split("\nkubectl", 1)[0].replace("\\\n", " ")
    argv = shlex.split(command.replace("$IMAGE", IMAGE))
    out = argv.index("-o")
    argv[out + 1] = str(tmp_path / "deploy")
    argv[argv.index("--catalog") + 1] = str(CATALOG)
    capacity = tmp_path / "capacity.json"
    capacity.write_text(_capacity.dumps(fixture_measurements() + [measurement("m6i.xlarge", "query")]))
    result = _main(*argv, "--capacity", capacity)
    assert result.returncode == 0, result.stderr
    applied = block.split("kubectl apply -f ", 1)[1].split()[0]
    assert applied.endswith("deploy/kubernetes/searchbox.yaml")
    assert (tmp_path / "deploy" / "kubernetes" / "searchbox.yaml").is_file()


# --- the classifier store (POST /v1/train) ---------------------------------------------------------------------------

STORE = "SEARCHBOX_CLASSIFIER_STORE"


@pytest.mark.parametrize("url", ["s3://clf-bucket/team/classifiers", "gs://clf-bucket/team/classifiers",
                                 "az://classifiers/team"])
def test_the_classifier_store_is_set_on_every_target_it_writes(url):
    built, skipped = deployment.build(gcp(classifier_store=url), list(deployment.VARIANTS), explicit=True)
    assert not skipped and sorted(v.name for v in built) == sorted(deployment.VARIANTS)
    for variant in built:
        if variant.name in deployment.TARGETS["sagemaker"]:
            model = [c.params for c in variant.calls if c.action == "CreateModel"][0]
            assert model["PrimaryContainer"]["Environment"][STORE] == url, variant.name
            # a network-isolated container reaches no object store
            assert "EnableNetworkIsolation" not in model, variant.name
        elif variant.name == "azure":
            assert yaml.safe_load(variant.files["deployment.yml"])["environment_variables"][STORE] == url
        elif variant.name.startswith("vertex"):
            upload = [r for r in requests_of(variant) if r["method"] == "UploadModel"][0]
            assert {"name": STORE, "value": url} in upload["request"]["model"]["containerSpec"]["env"]
            read_back(upload)
        else:
            container = manifests(variant)["Deployment"]["spec"]["template"]["spec"]["containers"][0]
            assert {"name": STORE, "value": url} in container["env"]
        assert any(url in line for line in variant.plan), variant.name


def test_an_s3_store_grants_the_execution_role_exactly_its_prefix():
    built, _ = deployment.build(gcp(classifier_store="s3://clf-bucket/team/classifiers"),
                                list(deployment.TARGETS["sagemaker"]), explicit=True)
    # written by hand from the URL and ROLE (arn:aws:iam::123456789012:role/SageMakerExec): objects under the prefix,
    # the bucket listed only under it (IAM's documented form of a per-prefix grant)
    expected = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
         "Resource": "arn:aws:s3:::clf-bucket/team/classifiers/*"},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::clf-bucket",
         "Condition": {"StringLike": {"s3:prefix": ["team/classifiers/*"]}}}]}
    for variant in built:
        first = variant.calls[0]
        assert (first.service, first.action) == ("iam", "PutRolePolicy"), variant.name
        assert first.params["RoleName"] == "SageMakerExec"
        assert json.loads(first.params["PolicyDocument"]) == expected
        assert [c.action for c in variant.calls].index("CreateModel") > 0
    # no store, or a store on another cloud: no IAM call, and the model stays network-isolated as before
    for url in (None, "gs://clf-bucket/team"):
        realtime = deployment.realtime(gcp(classifier_store=url))
        assert all(c.service != "iam" for c in realtime.calls)
    plain = deployment.build(gcp(), ["realtime"], explicit=True)[0][0]
    assert all(c.service != "iam" for c in plain.calls)
    assert [c.params for c in plain.calls if c.action == "CreateModel"][0]["EnableNetworkIsolation"] is True
    assert STORE not in json.dumps([c.params for c in plain.calls])


def test_a_marketplace_package_cannot_reach_an_object_store():
    with pytest.raises(deployment.Refused, match="^--classifier-store: "):
        deployment.realtime(gcp(classifier_store="s3://clf-bucket/team", model_package_arn="arn:aws:sagemaker:"
                                "us-east-1:123456789012:model-package/minilm", image=None, model_data=None))


def test_the_command_line_names_each_clouds_role_for_its_store(tmp_path, capacity_file):
    common = ["build", "--catalog", CATALOG, "--image", IMAGE, "--capacity", capacity_file, "--assume-capacity-from",
              "local", "--vertex-machine-type", "n1-standard-4", "--vertex-artifact-uri", "gs://models/minilm",
              "--kubernetes-node", "local", "--kubernetes-model", "gs://models/minilm"]
    gs = _main(*common, "--variant", "vertex", "--target", "kubernetes", "--classifier-store",
               "gs://clf-bucket/team", "-o", tmp_path / "gs")
    assert gs.returncode == 0, gs.stderr
    plan = (tmp_path / "gs" / "plan.md").read_text()
    assert "roles/storage.objectUser on gs://clf-bucket" in plan
    assert "SEARCHBOX_CLASSIFIER_STORE=gs://clf-bucket/team" in plan
    az = _main(*common, "--target", "azure", "--classifier-store", "az://classifiers/team", "-o", tmp_path / "az")
    assert az.returncode == 0, az.stderr
    assert "Storage Blob Data Contributor" in (tmp_path / "az" / "plan.md").read_text()
    # written back and loaded by azure-ai-ml's own loader in the build: environment_variables is its field
    assert yaml.safe_load((tmp_path / "az" / "azure" / "deployment.yml").read_text())["environment_variables"] == \
        {STORE: "az://classifiers/team"}
    wrong = _main(*common, "--variant", "vertex", "--classifier-store", "ftp://x/y", "-o", tmp_path / "ftp")
    assert wrong.returncode != 0 and "--classifier-store: 'ftp://x/y'" in wrong.stderr
