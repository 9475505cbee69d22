"""packaging/: what the scripts refuse, and that a refusal writes nothing.

Every script is run as a vendor runs it (a subprocess on the command line); a refusal must be one line on
stderr naming the flag or catalog field and the path, exit code 2, and leave the output as it was.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

PACKAGING = Path(__file__).resolve().parent.parent / "packaging"
CATALOG = PACKAGING / "catalog.example.yaml"
sys.path.insert(0, str(PACKAGING))

import _aws  # noqa: E402
import _files  # noqa: E402
import aws_listing  # noqa: E402
import model_package  # noqa: E402

pytestmark = pytest.mark.server

NAME = "searchbox-minilm-embeddings"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/searchbox:1.0"
ROLE = "arn:aws:iam::123456789012:role/SageMakerValidation"
ARN = f"arn:aws:sagemaker:us-east-1:123456789012:model-package/{NAME}"
IDS = ("--product-id", "prod-abc123", "--offer-id", "offer-def456", "--model-package-arn", ARN)
PLACEHOLDERS = ("REPLACE-ME", ":ACCOUNT:", "still to fill in")
TEXT_SUFFIXES = {".md", ".json", ".yml", ".ipynb", ".csv"}
# The bundle test's two builds store model.tar.gz rather than deflate it: gzip at the default level 6 spent several
# seconds a build on MiniLM's weights, and compression is not what this file tests (test_packaging_artifact.py builds
# at the default level and checks its bytes). A level-0 archive is still gzip, opened below as any.
ARCHIVE_LEVEL = 0


def _run(script: str, *args: str | Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PACKAGING / script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, check=False)


def _tree(root: Path) -> dict[str, bytes | None]:
    """Everything under `root` (files with their bytes, directories as None); {} when it does not exist."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _assert_refused(result: subprocess.CompletedProcess, *named: str) -> None:
    """Exit code 2, one line on stderr starting with 'refused: ', holding every string in `named`."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refused: "), result.stderr
    for text in named:
        assert text in lines[0], (text, lines[0])


def _catalog(tmp_path: Path, **changes) -> Path:
    """The example catalog with `changes` applied to its product, its paths made absolute, written to tmp_path."""
    raw = yaml.safe_load(CATALOG.read_text())
    product = raw["products"][0]
    for key in ("description", "eula"):
        product[key] = str(PACKAGING / product[key])
    product["classifiers"] = {name: str(PACKAGING / path) for name, path in product.get("classifiers", {}).items()}
    for key, value in changes.items():
        if value is None:
            product.pop(key)
        else:
            product[key] = value
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _output_files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.suffix in TEXT_SUFFIXES}


# --- buckets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("bucket", "prefix", "expected"), [
    ("my-bucket", None, ("my-bucket", NAME)),
    ("s3://my-bucket", None, ("my-bucket", NAME)),
    ("s3://my-bucket/", None, ("my-bucket", NAME)),
    ("s3://my-bucket/some/prefix", None, ("my-bucket", "some/prefix")),
    ("s3://my-bucket/some/prefix/", None, ("my-bucket", "some/prefix")),
    ("s3://my-bucket", "releases/v1/", ("my-bucket", "releases/v1")),
    ("my.bucket-2", "releases", ("my.bucket-2", "releases")),
    ("my-bucket", "", ("my-bucket", "")),
])
def test_a_bucket_name_or_s3_url_is_split_into_bucket_and_prefix(bucket, prefix, expected):
    assert _aws.s3_location(bucket, prefix, NAME) == expected
    layout = model_package.S3Layout.from_arguments(bucket, prefix, NAME)
    assert layout.url("model.tar.gz").startswith(f"s3://{expected[0]}/") and "s3://s3://" not in layout.url("x")


@pytest.mark.parametrize(("bucket", "prefix", "flag", "reason"), [
    ("s3://my-bucket/some/prefix", "other", "--prefix", "give it once"),
    ("my-bucket", "s3://my-bucket/p", "--prefix", "is a URL"),
    ("https://my-bucket.s3.amazonaws.com/some/prefix", None, "--bucket", "not an S3 bucket or s3:// URL"),
    ("arn:aws:s3:::my-bucket", None, "--bucket", "not an S3 bucket or s3:// URL"),
    ("s3://s3://my-bucket", None, "--bucket", "not an S3 bucket or s3:// URL"),
    ("my-bucket/some/prefix", None, "--bucket", "holds a '/'"),
    ("My-Bucket", None, "--bucket", "lowercase"),
    ("my_bucket", None, "--bucket", "lowercase letters, digits, dots and hyphens"),
    ("-my-bucket", None, "--bucket", "a letter or digit at both ends"),
    ("my-bucket.", None, "--bucket", "a letter or digit at both ends"),
    ("ab", None, "--bucket", "2 characters, S3 allows 3 to 63"),
    ("a" * 64, None, "--bucket", "64 characters"),
    ("s3://", None, "--bucket", "0 characters"),
    ("my..bucket", None, "--bucket", "two dots in a row"),
    ("192.168.5.4", None, "--bucket", "IP address"),
    ("xn--my-bucket", None, "--bucket", "reserved by S3"),
    ("my-bucket-s3alias", None, "--bucket", "reserved by S3"),
])
def test_what_is_not_a_bucket_is_refused_by_name(bucket, prefix, flag, reason):
    with pytest.raises(_aws.BucketInvalid) as caught:
        _aws.s3_location(bucket, prefix, NAME)
    message = str(caught.value)
    assert message.startswith(f"{flag}: ") and reason in message, message
    if flag == "--bucket":
        assert _aws.BUCKET_HINT in message


def test_a_layout_never_holds_a_url_as_its_bucket():
    with pytest.raises(_aws.BucketInvalid, match="s3://my-bucket"):
        model_package.S3Layout("s3://my-bucket", NAME)


@pytest.mark.parametrize(("bucket", "prefix", "base"), [
    ("s3://my-bucket/some/prefix/", (), "s3://my-bucket/some/prefix"),
    ("s3://my-bucket", (), f"s3://my-bucket/{NAME}"),
    ("my-bucket", ("--prefix", "releases"), "s3://my-bucket/releases"),
])
def test_model_package_writes_the_location_the_bucket_names(tmp_path, bucket, prefix, base):
    result = _run("model_package.py", "--catalog", CATALOG, "--image", IMAGE, "--bucket", bucket, *prefix,
                  "--role-arn", ROLE, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "out" / model_package.REQUEST_FILE).read_text()
    request = json.loads(written)
    assert request["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == f"{base}/model.tar.gz"
    profile = request["ValidationSpecification"]["ValidationProfiles"][0]["TransformJobDefinition"]
    assert profile["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == f"{base}/validation/input.csv"
    assert profile["TransformOutput"]["S3OutputPath"] == f"{base}/validation/output/"
    assert "s3://s3://" not in written


@pytest.mark.parametrize(("script", "extra"), [
    ("model_package.py", ("-o", "OUT")),
    ("publish.py", ("--artifact", "ARTIFACT")),
    ("bundle.py", ("-o", "OUT")),
])
@pytest.mark.parametrize(("bucket", "prefix", "named"), [
    ("s3://s3://my-bucket", (), ("--bucket", "s3://s3://my-bucket", "s3://my-bucket/some/prefix")),
    ("https://my-bucket.s3.amazonaws.com", (), ("--bucket", "https://my-bucket.s3.amazonaws.com")),
    ("s3://my-bucket/a", ("--prefix", "b"), ("--prefix", "'b'", "'a'")),
])
def test_every_script_taking_a_bucket_refuses_a_bad_one(tmp_path, script, extra, bucket, prefix, named):
    artifact = tmp_path / "model.tar.gz"
    artifact.write_bytes(b"not read in a dry run")
    paths = {"OUT": str(tmp_path / "out"), "ARTIFACT": str(artifact)}
    result = _run(script, "--catalog", CATALOG, "--image", IMAGE, "--bucket", bucket, *prefix, "--role-arn", ROLE,
                  *(paths.get(a, a) for a in extra))
    _assert_refused(result, *named)
    assert not (tmp_path / "out").exists()


def test_publish_dry_run_uses_the_buckets_prefix(tmp_path):
    artifact = tmp_path / "model.tar.gz"
    artifact.write_bytes(b"not read in a dry run")
    result = _run("publish.py", "--catalog", CATALOG, "--artifact", artifact, "--image", IMAGE, "--bucket",
                  "s3://vendor-bucket/releases/v1/", "--role-arn", ROLE, "--create-bucket")
    assert result.returncode == 0, result.stderr
    assert '"Bucket": "vendor-bucket"' in result.stdout and "s3://s3://" not in result.stdout
    assert '"Key": "releases/v1/model.tar.gz"' in result.stdout
    assert '"ModelDataUrl": "s3://vendor-bucket/releases/v1/model.tar.gz"' in result.stdout


# --- missing inputs --------------------------------------------------------------------------


# Catalogs broken in one field each; GONE is a path that does not exist.
_BROKEN_CATALOGS = {
    "no-eula": {"eula": "GONE/eula.md"},
    "no-description": {"description": "GONE/description.md"},
    "no-model": {"model_dir": "GONE/model"},
    "no-code": {"remote_code": {"other-org/x": "GONE/x"}},
    "no-azure": {"azure": None},
}
_LOCATION = ("--image", IMAGE, "--bucket", "my-bucket", "--role-arn", ROLE)
_AZURE = ("--image", "myacr.azurecr.io/searchbox:1.0")
# (script, arguments, what the refusal must name). Tokens: OUT the output to leave alone, GONE a missing path,
# NOT_A_TAR a file that is no model.tar.gz, CATALOG:<name> one of the broken catalogs above.
_MISSING_INPUTS = {
    "model_package catalog": ("model_package.py", ["--catalog", "GONE/c.yaml", *_LOCATION, "-o", "OUT"],
                              ["--catalog", "GONE/c.yaml"]),
    "model_package eula": ("model_package.py", ["--catalog", "CATALOG:no-eula", *_LOCATION, "-o", "OUT"],
                           ["products[0].eula", "GONE/eula.md"]),
    "aws_listing description": ("aws_listing.py", ["--catalog", "CATALOG:no-description", "-o", "OUT"],
                                ["products[0].description", "GONE/description.md"]),
    "aws_listing bench": ("aws_listing.py", ["--catalog", str(CATALOG), "--bench", "GONE/r.md", "-o", "OUT"],
                          ["--bench", "GONE/r.md"]),
    "aws_listing arn": ("aws_listing.py", ["--catalog", str(CATALOG), "--model-package-arn", "arn:aws:x", "-o", "OUT"],
                        ["--model-package-arn", "arn:aws:x"]),
    "azure_assets artifact": ("azure_assets.py", ["--catalog", str(CATALOG), *_AZURE, "--artifact", "GONE/m.tar.gz",
                                                  "-o", "OUT"], ["--artifact", "GONE/m.tar.gz"]),
    "azure_assets broken artifact": ("azure_assets.py", ["--catalog", str(CATALOG), *_AZURE, "--artifact",
                                                         "NOT_A_TAR", "-o", "OUT"],
                                     ["--artifact", "NOT_A_TAR", "not a readable model.tar.gz"]),
    "azure_assets no azure section": ("azure_assets.py", ["--catalog", "CATALOG:no-azure", *_AZURE, "-o", "OUT"],
                                      ["azure", "no 'azure' section"]),
    "publish catalog": ("publish.py", ["--catalog", "GONE/c.yaml", "--artifact", "NOT_A_TAR", *_LOCATION],
                        ["--catalog", "GONE/c.yaml"]),
    "publish artifact": ("publish.py", ["--catalog", str(CATALOG), "--artifact", "GONE/m.tar.gz", *_LOCATION],
                         ["--artifact", "GONE/m.tar.gz", "build_artifact.py"]),
    "build_artifact model dir": ("build_artifact.py", ["GONE/model", "-o", "OUT/model.tar.gz"],
                                 ["MODEL_DIR", "GONE/model"]),
    "build_artifact remote code": ("build_artifact.py", ["--catalog", str(CATALOG), "--remote-code",
                                                         "other-org/x=GONE/x", "-o", "OUT/model.tar.gz"],
                                   ["--remote-code other-org/x", "GONE/x"]),
    "build_artifact catalog model dir": ("build_artifact.py", ["--catalog", "CATALOG:no-model", "-o", "OUT/m.tar.gz"],
                                         ["products[0].model_dir", "GONE/model"]),
    "build_artifact catalog remote code": ("build_artifact.py", ["--catalog", "CATALOG:no-code", "-o", "OUT/m.tar.gz"],
                                           ["products[0].remote_code.other-org/x", "GONE/x"]),
    "bundle catalog": ("bundle.py", ["--catalog", "GONE/c.yaml", *_LOCATION, "-o", "OUT"],
                       ["--catalog", "GONE/c.yaml"]),
    "bundle bench": ("bundle.py", ["--catalog", str(CATALOG), *_LOCATION, "--bench", "GONE/r.md", "-o", "OUT"],
                     ["--bench", "GONE/r.md"]),
    "bundle model dir": ("bundle.py", ["--catalog", "CATALOG:no-model", *_LOCATION, "-o", "OUT"],
                         ["products[0].model_dir", "GONE/model"]),
}


def _expand(value: str, tmp: Path, out: Path) -> str:
    """A token of _MISSING_INPUTS made real under `tmp` (catalogs and files written as needed)."""
    if value.startswith("CATALOG:"):
        name = value.split(":", 1)[1]
        (tmp / name).mkdir(exist_ok=True)
        changes = {k: (yaml.safe_load(_expand(yaml.safe_dump(v), tmp, out)) if v is not None else None)
                   for k, v in _BROKEN_CATALOGS[name].items()}
        return str(_catalog(tmp / name, **changes))
    if "NOT_A_TAR" in value:
        (tmp / "not-a.tar.gz").write_bytes(b"plain bytes, no gzip")
    return value.replace("OUT", str(out)).replace("GONE", str(tmp / "gone")).replace(
        "NOT_A_TAR", str(tmp / "not-a.tar.gz"))


@pytest.mark.parametrize("existing", [False, True], ids=["absent", "existing"])
@pytest.mark.parametrize("case", sorted(_MISSING_INPUTS))
def test_a_missing_input_is_refused_by_name_and_nothing_is_written(tmp_path, case, existing):
    script, arguments, named = _MISSING_INPUTS[case]
    out = tmp_path / "dist" / "product"
    if existing:
        out.mkdir(parents=True)
        (out / "notes.txt").write_text("the vendor's own file")
        (out / "model.yml").write_text("an earlier run's output\n")
    before = _tree(tmp_path / "dist")
    result = _run(script, *(_expand(a, tmp_path, out) for a in arguments))
    _assert_refused(result, *(_expand(n, tmp_path, out) for n in named))
    assert _tree(tmp_path / "dist") == before


def test_a_refused_artifact_build_leaves_no_directory(tmp_path, minilm_dir):
    import build_artifact

    broken = tmp_path / "broken"
    shutil.copytree(minilm_dir, broken)
    (broken / "model.safetensors").write_bytes(b"these are not safetensors")
    with pytest.raises(build_artifact.BuildRefused, match="would not serve"):
        build_artifact.build_artifact(broken, tmp_path / "dist" / "nested" / "model.tar.gz")
    assert not (tmp_path / "dist").exists()


def test_a_bundle_refused_after_the_build_started_leaves_the_output_as_it_was(tmp_path, minilm_dir):
    broken = tmp_path / "broken-model"
    shutil.copytree(minilm_dir, broken)
    (broken / "model.safetensors").write_bytes(b"these are not safetensors")
    catalog = _catalog(tmp_path, model_dir=str(broken))
    out = tmp_path / "dist" / NAME
    (out / "aws").mkdir(parents=True)
    (out / "aws" / "pricing.md").write_text("an earlier run's pricing\n")
    before = _tree(tmp_path / "dist")
    result = _run("bundle.py", "--catalog", catalog, *_LOCATION, "-o", out)
    _assert_refused(result, "would not serve")
    assert _tree(tmp_path / "dist") == before  # no staging directory left beside it either


def test_a_per_inference_listing_of_a_model_that_would_not_serve_is_refused(tmp_path, minilm_dir):
    """The worked example needs the model to answer its sample: one that cannot is refused, nothing written."""
    broken = tmp_path / "broken-model"
    shutil.copytree(minilm_dir, broken)
    (broken / "model.safetensors").write_bytes(b"these are not safetensors")
    out = tmp_path / "dist" / "aws"
    result = _run("aws_listing.py", "--catalog", _catalog(tmp_path, model_dir=str(broken)), "-o", out)
    _assert_refused(result, "would not serve")
    assert not (tmp_path / "dist").exists()


def test_staged_output_moves_in_on_success_only(tmp_path):
    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    (out / "model" / "stale.bin").write_text("an earlier artifact's file")
    (out / "notes.txt").write_text("kept")
    before = _tree(tmp_path)
    with pytest.raises(RuntimeError), _files.staged_output(out, whole=("model",)) as staged:
        (staged / "model.yml").write_text("new")
        raise RuntimeError("a check failed after writing")
    assert _tree(tmp_path) == before

    with _files.staged_output(out, whole=("model",)) as staged:
        (staged / "model").mkdir()
        (staged / "model" / "weights.bin").write_text("new weights")
        (staged / "sub").mkdir()
        (staged / "sub" / "a.txt").write_text("a")
    assert _tree(out) == {"model": None, "model/weights.bin": b"new weights", "notes.txt": b"kept",
                          "sub": None, "sub/a.txt": b"a"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staged_output_removes_the_parents_it_made(tmp_path):
    with pytest.raises(RuntimeError), _files.staged_output(tmp_path / "a" / "b" / "out") as staged:
        (staged / "x").write_text("x")
        raise RuntimeError("refused")
    assert list(tmp_path.iterdir()) == []


# --- placeholders in the Marketplace change set ----------------------------------------------


@pytest.fixture
def bench(tmp_path) -> Path:
    path = tmp_path / "results.md"
    path.write_text("## ml.g5.xlarge\n\n| clients | texts/s |\n|---|---|\n| 1 | 250 |\n")
    return path


def test_listing_without_ids_says_what_is_still_to_fill_in(tmp_path, bench):
    out = tmp_path / "aws"
    result = _run("aws_listing.py", "--catalog", CATALOG, "--bench", bench, "-o", out)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("still to fill in before publishing: ")
    for text in ("ProductId (--product-id", "AWS Marketplace Management Portal", "OfferId (--offer-id",
                 "account (--model-package-arn", "publish.py --no-dry-run"):
        assert text in result.stderr
    todo = (out / aws_listing.TODO_FILE).read_text()
    for flag in ("--product-id", "--offer-id", "--model-package-arn"):
        assert f"`{flag}`" in todo
    changes = json.loads((out / "start-change-set.json").read_text())["ChangeSet"]
    assert [c["Entity"]["Identifier"] for c in changes] == ["prod-REPLACE-ME", "offer-REPLACE-ME"]
    option = changes[0]["DetailsDocument"]["DeliveryOptions"][0]["Details"]
    assert option["SagemakerModelPackageDeliveryOptionDetails"]["ModelPackageArn"] == \
        f"arn:aws:sagemaker:us-east-1:ACCOUNT:model-package/{NAME}"  # never a made-up account that looks real


def test_listing_names_only_what_is_missing(tmp_path, bench):
    out = tmp_path / "aws"
    result = _run("aws_listing.py", "--catalog", CATALOG, "--bench", bench, "-o", out, "--product-id", "prod-abc")
    assert result.returncode == 0, result.stderr
    assert "ProductId" not in result.stderr and "OfferId (--offer-id" in result.stderr
    assert "--model-package-arn" in result.stderr
    todo = (out / aws_listing.TODO_FILE).read_text()
    assert "--product-id`" not in todo and "`--offer-id`" in todo


def test_listing_with_every_id_is_silent_and_holds_no_placeholder(tmp_path, bench):
    out = tmp_path / "aws"
    assert _run("aws_listing.py", "--catalog", CATALOG, "--bench", bench, "-o", out).returncode == 0
    assert (out / aws_listing.TODO_FILE).is_file()
    result = _run("aws_listing.py", "--catalog", CATALOG, "--bench", bench, "-o", out, *IDS)
    assert result.returncode == 0 and result.stderr == ""
    assert not (out / aws_listing.TODO_FILE).exists()  # the earlier run's list went with its placeholders
    for name, text in _output_files(out).items():
        for placeholder in PLACEHOLDERS:
            assert placeholder not in text, (name, placeholder)
    request = json.loads((out / "start-change-set.json").read_text())
    assert [c["Entity"]["Identifier"] for c in request["ChangeSet"]] == ["prod-abc123", "offer-def456"]
    assert ARN in (out / "sample-notebook.ipynb").read_text()
    _aws.validate_request("marketplace-catalog", "StartChangeSet", request)


def test_bundle_passes_the_ids_through(tmp_path, bench):
    out = tmp_path / "dist" / NAME
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("the vendor's own file")
    first = _run("bundle.py", "--catalog", CATALOG, "--image", IMAGE, "--bucket", "s3://my-bucket/releases/",
                 "--role-arn", ROLE, "--bench", bench, "-o", out, "--compresslevel", ARCHIVE_LEVEL)
    assert first.returncode == 0, first.stderr
    assert first.stderr.startswith("still to fill in before publishing: ")
    assert "ProductId (--product-id" in first.stderr and "OfferId (--offer-id" in first.stderr
    assert (out / "aws" / aws_listing.TODO_FILE).is_file()
    request = json.loads((out / model_package.REQUEST_FILE).read_text())
    assert request["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == \
        "s3://my-bucket/releases/model.tar.gz"

    second = _run("bundle.py", "--catalog", CATALOG, "--image", IMAGE, "--bucket", "s3://my-bucket/releases/",
                  "--role-arn", ROLE, "--bench", bench, "-o", out, "--compresslevel", ARCHIVE_LEVEL, *IDS)
    assert second.returncode == 0, second.stderr
    assert not any(p in second.stderr for p in PLACEHOLDERS), second.stderr
    assert not (out / "aws" / aws_listing.TODO_FILE).exists()
    for name, text in _output_files(out).items():
        for placeholder in PLACEHOLDERS:
            assert placeholder not in text, (name, placeholder)
    changes = json.loads((out / "aws" / "start-change-set.json").read_text())["ChangeSet"]
    assert [c["Entity"]["Identifier"] for c in changes] == ["prod-abc123", "offer-def456"]
    assert (out / "notes.txt").read_text() == "the vendor's own file"
    # the pricing goes through every part: the artifact meters, the listing prices m.i.c and explains it from
    # what this build's sample consumed, the Azure plan is written
    with tarfile.open(out / "model.tar.gz", "r:gz") as tar:
        assert json.loads(tar.extractfile("searchbox.json").read())["metering"] == {"unit": "tokens",
                                                                                     "tokens_per_unit": 1000}
        sample = json.loads(tar.extractfile("searchbox-manifest.json").read())["sample"]
    rate_card = changes[1]["DetailsDocument"]["Terms"][0]["RateCards"][0]["RateCard"]
    assert {"DimensionKey": "m.i.c", "Price": 0.00002} in rate_card
    usage = (out / "aws" / "usage-information.md").read_text()
    assert f"add up to {sample['tokens']} tokens" in usage and f'"ConsumedUnits": {sample["units"]}}}`' in usage
    assert json.loads((out / "azure" / "marketplace-plan.json").read_text())["plan_id"] == "minilm-embeddings-gpu"
    assert "billing per inference, 1 unit = 1,000 tokens" in second.stdout
    # the catalog's few-shot classifier: fitted into the artifact, listed with its labels in the usage information
    with tarfile.open(out / "model.tar.gz", "r:gz") as tar:
        (classifier,) = json.loads(tar.extractfile("searchbox-manifest.json").read())["classifiers"]
    assert classifier["name"] == "support" and classifier["labels"] == ["billing", "sales", "technical support"]
    assert f"| `support` | billing, sales, technical support | 24 | {classifier['held_out_accuracy']:.1%} |" in usage
    assert str(out / "model.tar.gz") in second.stdout and ".staging-" not in second.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == [NAME]
