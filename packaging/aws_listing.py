"""Write the AWS Marketplace listing of a catalog product: usage information, pricing, Catalog API change set, notebook.

    python packaging/aws_listing.py --catalog packaging/catalog.example.yaml [--product NAME] -o dist/NAME/aws \\
        [--model-package-arn arn:aws:sagemaker:...] [--product-id ID] [--offer-id ID] [--bench bench/results.md]

Files: `usage-information.md` (real-time and batch formats with samples, a boto3 and a jina-sagemaker
example, how the software is billed, performance figures from the benchmark output when present),
`pricing.md`, `start-change-set.json` (a StartChangeSet request: `AddDeliveryOptions` on the
`MachineLearningProduct@1.0` entity and `UpdatePricingTerms` pricing every supported instance type, and
`m.i.c` when real-time is sold per inference, checked against botocore's marketplace-catalog model), and
`sample-notebook.ipynb` (creates an endpoint, runs a batch transform on its own sample data, cleans up).

A product sold per inference (catalog `pricing: {model: per_inference, ...}`) gets a worked example of what one
request costs, from what the kind's sample request really consumes: the model is staged as build_artifact.py
packages it and answers the sample once (bundle.py hands over its build's figures instead).

Until `--product-id`, `--offer-id` and `--model-package-arn` are all given, the change set holds placeholders
(`prod-REPLACE-ME`, `offer-REPLACE-ME`, account `ACCOUNT`) the Catalog API refuses: the script then lists on
stderr, and in `TODO.md` beside the other files, what is still to fill in and with which flag.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _aws  # noqa: E402
import _catalog  # noqa: E402
import _files  # noqa: E402
import _onnx  # noqa: E402
import _samples  # noqa: E402
import build_artifact  # noqa: E402
import model_package  # noqa: E402

from container import dialects  # noqa: E402

DEFAULT_BENCH = Path(__file__).resolve().parent.parent / "bench" / "results.md"
ENTITY_TYPE = "MachineLearningProduct@1.0"
# Pricing dimensions of ML products (AWS Marketplace API reference, "Update pricing terms": "m.i.b for batch
# transform, m.i.r for hourly real-time inference, and a.t for algorithm training", "m.i.c for real-time per
# inference pricing"; the Marketplace Discovery API's GetOfferTerms example of a usage-based ML model offer labels
# "<type>.m.i.b" "batch mode" and "<type>.m.i.r" "real-time mode"). A model package trains nothing: no ".a.t".
REALTIME_SUFFIX = ".m.i.r"
BATCH_SUFFIX = ".m.i.b"
PER_INFERENCE_KEY = "m.i.c"
# What the container answers AWS with, per 2xx, when sold per inference (model_handlers/metering.py).
METERING_HEADER = "X-Amzn-Inference-Metering"
# What stands in the change set until the vendor has the real values.
PRODUCT_ID_PLACEHOLDER = "prod-REPLACE-ME"
OFFER_ID_PLACEHOLDER = "offer-REPLACE-ME"
ACCOUNT_PLACEHOLDER = "ACCOUNT"
TODO_FILE = "TODO.md"


@dataclass(frozen=True)
class Placeholder:
    """A value the change set still holds a placeholder for: which field, the flag that fills it, where to find it."""

    field: str
    flag: str
    source: str

    def line(self) -> str:
        return f"{self.field} ({self.flag}, {self.source})"


PRODUCT_ID = Placeholder("ProductId", "--product-id",
                         "the product's entity id prod-..., from the AWS Marketplace Management Portal")
OFFER_ID = Placeholder("OfferId", "--offer-id",
                       "the id offer-... of the product's public offer, from the same portal")
ACCOUNT = Placeholder("the model package ARN's account", "--model-package-arn",
                      "the ARN printed by publish.py --no-dry-run as 'created arn:aws:sagemaker:...'")


def placeholder_arn(product: _catalog.Product) -> str:
    """The model package ARN of `product` in its first region, its account left to fill in."""
    return f"arn:aws:sagemaker:{product.regions[0]}:{ACCOUNT_PLACEHOLDER}:model-package/{product.name}"


def model_package_arn(product: _catalog.Product, given: str | None) -> str:
    """--model-package-arn checked against SageMaker's ModelPackageArn pattern, or the placeholder when not given.

    Raises:
        _aws.RequestInvalid: an ARN SageMaker would never have issued, naming the flag.
    """
    if given is None:
        return placeholder_arn(product)
    if _aws.field_problems("sagemaker", "ModelPackageArn", given):
        raise _aws.RequestInvalid(f"--model-package-arn: {given!r} is not a model package ARN like "
                                  f"{placeholder_arn(product).replace(ACCOUNT_PLACEHOLDER, '123456789012')}; "
                                  "pass the one publish.py --no-dry-run prints")
    return given


def placeholders(*, product_id: str, offer_id: str, model_package_arn: str) -> list[Placeholder]:
    """What the change set still holds a placeholder for, in the order a vendor fills them in."""
    arn_parts = model_package_arn.split(":")
    return [placeholder for placeholder, missing in (
        (PRODUCT_ID, product_id == PRODUCT_ID_PLACEHOLDER),
        (OFFER_ID, offer_id == OFFER_ID_PLACEHOLDER),
        (ACCOUNT, len(arn_parts) < 5 or arn_parts[4] == ACCOUNT_PLACEHOLDER),
    ) if missing]


def placeholder_report(missing: list[Placeholder]) -> str:
    """The stderr note listing what is still to fill in; empty when nothing is."""
    if not missing:
        return ""
    return "still to fill in before publishing: " + "; ".join(p.line() for p in missing)


def todo_markdown(product: _catalog.Product, missing: list[Placeholder]) -> str:
    """TODO.md: the same list, for a vendor who finds the files without the script's output."""
    flags = " ".join(f"{p.flag} ..." for p in missing)
    return "\n".join([
        f"# Still to fill in before publishing {product.name}", "",
        ("`start-change-set.json` holds placeholders the AWS Marketplace Catalog API refuses "
         f"(`{PRODUCT_ID_PLACEHOLDER}`, `{OFFER_ID_PLACEHOLDER}`, account `{ACCOUNT_PLACEHOLDER}` in the model "
         "package ARN):"), "",
        *(f"- {p.field}: `{p.flag}`, {p.source}" for p in missing), "",
        (f"Write this folder again with `python packaging/aws_listing.py ... {flags}` (or bundle.py with the same "
         "flags); this file goes away once nothing is left to fill in."), "",
    ])


def dimension_keys(product: _catalog.Product) -> dict[str, float]:
    """Every priced dimension of `product`: {dimension key: USD per hour, or per unit for m.i.c}.

    Every supported instance type is priced, as AWS requires, also when real-time is sold per inference: AWS bills
    asynchronous inference endpoints on those types per hour whatever the pricing (0 unless the catalog says).
    """
    keys = {f"{t}{REALTIME_SUFFIX}": p for t, p in product.prices_per_hour["realtime"].items()}
    if product.pricing.per_inference:
        keys[PER_INFERENCE_KEY] = product.pricing.price_per_unit
    keys.update({f"{t}{BATCH_SUFFIX}": p for t, p in product.prices_per_hour["batch"].items()})
    return keys


def change_set(product: _catalog.Product, *, model_package_arn: str, product_id: str, offer_id: str,
               notebook_url: str = "", sample_urls: tuple[str, str] = ("", "")) -> dict:
    """The StartChangeSet request: a new version (delivery option) of the product, and its prices."""
    details = {
        "SagemakerModelPackageDeliveryOptionDetails": {
            "ModelPackageArn": model_package_arn,
            "UsageInstructions": "See the usage information: real-time JSON (SageMaker envelope or "
                                 "OpenAI/Jina API) and batch CSV / JSON Lines.",
            "RecommendedInstanceTypes": {
                "RealtimeInference": product.recommended["realtime"],
                "BatchTransform": product.recommended["batch"],
            },
        }
    }
    option = details["SagemakerModelPackageDeliveryOptionDetails"]
    if notebook_url:
        option["SampleNotebookUrl"] = notebook_url
    if any(sample_urls):
        option["InputProperties"] = {"SampleInput": {"RealtimeInferenceUrl": sample_urls[0],
                                                     "BatchTranformUrl": sample_urls[1]}}
    keys = dimension_keys(product)
    terms = [{
        "Type": "UsageBasedPricingTerm",
        "CurrencyCode": "USD",
        "RateCards": [{"RateCard": [{"DimensionKey": key, "Price": price} for key, price in keys.items()]}],
    }]
    if product.free_trial_days:
        # the API reference: "All supported dimensionKeys must be provided", m.i.c included
        terms.append({"Type": "FreeTrialPricingTerm", "Duration": f"P{product.free_trial_days}D",
                      "Grants": [{"DimensionKey": key} for key in keys]})
    request = {
        "Catalog": "AWSMarketplace",
        "ChangeSetName": f"{product.name} version",
        "ChangeSet": [
            {
                "ChangeType": "AddDeliveryOptions",
                "Entity": {"Type": ENTITY_TYPE, "Identifier": product_id},
                "DetailsDocument": {
                    "Version": {"VersionTitle": product.title,
                                "ReleaseNotes": f"{product.served_name} served by searchbox"},
                    "DeliveryOptions": [{"Details": details}],
                },
            },
            {
                "ChangeType": "UpdatePricingTerms",
                "Entity": {"Type": "Offer@1.0", "Identifier": offer_id},
                "DetailsDocument": {"PricingModel": "Usage", "Terms": terms},
            },
        ],
    }
    _aws.validate_request("marketplace-catalog", "StartChangeSet", request)
    return request


def pricing_markdown(product: _catalog.Product, sample: build_artifact.SampleFigures | None = None) -> str:
    """pricing.md: every price of the listing, and for per-inference pricing what one unit is, with a worked example.

    `sample` is what the kind's sample request consumed (needed for per-inference pricing only).
    """
    recommended = (f"Recommended: real-time `{product.recommended['realtime']}`, batch "
                   f"`{product.recommended['batch']}`.")
    if product.pricing.per_inference:
        body = [
            "Billed by AWS Marketplace on top of the SageMaker instance price. " + recommended, "",
            f"## Real-time endpoints: {_catalog.usd(product.pricing.price_per_unit)} per unit", "",
            billing_markdown(product, sample, where="of the usage information", hourly=False), "",
            "## Batch transform and asynchronous inference: per instance-hour", "",
            ("AWS bills batch transform jobs and asynchronous inference endpoints per instance-hour, prorated per "
             "minute, whatever the container reports."), "",
            *_hourly_table(product, ("batch transform (USD/hour)", "batch"),
                           ("asynchronous inference (USD/hour)", "realtime")),
        ]
    else:
        body = [
            ("Software price per instance-hour, prorated per minute, billed by AWS on top of the SageMaker "
             "instance price. " + recommended), "",
            *_hourly_table(product, ("real-time (USD/hour)", "realtime"), ("batch transform (USD/hour)", "batch")),
            "", ("The container reports no usage to AWS (no `X-Amzn-Inference-Metering` header): AWS bills the hours "
                 "an endpoint or a batch transform job runs."),
        ]
    trial = (f"Free trial: {product.free_trial_days} days (software price waived on every dimension"
             f"{': per unit and per hour' if product.pricing.per_inference else ''}; SageMaker infrastructure is "
             "billed)." if product.free_trial_days else "No free trial.")
    return "\n".join([f"# Pricing: {product.title}", "", *body, "", trial, "",
                      f"Regions: {', '.join(product.regions)}.", ""])


def _hourly_table(product: _catalog.Product, *columns: tuple[str, str]) -> list[str]:
    """A markdown table of hourly prices, one row per instance type; columns are (heading, prices_per_hour mode)."""
    rows = ["| instance type | " + " | ".join(heading for heading, _ in columns) + " |",
            "|---" * (len(columns) + 1) + "|"]
    types = list(dict.fromkeys(product.instance_types["realtime"] + product.instance_types["batch"]))
    for instance_type in types:
        cells = [_money(product.prices_per_hour[mode].get(instance_type)) for _, mode in columns]
        rows.append(f"| {instance_type} | " + " | ".join(cells) + " |")
    return rows


def worked_example(product: _catalog.Product, sample: build_artifact.SampleFigures, where: str = "above") -> str:
    """What the real-time sample request costs, from what it really consumed, as a buyer can redo it.

    `where` the sample request is shown, from the reader's place ("above" in the usage information).
    """
    metering, price = product.pricing.metering, product.pricing.price_per_unit
    units = metering.units(inputs=sample.inputs, tokens=sample.tokens)
    if units != sample.units:  # the server counted the sample itself (container.engine.request_figures)
        raise AssertionError(f"the sample reported {sample.units} units, its usage makes {units}: this is a bug")
    listing = dialects.named(_sample_operation(product)).listing
    what = listing.action.format(count=sample.inputs, s="s" * (sample.inputs != 1))
    usage = listing.usage
    if metering.unit == "tokens":
        per = metering.tokens_per_unit
        line = (f"{usage} add up to {sample.tokens:,} tokens; at 1 unit = {per:,} tokens, rounded up per "
                f"request, that is {units} unit{'s' * (units != 1)}")
        larger = per * 5 // 2  # a request past a whole number of units shows the rounding up
        larger_units = metering.units(inputs=1, tokens=larger)
        more = (f" A request whose usage comes to {larger:,} tokens is {larger_units} units: "
                f"{_catalog.usd(larger_units * price)}.")
    elif metering.unit == "input":
        line = f"at 1 unit per input, that is {units} unit{'s' * (units != 1)}"
        more = ""
    else:
        line = "at 1 unit per request, whatever it holds, that is 1 unit"
        more = ""
    return (f"Worked example: the real-time sample request {where} {what}; {line}, which its answer reports as "
            f"`{METERING_HEADER}: {{\"Dimension\": \"inference.count\", \"ConsumedUnits\": {units}}}`, "
            f"and costs {units} x {_catalog.usd(price)} = {_catalog.usd(units * price)}.{more}")


def _sample_operation(product: _catalog.Product) -> str:
    """What the kind's sample request asks of it (an envelope of embeddings: the kind's own form)."""
    return _samples.sample_operation(product.kind)


def billing_markdown(product: _catalog.Product, sample: build_artifact.SampleFigures | None, *,
                     where: str = "above", hourly: bool = True) -> str:
    """How the software is billed and how a buyer checks an invoice against the answers (markdown paragraphs).

    `where` the sample request is shown (worked_example); `hourly`: also say what batch transform costs.
    """
    if not product.pricing.per_inference:
        return "\n".join([
            "Software price per instance-hour, prorated per minute, on top of the SageMaker instance price:", "",
            *_hourly_table(product, ("real-time (USD/hour)", "realtime"), ("batch transform (USD/hour)", "batch")),
            "", ("The container reports no usage to AWS: the invoice counts the hours each endpoint instance or batch "
                 "transform instance ran; the `usage` in every answer is for your own accounting."),
        ])
    if sample is None:
        raise ValueError("per-inference pricing needs the sample's figures for its worked example; this is a bug")
    metering, price = product.pricing.metering, product.pricing.price_per_unit
    batch = ", ".join(f"{_money(p)} ({t})" for t, p in product.prices_per_hour["batch"].items())
    paragraphs = [
        (f"Real-time endpoints are billed per unit: **{_catalog.usd(price)} per unit, 1 unit = "
         f"{metering.describe()}**, on top of the SageMaker instance price. Every answer with status 2xx tells AWS "
         "what it consumed in the header "
         f"`{METERING_HEADER}: {{\"Dimension\": \"inference.count\", \"ConsumedUnits\": N}}`, computed from the "
         "exact `usage` in its body; an answer with any other status is never billed."),
        worked_example(product, sample, where),
        ("To check an invoice: the real-time charge is the sum of the units of the 2xx answers times "
         f"{_catalog.usd(price)}. Each answer's units follow from its body ({_unit_rule(metering)}); SageMaker reads "
         "the header itself and does not pass it on to `invoke_endpoint`'s caller. The container also writes one JSON "
         "line per request to its log (on SageMaker, the endpoint's CloudWatch log group) with `status`, `tokens` "
         "and `units`: the sum of `units` over the lines with a 2xx `status` is what AWS bills."),
    ]
    if hourly:
        paragraphs.append("Batch transform jobs (and asynchronous inference endpoints) are billed per instance-hour "
                          f"whatever the container reports: batch transform {batch} per hour.")
    return "\n\n".join(paragraphs)


def _unit_rule(metering) -> str:
    if metering.unit == "tokens":
        return f"per request, the tokens of its `usage` divided by {metering.tokens_per_unit:,}, rounded up"
    if metering.unit == "input":
        return "one unit per input it answers (text, image or document)"
    return "one unit per request"


def _money(value: float | None) -> str:
    """An hourly price (3 decimals, as the catalog keeps them), or that the instance type is not offered."""
    return "not offered" if value is None else f"${value:.3f}"


def bench_path(given: Path | None) -> Path:
    """--bench when given (refused when missing: the vendor meant that file); else the project's default,
    which may not exist yet (the listing then says so and the script warns)."""
    if given is None:
        return DEFAULT_BENCH
    return _files.require_file(given, "--bench", "pass the markdown the benchmark wrote (bench/results.md)")


def performance_markdown(bench: Path | None) -> tuple[str, bool]:
    """The benchmark's tables (with their headings), and whether there were any."""
    if bench is None or not bench.is_file():
        return ("Latency and throughput figures come from `bench/results.md`, which was not found when this "
                "listing was written: run the benchmark on the recommended instance type and rebuild the listing.",
                False)
    kept, heading = [], None
    for line in bench.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            heading = "###" + line.lstrip("#")
        elif line.lstrip().startswith("|"):
            if heading:
                kept += ["", heading, ""]
                heading = None
            kept.append(line.strip())
    if not kept:
        return f"`{bench.name}` holds no result tables yet.", False
    return f"Measured by the project's benchmark (`{bench.name}`):\n" + "\n".join(kept), True


def usage_markdown(product: _catalog.Product, bench: Path | None = DEFAULT_BENCH,
                   sample: build_artifact.SampleFigures | None = None, quality: _onnx.Quality | None = None,
                   classifiers: Sequence[Mapping[str, Any]] = ()) -> str:
    """usage-information.md; `sample` (what the kind's sample request consumed) is needed for per-inference pricing,
    `quality` (the ONNX build's figures) for an ONNX product, `classifiers` (the build's few-shot classifiers, as its
    manifest lists them) for a product that ships some."""
    performance, _ = performance_markdown(bench)
    kind = product.model_kind
    samples = _samples.of(product.kind)
    public = (f'curl https://HOST{_samples.public_path(product.kind)} -H "Content-Type: application/json" '
              f"-d '{json.dumps({'model': product.served_name, **samples.public_request})}'")
    json_columns = [f"`{column.field}` a JSON array" for column in kind.csv.columns if column.json]
    optional = [f"`{column.field}` may be empty" for column in kind.csv.columns if column.optional]
    batch_columns = f"`{kind.csv.header}`" + (f" ({'; '.join(json_columns + optional)})" if json_columns or optional
                                               else "")
    dimensions = _model_lines(product)
    sample_csv = samples.csv
    return textwrap.dedent("""\
        # {title}: usage information

        Model `{served}` ({summary}) in the searchbox inference image.{dimensions} The container runs network-isolated;
        every response is JSON, every error is JSON `{{"detail", "code", "request_id"}}` naming what to fix.
        Supported content types: `application/json`, `text/csv`, `application/jsonlines`.

        ## Real-time inference

        `invoke_endpoint` with `ContentType: application/json`, body in the SageMaker envelope
        (what the `jina-sagemaker` client sends; embedding vectors below are cut to 3 values):

        ```json
        {request}
        ```

        Response:

        ```json
        {response}
        ```

        The OpenAI / Jina public API body is accepted at the same endpoint too:

        ```sh
        {public}
        ```

        ## Batch transform

        Input: `text/csv` without header, one record per line, columns {columns}; both plain
        (`\\,` escapes) and fully double-quoted RFC 4180 rows are read. Use `SplitType=Line`,
        `BatchStrategy=MultiRecord`, `AssembleWith=Line`, at most 6 MB per request. Sample input:

        ```csv
        {sample_csv}```

        Output: one compact JSON object per request, newline-terminated, each record's id echoed:

        ```json
        {batch_output}
        ```

        `application/jsonlines` input (any real-time body per line) gives one JSON line out per line in.

        {sections}## boto3

        ```python
        import json, boto3

        runtime = boto3.client("sagemaker-runtime", region_name="{region}")
        response = runtime.invoke_endpoint(
            EndpointName="{name}",
            ContentType="application/json",
            Body=json.dumps({compact_request}),
        )
        print(json.loads(response["Body"].read())["data"])
        ```

        ## jina-sagemaker

        ```python
        # pip install jina-sagemaker
        {jina_imports}

        client = Client(region_name="{region}")
        # deploys the package and connects; an endpoint made before:
        # client.connect_to_endpoint(endpoint_name="{name}", arn=MODEL_PACKAGE_ARN)
        client.create_endpoint(arn=MODEL_PACKAGE_ARN, role=ROLE_ARN, endpoint_name="{name}",
                               instance_type="{realtime_type}")
        result = {jina_call}
        client.create_transform_job(arn=MODEL_PACKAGE_ARN, role=ROLE_ARN, n_instances=1,
                                    instance_type="{batch_type}", input_path="input.csv", output_path="output/")
        client.delete_endpoint()
        ```

        ## Pricing and billing

        {billing}

        ## Performance

        Recommended instance types: real-time `{realtime_type}`, batch transform `{batch_type}`.
        {compute}
        {performance}
        """).format(
        title=product.title, served=product.served_name, summary=kind.summary, dimensions=dimensions,
        request=json.dumps(samples.request, indent=2), response=json.dumps(samples.response, indent=2),
        public=public, columns=batch_columns, sample_csv=sample_csv, batch_output=samples.batch_output,
        region=product.regions[0], name=product.name,
        compact_request=repr(json.loads(json.dumps(samples.request))),  # a Python literal: True, not JSON's true
        jina_call=samples.client_call, jina_imports=_client_imports(samples.client_call),
        realtime_type=product.recommended["realtime"],
        batch_type=product.recommended["batch"],
        performance=performance, billing=billing_markdown(product, sample),
        compute="" if quality is None else "\n" + quality.listing_markdown() + "\n",
        sections=operation_sections(product, classifiers),
    )


def operation_sections(product: _catalog.Product, classifiers: Sequence[Mapping[str, Any]]) -> str:
    """The sections of their own that the operations the product's kind answers add to its listing (classify's: any
    labels, and the few-shot `classifiers` the artifact ships); empty when none has one."""
    return "".join(wire.listing.section(classifiers) for wire in dialects.registered()
                   if wire.listing.section is not None and product.model_kind.answers(wire.name))


def artifact_classifiers(artifact: Path | None) -> list[Mapping[str, Any]]:
    """The few-shot classifiers a built artifact ships, as its manifest lists them (none without an artifact)."""
    return list(build_artifact.read_manifest(artifact).get("classifiers") or []) if artifact is not None else []


def _client_imports(call: str) -> str:
    """The imports the listing's jina-sagemaker example needs for the kind's sample call."""
    lines = ["import base64"] if "base64." in call else []
    enums = [name for name in ("InputType", "Task") if f"{name}." in call]  # what the kind's call names
    lines.append(", ".join(["from jina_sagemaker import Client", *enums]))
    return "\n".join(lines)


def _model_lines(product: _catalog.Product) -> str:
    """What the model declares of its Matryoshka dimensions and tasks (searchbox.json, or a v3 checkpoint's
    config.json; the catalog's tasks win), as sentences; empty when it declares neither."""
    from model_handlers.errors import ModelDirectoryError
    from model_handlers.serving_config import TaskSpec, read_serving_config

    try:
        # read, not run: the source directory's remote code is pinned by the build, not yet here
        config = read_serving_config(product.model_dir, trust_remote_code=True)
    except ModelDirectoryError:
        return ""  # build_artifact refuses such a directory by name; the listing text does not need it
    text = ""
    if config.matryoshka_dimensions:
        text += (f" It is trained for Matryoshka `dimensions` {', '.join(map(str, config.matryoshka_dimensions))}: "
                 "a shorter vector keeps most of the quality at a fraction of the storage.")
    tasks = config.tasks
    if product.tasks:
        tasks = {name: TaskSpec(prompt=spec) if isinstance(spec, str) else TaskSpec(**spec)
                 for name, spec in product.tasks.items()}
    if tasks:
        described = [f"`{name}` ({_task_effect(spec)})" for name, spec in sorted(tasks.items())]
        unknown = ("a task it does not have is refused (422 UNKNOWN_TASK)" if any(s.adapter for s in tasks.values())
                   else "a task it does not have gets the default")
        text += f" Its `task` option selects: {', '.join(described)}; {unknown}."
    return text + _reranking_line(config.kind)


def _reranking_line(kind) -> str:
    """How a reranker of `kind` scores and whether a request's `instruction` reaches it, from its model class (known
    without loading the model); empty for a kind that does not rerank."""
    from model_handlers.operations.rerank import takes_instruction

    scoring = getattr(kind.model, "rerank_scoring", None)
    if scoring is None:
        return ""
    instruction = ("a request's `instruction` is what the judge is told to look for (left out: the model's own "
                   "default)" if takes_instruction(kind.model)
                   else "a request's `instruction` is refused (422 INVALID_OPTION): its scores read none")
    return f" It reranks (`/v1/rerank`) by {scoring}; {instruction}."


def _task_effect(spec) -> str:
    effects = (["its LoRA adapter"] if spec.adapter else []) + (["an instruction"] if spec.prompt else [])
    return " and ".join(effects) or "the base model"


def notebook(product: _catalog.Product, model_package_arn: str) -> dict:
    """A notebook (nbformat 4) that subscribes nothing and needs no buyer data: endpoint, one call, batch, cleanup."""
    sample_csv = model_package.sample_input(product.kind)
    body = _samples.of(product.kind).request
    cells = [
        ("markdown", f"# {product.title}\n\nDeploy the model package to a real-time endpoint, call it, run a batch "
                     "transform on the sample below, and delete what was created. Subscribe to the listing first; "
                     "run this with an IAM role allowed to use SageMaker and the S3 bucket."),
        ("code", f"import json\nimport time\n\nimport boto3\n\nREGION = {product.regions[0]!r}\n"
                 f"MODEL_PACKAGE_ARN = {model_package_arn!r}  # from the listing's usage instructions\n"
                 "ROLE_ARN = 'arn:aws:iam::123456789012:role/YourSageMakerRole'  # your SageMaker execution role\n"
                 "BUCKET = 'your-bucket'  # for the batch transform input and output\n"
                 f"NAME = {product.name[:40]!r} + time.strftime('-%Y%m%d%H%M%S')\n\n"
                 "sm = boto3.client('sagemaker', region_name=REGION)\n"
                 "runtime = boto3.client('sagemaker-runtime', region_name=REGION)\n"
                 "s3 = boto3.client('s3', region_name=REGION)"),
        ("markdown", "## Create the model and a real-time endpoint"),
        ("code", "sm.create_model(ModelName=NAME, ExecutionRoleArn=ROLE_ARN, EnableNetworkIsolation=True,\n"
                 "                PrimaryContainer={'ModelPackageName': MODEL_PACKAGE_ARN})\n"
                 "sm.create_endpoint_config(EndpointConfigName=NAME, ProductionVariants=[{\n"
                 "    'VariantName': 'AllTraffic', 'ModelName': NAME, 'InitialInstanceCount': 1,\n"
                 f"    'InstanceType': {product.recommended['realtime']!r}}}])\n"
                 "sm.create_endpoint(EndpointName=NAME, EndpointConfigName=NAME)\n"
                 "sm.get_waiter('endpoint_in_service').wait(EndpointName=NAME)"),
        ("code", f"body = {body!r}\n"
                 "response = runtime.invoke_endpoint(EndpointName=NAME, ContentType='application/json',\n"
                 "                                   Body=json.dumps(body))\n"
                 "print(json.dumps(json.loads(response['Body'].read()), indent=2)[:2000])"),
        ("markdown", "## Batch transform on a sample file"),
        ("code", f"sample = {sample_csv!r}\n"
                 "s3.put_object(Bucket=BUCKET, Key=f'{NAME}/input/input.csv', Body=sample.encode())\n"
                 "sm.create_transform_job(\n"
                 "    TransformJobName=NAME, ModelName=NAME, MaxPayloadInMB=6, BatchStrategy='MultiRecord',\n"
                 "    TransformInput={'DataSource': {'S3DataSource': {'S3DataType': 'S3Prefix',\n"
                 "                                                    'S3Uri': f's3://{BUCKET}/{NAME}/input/'}},\n"
                 "                    'ContentType': 'text/csv', 'SplitType': 'Line'},\n"
                 "    TransformOutput={'S3OutputPath': f's3://{BUCKET}/{NAME}/output/', 'AssembleWith': 'Line',\n"
                 "                     'Accept': 'application/json'},\n"
                 f"    TransformResources={{'InstanceType': {product.recommended['batch']!r}, 'InstanceCount': 1}})\n"
                 "sm.get_waiter('transform_job_completed_or_stopped').wait(TransformJobName=NAME)\n"
                 "output = s3.get_object(Bucket=BUCKET, Key=f'{NAME}/output/input.csv.out')['Body'].read()\n"
                 "for line in output.decode().splitlines():\n"
                 "    print(line[:300])"),
        ("markdown", "## Clean up"),
        ("code", "sm.delete_endpoint(EndpointName=NAME)\nsm.delete_endpoint_config(EndpointConfigName=NAME)\n"
                 "sm.delete_model(ModelName=NAME)"),
    ]
    return {
        "cells": [
            {"cell_type": kind, "metadata": {}, "source": source.splitlines(keepends=True),
             **({"execution_count": None, "outputs": []} if kind == "code" else {})}
            for kind, source in cells
        ],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def write_listing(product: _catalog.Product, out_dir: Path, *, model_package_arn: str, product_id: str,
                  offer_id: str, bench: Path | None = DEFAULT_BENCH,
                  sample: build_artifact.SampleFigures | None = None,
                  quality: _onnx.Quality | None = None,
                  classifiers: Sequence[Mapping[str, Any]] = ()) -> list[Path]:
    """Write the listing's files, every one computed (and the change set validated) before the first is written.

    With placeholders left, TODO.md lists them; without, a TODO.md of an earlier run is removed. `sample`, what
    the kind's sample request consumed on the packaged model, is measured here when per-inference pricing needs
    it and none is given (bundle.py passes its build's). `quality`, the ONNX build's figures, is needed for a
    product served on ONNX: the listing quotes what the export keeps.

    Raises:
        build_artifact.BuildRefused: the model would not serve (measuring the sample), or an ONNX product's
            listing has no build figures to quote.
    """
    if product.backend == "onnx" and quality is None:
        raise build_artifact.BuildRefused(
            f"{product.name} is served on ONNX: its listing quotes the build's quality figures; pass --artifact "
            "with the model.tar.gz build_artifact.py made (or run bundle.py, which builds and lists in one go)")
    request = change_set(product, model_package_arn=model_package_arn, product_id=product_id, offer_id=offer_id)
    if product.pricing.per_inference and sample is None:
        sample = measure_sample(product)
    nb = notebook(product, model_package_arn)
    for i, cell in enumerate(nb["cells"]):
        cell["id"] = f"cell-{i}"
    files = {
        "usage-information.md": usage_markdown(product, bench, sample, quality, classifiers),
        "pricing.md": pricing_markdown(product, sample),
        "start-change-set.json": json.dumps(request, indent=2) + "\n",
        "sample-notebook.ipynb": json.dumps(nb, indent=1) + "\n",
        "description.md": product.description,
        "eula.md": product.eula_path.read_text(encoding="utf-8"),
    }
    missing = placeholders(product_id=product_id, offer_id=offer_id, model_package_arn=model_package_arn)
    if missing:
        files[TODO_FILE] = todo_markdown(product, missing)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out_dir / name).write_text(text, encoding="utf-8")
    if not missing:
        (out_dir / TODO_FILE).unlink(missing_ok=True)
    return [out_dir / name for name in files]


def measure_sample(product: _catalog.Product) -> build_artifact.SampleFigures:
    """What the kind's sample request consumes on the model as the catalog packages it (loaded once, on the CPU)."""
    return build_artifact.measure_sample(product.model_dir, served_name=product.served_name, kind=product.kind,
                                         tasks=product.tasks, remote_code=product.remote_code,
                                         metering=product.pricing.serving_config())


def artifact_quality(product: _catalog.Product, artifact: Path | None) -> _onnx.Quality | None:
    """The ONNX figures of a built artifact, for a product served on ONNX (None for one on torch).

    Raises:
        build_artifact.BuildRefused: the artifact is missing, unreadable, or not an ONNX build.
    """
    if product.backend != "onnx" or artifact is None:
        return None
    manifest = build_artifact.read_manifest(artifact)
    if manifest.get("backend") != "onnx" or not isinstance(manifest.get("onnx"), dict):
        raise build_artifact.BuildRefused(f"--artifact {artifact}: built for backend "
                                          f"{manifest.get('backend', 'torch')!r}, the catalog says onnx: rebuild "
                                          "it with build_artifact.py --catalog")
    quality = _onnx.Quality.from_dict(manifest["onnx"])
    if (quality.backend_file == _onnx.INT8_FILE) != (product.quantize == "int8"):
        raise build_artifact.BuildRefused(f"--artifact {artifact}: serves {quality.backend_file}, the catalog says "
                                          f"quantize {product.quantize or 'none'}: rebuild it with build_artifact.py "
                                          "--catalog")
    return quality


def add_listing_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that fill the change set's placeholders (shared with bundle.py), and --bench."""
    parser.add_argument("--model-package-arn",
                        help="the model package, as publish.py --no-dry-run prints it (default: a placeholder "
                             "with account ACCOUNT, listed in TODO.md)")
    parser.add_argument("--product-id", default=PRODUCT_ID_PLACEHOLDER,
                        help="the Marketplace product entity id, prod-... (default: a placeholder)")
    parser.add_argument("--offer-id", default=OFFER_ID_PLACEHOLDER,
                        help="the product's public offer entity id, offer-... (default: a placeholder)")
    parser.add_argument("--bench", type=Path,
                        help=f"benchmark results, markdown tables (default: {DEFAULT_BENCH}, when it exists)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--product", help="the catalog product (default: the only one)")
    parser.add_argument("-o", "--out-dir", required=True)
    parser.add_argument("--artifact", type=Path,
                        help="the model.tar.gz build_artifact.py made; needed for a product with backend onnx, "
                             "whose listing quotes the build's quality figures")
    add_listing_arguments(parser)
    args = parser.parse_args(argv)
    try:
        product = _catalog.find_product(_catalog.load_catalog(args.catalog), args.product)
        bench = bench_path(args.bench)
        arn = model_package_arn(product, args.model_package_arn)
        written = write_listing(product, Path(args.out_dir), model_package_arn=arn,
                                product_id=args.product_id, offer_id=args.offer_id, bench=bench,
                                quality=artifact_quality(product, args.artifact),
                                classifiers=artifact_classifiers(args.artifact))
    except (_catalog.CatalogError, _aws.RequestInvalid, _files.InputError, build_artifact.BuildRefused) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    warn_unfinished(bench, placeholders(product_id=args.product_id, offer_id=args.offer_id, model_package_arn=arn))
    return 0


def warn_unfinished(bench: Path, missing: list[Placeholder]) -> None:
    """Tell the vendor on stderr what the listing still lacks: benchmark figures, placeholder values."""
    if not performance_markdown(bench)[1]:
        print(f"warning: no benchmark tables in {bench}; the listing needs latency/throughput figures",
              file=sys.stderr)
    if missing:
        print(placeholder_report(missing), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
