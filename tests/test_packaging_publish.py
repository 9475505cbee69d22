"""packaging/publish.py against a local moto server (S3 + SageMaker): real boto3 calls over HTTP, dummy credentials."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import requests

from conftest import free_port

PACKAGING = Path(__file__).resolve().parent.parent / "packaging"
sys.path.insert(0, str(PACKAGING))

import build_artifact  # noqa: E402
import model_package  # noqa: E402

pytestmark = pytest.mark.server

CATALOG = PACKAGING / "catalog.example.yaml"
NAME = "searchbox-minilm-embeddings"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/searchbox:1.0"
ROLE = "arn:aws:iam::123456789012:role/SageMakerValidation"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}


@pytest.fixture
def moto_url():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    # moto keeps its state per process, not per server: start each test from empty accounts.
    requests.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()
    yield url
    server.stop()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, minilm_dir) -> Path:
    # The serving check and the default gzip level are covered by test_packaging_artifact; here only the upload
    # matters, so the archive is stored (level 0): deflating MiniLM's weights took most of this fixture's 3.4 s and
    # gains them little, since float weights hardly compress.
    return build_artifact.build_artifact(minilm_dir, tmp_path_factory.mktemp("publish") / "model.tar.gz",
                                         check=False, compresslevel=0).output


def _client(service: str, url: str):
    return boto3.client(service, region_name="us-east-1", endpoint_url=url, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def _publish(artifact: Path, *extra: str, env_extra: dict | None = None,
             bucket: str = "vendor-bucket") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(CREDENTIALS, **(env_extra or {}))
    return subprocess.run([sys.executable, str(PACKAGING / "publish.py"), "--catalog", str(CATALOG),
                           "--artifact", str(artifact), "--image", IMAGE, "--bucket", bucket,
                           "--role-arn", ROLE, *extra], env=env, capture_output=True, text=True, timeout=300)


def test_dry_run_prints_every_call_and_sends_none(artifact, moto_url):
    result = _publish(artifact, "--create-bucket", env_extra={"AWS_ENDPOINT_URL": moto_url})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for call in ("s3.create_bucket(", "s3.upload_file(", "s3.put_object(", "sagemaker.create_model_package("):
        assert call in out
    assert f'"Key": "{NAME}/model.tar.gz"' in out and '"CertifyForMarketplace": true' in out
    assert [b["Name"] for b in _client("s3", moto_url).list_buckets()["Buckets"]] == []
    assert _client("sagemaker", moto_url).list_model_packages()["ModelPackageSummaryList"] == []


def test_publish_uploads_the_artifact_and_creates_the_package(artifact, moto_url):
    result = _publish(artifact, "--create-bucket", "--no-dry-run", "--endpoint-url", moto_url)
    assert result.returncode == 0, result.stderr
    assert f"created arn:aws:sagemaker:us-east-1:123456789012:model-package/{NAME}" in result.stdout

    s3 = _client("s3", moto_url)
    uploaded = s3.get_object(Bucket="vendor-bucket", Key=f"{NAME}/model.tar.gz")["Body"].read()
    assert hashlib.sha256(uploaded).digest() == hashlib.sha256(artifact.read_bytes()).digest()
    sample = s3.get_object(Bucket="vendor-bucket", Key=f"{NAME}/validation/input.csv")
    assert sample["Body"].read().decode() == model_package.sample_input("embedding")
    assert sample["ContentType"] == "text/csv"

    package = _client("sagemaker", moto_url).describe_model_package(ModelPackageName=NAME)
    assert package["CertifyForMarketplace"] is True
    spec = package["InferenceSpecification"]
    assert spec["Containers"][0] == {"Image": IMAGE, "ModelDataUrl": f"s3://vendor-bucket/{NAME}/model.tar.gz"}
    assert "ml.g5.xlarge" in spec["SupportedRealtimeInferenceInstanceTypes"]
    profile = package["ValidationSpecification"]["ValidationProfiles"][0]["TransformJobDefinition"]
    assert profile["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == \
        f"s3://vendor-bucket/{NAME}/validation/input.csv"


def test_publish_refuses_a_missing_artifact_without_a_call(tmp_path, moto_url):
    result = _publish(tmp_path / "nope.tar.gz", "--no-dry-run", "--endpoint-url", moto_url)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    assert [b["Name"] for b in _client("s3", moto_url).list_buckets()["Buckets"]] == []


def test_publish_takes_the_bucket_as_an_s3_url(artifact, moto_url):
    """`--bucket s3://bucket/prefix/` uploads under that prefix; it does not become `s3://s3://...`."""
    result = _publish(artifact, "--create-bucket", "--no-dry-run", "--endpoint-url", moto_url,
                      bucket="s3://vendor-bucket/releases/v1/")
    assert result.returncode == 0, result.stderr
    s3 = _client("s3", moto_url)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="vendor-bucket")["Contents"])
    assert keys == ["releases/v1/model.tar.gz", "releases/v1/validation/input.csv"]
    package = _client("sagemaker", moto_url).describe_model_package(ModelPackageName=NAME)
    assert package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == \
        "s3://vendor-bucket/releases/v1/model.tar.gz"


def test_publish_refuses_a_bucket_url_it_cannot_read_without_a_call(artifact, moto_url):
    result = _publish(artifact, "--create-bucket", "--no-dry-run", "--endpoint-url", moto_url,
                      bucket="https://vendor-bucket.s3.amazonaws.com/releases")
    assert result.returncode == 2
    assert result.stderr.startswith("refused: --bucket: ") and "s3://my-bucket/some/prefix" in result.stderr
    assert [b["Name"] for b in _client("s3", moto_url).list_buckets()["Buckets"]] == []
